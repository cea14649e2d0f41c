"""The first lines of every benchmark's output: the command that made it, when, at which commit, on what.

Stored benchmark outputs (``results/benchmarks/*.txt``) are the script's stdout, untouched; these lines
are what lets a reader re-run it and compare.
"""
from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys


def provenance_lines(hardware: str) -> list[str]:
    """``# command: ...``, ``# measured: <UTC time>, commit <sha>[ (+ uncommitted changes)]`` and
    ``# hardware: ...``. The commit is ``unknown`` outside a git checkout; "uncommitted changes" means
    changes to the code (``src/``, ``benchmarks/``, ``pyproject.toml``), not to stored results."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.relpath(os.path.abspath(sys.argv[0]), os.path.dirname(here))
    command = " ".join(["python", shlex.quote(script), *map(shlex.quote, sys.argv[1:])])
    try:
        git = lambda *a: subprocess.run(["git", "-C", here, *a], capture_output=True, text=True, timeout=10)
        sha = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
        # Only code counts: a stored result being rewritten does not change what is measured.
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/src", ":/benchmarks", ":/pyproject.toml"
                    ).stdout.strip()
        commit = f"{sha} (+ uncommitted changes)" if dirty and sha != "unknown" else sha
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [f"# command: {command}", f"# measured: {when}, commit {commit}", f"# hardware: {hardware}"]


def print_provenance(hardware: str) -> None:
    print("\n".join(provenance_lines(hardware)), flush=True)
