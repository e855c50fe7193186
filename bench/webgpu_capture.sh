#!/bin/bash
# WebGPU graph capture on the lent GPU (an experiment for issue 16): bench/webgpu_capture_decode.mjs on
# Node + dawn.node with onnxruntime-web 1.30's webgpu build, patched so that a captured session's GPU
# buffers stay registered between runs (the build unregisters them after every run, and replay then
# binds undefined buffers: "Failed to read the 'buffer' property from 'GPUBufferBinding'").
# Carry as for bench/webgpu_packed.sh (.pk/a, .pk/b, then .wg/a, .wg/gl, .pk/m with
# cap_fp16_packed.onnx from tools/webgpu_capture_variant.py and dist/ort.webgpu.mjs), then:
#   bash bench/webgpu_capture.sh   (results in $OUT; tokens compared with onnxruntime CPU's)
set -e
REPO=$PWD
OUT=${OUT:-/tmp}
. .wg/a/s/setup.sh
M=/tmp/realm_pk && mkdir -p $M && { [ -f $M/model_packed.blocks ] || cat /tmp/pk/x.* > $M/model_packed.blocks; } && cp .pk/m/* $M/
D=/tmp/wg/node_modules/onnxruntime-web/dist
python3 - "$M/ort.webgpu.mjs" "$D/ort.webgpu.capture.mjs" <<'PY'
import sys
s = open(sys.argv[1]).read()
old = "        if (true) {\n          inputTensors.forEach((t) => {\n            if (t && t[3] === \"gpu-buffer\") {\n              wasm2.webgpuUnregisterBuffer("
assert s.count(old) == 1, "onnxruntime-web's run epilogue changed: check the patch"
open(sys.argv[2], "w").write(s.replace(old, old.replace("if (true)", "if (!enableGraphCapture)")))
PY
cp bench/webgpu_capture_decode.mjs bench/dawn_gpu.mjs /tmp/wg/
cp wasm/src/packed.mjs /tmp/wg/packed.mjs
cd /tmp/wg && ./node webgpu_capture_decode.mjs $D/ort.webgpu.capture.mjs /tmp/wg/packed.mjs $M cap_fp16_packed.onnx $OUT/webgpu_capture.json ${STEPS:-64} ${T:-256} 2>&1 | grep -v VerifyEachNode
python3 - <<PY
import json
r = json.load(open("$OUT/webgpu_capture.json")); ref = json.load(open("$M/cpu_ref.json"))["fp16"]
for k in ("uncaptured", "captured"):
    v = r[k]; same = sum(x == y for x, y in zip(v["tokens"], ref))
    print(f"{k:10s}: decode {v['decode_median_ms']} ms/step ({v['tok_s']} tok/s), first step {v['first_step_ms']} ms, load {v['load_ms']} ms, tokens equal to CPU fp16 {same}/{len(v['tokens'])}")
print(f"captured vs uncaptured: {r['speedup']}x; same tokens: {r['tokens_equal']}")
PY
