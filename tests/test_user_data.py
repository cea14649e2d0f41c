"""A user's own data: the ``folder``, ``arrays`` and ``csv`` datasets on files written here, their errors,
augmentation modes, OOD sets from a folder, and a run end to end for each.

Expected values come from what the test wrote (pixels, labels, counts), computed here with numpy/PIL.
"""
import json
import math
import re
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import gence.data as gd
from gence.experiments import parse_grid
from gence.train import TrainConfig, fit
from gence.train.cli import config_from_args


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GENCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENCE_DATA", raising=False)


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def rgb_tree(root, rng, counts, size=8, layout="split"):
    """root/{train,test}/<class>/<i>.png (layout "split") or root/<class>/<i>.png ("single") with random
    RGB pixels; returns {(part, class): [arrays in file-name order]}."""
    written = {}
    for part, per_class in counts.items():
        for cls, n in per_class.items():
            for i in range(n):
                a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                folder = root / part / cls if layout == "split" else root / cls
                write_png(folder / f"{i:03d}.png", a)
                written.setdefault((part, cls), []).append(a)
    return written


# ------------------------------------------------------------------------------------------------
# folder


def test_folder_split_tree_classes_counts_pixels_and_train_statistics(tmp_path):
    rng = np.random.default_rng(0)
    counts = {"train": {"cat": 5, "ant": 3, "bee": 4}, "test": {"cat": 2, "ant": 2, "bee": 1}}
    written = rgb_tree(tmp_path / "tree", rng, counts)
    (tmp_path / "tree" / "train" / "ant" / "notes.txt").write_text("not an image")  # ignored
    ds = gd.load_dataset("folder", tmp_path / "tree")
    assert ds.classes == ["ant", "bee", "cat"]  # sorted folder names
    assert ds.image_shape == (3, 8, 8) and ds.train_x.dtype == torch.uint8
    assert torch.bincount(ds.train_y).tolist() == [3, 4, 5]
    assert torch.bincount(ds.test_y).tolist() == [2, 1, 2]
    expected_train = np.stack([a for c in ds.classes for a in written[("train", c)]]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(ds.train_x.numpy(), expected_train)  # PNG is lossless
    expected_test = np.stack([a for c in ds.classes for a in written[("test", c)]]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(ds.test_x.numpy(), expected_test)
    # normalisation statistics from the training split only, per channel, on the [0, 1] scale
    flat = expected_train.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    np.testing.assert_allclose(ds.mean.numpy(), flat.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(ds.std.numpy(), flat.std(axis=1), rtol=1e-6)
    # the same through the "root" parameter, and a second load from the cache gives the same arrays
    again = gd.load_dataset("folder", root=str(tmp_path / "tree"))
    assert torch.equal(again.train_x, ds.train_x) and again.classes == ds.classes
    assert any((tmp_path / "cache").iterdir())


def test_folder_two_sizes_resized_gray_detected_and_rgb_forced(tmp_path):
    root = tmp_path / "gray"
    # solid gray images of two sizes: a resize of a constant image is that constant
    values = {("train", "a"): [10, 20], ("train", "b"): [200, 210], ("test", "a"): [30], ("test", "b"): [220]}
    for (part, cls), vals in values.items():
        for i, v in enumerate(vals):
            shape = (12, 12) if i % 2 == 0 else (6, 10)
            write_png(root / part / cls / f"{i}.png", np.full(shape, v, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"differ in size.*\.png is 12x12.*\.png is 6x10.*size="):
        gd.load_dataset("folder", root)
    ds = gd.load_dataset("folder", root, size=4)
    assert ds.image_shape == (1, 4, 4)  # every file is single-channel: gray
    assert ds.train_x[:, 0, 0, 0].tolist() == [10, 20, 200, 210] and ds.test_x[:, 0, 0, 0].tolist() == [30, 220]
    assert bool((ds.train_x == ds.train_x[:, :, :1, :1]).all())  # still constant
    rect = gd.load_dataset("folder", root, size=[3, 5])
    assert rect.image_shape == (1, 3, 5)
    rgb = gd.load_dataset("folder", root, size=4, mode="rgb")
    assert rgb.image_shape == (3, 4, 4) and torch.equal(rgb.train_x[:, 0], rgb.train_x[:, 2])
    with pytest.raises(ValueError, match=r"size=0.*\[H, W\]"):
        gd.load_dataset("folder", root, size=0)
    with pytest.raises(ValueError, match=r"mode='grey'"):
        gd.load_dataset("folder", root, size=4, mode="grey")


def test_folder_single_tree_follows_the_stated_seeded_split_rule(tmp_path):
    rng = np.random.default_rng(1)
    counts = {"x": {"dog": 7, "cow": 3, "emu": 10}}
    written = rgb_tree(tmp_path / "one", rng, counts, size=4, layout="single")
    ds = gd.load_dataset("folder", tmp_path / "one", test_fraction=0.25, split_seed=3)
    assert ds.classes == ["cow", "dog", "emu"]
    # The rule, by hand: per class in class order, one generator, first n_test of a permutation to test.
    gen = np.random.default_rng(3)
    exp_train, exp_test = [], []
    for cls in ds.classes:
        items = written[("x", cls)]
        n = len(items)
        n_test = min(n - 1, max(1, math.floor(0.25 * n + 0.5)))  # 3 -> 1, 7 -> 2, 10 -> 3
        perm = gen.permutation(n)
        test_set = set(perm[:n_test].tolist())
        exp_test += [items[i] for i in range(n) if i in test_set]
        exp_train += [items[i] for i in range(n) if i not in test_set]
    assert torch.bincount(ds.test_y).tolist() == [1, 2, 3]
    assert torch.bincount(ds.train_y).tolist() == [2, 5, 7]
    np.testing.assert_array_equal(ds.test_x.numpy(), np.stack(exp_test).transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.train_x.numpy(), np.stack(exp_train).transpose(0, 3, 1, 2))
    other = gd.load_dataset("folder", tmp_path / "one", test_fraction=0.25, split_seed=4)
    assert not torch.equal(other.test_x, ds.test_x)  # another seed, another split
    with pytest.raises(ValueError, match=r"test_fraction=1.5"):
        gd.load_dataset("folder", tmp_path / "one", test_fraction=1.5)


def test_folder_bad_trees_name_the_file_or_folder(tmp_path):
    rng = np.random.default_rng(2)
    counts = {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}}
    rgb_tree(tmp_path / "t", rng, counts, size=4)
    (tmp_path / "t" / "train" / "c").mkdir()
    empty = tmp_path / "t" / "train" / "c"
    with pytest.raises(ValueError, match=re.escape(f"{empty}: empty class folder")):
        gd.load_dataset("folder", tmp_path / "t")
    empty.rmdir()
    broken = tmp_path / "t" / "test" / "b" / "broken.png"
    broken.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=re.escape(f"{broken}: cannot read this image file")):
        gd.load_dataset("folder", tmp_path / "t")
    broken.unlink()
    (tmp_path / "t" / "test" / "b" / "000.png").rename(tmp_path / "t" / "test" / "b.png")
    (tmp_path / "t" / "test" / "b").rmdir()
    with pytest.raises(ValueError, match=r"different class folders.*only in train/: \['b'\]"):
        gd.load_dataset("folder", tmp_path / "t")
    write_png(tmp_path / "half" / "train" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"has train/ but no test/"):
        gd.load_dataset("folder", tmp_path / "half")
    with pytest.raises(ValueError, match=r"'folder' needs its files.*root=PATH"):
        gd.load_dataset("folder")
    with pytest.raises(ValueError, match=r"not a folder"):
        gd.load_dataset("folder", tmp_path / "nowhere")


def test_folder_as_ood_set_and_user_data_is_no_ood_name(tmp_path):
    # an RGB folder of solid colours as OOD for the 8x8 gray digits: luma, resized
    colours = [(255, 0, 0), (0, 255, 0), (10, 20, 30)]
    for i, c in enumerate(colours):
        write_png(tmp_path / "ood" / "train" / "k" / f"{i}.png", np.full((16, 16, 3), c, np.uint8))
        write_png(tmp_path / "ood" / "test" / "k" / f"{i}.png", np.full((16, 16, 3), c, np.uint8))
    digits = gd.load_dataset("digits")
    assert gd.is_ood_name(f"folder:{tmp_path / 'ood'}") and not gd.is_ood_name("folder:")
    assert "folder" not in gd.ood_names() and not gd.is_ood_name("folder")
    x = gd.load_ood(f"folder:{tmp_path / 'ood'}", digits, n=10)
    assert x.shape == (3, 1, 8, 8)
    luma = [round(0.299 * r + 0.587 * g + 0.114 * b) for r, g, b in colours]
    assert x[:, 0, 0, 0].tolist() == luma
    assert bool((x == x[:, :, :1, :1]).all())


# ------------------------------------------------------------------------------------------------
# arrays


def test_arrays_images_channels_last_and_string_labels(tmp_path):
    rng = np.random.default_rng(3)
    tx = rng.integers(0, 256, (9, 5, 6, 3), dtype=np.uint8)  # (N, H, W, C)
    sx = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    ty = np.array(["zeta", "alpha", "mid"] * 3)
    sy = np.array(["mid", "alpha", "zeta", "zeta"])
    np.savez(tmp_path / "mine.npz", x_train=tx, y_train=ty, x_test=sx, y_test=sy)
    ds = gd.load_dataset("arrays", tmp_path)  # the folder's only .npz
    assert ds.classes == ["alpha", "mid", "zeta"] and ds.image_shape == (3, 5, 6)
    np.testing.assert_array_equal(ds.train_x.numpy(), tx.transpose(0, 3, 1, 2))
    assert ds.train_y.tolist() == [{"alpha": 0, "mid": 1, "zeta": 2}[v] for v in ty]
    assert ds.test_y.tolist() == [1, 0, 2, 2]
    assert gd.resolve_augment(None, ds) == gd.Crop(2, False)  # RGB smaller than 32 px: crop only
    # a classes array names integer labels; a gray (N, H, W) array gets one channel
    np.savez(tmp_path / "g.npz", x_train=tx[..., 0], y_train=np.arange(9) % 2, x_test=sx[..., 0],
             y_test=np.array([1, 0, 1, 1]), classes=np.array(["no", "yes"]))
    g = gd.load_dataset("arrays", path=str(tmp_path / "g.npz"))
    assert g.classes == ["no", "yes"] and g.image_shape == (1, 5, 6) and g.test_y.tolist() == [1, 0, 1, 1]
    with pytest.raises(ValueError, match=r"holds 2 \.npz files"):
        gd.load_dataset("arrays", tmp_path)


def test_arrays_errors_name_the_file_and_the_array(tmp_path):
    f = tmp_path / "bad.npz"
    np.savez(f, x_train=np.zeros((3, 4, 4), np.uint8), y_train=np.zeros(3))
    with pytest.raises(ValueError, match=re.escape(f"{f}: no x_test, y_test")):
        gd.load_dataset("arrays", f)
    np.savez(f, x_train=np.zeros((3, 4, 4)), y_train=np.zeros(3), x_test=np.zeros((1, 4, 4)), y_test=np.zeros(1))
    with pytest.raises(ValueError, match=r"x_train: images must be uint8"):
        gd.load_dataset("arrays", f)
    np.savez(f, x_train=np.zeros((3, 2)), y_train=np.zeros(2), x_test=np.zeros((1, 2)), y_test=np.zeros(1))
    with pytest.raises(ValueError, match=r"x_train \(3, 2\) and y_train \(2,\) do not match"):
        gd.load_dataset("arrays", f)
    np.savez(f, x_train=np.zeros((2, 2)), y_train=np.array([0, 0]), x_test=np.zeros((1, 2)), y_test=np.array([5]))
    with pytest.raises(ValueError, match=r"classes \['5'\] have no training item"):
        gd.load_dataset("arrays", f)


def test_arrays_features_are_feature_data(tmp_path):
    rng = np.random.default_rng(4)
    tx = rng.normal(size=(12, 3))
    np.savez(tmp_path / "f.npz", x_train=tx, y_train=np.arange(12) % 3 + 1, x_test=tx[:4], y_test=[1, 2, 3, 3])
    ds = gd.load_dataset("arrays", tmp_path / "f.npz")
    assert not ds.is_image and ds.train_x.dtype == torch.float32
    assert ds.classes == ["1", "2", "3"] and ds.train_y.tolist() == (np.arange(12) % 3).tolist()
    np.testing.assert_allclose(ds.mean.numpy(), tx.mean(axis=0), rtol=1e-5)
    assert gd.resolve_augment(None, ds) is None
    with pytest.raises(ValueError, match=r"augment='crop'.*feature vectors"):
        gd.resolve_augment("crop", ds)


# ------------------------------------------------------------------------------------------------
# csv


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")


def test_csv_single_file_split_and_train_test_pair(tmp_path):
    rows = [(i * 0.5, -i, "sick" if i % 3 == 0 else "well") for i in range(15)]
    write_csv(tmp_path / "t.csv", ["age", "dose", "label"], rows)
    ds = gd.load_dataset("csv", tmp_path / "t.csv", test_fraction=0.2, split_seed=0)
    assert ds.classes == ["sick", "well"] and not ds.is_image
    # 5 sick, 10 well -> 1 and 2 test rows; every row once in train or test, features as written
    assert torch.bincount(ds.test_y).tolist() == [1, 2] and torch.bincount(ds.train_y).tolist() == [4, 8]
    got = sorted(map(tuple, torch.cat([ds.train_x, ds.test_x]).tolist()))
    assert got == sorted((r[0], float(r[1])) for r in rows)
    for x, y in zip(torch.cat([ds.train_x, ds.test_x]).tolist(), torch.cat([ds.train_y, ds.test_y]).tolist()):
        i = int(round(x[0] * 2))
        assert ds.classes[y] == ("sick" if i % 3 == 0 else "well")
    # a folder with train.csv and test.csv, another label column, numeric labels sorted as numbers
    write_csv(tmp_path / "train.csv", ["y", "f"], [(10, 1.0), (9, 2.0), (10, 3.0), (2, 4.0)])
    write_csv(tmp_path / "test.csv", ["y", "f"], [(2, 5.0), (9, 6.0)])
    pair = gd.load_dataset("csv", tmp_path, label="y")
    assert pair.classes == ["2", "9", "10"]
    assert pair.train_y.tolist() == [2, 1, 2, 0] and pair.test_y.tolist() == [0, 1]
    assert pair.train_x[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_csv_errors_name_the_file_line_and_column(tmp_path):
    f = tmp_path / "bad.csv"
    write_csv(f, ["a", "b", "label"], [(1, 2, "x"), (1, "n/a", "y"), (3, 4, "x")])
    with pytest.raises(ValueError, match=re.escape(f"{f}, line 3, column 'b': 'n/a' is not a finite number")):
        gd.load_dataset("csv", f)
    with pytest.raises(ValueError, match=r"no label column 'target'.*\['a', 'b', 'label'\]"):
        gd.load_dataset("csv", f, label="target")
    write_csv(f, ["a", "label"], [(1, "x"), (2, "y"), (3, "y")])
    with pytest.raises(ValueError, match=r"class 'x' has 1 item"):
        gd.load_dataset("csv", f)


# ------------------------------------------------------------------------------------------------
# augmentation modes


def test_resolve_augment_modes_and_defaults_by_kind(tmp_path):
    digits = gd.load_dataset("digits")
    assert gd.resolve_augment(None, digits) is None and gd.resolve_augment(False, digits) is None
    assert gd.resolve_augment("none", digits) is None
    assert gd.resolve_augment(True, digits) == gd.Crop(4, True) == gd.resolve_augment("crop_flip", digits)
    assert gd.resolve_augment("crop", digits) == gd.Crop(2, False)  # 8 px < 32: pad 2
    with pytest.raises(ValueError, match=r"augment='flip'.*'none', 'crop_flip', 'crop'"):
        gd.resolve_augment("flip", digits)
    with pytest.raises(ValueError, match=r"TrainConfig.augment='flip'"):
        TrainConfig(augment="flip").validate()
    rng = np.random.default_rng(5)
    rgb_tree(tmp_path / "big", rng, {"train": {"a": 2}, "test": {"a": 1}}, size=32)
    big = gd.load_dataset("folder", tmp_path / "big")
    assert gd.resolve_augment(None, big) == gd.Crop(4, True)  # RGB >= 32 px: crop + flip
    assert gd.resolve_augment("crop", big) == gd.Crop(4, False)  # >= 32 px: pad 4
    gray = gd.load_dataset("folder", tmp_path / "big", mode="gray")
    assert gd.resolve_augment(None, gray) == gd.Crop(4, False)  # grayscale: crop
    assert gd.default_augment(gray) and gd.default_augment_mode(gray) == "crop"


def tiny(**overrides):
    base = dict(dataset="digits", regime="balanced:10", n_val_per_class=5, model="small_cnn", loss="ce",
                epochs=1, batch_size=32, lr=0.05, warmup_epochs=0, device="cpu",
                model_params={"widths": [4, 4, 4]})
    base.update(overrides)
    return TrainConfig(**base)


def test_augment_strings_train_as_stated():
    """"crop_flip" is exactly what True was (same numbers); "crop" is another augmentation; the mode is
    in the run's extras."""
    true = fit(tiny(augment=True), progress=False)
    crop_flip = fit(tiny(augment="crop_flip"), progress=False)
    crop = fit(tiny(augment="crop"), progress=False)
    off = fit(tiny(augment="none"), progress=False)
    assert crop_flip.metrics["test/nll"] == true.metrics["test/nll"]
    assert crop_flip.extras["history"][-1]["loss"] == true.extras["history"][-1]["loss"]
    assert crop.metrics["test/nll"] != true.metrics["test/nll"] != off.metrics["test/nll"]
    assert crop.extras["data"]["augment"] == (2, False) and off.extras["data"]["augment"] is False
    assert fit(tiny(augment=False), progress=False).metrics["test/nll"] == off.metrics["test/nll"]


# ------------------------------------------------------------------------------------------------
# end to end: one run on each kind, the CLI's flags, a grid


def test_a_run_on_each_kind_of_user_data(tmp_path):
    rng = np.random.default_rng(6)
    rgb_tree(tmp_path / "tree", rng, {"train": {"a": 12, "b": 12}, "test": {"a": 4, "b": 4}}, size=8)
    r = fit(tiny(dataset="folder", data_dir=str(tmp_path / "tree"), regime="balanced:8", n_val_per_class=2,
                 ood=["uniform_noise", f"folder:{tmp_path / 'tree'}"]), progress=False)
    assert r.extras["data"]["n_train"] == 16 and r.extras["data"]["n_test"] == 8
    assert r.extras["data"]["augment"] == (2, False)  # RGB 8x8 < 32: crop
    assert math.isfinite(r.metrics["test/nll"]) and f"ood/folder:{tmp_path / 'tree'}/msp/auroc" in r.metrics

    x = rng.integers(0, 256, (30, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x_train=x[:24], y_train=np.arange(24) % 3, x_test=x[24:], y_test=np.arange(6) % 3)
    r = fit(tiny(dataset="arrays", data_dir=str(tmp_path / "a.npz"), regime="balanced:5", n_val_per_class=2),
            progress=False)
    assert r.extras["data"]["class_counts"] == [5, 5, 5] and r.test_logits.shape == (6, 3)

    write_csv(tmp_path / "t.csv", ["u", "v", "label"], [(i, (i * 7) % 5, i % 2) for i in range(40)])
    r = fit(tiny(dataset="csv", dataset_params={"path": str(tmp_path / "t.csv")}, model="mlp",
                 model_params={"hidden": [8]}, regime="balanced:10", n_val_per_class=4), progress=False)
    assert r.extras["data"]["augment"] is False and r.test_logits.shape == (8, 2)
    json.dumps(r.extras)


def test_cli_dataset_param_and_augment_flags(tmp_path):
    import argparse

    from gence.train import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    base = ["train", "--dataset", "folder", "--data-dir", "D"]
    args = parser.parse_args(base + ["--dataset-param", "size=64", "--dataset-param", "mode=gray",
                                     "--augment", "crop"])
    c = config_from_args(args)
    assert c.dataset_params == {"size": 64, "mode": "gray"} and c.augment == "crop"
    assert config_from_args(parser.parse_args(base + ["--augment"])).augment is True
    assert config_from_args(parser.parse_args(base + ["--no-augment"])).augment is False
    assert config_from_args(parser.parse_args(base)).augment is None


def test_grid_takes_user_data_models_and_folder_ood(tmp_path, monkeypatch):
    (tmp_path / "grid_nets.py").write_text(textwrap.dedent("""
        from torch import nn
        def net(num_classes, in_channels, width=4):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    grid = parse_grid(textwrap.dedent(f"""
        [grid]
        datasets = [{{ name = "folder", params = {{ root = "{tmp_path}/tree", size = 64 }}, ood = ["folder:{tmp_path}/other", "uniform_noise"] }}]
        regimes = ["balanced:10"]
        models = [{{ name = "grid_nets:net", params = {{ width = 2 }} }}]
        losses = ["ce"]
        seeds = [0]
        [grid.train]
        augment = "crop"
    """))
    (run,) = grid.runs
    assert run.config["model"] == "grid_nets:net" and run.config["dataset_params"] == {"root": f"{tmp_path}/tree",
                                                                                       "size": 64}
    assert run.config["augment"] == "crop" and run.config["ood"][0] == f"folder:{tmp_path}/other"
    with pytest.raises(ValueError, match=r"grid_nets:net.*depth=1"):
        parse_grid(textwrap.dedent("""
            [grid]
            datasets = ["digits"]
            regimes = ["balanced:10"]
            models = [{ name = "grid_nets:net", params = { depth = 1 } }]
            losses = ["ce"]
            seeds = [0]
        """))
