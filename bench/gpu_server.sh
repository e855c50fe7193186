#!/bin/bash
# The server on the lent H100: bench/server_load.py with `realm-web serve --device cuda` (fp16,
# CUDA graphs), after ../shared/gpu/stage.sh's parts were carried into /tmp/stage and the
# server's wheels (pip download starlette uvicorn prometheus-client httpx websockets, cp312)
# into /tmp/stage/srv. Env: CLIENTS (1,8,32,64,128), MAX_TOKENS (128). Writes under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd "$(dirname "$0")/.."
[ -f /tmp/site/LD_PATH ] || python3 /tmp/stage/assemble.py 2>&1 | tail -2
if [ ! -d /tmp/site3 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site3 /tmp/stage/srv/*.whl 2>&1 | tail -2
fi
# the image's own packages first; the server's wheels fill in what it lacks
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}:/tmp/site3 LD_LIBRARY_PATH=$(cat /tmp/site/LD_PATH):${LD_LIBRARY_PATH:-}
if [ ! -f /tmp/realm/realm.json ]; then
  python3 -m realm_web.cli export /tmp/stage/model.gguf -o /tmp/realm --dtype fp16 --max-length 2048 2>&1 | tail -1
fi
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
timeout ${BENCH_TIMEOUT:-500} python3 bench/server_load.py --device cuda --model /tmp/realm --clients ${CLIENTS:-1,8,32,64,128} \
  --max-slots 128 --max-tokens ${MAX_TOKENS:-128} --out "$OUT/server_load_gpu_h100.json" 2>&1 | grep -v -i "warn" | tail -30
