#!/usr/bin/env bash
# The convergence study and its pilot, in the background, resumable on any machine (issue 15).
#
#   scripts/study_background.sh start      # restore the databases if absent, start both runners and autosave
#                                          # (its handover 160 min on: a session lasts 180; AUTOSAVE=0: none)
#   scripts/study_background.sh status     # what is running, runs done per database
#   scripts/study_background.sh snapshot   # merge the running databases into results/, regenerate the pages
#   scripts/study_background.sh handover   # snapshot, and copy the checkpoints of runs in flight to results/
#   scripts/study_background.sh stop       # SIGTERM: runs in flight give up their claims, keep checkpoints
#   scripts/study_background.sh stop-autosave   # the autosave loop alone (before scripts/travel_light.sh off)
#   scripts/study_background.sh autosave [MINUTES] [HANDOVER_AT]
#                                          # in the background: a snapshot committed every MINUTES (60), and at
#                                          # HANDOVER_AT (any time `date -d` reads, e.g. 06:05) a handover
#                                          # committed, then it ends; 'stop' ends it too
#
# Each runner works from a git worktree frozen at a pinned commit (below), so edits to this checkout never
# reach a run in flight; move a pin only in a commit that says why, after scripts/reproduce_run.py shows a
# stored study run reproduced bit for bit at the new commit. The running databases live in $RUNS (default
# ../runs beside the clone); results/*.sqlite in the clone are their committed snapshots, from which a new
# machine starts. Settings: GENCE_DATA (default ../shared/data), GENCE_VENV (default: the active venv, else
# .venv), RUNS, WORKTREES (default ../wt).
#
# A session's machine goes away with the runs in flight on it (a Fashion-MNIST run is ~30 min, a CIFAR-10
# pilot run 1-2 h). 'handover', as a session's last snapshot, copies their checkpoints (~0.6 MB per
# ResNet-8 run, ~2 MB per ResNet-20 one) to results/checkpoints/NAME/, and 'start' on a new machine puts
# them back beside the restored database, so those runs go on from their last saved epoch instead of epoch
# 0 (the loop refuses a checkpoint of another config). Hourly snapshots leave results/checkpoints/ alone:
# each commit of checkpoints is ~3-4 MB of history, once a session. The checkpoints go back only on a CPU
# of the kind that wrote them (results/checkpoints/MACHINE: torch's CPU capability and native bf16): bf16
# autocast takes other kernels on another kind, and a run trained half on each is reproducible on neither.
# On a CPU whose oneDNN has no bf16 kernels (x86 with AVX2 only) bf16 autocast ran 9-11x slower than
# float32 (results/benchmarks/amp_cpu_avx2.txt; an 8,000-step Fashion-MNIST run ~10 h instead of 0.5 h).
# There the loop, from STUDY_REV on, trains amp runs in float32 (gence.train.loop.amp_dtype; the run records
# it in extras["precision"], the report counts runs per precision), at about the speed of bf16 on the
# study's AVX-512 CPUs, so 'start' runs the study on such a CPU too, and not the pilot: the pilot's E-to-2E
# comparisons stay in one precision.
set -euo pipefail

STUDY_REV=e7071f4            # configs/study.toml with CIFAR-10's budgets fixed (run keys as at the launch commit
                             # d7964a8), and amp's float32 fallback for a CPU without bf16 kernels; a stored study
                             # run reproduced there, bf16 on AVX-512 (c5d3269d) and float32 and --bf16 on AVX2
                             # (bc55cfee against 5122cd4): results/study/reproduce.txt
# the study's phases (--blocks patterns; within one, file order; see configs/study.toml): CIFAR-10 long-tailed
# before CIFAR-10 50/class, whose 8,000-step budget the pilot's 16k partners put in doubt (CE 51.11 -> 48.39%
# test error, -2.71 pp [-4.68, -0.75], results/pilot/README.md, 2026-12-06): the order leaves the team about a
# day of the study's running time (results/study/budget.txt) to decide that budget before those blocks start;
# no run changes (the same blocks, keys and numbers, in another order). The baselines of the other settings
# come before it too (phase 2, 2026-12-06, when GenCE's 16k partners put GenCE - CE at 50/class -0.54 pp at 8k
# and +1.61 pp at 16k, both seeds moving against GenCE): about 20 h more to decide; the rest ('*') is last
STUDY_PHASES=('lr_*_fashion_mnist_*,main_*_fashion_mnist_*,lr_lt_cifar10_*,main_lt_cifar10_*'
              'base_*_fashion_mnist_*,base_lt_cifar10_*' '*')
# On a CPU without bf16 kernels (AVX2) the float32 fallback trains ResNet-20 on CIFAR-10 ~3x slower than bf16 on
# the study's AVX-512 CPUs (long-tailed CIFAR-10, two workers: 8.1 s an epoch there, 2026-12-07, against 2.6 s in
# the AVX-512 checkpoint it replaced: training seconds / epochs in the last history entry of the lr 0.025 CE
# checkpoints, results/checkpoints/study/ at 4745df0 and at 70eedc1), and ResNet-8 on Fashion-MNIST only ~1.2x
# slower (0.22 s a step there, two workers: wall_seconds / steps of the 8 AVX2 runs of
# base_b50_fashion_mnist_resnet8 in results/study.sqlite, against budget.txt's 0.191 on AVX-512). There the
# Fashion-MNIST blocks go first, so such a session adds what it does best, and the CIFAR-10 blocks (each block's
# runs) keep to one precision as far as the machines allow; once those are done the CIFAR-10 blocks run there
# too. Only the order changes: no run's key, and which precision a run gets was always its machine's.
STUDY_PHASES_NO_BF16_FIRST='*_fashion_mnist_*'
PILOT_REV=db2ec76            # configs/pilot.toml with the 16,000-step partners (Fashion-MNIST, then CIFAR-10); src as at
                             # 46ce022 and d7964a8 but for changes shown to reproduce study runs bit for bit
# the pilot's phases, in the order its decisions are needed: CIFAR-10's budget, then the 16k partners that
# judge the study's 8k budgets (Fashion-MNIST first), then the rest ('*')
PILOT_PHASES=('pilot_fp32_*' 'pilot_4k_cifar10_*' 'pilot_8k_cifar10_long_tailed_100_500' 'pilot_8k_cifar10_balanced_50'
              'pilot_16k_*' '*')

# Two pilot workers beside the study's two (four one-thread processes on the 2 cores, so each side gets about
# a core while both run, and the study both once the pilot ends): two of the study's settings are complete
# and none of them can be shown converged before the pilot's 16k partners are stored (12 Fashion-MNIST runs of
# 16,000 steps: ~10 worker-h at budget.txt's 0.191 s a step), which one worker in three took sessions to reach
STUDY_WORKERS=2
PILOT_WORKERS=2

REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNS=$(realpath -m "${RUNS:-$REPO/../runs}")
WORKTREES=$(realpath -m "${WORKTREES:-$REPO/../wt}")
DATA=$(realpath -m "${GENCE_DATA:-$REPO/../shared/data}")
AUTOSAVE_LOOP=gence-autosave-loop   # the argument the autosave loop runs under, to find and stop it
VENV=${GENCE_VENV:-${VIRTUAL_ENV:-$REPO/.venv}}

say() { echo "study_background: $*" >&2; }

machine() {    # the kind of CPU, as far as bf16 kernels go: torch's capability and native bf16
  local bf16=no; grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null && bf16=yes
  echo "$("$VENV/bin/python" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())') avx512_bf16=$bf16"
}

worktree() {   # worktree NAME REV: a detached worktree of this clone at REV
  local dir=$WORKTREES/$1
  if [ ! -e "$dir/.git" ] || [ "$(git -C "$dir" rev-parse HEAD)" != "$(git -C "$REPO" rev-parse "$2^{commit}")" ]; then
    rm -rf "$dir"
    git -C "$REPO" worktree prune
    git -C "$REPO" worktree add -f --detach "$dir" "$2" >/dev/null
  fi
  echo "$dir"
}

restore() {    # restore NAME: runs/NAME.sqlite from the committed snapshot when absent, and the checkpoints
  # committed beside it when $MACHINE (set by start) is the kind of CPU that wrote them
  if [ ! -f "$RUNS/$1.sqlite" ]; then
    mkdir -p "$RUNS"
    "$VENV/bin/gence" merge "$RUNS/$1.sqlite" "$REPO/results/$1.sqlite" >&2
    compgen -G "$REPO/results/checkpoints/$1/*.pt" >/dev/null || return 0
    local wrote; wrote=$(cat "$REPO/results/checkpoints/MACHINE" 2>/dev/null || true)
    if [ "$wrote" != "$MACHINE" ]; then
      say "$1: checkpoints of runs in flight left in results/checkpoints: written on '$wrote', this is '$MACHINE'"
    else
      mkdir -p "$RUNS/$1.sqlite.checkpoints"
      cp -n "$REPO/results/checkpoints/$1/"*.pt "$RUNS/$1.sqlite.checkpoints/"
      say "$1: $(ls "$REPO/results/checkpoints/$1/"*.pt | wc -l) checkpoint(s) of runs in flight put back"
    fi
  fi
}

close_fds() {   # in a subshell that starts a runner: close every descriptor above 2, so the runner (which
  # outlives this script) holds no pipe of whoever called it (a caller waiting for EOF would wait for days)
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

loop_name() {  # loop_name NAME: the name NAME's loop of phases runs under (its $0), to find and stop it
  echo "gence-$1-phases $RUNS"
}

running() {    # running NAME: a runner on runs/NAME.sqlite, or NAME's loop of phases between two phases
  pgrep -f -- "--db $RUNS/$1.sqlite" >/dev/null || pgrep -f -- "$(loop_name "$1")" >/dev/null
}

phases() {     # phases NAME CONFIG WORKERS 'EXTRA ARGS' PHASE...: exec NAME's runner over its phases in turn
  # (--blocks patterns), from the current folder, under its loop_name, logging to $RUNS/NAME.log
  local name=$1 config=$2 workers=$3 extra=$4 list; shift 4
  list=$(printf "'%s' " "$@")
  PYTHONPATH=src exec nohup setsid bash -c "for b in $list; do echo \"=== \$(date -u) --blocks \$b\";
     '$VENV/bin/python' -m gence.cli bench $config --blocks \"\$b\" --data-dir '$DATA' --db '$RUNS/$name.sqlite' \
     $extra --no-report --workers $workers --threads 1 --quiet; done" "$(loop_name "$name")" \
     >> "$RUNS/$name.log" 2>&1 < /dev/null
}

study_phases() {   # study_phases KERNELS: the study's --blocks phases, one a line, on a CPU with (1) or
  # without (0) bf16 kernels
  [ "$1" = 1 ] || echo "$STUDY_PHASES_NO_BF16_FIRST"
  printf '%s\n' "${STUDY_PHASES[@]}"
}

pilot_left() {   # how many runs of the pilot's grid are not stored done in its running database ('?': unknown):
  # the grid its runner runs (phases), the config and code of its worktree at PILOT_REV, not this checkout's
  local wt runs
  wt=$(worktree pilot "$PILOT_REV") && runs=$(cd "$wt" && PYTHONPATH=src "$VENV/bin/python" -m gence.cli bench \
    configs/pilot.toml --db "$RUNS/pilot.sqlite" --list 2>/dev/null) || { echo '?'; return; }
  grep -cvE '^done |^[0-9]+ run\(s\)$' <<< "$runs" || true
}

start() {
  [ -x "$VENV/bin/python" ] || { say "no Python at $VENV/bin/python: set GENCE_VENV to the venv gence is installed in"; exit 2; }
  [ -d "$DATA" ] || { say "no data folder $DATA: set GENCE_DATA"; exit 2; }
  not_light || exit 2   # restore reads results/
  MACHINE=$(machine)   # read by restore
  local kernels
  kernels=$("$VENV/bin/python" -c 'from gence.train.loop import cpu_has_bf16_kernels; print(int(cpu_has_bf16_kernels()))')
  restore study
  restore pilot
  if [ "$kernels" != 1 ]; then
    local left pilot; left=$(pilot_left)
    case $left in
      0) pilot="the pilot is complete" ;;
      '?') pilot="the pilot waits for a CPU with them" ;;
      *) pilot="the pilot ($left runs not done) waits for a CPU with them" ;;
    esac
    say "this CPU ($MACHINE) has no bf16 kernels: the study's amp runs train in float32 here, its Fashion-MNIST blocks first; $pilot"
  fi
  if running study; then say "the study is already running"; else
    local wt; wt=$(worktree launch "$STUDY_REV")
    local order; mapfile -t order < <(study_phases "$kernels")
    (close_fds; cd "$wt" || exit 1    # exec: no shell stays behind holding the caller's stdout
     phases study configs/study.toml $STUDY_WORKERS "--reuse '$RUNS/pilot.sqlite'" "${order[@]}") &
    say "study started from $wt ($STUDY_REV), log $RUNS/study.log"
  fi
  if [ "$kernels" != 1 ]; then :
  elif running pilot; then say "the pilot is already running"; else
    local wt; wt=$(worktree pilot "$PILOT_REV")
    (close_fds; cd "$wt" || exit 1
     phases pilot configs/pilot.toml $PILOT_WORKERS "" "${PILOT_PHASES[@]}") &
    say "pilot started from $wt ($PILOT_REV), log $RUNS/pilot.log"
  fi
  # last: autosave exits the script when one is already running (a second start keeps the first deadline)
  [ "${AUTOSAVE:-1}" = 0 ] || autosave 60 "${AUTOSAVE_HANDOVER_AT:-+160 minutes}"
}

status() {
  for name in study pilot; do
    local state="stopped"; running "$name" && state="running"
    local counts="no database"
    [ -f "$RUNS/$name.sqlite" ] && counts=$(db_counts "$RUNS/$name.sqlite")
    echo "$name: $state; $counts ($RUNS/$name.sqlite)"
  done
  local state="stopped"; pgrep -f -- "$AUTOSAVE_LOOP [0-9]+ [0-9]+ $RUNS\$" >/dev/null && state="running"
  echo "autosave: $state ($RUNS/autosave.log)"
}

not_light() {   # results/ is whole: scripts/travel_light.sh off removes committed files for a device call, listed
  # in the file below until 'on' puts them back (a tracked file missing for another reason, a checkpoint
  # handover removed, is a change to commit)
  [ -e "$(git -C "$REPO" rev-parse --path-format=absolute --git-path gence-travel-light)" ] || return 0
  say "results/ is lightened for a device call (committed files are missing from it): run scripts/travel_light.sh on first"
  return 1
}

snapshot() {   # the commands on the third line of each page regenerate it from the committed database; with
  # SNAPSHOT_SRC set (autosave), gence is imported from there instead of the checkout's src/, whose edits in
  # progress then never reach a committed page
  not_light || return 1
  ( [ -z "${SNAPSHOT_SRC:-}" ] || export PYTHONPATH=$SNAPSHOT_SRC
    for name in study pilot; do "$VENV/bin/gence" merge "$REPO/results/$name.sqlite" "$RUNS/$name.sqlite" >&2; done
    cd "$REPO"
    for page in RESULTS.md results/pilot/README.md; do
      local cmd; cmd=$(sed -n 3p "$page" | sed 's/.*regenerate with `\(.*\)`\. Nothing.*/\1/')
      PATH="$VENV/bin:$PATH" bash -c "$cmd" > /dev/null   # its tables are in the page; the log keeps stderr
    done )
  say "snapshot written; commit results/ and RESULTS.md"
}

handover() {    # snapshot, then results/checkpoints/NAME/ = the checkpoints in flight now (stale ones removed)
  snapshot || return 1
  mkdir -p "$REPO/results/checkpoints"; machine > "$REPO/results/checkpoints/MACHINE"
  for name in study pilot; do
    local dst=$REPO/results/checkpoints/$name
    rm -rf "$dst"; mkdir -p "$dst"
    if compgen -G "$RUNS/$name.sqlite.checkpoints/*.pt" >/dev/null; then
      cp "$RUNS/$name.sqlite.checkpoints/"*.pt "$dst/"   # written by rename, so never half a file
    fi
    say "$name: $(find "$dst" -name '*.pt' | wc -l) checkpoint(s) in $dst"
  done
  say "commit results/ (checkpoints included) and RESULTS.md"
}

db_counts() {  # db_counts DB: "N done, M running, ..." for the runs of a results database, read-only
  "$VENV/bin/python" -c "import sqlite3, sys
c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)
print(', '.join(f'{n} {s}' for s, n in c.execute('select status, count(*) from runs group by status order by status')))" "$1"
}

done_counts() {  # "study N, pilot M": runs stored done in the committed snapshots
  local name counts out=()
  for name in study pilot; do
    counts=$(db_counts "$REPO/results/$name.sqlite")
    [[ $counts =~ ([0-9]+)\ done ]] && out+=("$name ${BASH_REMATCH[1]}") || out+=("$name 0")
  done
  local IFS=,; echo "${out[*]}" | sed 's/,/, /g'
}

commit_results() {  # commit_results WHAT: commit results/ and the pages, and nothing else of the index
  local paths=(results RESULTS.md) pages=(RESULTS.md results/pilot/README.md) try
  not_light || return 1
  local message="$1 (autosave): $(done_counts) runs done; $MACHINE"
  if git -C "$REPO" diff --quiet HEAD -- results/study.sqlite results/pilot.sqlite results/checkpoints \
     && [ -z "$(git -C "$REPO" ls-files --others --exclude-standard -- results/checkpoints)" ]; then
    # no run finished: the pages were made from the same runs, so they differ by their date line alone, unless
    # the report's code changed since they were committed (its plots and tables then differ too) or a file was
    # written under results/: those are committed (putting the pages back alone left the working tree with
    # the new code's plots beside the old code's pages until the next run finished)
    if git -C "$REPO" diff --quiet -I '^Generated ' HEAD -- "${pages[@]}" \
       && git -C "$REPO" diff --quiet HEAD -- results ':!results/study.sqlite' ':!results/pilot.sqlite' \
              "${pages[@]/#/:!}" \
       && [ -z "$(git -C "$REPO" ls-files --others --exclude-standard -- results)" ]; then
      git -C "$REPO" checkout -q HEAD -- "${pages[@]}"
      say "$1: no run finished and no checkpoint moved since the last commit: nothing committed"; return 0
    fi
    message="$1 (autosave): no run finished; results/ changed beyond the pages' date line (a report made by newer code, or files written there); $MACHINE"
  fi
  for try in 1 2 3 4 5 6; do   # a git command of the session's may hold the index for a moment
    if git -C "$REPO" add -A -- "${paths[@]}" 2>/dev/null; then
      if git -C "$REPO" diff --cached --quiet -- "${paths[@]}"; then say "$1: nothing new to commit"; return 0; fi
      git -C "$REPO" commit -q -m "$message" -- "${paths[@]}" && return 0
    fi
    sleep 10
  done
  say "$1: commit failed (the index stayed locked?); the files are written, commit them by hand"
}

autosave() {   # autosave [MINUTES] [HANDOVER_AT]: hourly snapshots and the session's handover, committed by
  # a loop in the background, so that a session which ends without warning (two did) loses at most an
  # interval of runs; the pages are made by the code of the commit at HEAD (a worktree), never by edits in
  # progress in the checkout
  local minutes=${1:-60} at=${2:-} deadline=0
  [[ "$minutes" =~ ^[1-9][0-9]*$ ]] || { say "autosave: MINUTES must be a whole number above 0, got '$minutes'"; exit 2; }
  if [ -n "$at" ]; then
    deadline=$(date -d "$at" +%s 2>/dev/null) || { say "autosave: HANDOVER_AT must be a time date -d reads (e.g. 06:05), got '$at'"; exit 2; }
    [ "$deadline" -gt "$(date +%s)" ] || { say "autosave: HANDOVER_AT '$at' ($(date -d "@$deadline")) is not in the future"; exit 2; }
  fi
  if pgrep -f -- "$AUTOSAVE_LOOP [0-9]+ [0-9]+ $RUNS\$" >/dev/null; then say "autosave is already running"; exit 0; fi
  (close_fds; exec nohup setsid bash "$0" "$AUTOSAVE_LOOP" "$minutes" "$deadline" "$RUNS" \
     >> "$RUNS/autosave.log" 2>&1 < /dev/null) &
  say "autosave: a snapshot committed every $minutes min$([ -z "$at" ] || echo ", the handover at $(date -d "@$deadline" '+%F %H:%M %Z')"), log $RUNS/autosave.log"
}

save_and_commit() {   # save_and_commit snapshot|handover: made by the code at HEAD, then committed
  local wt
  if wt=$(worktree autosave HEAD) && SNAPSHOT_SRC=$wt/src "$1"; then commit_results "$1"; else say "$1 failed"; fi
}

autosave_loop() {   # autosave_loop MINUTES DEADLINE (epoch seconds, 0: none)
  local minutes=$1 deadline=$2 next now
  MACHINE=$(machine)
  next=$(( $(date +%s) + minutes * 60 ))
  while :; do
    now=$(date +%s)
    if [ "$deadline" -gt 0 ] && [ "$deadline" -le "$next" ]; then
      [ "$deadline" -le "$now" ] || sleep $(( deadline - now ))
      echo "=== $(date -u) handover"; save_and_commit handover; return 0
    fi
    [ "$next" -le "$now" ] || sleep $(( next - now ))
    echo "=== $(date -u) snapshot"; save_and_commit snapshot
    next=$(( next + minutes * 60 ))
  done
}

stop_autosave() {
  pkill -TERM -f -- "$AUTOSAVE_LOOP [0-9]+ [0-9]+ $RUNS\$" && say "autosave: SIGTERM sent" || true
}

stop() {        # the loops of phases first, or they would start their next phase
  stop_autosave
  for name in pilot study; do pkill -TERM -f -- "$(loop_name $name)" || true; done
  for name in study pilot; do pkill -TERM -f -- "--db $RUNS/$name.sqlite" && say "$name: SIGTERM sent" || true; done
}

# The whole dispatch is one function, called on the script's last line with its exit: bash reads a script as it
# runs it, and a long-running command of this file (the autosave loop) would otherwise go on reading, after it
# returns, at its old offset in a file edited since
main() {
  case "${1:-}" in
    start) start ;;
    status) status ;;
    snapshot) snapshot ;;
    handover) handover ;;
    stop) stop ;;
    stop-autosave) stop_autosave ;;
    autosave) shift; autosave "$@" ;;
    "$AUTOSAVE_LOOP") shift; autosave_loop "$1" "$2" ;;
    _commit_results) MACHINE=$(machine); commit_results "${2:?what}" ;;   # one autosave commit (its test)
    _study_phases) study_phases "${2:?kernels: 0 or 1}" ;;                 # the study's order (its test)
    *) sed -n 2,14p "$0" >&2; exit 2 ;;
  esac
}
main "$@"; exit
