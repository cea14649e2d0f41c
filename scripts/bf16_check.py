"""Does bf16 autocast change CE's accuracy? The pilot's float32 twins against their bf16 runs, by the rule of
configs/study.toml's header (written before the twins ran).

    python scripts/bf16_check.py [results/pilot.sqlite] > results/study/bf16.txt

Pairs: every done run labelled ``ce_fp32`` (amp = false) with the ``ce`` run (amp = true) of the same dataset,
regime, model, epochs and seed. Per dataset: the mean paired difference float32 - bf16 in test error with its
Student-t 95% interval over the pairs; bf16 is kept when the interval contains 0 and |mean| < 1 pp. Also the
wall-time ratio float32 / bf16 of each pair: it depends on what else ran beside each run; the speed of the two
precisions measured side by side is benchmarks/train_throughput.py's.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import defaultdict

import numpy as np
from scipy import stats

MARGIN_PP = 1.0


def pairs(db: str) -> dict[str, list[tuple[str, float, float, float]]]:
    """dataset -> [(what, fp32 error %, bf16 error %, wall-time ratio)]."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    runs = {}
    for label, config, metrics, wall in con.execute(
            "select label, config, metrics, wall_seconds from runs where status='done' and label in ('ce', 'ce_fp32')"):
        c = json.loads(config)
        ident = (c["dataset"], c["regime"], c["model"], c.get("epochs"), c["seed"])
        runs[(label, ident)] = (100 * json.loads(metrics)["test/error"], wall)
    con.close()
    out = defaultdict(list)
    for (label, ident), (err32, wall32) in sorted(runs.items(), key=str):
        if label != "ce_fp32" or ("ce", ident) not in runs:
            continue
        err16, wall16 = runs[("ce", ident)]
        dataset, regime, model, epochs, seed = ident
        out[dataset].append((f"{regime} {model} {epochs} epochs seed {seed}", err32, err16, wall32 / wall16))
    return out


def main(argv: list[str]) -> int:
    db = argv[0] if argv else "results/pilot.sqlite"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"$ python scripts/bf16_check.py {' '.join(argv)}".rstrip() + f"   (commit {commit or 'unknown'}; {db})")
    found = pairs(db)
    if not found:
        print("no float32 twin with its bf16 run yet")
    for dataset, rows in found.items():
        print(f"{dataset}:")
        for what, e32, e16, ratio in rows:
            print(f"  {what}: float32 {e32:.2f}%, bf16 {e16:.2f}%, diff {e32 - e16:+.2f} pp; wall time float32/bf16 "
                  f"{ratio:.2f}x")
        d = np.array([e32 - e16 for _, e32, e16, _ in rows])
        if len(d) >= 2:
            t = stats.ttest_1samp(d, 0.0)
            ci = t.confidence_interval()
            keep = ci.low <= 0 <= ci.high and abs(d.mean()) < MARGIN_PP
            print(f"  mean float32 - bf16 {d.mean():+.2f} pp [{ci.low:+.2f}, {ci.high:+.2f}] (t 95%, {len(d)} pairs); "
                  f"rule (interval contains 0 and |mean| < {MARGIN_PP:g} pp): "
                  + ("bf16 KEPT" if keep else "bf16 REJECTED: run this dataset in float32"))
        else:
            print(f"  {len(d)} pair: too few for the rule's interval")
        print(f"  median wall-time ratio float32/bf16: {np.median([r for *_, r in rows]):.2f}x (as the runs ran, "
              "beside other work; benchmarks/train_throughput.py times both side by side)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
