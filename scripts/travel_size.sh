#!/usr/bin/env bash
# What a call of the device tool would send to a lent GPU machine, before spending device time on it: the
# files git tracks, the untracked ones it does not ignore, and the paths named in `carry`; the tool refuses
# more than 64 MiB (/work/.library/device/README.md, Limits).
#
#   scripts/travel_size.sh [CARRY_PATH...]      e.g. scripts/travel_size.sh .data
#
# The committed results databases grow by ~0.11 MB a study run (each run's per-epoch history), so what fits
# shrinks as the study runs; the largest tracked files are listed to show where the bytes are.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=$((64 * 1024 * 1024))

# (a tracked file missing from the working tree, as after scripts/travel_light.sh off, does not travel: skipped)
sizes() { xargs -0 -r stat -c "$1" -- 2>/dev/null || true; }
size_of_tree() { git ls-files -z --cached --others --exclude-standard | sizes %s | awk '{s += $1} END {print s + 0}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f MB", b / 1e6}'; }

tree=$(size_of_tree)
total=$tree
echo "working tree (tracked + untracked not ignored): $(mb "$tree")"
for path in "$@"; do
  [ -e "$path" ] || { echo "travel_size.sh: carry path '$path' does not exist here (expected a file or folder in the checkout)" >&2; exit 2; }
  bytes=$(du -sbL -- "$path" | cut -f1)
  echo "carry $path: $(mb "$bytes")"
  total=$((total + bytes))
done
echo "largest tracked files:"
git ls-files -z | sizes '%s %n' | sort -rn | awk 'NR <= 5' | while read -r bytes name; do echo "  $(mb "$bytes")  $name"; done
if [ "$total" -le "$LIMIT" ]; then
  echo "total $(mb "$total"): fits the device tool's 64 MiB ($(mb $((LIMIT - total))) to spare)"
else
  echo "total $(mb "$total"): over the device tool's 64 MiB by $(mb $((total - LIMIT))): the call would be refused"
  exit 1
fi
