#!/bin/bash
# The fp16 export's compact download on a real GPU: realm-web's bridge (the tab's) on WebGPU through
# Node + dawn.node on the lent H200, loading model_fp16_packed.onnx with its weights expanded from the
# shared GGUF blocks (packed.mjs, float16), greedy 64 steps; tokens compared with onnxruntime CPU fp16
# and fp32 here (cpu_ref.json, made beside the files). No GGUF or exporter needed there.
# Before, here: `bash ../shared/webgpu/pack.sh`; the blocks split in two under .pk/a and .pk/b, and
# .pk/m holding realm.json, tokenizer.json, model_fp16_packed.onnx and cpu_ref.json. Device calls,
# back to back: carry [".pk/a"] then [".pk/b"], each `mkdir -p /tmp/pk && cp .pk/?/x.* /tmp/pk/`;
# then carry [".wg/a", ".wg/gl", ".pk/m"] and run: bash bench/webgpu_packed.sh   (results in $OUT)
set -e
REPO=$PWD
OUT=${OUT:-/tmp}
. .wg/a/s/setup.sh
M=/tmp/realm_pk && mkdir -p $M && cat /tmp/pk/x.* > $M/model_packed.blocks && cp .pk/m/* $M/
PYTHONPATH=$REPO python3 -c "
import json
from realm_web.manifest import load_manifest
from realm_web.engines.ort_web import bridge_config
print(json.dumps(bridge_config(load_manifest('$M'), 'fp16', 'webgpu')))" > /tmp/cfg.json
cp bench/webgpu_node.mjs bench/dawn_gpu.mjs /tmp/wg/
cd /tmp/wg && PACKED=1 ./node webgpu_node.mjs $REPO/wasm/src/bridge.mjs /tmp/cfg.json $M $OUT/webgpu_packed_fp16.json ${STEPS:-64}
python3 - <<PY
import json
b = json.load(open("$OUT/webgpu_packed_fp16.json")); ref = json.load(open("$M/cpu_ref.json"))
t = b["tokens"]
print(f"packed fp16 on WebGPU: {b['packed']}, load {b['load_s']} s, decode {b['decode_median_ms']} ms/step ({b['tok_s']} tok/s), first decode {b['first_run']['first_decode_ms']} ms")
for d in ("fp16", "fp32"):
    same = sum(x == y for x, y in zip(t, ref[d]))
    print(f"tokens equal to onnxruntime CPU {d}: {same}/{len(t)} (first difference at {next((i for i, (x, y) in enumerate(zip(t, ref[d])) if x != y), None)})")
PY
