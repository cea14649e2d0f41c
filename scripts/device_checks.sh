#!/usr/bin/env bash
# The first things to run when a session is lent a GPU (issue 15), as one call of the device tool: the CUDA
# speed ratios, then the study's GPU slice for the time left. Each result is written under OUT the moment
# it is done, so a call cut short still brings back what finished.
#
#   scripts/device_checks.sh DATA_DIR OUT [SECONDS]
#
# DATA_DIR holds cifar10-jpeg.tar.gz and mnist/ (the slice's OOD sets: MNIST and noise); OUT is the
# device tool's $OUT; SECONDS is the whole budget (default 540, under the tool's 600 s a command). In OUT:
#   device.txt                   nvidia-smi and torch's view of the GPU
#   loss_speed_cuda.txt          benchmarks/loss_speed.py --device cuda (GenCE / F.cross_entropy ratios)
#   train_throughput_cuda.txt    benchmarks/train_throughput.py --device cuda (random images: speed only)
#   gpu_slice.sqlite, .log       scripts/gpu_slice.sh DATA_DIR OUT/gpu_slice.sqlite 4 (configs/gpu_slice.toml)
#
# Here, first (no device time): copy the tar into an ignored folder, and take the committed results
# databases out of the working tree for the call (they are not read here, and with them the tree outgrows
# the tool's 64 MiB as the study grows; travel_light.sh prints what will travel):
#   mkdir -p .data && cp -r ../shared/data/cifar10-jpeg.tar.gz ../shared/data/mnist .data/ && echo /.data/ >> .git/info/exclude
#   scripts/study_background.sh stop-autosave && scripts/travel_light.sh off .data
# then:
#   run(command="scripts/device_checks.sh .data $OUT", carry=[".data"], timeout_s=580)
#   scripts/travel_light.sh on && scripts/study_background.sh autosave 60 HH:MM   (the session's handover time)
# and back here, each file read from <files_at>: the two benchmark outputs go to results/benchmarks/ as
# they are (their first lines name the command, commit and GPU); `gence merge results/study.sqlite
# <files_at>/gpu_slice.sqlite`, then `scripts/study_background.sh snapshot` (RESULTS.md shows the slice as a
# block of its own, labelled with its GPU).
# DEVICE_CHECKS_DEVICE=cpu runs it all on the CPU (the test, with a tiny CONFIG and BENCH=0).
set -uo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: scripts/device_checks.sh DATA_DIR OUT [SECONDS]"
DATA_DIR=${1:?$USAGE}
OUT=${2:?$USAGE}
BUDGET=${3:-540}
[[ "$BUDGET" =~ ^[1-9][0-9]*$ ]] || { echo "device_checks.sh: SECONDS must be a whole number of seconds, got '$BUDGET'" >&2; exit 2; }
[ -d "$DATA_DIR" ] || { echo "device_checks.sh: DATA_DIR '$DATA_DIR' is not a folder (expected one holding cifar10-jpeg.tar.gz and mnist/)" >&2; exit 2; }
DEVICE=${DEVICE_CHECKS_DEVICE:-cuda}
CONFIG=${CONFIG:-configs/gpu_slice.toml}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
step() {   # step SECONDS FILE COMMAND...: run COMMAND for at most SECONDS (and the budget left), output in FILE
  local limit=$1 file=$2; shift 2
  local avail; avail=$(left)
  [ "$avail" -lt "$limit" ] && limit=$avail
  if [ "$limit" -le 10 ]; then echo "device_checks: no time left for $file" | tee -a "$OUT/$file"; return; fi
  echo "device_checks: $file (at most $limit s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$file" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || echo "device_checks: $file ended with exit status $rc$([ $rc -eq 124 ] && echo ' (its time was up)')" | tee -a "$OUT/$file"
}

{ nvidia-smi 2>&1 || echo "no nvidia-smi"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
*(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"
} > "$OUT/device.txt" 2>&1
if [ "${BENCH:-1}" != 0 ]; then
  step 90 loss_speed_cuda.txt "$PYTHON" benchmarks/loss_speed.py --device "$DEVICE" --repeats 20
  step 120 train_throughput_cuda.txt "$PYTHON" benchmarks/train_throughput.py --device "$DEVICE" --repeats 3
fi
# the slice last, for what is left: its runs are stored one by one as they end
GENCE_SLICE_DEVICE=$DEVICE step "$BUDGET" gpu_slice.log bash scripts/gpu_slice.sh "$DATA_DIR" "$OUT/gpu_slice.sqlite" 4 "$CONFIG"
echo "device_checks: done in $(( $(date +%s) - start )) s; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
