#!/bin/bash
# Issue 13 (multi-LoRA) on the lent GPU, run by the `device` tool after the parts of
# ../shared/gpu/stage.sh were carried into /tmp/stage, and .gpu/extra (wheels: peft, accelerate,
# and what the image may lack) into /tmp/stage/extra. Writes logs and JSON under $OUT.
# Env: SKIP_CHECK=1, SKIP_BENCH=1, CHECK_ARGS (more bench/lora_check.py options, e.g. --logits), BENCH_ARGS.
source "$(dirname "$0")/gpu_env.sh"
declare -A WHEEL=([onnx]=onnx [ml_dtypes]=ml_dtypes [google.protobuf]=protobuf [accelerate]=accelerate [peft]=peft
                  [psutil]=psutil [yaml]=pyyaml [safetensors]=safetensors)
for m in "${!WHEEL[@]}"; do
  if ! python3 -c "import $m" 2>/dev/null; then
    w=$(ls /tmp/stage/extra/${WHEEL[$m]}-*.whl 2>/dev/null | head -1)
    [ -n "$w" ] && { log "installing $(basename "$w")"; python3 -m pip install -q --no-index --no-deps --target /tmp/site2 "$w" 2>&1 | tail -1; }
  fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import onnxruntime as o, torch, transformers, peft; print('ort', o.__version__, o.get_available_providers(), 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
if [ ! -f /tmp/realm/realm.json ]; then
  log "export fp16 (+ its LoRA twin)"
  python3 -m realm_web.cli export /tmp/stage/model.gguf -o /tmp/realm --dtype fp16 --max-length 2048 2>&1 | tail -2
fi
if [ "${SKIP_CHECK:-0}" != 1 ]; then
  log "LoRA exactness counts"
  timeout 300 python3 bench/lora_check.py --device cuda --dtype fp16 --model /tmp/realm --gguf /tmp/stage/model.gguf ${CHECK_ARGS:-} \
    --out "$OUT/lora_check.json" 2>&1 | grep -v -i "UserWarning\|plugin EP\|Loading weights\|Converting\|Writing" | tail -14
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  log "benchmark"
  timeout ${BENCH_TIMEOUT:-400} python3 bench/lora.py --device cuda --dtype fp16 --model /tmp/realm --gguf /tmp/stage/model.gguf \
    --work /tmp/bl ${BENCH_ARGS:---new 256 --anchor-new 32 --reps 3} --out "$OUT/lora_gpu.json" 2>&1 | grep -v -i "warn\|Loading weights\|Converting\|Writing" | tee "$OUT/lora_gpu.log" | tail -25
fi
log "done"
