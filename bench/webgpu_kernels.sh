#!/bin/bash
# realm-web's own WebGPU kernels (wasm/src/kernels.mjs through gpu_bridge.mjs: the GGUF blocks as
# they are, five fused dispatches a layer) against onnxruntime-web's WebGPU EP on the fp16 packed
# export (the anchor), same machine, same call, through the same bench/webgpu_node.mjs step loop on
# Node + dawn.node. Tokens compared with onnxruntime CPU fp32 / fp16 (cpu_ref.json, made here by
# bench/webgpu_cpu_ref.py). Before, here: `bash ../shared/webgpu/pack.sh`; the blocks split in two
# under .pk/a and .pk/b, .pk/m holding realm.json, tokenizer.json, model_fp16_packed.onnx and
# cpu_ref.json. Device calls, back to back: carry [".pk/a"] then [".pk/b"], each
# `mkdir -p /tmp/pk && cp .pk/?/x.* /tmp/pk/`; then carry [".wg/a", ".wg/gl", ".pk/m"] and run
# `bash bench/webgpu_kernels.sh` (results in $OUT). ANCHOR=0 skips the onnxruntime-web run; with .tj/
# (bench/transformersjs_model.py's model files in .tj/m, and .tj/nm.tar.xz: transformers.js 4.3.2's web build with
# its onnxruntime-web, see bench/transformersjs_webgpu.mjs) carried
# too, transformers.js runs as well; LANE_VARIANTS="8 16" times the kernels with other lanes per unit;
# with wasm/node_modules/pyodide and wasm/dist carried, bench/webgpu_realm_node.mjs runs Node's
# Realm engine "webgpu" end to end (ONLY_REALM=1 ANCHOR=0: that and one kernels run only). With
# lora_meta.json and lora.bin in .pk/m (`bench/webgpu_cpu_ref.py $M .pk/m/cpu_ref.json 64 /tmp/wgadapter`), the kernels
# also decode on that adapter (kernels_lora: tokens against cpu_ref's fp32_lora, time against kernels).
set -e
REPO=$PWD
OUT=${OUT:-/tmp}
. .wg/a/s/setup.sh
M=/tmp/realm_pk && mkdir -p $M && cat /tmp/pk/x.* > $M/model_packed.blocks && cp .pk/m/* $M/
for d in fp32 fp16; do PYTHONPATH=$REPO python3 -c "
import json
from realm_web.manifest import load_manifest
from realm_web.engines.ort_web import bridge_config
print(json.dumps(bridge_config(load_manifest('$M'), '$d', 'webgpu')))" > /tmp/cfg_$d.json; done
cp bench/webgpu_node.mjs bench/dawn_gpu.mjs /tmp/wg/
cd /tmp/wg
B=$REPO/wasm/src/bridge.mjs
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader || true
[ "${ONLY_REALM:-0}" = 1 ] || KERNELS=1 ./node webgpu_node.mjs $B /tmp/cfg_fp32.json $M $OUT/kernels.json ${STEPS:-64} > /dev/null
[ "${ONLY_REALM:-0}" = 1 ] || KERNELS=1 PROFILE=1 ./node webgpu_node.mjs $B /tmp/cfg_fp32.json $M $OUT/kernels_profiled.json ${STEPS:-64} > /dev/null || true
[ "${ANCHOR:-1}" = 0 ] || PACKED=1 ./node webgpu_node.mjs $B /tmp/cfg_fp16.json $M $OUT/ort_fp16.json ${STEPS:-64} > /dev/null
KERNELS=1 ./node webgpu_node.mjs $B /tmp/cfg_fp32.json $M $OUT/kernels_again.json ${STEPS:-64} > /dev/null
[ -f $M/lora_meta.json ] && { LORA=$M KERNELS=1 ./node webgpu_node.mjs $B /tmp/cfg_fp32.json $M $OUT/kernels_lora.json ${STEPS:-64} > /dev/null || echo "kernels with LoRA failed"; }
for ln in ${LANE_VARIANTS:-}; do LANES=$ln KERNELS=1 ./node webgpu_node.mjs $B /tmp/cfg_fp32.json $M $OUT/kernels_lanes$ln.json ${STEPS:-64} > /dev/null || true; done
if [ -d $REPO/wasm/node_modules/pyodide ] && [ -d $REPO/wasm/dist ]; then  # the Node product: Realm.load({engine: "webgpu"})
  cp $REPO/bench/webgpu_realm_node.mjs /tmp/wg/
  [ -e $REPO/wasm/node_modules/webgpu ] || ln -s /tmp/wg/node_modules/webgpu $REPO/wasm/node_modules/webgpu
  ./node webgpu_realm_node.mjs $REPO/wasm/src/realm.mjs $M $M/chat_ref.json $OUT/realm_node.json || echo "Realm engine webgpu failed"
fi
if [ -d $REPO/.tj ]; then  # transformers.js on the same GPU, same fp16 weights (bench/transformersjs_model.py, .tj/)
  mkdir -p /tmp/tj /tmp/tjm/smol && (cd /tmp/tj && tar -xJf $REPO/.tj/nm.tar.xz) && cp -r $REPO/.tj/m/* /tmp/tjm/smol/
  ./node $REPO/bench/expand_half.mjs $REPO/wasm/src/packed.mjs $M/realm.json $M/model_packed.blocks /tmp/tjm/smol/onnx/model_fp16.onnx_data
  cp $REPO/bench/transformersjs_webgpu.mjs /tmp/wg/
  (cd /tmp/tj && /tmp/wg/node /tmp/wg/transformersjs_webgpu.mjs /tmp/tj/node_modules /tmp/tjm/smol $OUT/transformersjs.json ${STEPS:-64} webgpu > /dev/null) || echo "transformers.js failed"
fi
python3 - <<PY
import json, os
ref = json.load(open("$M/cpu_ref.json"))
names = ["kernels", "kernels_again", "kernels_profiled", "kernels_lora", "ort_fp16", "transformersjs"] + [f"kernels_lanes{x}" for x in "${LANE_VARIANTS:-}".split()]
runs = {n: json.load(open(f"$OUT/{n}.json")) for n in names if os.path.exists(f"$OUT/{n}.json")}
for n, b in runs.items():
    t = b["tokens"]
    eq = {d: f"{sum(x == y for x, y in zip(t, ref[d]))}/{len(t)}" for d in ("fp32", "fp16", "fp32_lora") if d in ref}
    print(f"{n:17s} decode {b['decode_median_ms']:8.3f} ms/step ({b['tok_s']:7.1f} tok/s)  prefill {b['prefill_ms']:8.2f} ms  "
          f"first token {b['first_token_since_process_start_ms']/1000:6.2f} s after start  load {b['load_s']} s  tokens = CPU {eq} both runs same {b.get('same_tokens_both_runs')}  "
          f"{b.get('kernels', {}).get('gpu_ms_per_decode_step', '')}")
for a in ("ort_fp16", "transformersjs"):
    if a in runs:
        for n in ("kernels", "kernels_again"):
            print(f"{a} / {n}: realm kernels {runs[a]['decode_median_ms'] / runs[n]['decode_median_ms']:.2f}x faster decode")
if "kernels_lora" in runs:
    for n in ("kernels", "kernels_again"):
        print(f"kernels_lora / {n}: a decode step on the adapter takes {runs['kernels_lora']['decode_median_ms'] / runs[n]['decode_median_ms']:.2f}x")
json.dump({"runs": runs, "cpu_ref": ref}, open("$OUT/webgpu_kernels_summary.json", "w"), indent=1)
PY
