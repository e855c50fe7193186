#!/bin/bash
# Issue 13 on the lent GPU: which per-row LoRA form costs least on CUDA (bench/lora_forms.py),
# without and with CUDA graph capture, fp16, rank 16, all seven targets. Run by the `device` tool
# after the parts of ../shared/gpu/stage.sh were carried into /tmp/stage. Writes JSON under $OUT.
source "$(dirname "$0")/gpu_env.sh"
export REALM_WEB_HOME=/tmp/rwh
gguf=$(python3 -c "from realm_web.export.pull import default_gguf_path; print(default_gguf_path())")  # where the forms bench looks
mkdir -p "$(dirname "$gguf")" && ln -sf /tmp/stage/model.gguf "$gguf"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
FORMS=${FORMS:-grouped,masked}
log "forms $FORMS, no capture"
timeout 300 python3 bench/lora_forms.py --device cuda --dtype fp16 --ranks 16 --forms $FORMS --reps 31 --work /tmp/lf \
  --out "$OUT/forms_gpu.json" 2>&1 | grep -v -i warn | tail -16
log "forms $FORMS, CUDA graphs"
timeout 300 python3 bench/lora_forms.py --device cuda --cuda-graph --dtype fp16 --ranks 16 --forms $FORMS --reps 31 --work /tmp/lf \
  --out "$OUT/forms_gpu_graph.json" 2>&1 | grep -v -i warn | tail -16
log done
