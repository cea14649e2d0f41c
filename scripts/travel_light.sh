#!/usr/bin/env bash
# Lighten the working tree for one call of the device tool, and put it back after. The tool sends every
# tracked file and refuses more than 64 MiB (scripts/travel_size.sh); the committed results databases grow
# by ~0.11 MB a study run, so with the CIFAR-10 tar beside them the GPU slice stops fitting as the study
# goes on. scripts/device_checks.sh reads none of them: it needs the code, configs and the data it is given.
#
#   scripts/travel_light.sh off [CARRY_PATH...]   # remove from the working tree every tracked file under
#                                                 # results/ of 1 MB or more, then print travel_size.sh's sum
#   scripts/travel_light.sh on                    # git checkout HEAD -- the files 'off' removed
#
# Nothing is lost: 'off' removes only files identical to their committed version (git holds every byte) and
# refuses, removing nothing, when one differs (commit it first) or while study_background.sh's autosave loop
# runs (its commit would record the removal: `scripts/study_background.sh stop-autosave`, and after 'on'
# `scripts/study_background.sh autosave 60 HH:MM` again). 'off' lists what it removed in .git/gence-travel-light;
# while that file exists, study_background.sh's start, snapshot, handover and commit refuse to run. The
# runners are not touched: they write ../runs, not results/.
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_BYTES=$((1000 * 1000))
say() { echo "travel_light.sh: $*" >&2; }

MARK=$(git rev-parse --git-path gence-travel-light)   # the list of removed files; never committed, never sent

off() {
  if [ -e "$MARK" ]; then say "the tree is already light ($MARK lists what was removed); 'on' first"; exit 2; fi
  if bash scripts/study_background.sh status 2>/dev/null | grep -q '^autosave: running'; then
    say "study_background.sh's autosave loop is running; its next commit would record the removal. Stop it"
    say "first (scripts/study_background.sh stop-autosave), and start it again after 'on'. Nothing removed."
    exit 2
  fi
  local files=() changed=() f
  while IFS= read -r -d '' f; do
    [ -f "$f" ] && [ "$(stat -c %s "$f")" -ge "$MIN_BYTES" ] || continue
    git diff --quiet HEAD -- "$f" || changed+=("$f")
    files+=("$f")
  done < <(git ls-files -z -- results)
  if [ "${#changed[@]}" -gt 0 ]; then
    say "these differ from HEAD and would not come back from git: ${changed[*]}; commit them first. Nothing removed."
    exit 2
  fi
  { [ "${#files[@]}" -eq 0 ] || printf '%s\0' "${files[@]}"; } > "$MARK"
  [ "${#files[@]}" -eq 0 ] || rm -f -- "${files[@]}"
  say "removed ${#files[@]} committed file(s) from the working tree; 'scripts/travel_light.sh on' puts them back"
  bash scripts/travel_size.sh "$@"
}

on() {
  if [ ! -e "$MARK" ]; then say "nothing to put back ($MARK does not exist: 'off' did not run)"; exit 0; fi
  local files=() f
  mapfile -d '' files < "$MARK"
  [ "${#files[@]}" -eq 0 ] || git checkout -q HEAD -- "${files[@]}"
  for f in "${files[@]}"; do
    [ -f "$f" ] || { say "still missing after git checkout: $f ($MARK kept)"; exit 1; }
  done
  rm -f -- "$MARK"
  say "put back ${#files[@]} file(s) from HEAD"
}

case "${1:-}" in
  off) shift; off "$@" ;;
  on) on ;;
  *) sed -n 2,15p "$0" >&2; exit 2 ;;
esac
