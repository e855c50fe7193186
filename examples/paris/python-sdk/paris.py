"""Ask a running realm-web server (`make serve`) over HTTP and over the WebSocket protocol.

    .venv/bin/python examples/paris/python-sdk/paris.py [http://127.0.0.1:8000] [api-key]
"""
import sys

from realm_web.client import Client

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
key = sys.argv[2] if len(sys.argv) > 2 else None
with Client(url, api_key=key) as client:
    q = "What is the capital of France?"
    print("http:", client.chat(q, temperature=0, max_tokens=32).text)
    with client.websocket() as ws:
        print("ws:  ", ws.generate(q, temperature=0, max_tokens=32).text)
