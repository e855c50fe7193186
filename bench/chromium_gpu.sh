#!/bin/bash
# The tab's WebGPU engine (the realm kernels) in a real Chromium on the lent GPU: Debian's chromium
# (bench/chromium_gpu_pack.sh) unpacked into /tmp/chr, headless, WebGPU over Vulkan, the timing page
# bench/chromium_gpu/index.html served by bench/chromium_gpu/serve.py with the packed blocks.
# Calls, back to back: carry [".pk/a"] then [".pk/b"] (each `mkdir -p /tmp/pk && cp .pk/?/x.* /tmp/pk/`),
# then each [".chr/pK"] (`mkdir -p /tmp/chrparts && cp .chr/pK/part.* /tmp/chrparts/`), then
# [".wg/a", ".wg/gl", ".pk/m"] running `bash bench/chromium_gpu.sh` (results in $OUT).
set -e
REPO=$PWD
OUT=${OUT:-/tmp}
. .wg/a/s/setup.sh >/dev/null
mkdir -p /tmp/chr /tmp/chrdebs && cat /tmp/chrparts/part.* | tar -xf - -C /tmp/chrdebs
for d in /tmp/chrdebs/*.deb; do dpkg -x "$d" /tmp/chr; done
# libpulsecommon lives in a subdirectory (the first try there stopped at it)
export LD_LIBRARY_PATH=/tmp/chr/usr/lib/x86_64-linux-gnu:/tmp/chr/usr/lib/x86_64-linux-gnu/pulseaudio:/tmp/chr/lib/x86_64-linux-gnu
export FONTCONFIG_PATH=/tmp/chr/etc/fonts
missing=$(ldd /tmp/chr/usr/lib/chromium/chromium | grep "not found" || true)
[ -z "$missing" ] || { echo "chromium lacks: $missing"; exit 1; }
M=/tmp/realm_pk && mkdir -p $M && cat /tmp/pk/x.* > $M/model_packed.blocks && cp .pk/m/* $M/
PYTHONPATH=$REPO python3 -c "
import json
from realm_web.manifest import load_manifest
from realm_web.engines.ort_web import bridge_config
print(json.dumps(bridge_config(load_manifest('$M'), 'fp32', 'webgpu')))" > /tmp/cfg_fp32.json
rm -f $OUT/chromium_webgpu.json
python3 bench/chromium_gpu/serve.py $M /tmp/cfg_fp32.json $OUT/chromium_webgpu.json 8977 &
sleep 1
/tmp/chr/usr/lib/chromium/chromium --version || true
/tmp/chr/usr/lib/chromium/chromium --headless=new --no-sandbox --disable-gpu-sandbox --enable-unsafe-webgpu \
  --enable-features=Vulkan --use-vulkan --use-angle=vulkan --ignore-gpu-blocklist --no-first-run \
  --user-data-dir=/tmp/chrprof "http://127.0.0.1:8977/bench/chromium_gpu/index.html?steps=${STEPS:-64}" > $OUT/chromium.log 2>&1 &
browser=$!
for i in $(seq 1 ${WAIT_S:-200}); do [ -f $OUT/chromium_webgpu.json ] && break; kill -0 $browser 2>/dev/null || break; sleep 1; done
pkill -f user-data-dir=/tmp/chrprof || true
[ -f $OUT/chromium_webgpu.json ] && cat $OUT/chromium_webgpu.json || { echo "no result; the browser's log:"; tail -30 $OUT/chromium.log; }
