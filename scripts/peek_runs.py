"""Print a few metrics of every run in a results database (a quick look while a grid runs).

    python scripts/peek_runs.py runs/pilot_pre.sqlite [metric ...]
"""
import json
import sqlite3
import sys
from pathlib import Path

if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
    print(__doc__)
    sys.exit(0)
if len(sys.argv) < 2 or not Path(sys.argv[1]).is_file():   # sqlite3.connect would create the file
    sys.exit(f"peek_runs.py: expected a results database file as the first argument, got "
             f"{sys.argv[1] if len(sys.argv) > 1 else 'nothing'!r}\n{__doc__}")
db, *metrics = sys.argv[1:]
metrics = metrics or ["test/error", "val/error", "train/loss", "test/ece", "test_ts/ece"]
con = sqlite3.connect(db)
print("grid", "label", "regime", "model", "seed", "epochs", "amp", "status", "wall_s", *metrics, sep="\t")
for grid, label, regime, model, seed, status, wall, config, m in con.execute(
        "select grid, label, regime, model, seed, status, wall_seconds, config, metrics from runs order by grid, regime, label"):
    config, m = json.loads(config), json.loads(m or "{}")
    print(grid, label, regime, model, seed, config.get("epochs"), config.get("amp"), status,
          round(wall or 0), *[f"{m[k]:.4f}" if isinstance(m.get(k), float) else m.get(k) for k in metrics], sep="\t")
