"""Re-run a stored run from its config and say whether it reproduces bit for bit.

    python scripts/reproduce_run.py results/archive/short_budget/cpu_study.sqlite --loss ce --data-dir ../shared/data
    python scripts/reproduce_run.py results/archive/short_budget/cpu_study.sqlite --key bc55cfee --baseline 59f2b61

Picks the stored 'done' run (by key prefix, or the fastest one matching --loss/--grid) and trains it
again with the torch thread count it was stored with, in this checkout's code. Without --baseline it
compares with the stored metrics and history; that is only meaningful on the CPU model (or GPU) that
stored the run: oneDNN picks kernels by instruction set, so an AMD and an Intel CPU differ in the last
bits from the first step on. With --baseline REV it also trains the run with the code of git revision REV
(a temporary worktree) on this machine and compares the two: that is the check that a change left the
numbers alone. Exact float comparison, NaN equal to NaN, timings ignored. Exit 0 when they match.

With --bf16 (and --baseline) both sides train the run with amp on in bf16 autocast, even on a CPU whose
oneDNN has no bf16 kernels, where the loop would train in float32 (gence.train.loop.amp_dtype): the check,
on any CPU, that a change left the bf16 path alone (the path of the study's CPUs). The key is then not
the stored run's, so nothing is compared with the store; slow where the kernels are missing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _strip_history(history: list[dict], like: list[dict] | None = None) -> list[dict]:
    """Timings dropped; with ``like``, only the keys its entries have (what a newer loop adds is not a change)."""
    out = [{k: v for k, v in h.items() if "seconds" not in k} for h in history]
    if like is not None and len(like) == len(out):
        out = [{k: v for k, v in h.items() if k in ref} for h, ref in zip(out, like)]
    return out


def _train(config: dict, threads: int | None, bf16: bool = False) -> dict:
    import torch

    import gence.train.loop as loop
    from gence.train import TrainConfig, fit

    if threads:
        torch.set_num_threads(threads)
    if bf16:   # code older than the float32 fallback always autocast to bf16 on a CPU
        config = {**config, "amp": True}
        if hasattr(loop, "cpu_has_bf16_kernels"):
            loop.cpu_has_bf16_kernels = lambda: True
    result = fit(TrainConfig.from_dict(config))
    return {"metrics": result.metrics, "history": result.extras.get("history", [])}


def _compare(name_a: str, a: dict, name_b: str, b: dict) -> bool:
    skip = lambda k: k.endswith("seconds") or k == "train/images_per_second"  # noqa: E731
    # Metrics the older side lacks (added to the loop since) are listed, not counted as differences.
    added = sorted(set(b["metrics"]) - set(a["metrics"]))
    differ = [k for k in sorted(a["metrics"])
              if not skip(k) and not _same(a["metrics"].get(k), b["metrics"].get(k))]
    for k in differ[:20]:
        print(f"  {k}: {name_a} {a['metrics'].get(k)!r}  {name_b} {b['metrics'].get(k)!r}")
    history_same = _strip_history(a["history"]) == _strip_history(b["history"], like=_strip_history(a["history"]))
    if added:
        print(f"  ({name_b} adds {len(added)} metrics: {', '.join(added)})")
    if differ or not history_same:
        print(f"{name_a} vs {name_b}: DIFFERS in {len(differ)} metrics; history "
              f"{'same' if history_same else 'differs'}")
        return False
    print(f"{name_a} vs {name_b}: REPRODUCED bit for bit ({len(a['metrics'])} metrics and the history)")
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("--key", help="run key or a prefix of it")
    parser.add_argument("--loss", default="ce", help="pick the fastest stored run of this loss (default ce)")
    parser.add_argument("--grid", help="and of this grid block")
    parser.add_argument("--data-dir")
    parser.add_argument("--baseline", metavar="REV", help="also train it with the code of git revision REV here")
    parser.add_argument("--bf16", action="store_true",
                        help="with --baseline: both sides in bf16 autocast, on any CPU (not compared with the store)")
    parser.add_argument("--emit-json", metavar="PATH", help=argparse.SUPPRESS)  # used for --baseline
    args = parser.parse_args(argv)

    if args.bf16 and not (args.baseline or args.emit_json):
        print("reproduce_run: --bf16 needs --baseline REV (a bf16 run of a stored config has no stored twin)",
              file=sys.stderr)
        return 2
    if not Path(args.db).is_file():
        print(f"reproduce_run: {args.db}: no such results database", file=sys.stderr)
        return 2
    con = sqlite3.connect(args.db)
    con.row_factory = sqlite3.Row
    if args.key:
        row = con.execute("select * from runs where key like ? and status='done'", (args.key + "%",)).fetchone()
    else:
        query, params = "select * from runs where status='done' and loss=?", [args.loss]
        if args.grid:
            query += " and grid=?"
            params.append(args.grid)
        row = con.execute(query + " order by wall_seconds limit 1", params).fetchone()
    if row is None:
        print("no matching stored run", file=sys.stderr)
        return 2
    config = json.loads(row["config"])
    if args.data_dir:
        config["data_dir"] = args.data_dir
    found = re.search(r"torch threads (\d+)", row["hardware"] or "")
    threads = int(found.group(1)) if found else None
    if args.emit_json:
        Path(args.emit_json).write_text(json.dumps(_train(config, threads, args.bf16)))
        return 0

    print(f"run {row['key'][:12]} {row['label']} {row['dataset']} {row['regime']} {row['model']} seed {row['seed']}"
          f" (stored by gence {row['gence_version']}, torch {row['torch_version']}, {row['hardware']})")
    now = _train(config, threads, args.bf16)
    ok = True
    if not args.bf16:
        stored = {"metrics": json.loads(row["metrics"]),
                  "history": json.loads(row["extras"] or "{}").get("history", [])}
        ok = _compare("stored", stored, "this checkout", now)
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), args.baseline],
                           check=True)
            try:
                out = Path(tmp) / "baseline.json"
                env = dict(os.environ, PYTHONPATH=str(tree / "src"))
                cmd = [sys.executable, str(Path(__file__).resolve()), str(Path(args.db).resolve()),
                       "--key", row["key"], "--emit-json", str(out)]
                if args.data_dir:
                    cmd += ["--data-dir", args.data_dir]
                if args.bf16:
                    cmd += ["--bf16"]
                subprocess.run(cmd, check=True, env=env, cwd=tree, stderr=subprocess.DEVNULL)
                ok = _compare(f"baseline {args.baseline}", json.loads(out.read_text()), "this checkout", now)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
