"""Helpers shared by test modules (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import json
import os
import sqlite3
import textwrap
from pathlib import Path


def grid_file(tmp_path: Path, text: str) -> Path:
    """``text`` (dedented) written as tmp_path/grid.toml."""
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(text))
    return path


def stored_rows(db) -> list[dict]:
    """Rows read straight from SQLite, independently of the library."""
    con = sqlite3.connect(db)
    out = [{"key": k, "status": s, "grid": g, "label": lab, "config": json.loads(c),
            "metrics": json.loads(m) if m else None}
           for k, s, g, lab, c, m in con.execute("SELECT key, status, grid, label, config, metrics FROM runs")]
    con.close()
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
