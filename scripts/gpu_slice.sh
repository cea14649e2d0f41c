#!/usr/bin/env bash
# The study's GPU slice (issue 15): a paper-like slice of configs/study.toml on one GPU, several runs at
# once, each stored in the results database the moment it ends (a kill keeps every finished run).
#
#   scripts/gpu_slice.sh DATA_DIR OUT_DB [WORKERS] [CONFIG]
#
# DATA_DIR holds cifar10-jpeg.tar.gz and mnist/ (as ../shared/data does); OUT_DB is created or resumed;
# WORKERS processes share the one GPU (default 4); CONFIG defaults to configs/gpu_slice.toml.
# GENCE_SLICE_DEVICE overrides the device (the test runs it on the CPU with a tiny config).
#
# On a lent GPU machine (the device tool), from the repository root, with the data copied into an
# ignored folder .data/ (cifar10-jpeg.tar.gz and mnist/, ~31 MB) and named in `carry`:
#   run(command="scripts/gpu_slice.sh .data $OUT/gpu_slice.sqlite 4", carry=[".data"], timeout_s=540)
# then, here:
#   gence merge results/study.sqlite <files_at>/gpu_slice.sqlite
#   gence report results/study.sqlite ...           (the runs carry their GPU in their hardware field)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:?usage: scripts/gpu_slice.sh DATA_DIR OUT_DB [WORKERS] [CONFIG]}
OUT_DB=${2:?usage: scripts/gpu_slice.sh DATA_DIR OUT_DB [WORKERS] [CONFIG]}
WORKERS=${3:-4}
CONFIG=${4:-configs/gpu_slice.toml}
DEVICE=${GENCE_SLICE_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "$DEVICE" != "cpu" ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_slice.sh: no CUDA device; set GENCE_SLICE_DEVICE=cpu to run on the CPU')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
echo "gpu_slice: $CONFIG on $DEVICE, $WORKERS workers -> $OUT_DB ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
start=$(date +%s)
"$PYTHON" -m gence.cli bench "$CONFIG" --data-dir "$DATA_DIR" --db "$OUT_DB" --device "$DEVICE" \
    --workers "$WORKERS" --threads 2 --no-report --quiet
echo "gpu_slice: done in $(( $(date +%s) - start )) s"
"$PYTHON" - "$OUT_DB" <<'PY'
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print("label", "regime", "model", "seed", "status", "wall_s", "test/error", "hardware", sep="\t")
for label, regime, model, seed, status, wall, metrics, hardware in con.execute(
        "select label, regime, model, seed, status, wall_seconds, metrics, hardware from runs order by regime, label, seed"):
    error = json.loads(metrics or "{}").get("test/error")  # json, not SQLite's json_extract: metrics may hold NaN
    print(label, regime, model, seed, status, round(wall or 0, 1), error, hardware, sep="\t")
PY
