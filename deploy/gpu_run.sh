#!/usr/bin/env bash
# The GPU run of an offline bundle (`make gpu-bundle`): on an air-gapped CUDA host that has Python
# and a CUDA torch, with nothing downloaded. Unpacks the source, the base model and the task,
# installs the bundled wheels beside the host's torch, trains on CUDA, runs the GPU check and the
# `gpu` tests, and writes everything it measured under $OUT (default ./gpu-out):
#   results/      the reports, gpu-check.{md,json}, the host's identity (docs/results/gpu/ to be)
#   logs/         install, build, gpu-check and pytest logs
# Each part is timed out on its own and the next part runs whatever the last one did, so a crash
# or a hang loses only its own part. Run as: bash gpu_run.sh [STAGES]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$PWD/gpu-out}
STAGES=${1:-task,baseline,qlora}
PART_TIMEOUT=${PART_TIMEOUT:-420}
WORK=$(mktemp -d)
mkdir -p "$OUT/results" "$OUT/logs"
log() { echo "[gpu-run $(date +%T)] $*" | tee -a "$OUT/logs/run.log"; }
part() {  # part NAME CMD...: one timed-out step, its output in logs/NAME.log, its status logged
    local name=$1; shift
    log "$name: start"
    timeout --kill-after=20 "$PART_TIMEOUT" "$@" >"$OUT/logs/$name.log" 2>&1
    local rc=$?
    log "$name: exit $rc$([ $rc = 124 ] && echo " (timed out after ${PART_TIMEOUT}s)")"
    tail -n 3 "$OUT/logs/$name.log" | sed 's/^/    /' | tee -a "$OUT/logs/run.log"
    return $rc
}

log "bundle $(cat "$HERE/BUNDLE_ID" 2>/dev/null) -> $OUT (work: $WORK)"
mkdir -p "$WORK/src" "$WORK/model" "$WORK/data"
tar -xJf "$HERE/src.tar.xz" -C "$WORK/src" || { log "source did not unpack"; exit 1; }
tar -xJf "$HERE/data.tar.xz" -C "$WORK/data" || { log "data did not unpack"; exit 1; }
cp "$HERE"/model/*.json "$HERE"/model/*.txt "$WORK/model/" 2>/dev/null
xz -dc "$HERE/model/model.fp16.safetensors.xz" >"$WORK/model/model.fp16.safetensors"

# The host's torch stays: a venv that sees the system packages, the bundled wheels on top.
python3 -m venv --system-site-packages "$WORK/venv"
PY="$WORK/venv/bin/python"
part install "$PY" -m pip install --no-index --no-deps "$HERE"/wheels/*.whl
cd "$WORK/src" || exit 1
# the host's identity, the packages the run needs, the base model back to FP32 safetensors
part environment "$PY" -m deploy.gpu_host --out "$OUT/results" --model "$WORK/model" ||
    log "the host lacks something the run needs (logs/environment.log); going on"
DATA=$(ls -d "$WORK"/data/*/ | head -n 1)
part build "$PY" -m engines --model "$WORK/model" --data "$DATA" --stages "$STAGES" --device cuda \
    --artifacts "$WORK/artifacts" $(cat "$HERE/TASK_ARGS" 2>/dev/null)
part gpu-check "$PY" -m evaluate --gpu-check --artifacts "$WORK/artifacts" \
    --out "$OUT/results" --threads 1
# the tests' slices come from the bundled task (the emotion rows where the task is emotion)
export EMOTION_DATA="$DATA"
part pytest-gpu "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
log "done: $OUT/results (gpu-check.md first)"
