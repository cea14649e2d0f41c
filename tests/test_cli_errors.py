"""What a user meets at the command line: one-line errors naming the flag, the value and what is valid;
exit code 2 for a usage error; no traceback; nothing stored lost."""
from __future__ import annotations


import numpy as np
import pytest

from gence.cli import main
from gence.experiments import load_grid, run_grid

import helpers  # tests/helpers.py
from helpers import make_mnist_like


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:   # argparse's own usage errors and --help
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["--epochs", "-3"], "gence train: --epochs -3: expected an integer > 0"),
    (["--batch-size", "0"], "gence train: --batch-size 0: expected an integer > 0"),
    (["--lr", "-1"], "gence train: --lr -1.0: expected a finite number > 0"),
    (["--momentum", "1.5"], "gence train: --momentum 1.5: expected a number in [0, 1)"),
    (["--epochs", "2", "--warmup-epochs", "5"], "gence train: --warmup-epochs 5.0: expected a number <= --epochs 2"),
    (["--regime", "balanced:0"], "gence train: --regime balanced:0: balanced: n_per_class must be an integer >= 1"),
    (["--ood", "nope"], "gence train: --ood nope: unknown OOD set"),
    (["--ood", "heldout"], "gence train: --ood heldout: needs --classes"),
    (["--threads", "0"], "gence train: --threads 0: expected an integer >= 1"),
])
def test_train_rejects_a_bad_value_naming_its_flag(capsys, argv, expected):
    code, out, err = run_cli(capsys, "train", "--no-progress", *argv)
    assert code == 2
    assert one_line(err).startswith(expected)
    assert "TrainConfig" not in err and out == ""


@pytest.mark.parametrize("argv, expected", [
    (["--dataset", "cifar11"], "gence train: --dataset 'cifar11': unknown dataset; expected one of: "),
    (["--model", "nonet"], "gence train: --model 'nonet': unknown model; expected one of: "),
    (["--loss", "noloss"], "gence train: --loss 'noloss': unknown loss; expected one of: "),
])
def test_train_rejects_an_unknown_name_listing_the_valid_ones(capsys, argv, expected):
    code, _, err = run_cli(capsys, "train", "--no-progress", "--epochs", "1", *argv)
    assert code == 2
    line = one_line(err)
    assert line.startswith(expected)
    valid = {"--dataset": "digits", "--model": "small_cnn", "--loss": "gence"}[argv[0]]
    assert valid in line.split("expected one of: ")[1].split(", ")


def test_train_missing_data_dir_names_the_flag(capsys, monkeypatch):
    monkeypatch.delenv("GENCE_DATA", raising=False)
    code, _, err = run_cli(capsys, "train", "--no-progress", "--dataset", "mnist")
    assert code == 2
    line = one_line(err)
    assert "--data-dir DIR" in line and "GENCE_DATA" in line and "data_dir=" not in line


def test_train_regime_larger_than_the_data_says_which_flag_to_lower(capsys):
    # digits: class 0 has 178 images, 59 of them in the test split -> 119 for training + validation;
    # balanced:100 with 50 validation images per class needs 150.
    code, _, err = run_cli(capsys, "train", "--no-progress", "--regime", "balanced:100")
    assert code == 2
    line = one_line(err)
    assert "--n-val-per-class 50" in line and "lower --n-val-per-class" in line
    assert "n_val_per_class=" not in line


def test_train_help_shows_each_default_once_and_helps_every_optimisation_flag(capsys):
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    assert "(default: None)" not in out
    assert out.count("$GENCE_DATA") == 1
    flat = " ".join(out.split("options:")[1].split())
    for flag, default in [("--lr LR", "0.05"), ("--epochs EPOCHS", "30"), ("--batch-size BATCH_SIZE", "128"),
                          ("--momentum MOMENTUM", "0.9"), ("--weight-decay WEIGHT_DECAY", "0.0005"),
                          ("--warmup-epochs WARMUP_EPOCHS", "1.0"), ("--seed SEED", "0")]:
        help_text = flat.split(f" {flag} ")[1].split(" --")[0]
        assert f"(default: {default})" in help_text, (flag, help_text)


def _results_db(path) -> None:
    """An empty results database, written by the package's own writer."""
    from gence.experiments.db import ResultsDB
    with ResultsDB(path) as db:
        db.conn.execute("SELECT 1")


def test_report_of_a_file_that_is_not_a_database_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notadb.toml").write_text("x = 1\n")
    code, out, err = run_cli(capsys, "report", "notadb.toml")
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("gence report: notadb.toml: not a results database")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notadb.toml"]   # no report/ folder


def test_merge_with_an_input_that_is_not_a_database_creates_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notadb.toml").write_text("x = 1\n")
    code, out, err = run_cli(capsys, "merge", "out.sqlite", "notadb.toml")
    assert code == 2 and out == ""
    assert one_line(err).startswith("gence merge: notadb.toml: not a results database")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notadb.toml"]   # no empty out.sqlite


def test_merge_into_a_file_that_is_not_a_database_leaves_it_untouched(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _results_db(tmp_path / "a.sqlite")
    (tmp_path / "notes.txt").write_text("my notes\n")
    code, _, err = run_cli(capsys, "merge", "notes.txt", "a.sqlite")
    assert code == 2
    assert one_line(err).startswith("gence merge: notes.txt (OUTPUT): not a results database")
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"


def test_merge_of_a_missing_input_names_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "merge", "out.sqlite", "missing.sqlite")
    assert code == 2
    assert one_line(err) == "gence merge: missing.sqlite: does not exist"
    assert list(tmp_path.iterdir()) == []


def test_bench_without_matplotlib_stops_before_it_trains(capsys, tmp_path, monkeypatch):
    """A partial install (no matplotlib) is told so before any run, not after all of them."""
    import sys
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, out, err = run_cli(capsys, "bench", "--db", "runs.sqlite", "--quiet")
    assert code == 1 and out == ""
    line = one_line(err)
    assert "need matplotlib" in line and "pip install matplotlib" in line and "--no-report" in line
    assert list(tmp_path.iterdir()) == []   # nothing trained, no database


def test_pyproject_makes_what_the_main_job_needs_a_base_dependency():
    import tomllib
    from pathlib import Path
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    base = {d.split(";")[0].split(">")[0].split("=")[0].strip().lower() for d in project["dependencies"]}
    assert {"matplotlib", "pillow"} <= base


def test_readme_installs_only_what_can_be_installed():
    """gence is not on PyPI: the README never says `pip install gence[...]`, and every extra its commands
    name exists in pyproject.toml."""
    import re
    import tomllib
    from pathlib import Path
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not re.search(r"pip install ['\"]?gence\b", readme)
    named = re.findall(r"pip install -e ['\"]?\.\[([a-z,]+)\]", readme)
    assert named, "the README's commands install the clone"
    for group in named:
        assert set(group.split(",")) <= set(extras), group
    assert "pip wheel . " in readme   # how to install elsewhere


def test_gence_alone_runs_nothing_and_names_the_main_job(capsys, tmp_path, monkeypatch):
    import gence.bench
    ran = []
    monkeypatch.setattr(gence.bench, "bench_main", lambda args: ran.append(args) or 0)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys)
    assert code == 2 and not ran and list(tmp_path.iterdir()) == []
    assert err.rstrip().splitlines()[-1] == "gence: no COMMAND given (the main job is `gence bench`)"
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "`gence bench` runs the default benchmark" in " ".join(out.split())


def test_gence_loss_arguments_after_weight_are_keyword_only():
    """CrossEntropyLoss's positional order is (weight, size_average, ignore_index, reduce, reduction, ...):
    GenCELoss(None, None, 1) written for it must fail naming the positional arguments, not bind None to
    ignore_index and 1 to reduction."""
    import torch
    from gence import GenCELoss, gen_cross_entropy
    with pytest.raises(TypeError, match="positional argument"):
        GenCELoss(None, None, 1)
    with pytest.raises(TypeError, match="positional argument"):
        gen_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), None, None, 1)
    # weight stays positional, as in CrossEntropyLoss; with generative_weight=0 the loss is cross-entropy
    w = torch.tensor([1.0, 2.0, 0.5])
    logits, target = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]), torch.tensor([0, 1])
    expected = torch.nn.CrossEntropyLoss(w)(logits, target)
    assert torch.allclose(GenCELoss(w, generative_weight=0.0)(logits, target), expected)


def test_properness_writes_its_report_next_to_the_database_not_into_docs(capsys, tmp_path, monkeypatch):
    import shutil
    from pathlib import Path
    stored = Path(__file__).parent.parent / "results" / "properness.sqlite"
    (tmp_path / "store").mkdir()
    shutil.copy(stored, tmp_path / "store" / "p.sqlite")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "properness", "--report-only", "--db", "store/p.sqlite")
    assert code == 0, err
    assert not (tmp_path / "docs").exists()
    page = (tmp_path / "store" / "properness.md").read_text()
    assert "gence properness --db store/p.sqlite" in page
    assert "report written to store/properness.md" in out


def test_properness_report_only_on_an_empty_database_writes_no_page(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _results_db(tmp_path / "empty.sqlite")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(capsys, "properness", "--report-only", "--db", "empty.sqlite")
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("gence properness: --report-only --db empty.sqlite: holds no run of the properness study")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    code, _, err = run_cli(capsys, "properness", "--report-only", "--db", "missing.sqlite")
    assert code == 2 and one_line(err) == "gence properness: --report-only --db missing.sqlite: does not exist"
    assert not (tmp_path / "missing.sqlite").exists()


NOISE_GRID = """
[train]
epochs = 1
[grid]
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["mlp"]
losses = ["ce"]
seeds = [0]
"""


def test_bench_with_nothing_left_to_run_prints_no_empty_bar_and_leaves_no_empty_folder(capsys, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text(NOISE_GRID)
    for _ in range(2):
        code, _, err = run_cli(capsys, "bench", "g.toml", "--db", "r.sqlite", "--no-report", "--workers", "1")
        assert code == 0, err
    assert "0run" not in err and "?run/s" not in err
    assert "1 already done" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml", "r.sqlite"]


def _warns(config):
    import warnings
    warnings.warn("the optimum reached the bound", RuntimeWarning)
    return {"m": 1.0}, None


def test_a_warning_of_a_run_is_one_line_naming_the_run(capsys, tmp_path):
    from gence.experiments.grid import parse_grid
    from gence.experiments.runner import describe, run_grid
    grid = parse_grid(NOISE_GRID)
    summary = run_grid(grid.runs, tmp_path / "r.sqlite", run_fn=_warns, progress=True)
    assert summary.done == 1
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if "optimum" in line]
    assert lines == [f"warning: {describe(grid.runs[0])}: RuntimeWarning: the optimum reached the bound"]
    assert "warnings.warn(" not in err   # no echoed source line


# ------------------------------------------------------------------------ gence bench without a data directory
def _bench_grid(tmp_path, dataset: str, ood: str = '["gaussian_noise"]', block: str = "x"):
    """A one-run grid (1 epoch, 5 labels per class, an MLP): seconds when it trains."""
    return helpers.grid_file(tmp_path, f"""
        [train]
        epochs = 1
        batch_size = 32
        n_val_per_class = 2
        ood = {ood}

        [[grid]]
        name = "{block}"
        datasets = [{dataset}]
        regimes = ["balanced:5"]
        models = [{{ name = "mlp", params = {{ hidden = [16] }} }}]
        losses = ["ce"]
        seeds = [0]
        """)


def _no_run_stored(db, before: list[dict]) -> bool:
    return (not db.exists() and before == []) or helpers.stored_rows(db) == before


def test_bench_without_a_data_directory_stops_before_anything_is_stored(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("GENCE_DATA", raising=False)
    db = tmp_path / "r.sqlite"
    grid = _bench_grid(tmp_path, '"fashion_mnist"')
    code, out, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--quiet", "--no-report")
    assert code == 2 and out == ""
    assert one_line(err) == ("gence bench: --data-dir: dataset 'fashion_mnist' (grid block 'x') needs a data "
                             "directory; pass --data-dir DIR or set GENCE_DATA")
    assert not db.exists()          # nothing claimed, no failed rows that the next call would skip
    # an OOD set read from files counts too; a database already there is left as it was
    run_grid(load_grid(_bench_grid(tmp_path, '"digits"', ood='["gaussian_noise"]', block="kept")).runs, db,
             run_fn=lambda config: ({"test/error": 0.5}, {}), progress=False)
    before = helpers.stored_rows(db)
    grid = _bench_grid(tmp_path, '"digits"', ood='["uniform_noise", "mnist"]', block="with-ood")
    code, _, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--quiet", "--no-report")
    assert code == 2
    assert one_line(err) == ("gence bench: --data-dir: OOD set 'mnist' of dataset 'digits' (grid block "
                             "'with-ood') needs a data directory; pass --data-dir DIR or set GENCE_DATA")
    assert len(before) == 1 and _no_run_stored(db, before)
    # --list still lists, with the same line as a warning
    code, out, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--list")
    assert code == 0 and "todo" in out and "1 run(s)" in out
    assert one_line(err) == ("gence bench: warning: --data-dir: OOD set 'mnist' of dataset 'digits' (grid block "
                             "'with-ood') needs a data directory; pass --data-dir DIR or set GENCE_DATA")
    assert _no_run_stored(db, before)
    # a grid whose data needs no directory (digits is in the package, the noise sets are made) still runs
    fresh = tmp_path / "digits.sqlite"
    grid = _bench_grid(tmp_path, '"digits"', ood='["gaussian_noise", "uniform_noise"]')
    code, _, err = run_cli(capsys, "bench", str(grid), "--db", str(fresh), "--quiet", "--no-report",
                           "--workers", "1", "--threads", "1")
    assert code == 0, err
    rows = helpers.stored_rows(fresh)
    assert [(r["status"], r["config"]["dataset"], r["config"]["ood"]) for r in rows] == [
        ("done", "digits", ["gaussian_noise", "uniform_noise"])]


def test_bench_with_a_data_directory_that_does_not_exist_stops_before_anything_is_stored(capsys, tmp_path):
    db = tmp_path / "r.sqlite"
    grid = _bench_grid(tmp_path, '"fashion_mnist"')
    missing = tmp_path / "no-such-folder"
    code, out, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--data-dir", str(missing), "--quiet",
                             "--no-report")
    assert code == 2 and out == ""
    assert one_line(err) == (f"gence bench: --data-dir {missing}: no such file or directory; expected the folder "
                             f"that holds the datasets (or one dataset's archive)")
    assert not db.exists()          # no runs stored failed for want of files, to be skipped by the next call


def test_bench_without_a_data_directory_needs_none_for_runs_it_will_not_run(capsys, tmp_path, monkeypatch):
    """Runs stored done (or failed, without --retry-failed) are skipped, so they need no data directory."""
    monkeypatch.delenv("GENCE_DATA", raising=False)
    db = tmp_path / "r.sqlite"
    grid = _bench_grid(tmp_path, '"mnist"', block="m")

    def fails(config):
        raise RuntimeError("fake failure")

    run_grid(load_grid(grid).runs, db, run_fn=fails, progress=False)
    before = helpers.stored_rows(db)
    assert [r["status"] for r in before] == ["failed"]
    code, _, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--quiet", "--no-report")
    assert code == 0 and "1 failed earlier and skipped" in err
    code, _, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--quiet", "--no-report", "--retry-failed")
    assert code == 2
    assert one_line(err) == ("gence bench: --data-dir: dataset 'mnist' (grid block 'm') needs a data directory; "
                             "pass --data-dir DIR or set GENCE_DATA")
    assert helpers.stored_rows(db) == before


def test_bench_user_dataset_without_its_files_stops_naming_the_flag_not_the_python_argument(capsys, tmp_path,
                                                                                         monkeypatch):
    """A user's dataset without its files: the loader's own error, found before anything is stored, with
    --data-dir named as gence train names it."""
    monkeypatch.delenv("GENCE_DATA", raising=False)
    db = tmp_path / "r.sqlite"
    grid = _bench_grid(tmp_path, '{ name = "folder" }', ood="[]")
    code, _, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--quiet", "--no-report", "--workers", "1")
    assert code == 2 and not db.exists()
    assert one_line(err) == ("gence bench: grid block 'x': dataset 'folder' needs its files: pass root=PATH (a "
                             "dataset param), --data-dir DIR or set GENCE_DATA")
    assert "data_dir=" not in err and "Traceback" not in err


def test_bench_failure_lines_name_the_flag_not_the_python_argument(capsys, tmp_path, monkeypatch):
    """A run failing with a message written for the Python API: the line the runner prints names the flag."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fails_run.py").write_text(
        "def run(config):\n    raise ValueError('the files moved: pass data_dir=PATH or set GENCE_DATA')\n")
    grid = _bench_grid(tmp_path, '"digits"', ood="[]")
    code, _, err = run_cli(capsys, "bench", str(grid), "--db", str(tmp_path / "r.sqlite"), "--quiet", "--no-report",
                           "--workers", "1", "--run-fn", "fails_run:run")
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert failed == ["failed: digits balanced:5 mlp ce seed=0: ValueError: the files moved: pass --data-dir DIR or "
                      "set GENCE_DATA"]


def test_bench_with_a_data_directory_without_the_files_stops_before_anything_is_stored(capsys, tmp_path):
    """--data-dir exists but holds no Fashion-MNIST (or no MNIST, an OOD set): the loader's search, found before
    any run is claimed; with the files there (tiny IDX files written here) the check passes."""
    empty = tmp_path / "empty"
    empty.mkdir()
    db = tmp_path / "r.sqlite"
    grid = _bench_grid(tmp_path, '"fashion_mnist"', ood="[]")
    code, out, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--data-dir", str(empty), "--quiet",
                             "--no-report")
    assert code == 2 and out == "" and not db.exists()
    assert one_line(err).startswith(f"gence bench: --data-dir {empty}: grid block 'x': dataset 'fashion_mnist': no "
                                    f"files found. Searched {empty / 'fashion_mnist'}, ")
    assert one_line(err).endswith("expected the IDX files train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                                  "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")
    rng = np.random.default_rng(0)
    make_mnist_like(empty / "fashion_mnist", rng, gz=True)
    grid = _bench_grid(tmp_path, '"fashion_mnist"', ood='["gaussian_noise", "mnist"]', block="with-ood")
    code, out, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--data-dir", str(empty), "--quiet",
                             "--no-report")
    assert code == 2 and not db.exists()
    assert one_line(err).startswith(f"gence bench: --data-dir {empty}: grid block 'with-ood', OOD set 'mnist' of "
                                    f"dataset 'fashion_mnist': dataset 'mnist': no files found.")
    make_mnist_like(empty / "mnist", rng, gz=False)
    code, out, err = run_cli(capsys, "bench", str(grid), "--db", str(db), "--data-dir", str(empty), "--list")
    assert code == 0 and "warning" not in err and "1 run(s)" in out
