#!/bin/bash
# Issue 14's GPU figures, run on the lent H200 by the `device` tool after the parts of
# ../shared/gpu/stage.sh were carried into /tmp/stage: bench/speculative.py on CUDA (fp16 target;
# n-gram, and the int4 export drafting), plain decoding as the anchor in the same run, and the
# static-verify path's exactness. Writes logs and JSON under $OUT.
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import onnxruntime as o; print('ort', o.__version__, o.get_available_providers())" 2>&1 | tee -a "$OUT/gpu.txt"
if [ ! -f /tmp/realm/realm.json ]; then
  log "export fp16 + int4"
  python3 -m realm_web.cli export /tmp/stage/model.gguf -o /tmp/realm --dtype fp16 --dtype int4 --max-length 2048 2>&1 | tail -3
fi
log "speculative benchmark"
timeout ${BENCH_TIMEOUT:-900} python3 bench/speculative.py --model /tmp/realm --device cuda --dtype fp16 \
  --methods ${METHODS:-ngram,draft} --batches ${BATCHES:-1,16} --reps ${REPS:-3} --k ${K:-4} \
  --out "$OUT/speculative_h200.json" 2>&1 | grep -v -i "warn" | tee "$OUT/speculative_h200.log" | tail -30
log "done"
