#!/bin/sh
# Ask a running realm-web server (`make serve`) the question over its OpenAI-compatible HTTP API.
#   sh examples/paris/server/paris.sh [http://127.0.0.1:8000]
URL=${1:-http://127.0.0.1:8000}
curl -sS "$URL/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 32,
  "messages": [{"role": "user", "content": "What is the capital of France?"}]}' |
python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
