#!/bin/bash
# The GPU part of issue 3's benchmark, run on the lent H100 by the `device` tool after the
# parts of ../shared/gpu/stage.sh were carried into /tmp/stage. Writes logs and JSON under $OUT.
# Env: SIZES (1,16,128), ANCHORS (sequential,hf,plain,genai), SKIP_CHECK=1, GRAPH_CHECK=1 (check
# and profile the CUDA-graph engine first), SKIP_BENCH=1, OUTNAME,
# EXTRA (e.g. "--inline --no-graph" to A/B the engine variants in the same run).
source "$(dirname "$0")/gpu_env.sh"
for m in onnx ml_dtypes google.protobuf accelerate; do
  python3 -c "import $m" 2>/dev/null || missing="${missing:-} $m"
done
if [ -n "${missing:-}" ]; then
  log "installing from /tmp/stage/extra:$missing"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site2 /tmp/stage/extra/*.whl 2>&1 | tail -2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import onnxruntime as o, onnx, torch, transformers; print('ort', o.__version__, o.get_available_providers(), 'onnx', onnx.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
if [ ! -f /tmp/realm/realm.json ]; then
  log "export fp16"
  python3 -m realm_web.cli export /tmp/stage/model.gguf -o /tmp/realm --dtype fp16 --max-length 2048 2>&1 | tail -3
fi
if [ "${GRAPH_CHECK:-0}" = 1 ]; then
  log "engine check, cuda graph"
  timeout 200 python3 bench/engine_check.py --model /tmp/realm --device cuda --dtype fp16 \
    --out "$OUT/check_graph.json" 2>&1 | tail -15
  log "step profile, cuda graph"
  timeout 120 python3 bench/step_profile.py --model /tmp/realm --device cuda --dtype fp16 \
    --out "$OUT/step_graph.json" 2>&1 | grep -v -i warn | tail -20
  log "step profile, plain"
  timeout 120 python3 bench/step_profile.py --model /tmp/realm --device cuda --dtype fp16 --no-graph \
    --out "$OUT/step_plain.json" 2>&1 | grep -v -i warn | tail -20
fi
if [ "${SKIP_CHECK:-0}" != 1 ]; then
  log "engine check, no graph"
  timeout 240 python3 bench/engine_check.py --model /tmp/realm --device cuda --dtype fp16 --no-graph --out "$OUT/check.json" 2>&1 | tail -15
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  log "benchmark"
  timeout ${BENCH_TIMEOUT:-500} python3 bench/batching.py --device cuda --dtype fp16 --sizes ${SIZES:-1,16,128} \
    --anchors ${ANCHORS:-sequential,hf,plain,genai} --model /tmp/realm --gguf /tmp/stage/model.gguf --work /tmp/bw \
    ${EXTRA:-} --out "$OUT/${OUTNAME:-batching_gpu}.json" 2>&1 | grep -v -i "warn\|Loading weights\|^  " | tee "$OUT/${OUTNAME:-batching_gpu}.log" | tail -40
fi
log "done"
