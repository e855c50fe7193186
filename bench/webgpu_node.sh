#!/bin/bash
# WebGPU on the lent H200 through Node: realm-web's bridge (bench/webgpu_node.mjs) next to the raw
# decode loop of ../shared/webgpu (wgtest.mjs: the anchor), same machine, same fp16 export, same run.
# Before: `bash ../shared/webgpu/pack.sh` and `bash ../shared/gpu/stage.sh` here, then device calls
# carrying .gpu/p6, .gpu/p5, .gpu/p0 (each: mkdir -p /tmp/stage && cp .gpu/pK/* /tmp/stage/), and a
# last one carrying [".wg/a", ".wg/gl"] that runs: bash bench/webgpu_node.sh   (results in $OUT)
set -e
REPO=$PWD
OUT=${OUT:-/tmp}
. .wg/a/s/setup.sh
DTYPE=fp16 OUT=$OUT bash .wg/a/s/decode.sh 2>&1 | tail -5  # exports /tmp/realm_fp16; the anchor -> $OUT/webgpu_decode.json
PYTHONPATH=/tmp/site:$REPO python3 -c "
import json
from realm_web.manifest import load_manifest
from realm_web.engines.ort_web import bridge_config
print(json.dumps(bridge_config(load_manifest('/tmp/realm_fp16'), 'fp16', 'webgpu')))" > /tmp/cfg.json
cp bench/webgpu_node.mjs bench/dawn_gpu.mjs /tmp/wg/
cd /tmp/wg && ./node webgpu_node.mjs $REPO/wasm/src/bridge.mjs /tmp/cfg.json /tmp/realm_fp16 $OUT/webgpu_bridge.json ${STEPS:-64}
[ -z "${PROFILE:-}" ] || PROFILE=1 ./node webgpu_node.mjs $REPO/wasm/src/bridge.mjs /tmp/cfg.json /tmp/realm_fp16 $OUT/webgpu_bridge_profile.json 32
python3 - <<PY
import json
a = json.load(open("$OUT/webgpu_decode.json"))["decoder"]; b = json.load(open("$OUT/webgpu_bridge.json"))
print(f"raw loop (anchor): decode {a['decode_ms_median']} ms/step, first run {a['prefill_ms_first_run']} ms prefill")
print(f"realm-web bridge:  decode {b['decode_median_ms']} ms/step ({b['tok_s']} tok/s), first decode {b['first_run']['first_decode_ms']} ms, load {b['load_s']} s")
print(f"bridge / raw: {b['decode_median_ms'] / a['decode_ms_median']:.2f}x; tokens equal: {a['tokens'][:len(b['tokens'])] == b['tokens'][:len(a['tokens'])]}")
PY
