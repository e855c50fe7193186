# Sourced by bench/gpu_*.sh on the lent GPU machine: $OUT, the project root as the working
# directory, log(), and onnxruntime-gpu from the parts ../shared/gpu/stage.sh staged in /tmp/stage.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { echo "[gpu $(date +%T)] $*" | tee -a "$OUT/steps.log"; }
[ -f /tmp/site/LD_PATH ] || python3 /tmp/stage/assemble.py 2>&1 | tail -2
export PYTHONPATH=/tmp/site:/tmp/site2:$PWD:${PYTHONPATH:-} LD_LIBRARY_PATH=$(cat /tmp/site/LD_PATH):${LD_LIBRARY_PATH:-}
