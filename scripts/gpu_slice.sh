#!/usr/bin/env bash
# The study's GPU slice (issue 15): a paper-like slice of configs/study.toml on one GPU, several runs at
# once, each stored in the results database the moment it ends (a kill keeps every finished run).
#
#   scripts/gpu_slice.sh DATA_DIR OUT_DB [WORKERS] [CONFIG] [BENCH_ARGS...]
#
# DATA_DIR holds cifar10-jpeg.tar.gz and mnist/ (as ../shared/data does; configs/study.toml's blocks also
# read fashion-mnist/ for their OOD sets); OUT_DB is created or resumed;
# WORKERS processes share the one GPU (default 4); CONFIG defaults to configs/gpu_slice.toml; BENCH_ARGS go
# to `gence bench` as they are (--blocks, --reuse, ...). GENCE_SLICE_DEVICE overrides the device (the test
# runs it on the CPU with a tiny config).
#
# Blocks of the study itself run the same way, into a copy of its database (the device is not part of a
# run's key, so a run trained here fills the study's own slot; its hardware field names the GPU):
#   run(command="cp results/study.sqlite $OUT/study.sqlite && scripts/gpu_slice.sh .data $OUT/study.sqlite 8 "
#               "configs/study.toml --blocks 'lr_b50_cifar10_resnet20,main_b50_cifar10_resnet20' "
#               "--reuse results/pilot.sqlite", carry=[".data"], timeout_s=540)
#   gence merge results/study.sqlite <files_at>/study.sqlite
# (CIFAR-10's blocks wait for the budget its pilot sets: the header of configs/study.toml says when. A GPU
# run's numbers differ from a CPU run's in the last bits, as two CPU kinds' do: each is reproducible on its
# own hardware, stored in the run's hardware field.)
#
# On a lent GPU machine, run it through scripts/device_checks.sh (the CUDA speed ratios first, then this
# slice for the time left, all in one call of the device tool; its header has the commands); the slice's
# database comes back, and here:
#   gence merge results/study.sqlite <files_at>/gpu_slice.sqlite
#   scripts/study_background.sh snapshot      (RESULTS.md: a block of its own, never pooled with the study's
#                                              blocks; its runs carry their GPU in their hardware field)
#
# SIZE: the device tool sends the whole working tree plus `carry` and refuses more than 64 MiB. Before a call,
# `scripts/travel_size.sh .data` says, at no device time, whether it fits. With the committed results
# databases (growing ~0.11 MB a study run) the tree was 41.7 MB on 2026-12-06 and 45.4 MB later that day,
# beside the slice's data (CIFAR-10 tar 19.8 MB, mnist/ 11.4 MB): too much, so device_checks.sh's header
# takes those files out for the call with `scripts/travel_light.sh off` (12.2 MB of tree remained on
# 2026-12-06; it prints the sum each time). The study's blocks need results/study.sqlite and
# results/pilot.sqlite (carried as copies) and, for CIFAR-10, fashion-mnist/ (30.9 MB) as well: more than
# the 64 MiB already, so they cannot go to a lent GPU through the device tool.
set -euo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: scripts/gpu_slice.sh DATA_DIR OUT_DB [WORKERS] [CONFIG] [BENCH_ARGS...]"
DATA_DIR=${1:?$USAGE}
OUT_DB=${2:?$USAGE}
WORKERS=${3:-4}
CONFIG=${4:-configs/gpu_slice.toml}
shift $(( $# < 4 ? $# : 4 ))   # what is left goes to gence bench
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
    --workers "$WORKERS" --threads 2 --no-report --quiet "$@"
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
