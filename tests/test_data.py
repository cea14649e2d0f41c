"""Data: readers on files written here in each format, cache, regimes and splits, OOD sets, augmentation.

Every expected value is computed in the test from what the test wrote, never from the code under test.
"""
import io
import math
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gence.data as gd
from gence.data import readers

from helpers import make_mnist_like, write_idx  # tests/helpers.py

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GENCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENCE_DATA", raising=False)


# ------------------------------------------------------------------------------------------------
# writers, one per format


def cifar_pickles(rng, variant, n_per_batch=20):
    """{file name: pickled bytes} in the torchvision layout, and the arrays they hold."""
    files, arrays = {}, {}
    if variant == "cifar10":
        parts = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        for split, names in parts.items():
            xs, ys = [], []
            for name in names:
                x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
                y = [int(v) for v in rng.integers(0, 10, n_per_batch)]
                files[name] = pickle.dumps({b"batch_label": name.encode(), b"labels": y, b"data": x,
                                            b"filenames": [b"f.png"] * n_per_batch})
                xs.append(x), ys.extend(y)
            arrays[f"{split}_x"] = np.concatenate(xs).reshape(-1, 3, 32, 32)
            arrays[f"{split}_y"] = np.array(ys)
        files["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR10],
                                              b"num_cases_per_batch": n_per_batch})
    else:
        for split in ("train", "test"):
            x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            fine = [int(v) for v in rng.integers(0, 100, n_per_batch)]
            coarse = [int(v) for v in rng.integers(0, 20, n_per_batch)]
            files[split] = pickle.dumps({b"data": x, b"fine_labels": fine, b"coarse_labels": coarse})
            arrays[f"{split}_x"] = x.reshape(-1, 3, 32, 32)
            arrays[f"{split}_y"], arrays[f"{split}_coarse"] = np.array(fine), np.array(coarse)
        arrays["fine_names"] = [f"fine{i:02d}" for i in range(100)]
        arrays["coarse_names"] = [f"coarse{i:02d}" for i in range(20)]
        files["meta"] = pickle.dumps({b"fine_label_names": [s.encode() for s in arrays["fine_names"]],
                                      b"coarse_label_names": [s.encode() for s in arrays["coarse_names"]]})
    return files, arrays


def write_image_tree(root, rng, fmt, classes=CIFAR10, per_class=(3, 2), size=8):
    """root/{train,test}/<class>/NNNN.<fmt>; returns {split: (x uint8 (N,3,H,W), y)} in class order."""
    from PIL import Image

    out = {}
    for split, n in zip(("train", "test"), per_class):
        xs = []
        # write the classes in reverse order: the reader must not depend on creation order
        for k in reversed(range(len(classes))):
            d = root / split / classes[k]
            d.mkdir(parents=True)
            for i in range(n):
                if fmt == "png":
                    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                else:  # JPEG is lossy: flat colours survive it almost exactly
                    img = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (size, size, 3)).copy()
                Image.fromarray(img).save(d / f"{i:04d}.{fmt}", quality=95) if fmt == "jpg" else \
                    Image.fromarray(img).save(d / f"{i:04d}.{fmt}")
                xs.append((k, i, img.transpose(2, 0, 1)))
        xs.sort(key=lambda t: (t[0], t[1]))
        out[split] = (np.stack([t[2] for t in xs]), np.array([t[0] for t in xs]))
    return out


# ------------------------------------------------------------------------------------------------
# readers


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_reader_returns_exactly_what_was_written(tmp_path, gz):
    arrays = make_mnist_like(tmp_path / "mnist", np.random.default_rng(1), gz)
    ds = gd.load_dataset("mnist", tmp_path)
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10 and ds.classes == [str(i) for i in range(10)]
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_x.numpy()[:, 0], arrays["train_x"])
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train_y"])
    np.testing.assert_array_equal(ds.test_x.numpy()[:, 0], arrays["test_x"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["test_y"])


def test_fashion_mnist_found_in_raw_subfolder_and_via_env(tmp_path, monkeypatch):
    arrays = make_mnist_like(tmp_path / "fashion-mnist" / "raw", np.random.default_rng(2), gz=True)
    monkeypatch.setenv("GENCE_DATA", str(tmp_path))
    ds = gd.load_dataset("fashion_mnist")
    np.testing.assert_array_equal(ds.train_x.numpy()[:, 0], arrays["train_x"])
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.int16])
def test_read_idx_types(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 3 - 5).astype(dtype) if dtype != np.uint8 else np.arange(24, dtype=np.uint8)
    write_idx(tmp_path / "a", a, gz=False)
    b = readers.read_idx(tmp_path / "a")
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(b, a)


def test_cifar10_pickles_exact(tmp_path):
    files, arrays = cifar_pickles(np.random.default_rng(3), "cifar10")
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    ds = gd.load_dataset("cifar10", tmp_path)
    assert ds.classes == CIFAR10 and ds.image_shape == (3, 32, 32)
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(ds, f"{split}_x").numpy(), arrays[f"{split}_x"])
        np.testing.assert_array_equal(getattr(ds, f"{split}_y").numpy(), arrays[f"{split}_y"])
    # the pixel layout: row = 1024 red values, then green, then blue, each row-major
    raw = pickle.loads(files["data_batch_1"])[b"data"]
    assert ds.train_x[0, 1, 2, 5].item() == raw[0, 1024 + 2 * 32 + 5]


def test_cifar10_pickles_inside_downloaded_tar(tmp_path):
    files, arrays = cifar_pickles(np.random.default_rng(4), "cifar10")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = gd.load_dataset("cifar10", tmp_path)
    np.testing.assert_array_equal(ds.test_x.numpy(), arrays["test_x"])
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train_y"])


@pytest.mark.parametrize("label_type", ["fine", "coarse"])
def test_cifar100_pickles(tmp_path, label_type):
    files, arrays = cifar_pickles(np.random.default_rng(5), "cifar100")
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    ds = gd.load_dataset("cifar100", tmp_path, label_type=label_type)
    key = "y" if label_type == "fine" else "coarse"
    np.testing.assert_array_equal(ds.train_x.numpy(), arrays["train_x"])
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays[f"train_{key}"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays[f"test_{key}"])
    assert ds.classes == arrays[f"{label_type}_names"] and ds.num_classes == len(arrays[f"{label_type}_names"])


def test_png_tree_lossless_and_in_cifar_class_order(tmp_path):
    written = write_image_tree(tmp_path / "cifar10", np.random.default_rng(6), "png")
    ds = gd.load_dataset("cifar10", tmp_path)
    assert ds.classes == CIFAR10 and ds.image_shape == (3, 8, 8)
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(ds, f"{split}_x").numpy(), written[split][0])
        np.testing.assert_array_equal(getattr(ds, f"{split}_y").numpy(), written[split][1])


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_image_tree_as_tar_gz(tmp_path, fmt):
    written = write_image_tree(tmp_path / "tree" / "cifar10", np.random.default_rng(7), fmt)
    (tmp_path / "tree" / "cifar10" / "README.md").write_text("not an image: the reader skips it")
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "cifar10", arcname="cifar10")  # with a top-level prefix folder
    for data_dir in (tmp_path, archive):  # the folder holding the archive, or the archive itself
        ds = gd.load_dataset("cifar10", data_dir)
        np.testing.assert_array_equal(ds.train_y.numpy(), written["train"][1])
        np.testing.assert_array_equal(ds.test_y.numpy(), written["test"][1])
        if fmt == "png":
            np.testing.assert_array_equal(ds.train_x.numpy(), written["train"][0])
        else:
            diff = np.abs(ds.train_x.numpy().astype(int) - written["train"][0].astype(int))
            assert diff.max() <= 3


def test_image_tree_cache_sees_an_image_edited_in_place(tmp_path):
    from PIL import Image

    written = write_image_tree(tmp_path / "cifar10", np.random.default_rng(10), "png", per_class=(1, 1))
    first = gd.load_dataset("cifar10", tmp_path)  # decoded, and cached
    np.testing.assert_array_equal(first.train_x.numpy(), written["train"][0])
    # overwrite one image with new pixels; put its folder's times back, as an in-place edit leaves them
    folder = tmp_path / "cifar10" / "train" / "cat"
    st = os.stat(folder)
    new = np.full((8, 8, 3), 7, dtype=np.uint8)
    Image.fromarray(new).save(folder / "0000.png")
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = gd.load_dataset("cifar10", tmp_path)
    k = CIFAR10.index("cat")  # one training image per class, in class order
    np.testing.assert_array_equal(again.train_x[k].numpy(), new.transpose(2, 0, 1))


def test_image_tree_with_wrong_class_folders_is_an_error(tmp_path):
    names = CIFAR10[:9] + ["lorry"]
    write_image_tree(tmp_path / "cifar10", np.random.default_rng(8), "png", classes=names, per_class=(1, 1))
    with pytest.raises(ValueError, match="lorry"):
        gd.load_dataset("cifar10", tmp_path)


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(9)
    X = rng.integers(0, 256, (32, 32, 3, 15), dtype=np.uint8)
    y = rng.integers(1, 11, (15, 1)).astype(np.uint8)  # SVHN labels are 1..10, 10 meaning digit 0
    y[0, 0], y[1, 0] = 10, 1
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "train_32x32.mat", {"X": X, "y": y})
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": X[..., :5], "y": y[:5]})
    ds = gd.load_dataset("svhn", tmp_path)
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.test_x.shape == (5, 3, 32, 32)
    for n in (0, 7, 14):
        np.testing.assert_array_equal(ds.train_x[n].numpy(), X[:, :, :, n].transpose(2, 0, 1))
    expected = [0 if v == 10 else int(v) for v in y[:, 0]]
    assert ds.train_y.tolist() == expected and ds.train_y[0] == 0 and ds.train_y[1] == 1


def test_missing_files_error_names_path_and_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        gd.load_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        gd.load_dataset("cifar10", tmp_path)
    assert str(tmp_path) in str(e.value) and "cifar-10-batches-py" in str(e.value)
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        gd.load_dataset("svhn", tmp_path)
    with pytest.raises(ValueError, match="GENCE_DATA"):
        gd.load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        gd.load_dataset("imagenet", tmp_path)


def test_cache_returns_identical_arrays_without_decoding_again(tmp_path, monkeypatch):
    write_image_tree(tmp_path / "tree" / "cifar10", np.random.default_rng(10), "png")
    archive = tmp_path / "data" / "cifar10-jpeg.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "cifar10", arcname=".")
    first = gd.load_dataset("cifar10", archive.parent)
    assert list((tmp_path / "cache").glob("*.npz"))

    def boom(*a, **k):
        raise AssertionError("decoder called although the cache holds the arrays")

    monkeypatch.setattr(readers, "read_image_tar", boom)
    second = gd.load_dataset("cifar10", archive.parent)
    for attr in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, attr), getattr(second, attr))
    assert second.classes == first.classes
    # a changed source file (new mtime) is decoded again
    os.utime(archive, ns=(os.stat(archive).st_atime_ns, os.stat(archive).st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoder called"):
        gd.load_dataset("cifar10", archive.parent)


def test_cache_off_always_decodes(tmp_path, monkeypatch):
    make_mnist_like(tmp_path, np.random.default_rng(11), gz=True)
    calls = []
    real = readers.read_idx
    monkeypatch.setattr(readers, "read_idx", lambda p: calls.append(p) or real(p))
    gd.load_dataset("mnist", tmp_path, cache=False)
    gd.load_dataset("mnist", tmp_path, cache=False)
    assert len(calls) == 8 and not (tmp_path / "cache").exists()
    gd.load_dataset("mnist", tmp_path)
    gd.load_dataset("mnist", tmp_path)
    assert len(calls) == 12


# ------------------------------------------------------------------------------------------------
# embedded and synthetic data, classes=, normalisation


def test_digits_embedded():
    ds = gd.load_dataset("digits")
    raw = np.load(os.path.join(os.path.dirname(gd.__file__), "digits.npz"))
    assert ds.image_shape == (1, 8, 8) and len(ds.train_y) + len(ds.test_y) == 1797
    assert len(ds.train_y) == 1200 and ds.num_classes == 10
    x = np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()])[:, 0]
    np.testing.assert_array_equal(x, np.round(raw["images"].astype(np.float64) * 255 / 16).astype(np.uint8))
    assert sorted(set(x.ravel().tolist())) == sorted(set(np.round(np.arange(17) * 255 / 16).astype(int)))
    assert int(x.max()) == 255 and not gd.default_augment(ds)


def test_classes_keeps_and_relabels_in_given_order():
    full = gd.load_dataset("digits")
    sub = gd.load_dataset("digits", classes=[7, 2])
    assert sub.num_classes == 2 and sub.classes == ["7", "2"] and sub.kept_classes == [7, 2]
    assert torch.equal(sub.train_x, full.train_x[(full.train_y == 7) | (full.train_y == 2)])
    orig = full.train_y[(full.train_y == 7) | (full.train_y == 2)]
    assert torch.equal(sub.train_y, torch.where(orig == 7, 0, 1))
    assert torch.equal(sub.test_y.unique(), torch.tensor([0, 1]))
    by_name = gd.load_dataset("digits", classes=["7", "2"])
    assert torch.equal(by_name.train_y, sub.train_y)
    with pytest.raises(ValueError, match="twice"):
        gd.load_dataset("digits", classes=[1, 1])
    with pytest.raises(ValueError, match="out of range"):
        gd.load_dataset("digits", classes=[10])


def test_normalize_on_device_of_input():
    ds = gd.load_dataset("digits")
    z = ds.normalize(ds.train_x)
    assert z.dtype == torch.float32 and z.shape == ds.train_x.shape and z.device == ds.train_x.device
    x01 = ds.train_x.double() / 255
    assert ds.mean.item() == pytest.approx(x01.mean().item(), rel=1e-5)
    assert ds.std.item() == pytest.approx(x01.std(unbiased=False).item(), rel=1e-5)
    assert z.mean().item() == pytest.approx(0, abs=1e-5) and z.std().item() == pytest.approx(1, abs=1e-3)
    assert torch.equal(gd.to_float(ds.train_x[:5], ds), z[:5])
    if torch.cuda.is_available():
        zc = ds.normalize(ds.train_x[:5].cuda())
        assert zc.is_cuda and torch.allclose(zc.cpu(), z[:5])


def test_gaussians_dataset():
    ds = gd.load_dataset("gaussians", num_classes=4, dim=3, n_train=200, n_test=300, seed=1)
    assert ds.image_shape is None and ds.train_x.shape == (200, 3) and ds.test_x.shape == (300, 3)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64 and ds.num_classes == 4
    post = ds.extras["task"].posterior(ds.test_x.numpy())
    assert post.shape == (300, 4) and np.allclose(post.sum(1), 1)
    again = gd.load_dataset("gaussians", num_classes=4, dim=3, n_train=200, n_test=300, seed=1)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
    other = gd.load_dataset("gaussians", num_classes=4, dim=3, n_train=200, n_test=300, seed=1, sample_seed=2)
    assert not torch.equal(other.train_x, ds.train_x)
    z = ds.normalize(ds.train_x)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5)
    assert not gd.default_augment(ds)
    with pytest.raises(ValueError, match="feature data"):
        gd.load_ood("gaussian_noise", ds)


IMAGE_DATASETS = {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"}


def test_available_lists_every_name_with_a_description():
    names = gd.available()
    assert set(names) == IMAGE_DATASETS | {"gaussians", "folder", "arrays", "csv"}
    assert list(names) == sorted(names)
    assert all(isinstance(d, str) and d for d in names.values())
    assert set(gd.image_datasets()) == IMAGE_DATASETS
    # every image dataset is an OOD set, feature data is not
    assert set(gd.ood_available()) == IMAGE_DATASETS | {"heldout", "gaussian_noise", "uniform_noise"}
    assert gd.ood_names() == list(gd.ood_available())


def test_which_datasets_and_ood_sets_need_a_data_directory():
    # digits ships in the package and gaussians is generated; the others read files from data_dir or
    # $GENCE_DATA (each check below is what load_dataset does without a directory: see the loop at the end)
    assert gd.needs_data_dir("digits") is False and gd.needs_data_dir("gaussians") is False
    assert gd.needs_data_dir("mnist") is True and gd.needs_data_dir("cifar10") is True
    assert gd.needs_data_dir("Fashion-MNIST") is True                      # spelled as load_dataset takes it
    # a user's data names its files in its params (possibly an absolute path): its own error, not this rule
    assert [gd.needs_data_dir(n) for n in ("folder", "arrays", "csv")] == [False, False, False]
    assert gd.ood_needs_data_dir("gaussian_noise") is False and gd.ood_needs_data_dir("uniform_noise") is False
    assert gd.ood_needs_data_dir("heldout") is False                        # the in-distribution's own data
    assert gd.ood_needs_data_dir("svhn") is True and gd.ood_needs_data_dir("digits") is False
    assert gd.ood_needs_data_dir("folder:/abs/tree") is False and gd.ood_needs_data_dir("arrays:x.npz") is False
    with pytest.raises(ValueError, match="unknown dataset name='mnits'"):
        gd.needs_data_dir("mnits")
    with pytest.raises(ValueError, match="unknown OOD set 'noise'"):
        gd.ood_needs_data_dir("noise")
    for name in ("digits", "gaussians"):
        gd.load_dataset(name, n_test=10) if name == "gaussians" else gd.load_dataset(name)   # no directory
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"):
        with pytest.raises(ValueError, match="needs a data directory"):
            gd.load_dataset(name)


def test_names_are_case_and_dash_insensitive_with_aliases():
    assert gd.load_dataset("Digits").name == "digits"
    for spelling in ("fashion-mnist", "FashionMNIST", "FASHION_MNIST"):
        with pytest.raises(ValueError, match="GENCE_DATA"):  # resolved to fashion_mnist, which needs files
            gd.load_dataset(spelling)
    with pytest.raises(ValueError, match=r"unknown dataset name='cifar-1o'; expected one of: arrays, cifar10, cifar100"):
        gd.load_dataset("cifar-1o")


def test_unknown_dataset_parameters_are_value_errors_naming_dataset_parameter_and_choices():
    # checked before any file is looked for: no data directory is set, and the error is the parameter's
    with pytest.raises(ValueError, match=r"dataset 'digits': unknown parameter size=3; it takes no parameters"):
        gd.load_dataset("digits", size=3)
    with pytest.raises(ValueError, match=r"dataset 'cifar10': unknown parameter label_type='coarse'"):
        gd.load_dataset("cifar10", label_type="coarse")
    with pytest.raises(ValueError, match=r"dataset 'cifar100': unknown parameter labels='fine'; "
                                         r"expected some of: label_type"):
        gd.load_dataset("cifar100", labels="fine")
    # gaussians: its own parameters and those of GaussianTask, where the rest go
    with pytest.raises(ValueError, match=r"dataset 'gaussians': unknown parameter seperation=2; expected some of: "
                                         r"n_train, n_test, sample_seed, num_classes, dim, priors, separation"):
        gd.load_dataset("gaussians", seperation=2)


def test_gaussians_samples_follow_the_task_seed_unless_sample_seed_is_given():
    task = gd.GaussianTask(num_classes=3, dim=2, seed=5, separation=2.0)
    rng = np.random.default_rng(5)  # by hand: one generator, train then test
    train_x, train_y = task.sample(40, generator=rng)
    test_x, _ = task.sample(30, generator=rng)
    ds = gd.load_dataset("gaussians", n_train=40, n_test=30, seed=5, separation=2.0)
    np.testing.assert_array_equal(ds.train_x.numpy(), train_x)
    np.testing.assert_array_equal(ds.train_y.numpy(), train_y)
    np.testing.assert_array_equal(ds.test_x.numpy(), test_x)
    np.testing.assert_array_equal(ds.extras["task"].means, task.means)
    other = gd.load_dataset("gaussians", n_train=40, n_test=30, seed=5, separation=2.0, sample_seed=6)
    np.testing.assert_array_equal(other.train_x.numpy(), task.sample(40, seed=6)[0])


def test_as_rng_passes_a_generator_through_and_seeds_otherwise():
    g = np.random.default_rng(3)
    assert gd.as_rng(g) is g
    np.testing.assert_array_equal(gd.as_rng(7).normal(size=4), np.random.default_rng(7).normal(size=4))


# ------------------------------------------------------------------------------------------------
# regimes and splits


def exp_counts(ratio, n_max, K):
    return [max(1, math.floor(n_max * (1.0 / ratio) ** (k / (K - 1)) + 1e-6)) for k in range(K)]


def test_long_tailed_counts_by_formula():
    # Cao et al. (LDAM) CIFAR-10-LT, ratio 100: the published per-class counts
    assert gd.long_tailed(100, 5000).counts(10) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    for ratio, n_max, K in [(10, 500, 10), (100, 500, 10), (50, 200, 7), (1, 30, 4), (100, 100, 100)]:
        c = gd.long_tailed(ratio, n_max).counts(K)
        assert c == exp_counts(ratio, n_max, K)
        assert c[0] == n_max and c[-1] == max(1, n_max // ratio) and c == sorted(c, reverse=True)
    assert gd.long_tailed(10, 100, "step").counts(10) == [100] * 5 + [10] * 5
    assert gd.long_tailed(10, 100, "step").counts(5) == [100] * 2 + [10] * 3
    assert gd.balanced(7).counts(3) == [7, 7, 7]
    assert gd.full().counts(10) is None


def test_parse_regime_round_trip_and_errors():
    for spec, regime in [("balanced:100", gd.balanced(100)), ("long_tailed:100:500", gd.long_tailed(100, 500)),
                         ("long_tailed:100:500:step", gd.long_tailed(100, 500, "step")), ("full", gd.full())]:
        assert gd.parse_regime(spec) == regime and regime.name == spec and gd.parse_regime(regime.name) == regime
    for bad in ["balanced", "balanced:x", "balanced:0", "long_tailed:100", "long_tailed:0.5:10",
                "long_tailed:10:100:linear", "fewshot:5"]:
        with pytest.raises(ValueError, match="regime"):
            gd.parse_regime(bad)


def _labels(per_class, seed=0):
    y = np.concatenate([np.full(n, k) for k, n in enumerate(per_class)])
    return np.random.default_rng(seed).permutation(y)


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
@pytest.mark.parametrize("spec", ["balanced:10", "balanced:1", "long_tailed:20:40", "long_tailed:10:40:step", "full"])
def test_split_counts_exact_and_disjoint(seed, spec):
    labels = _labels([60, 55, 70, 50, 65])
    K, n_val = 5, 5
    regime = gd.parse_regime(spec)
    train, val = gd.split_indices(labels, regime, n_val, seed)
    kind = spec.split(":")
    if kind[0] == "balanced":
        expected = [int(kind[1])] * K
    elif kind[0] == "full":
        expected = [60 - n_val, 55 - n_val, 70 - n_val, 50 - n_val, 65 - n_val]
    elif len(kind) == 4:
        expected = [40, 40] + [4] * 3
    else:
        expected = exp_counts(20, 40, K)
    assert np.bincount(labels[train], minlength=K).tolist() == expected
    assert np.bincount(labels[val], minlength=K).tolist() == [n_val] * K
    assert not set(train.tolist()) & set(val.tolist())
    assert train.dtype == np.int64 and np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    t2, v2 = gd.split_indices(torch.as_tensor(labels), spec, n_val, seed)
    assert np.array_equal(train, t2) and np.array_equal(val, v2)
    t3, v3 = gd.split_indices(labels, spec, n_val, seed + 1000)
    assert not np.array_equal(val, v3)
    if spec != "full":
        assert not np.array_equal(train, t3)


def test_validation_does_not_depend_on_regime_and_subsets_nest():
    labels = _labels([50] * 4)
    t_small, v_small = gd.split_indices(labels, "balanced:5", 10, seed=3)
    t_big, v_big = gd.split_indices(labels, "balanced:20", 10, seed=3)
    assert np.array_equal(v_small, v_big) and set(t_small) <= set(t_big)


def test_too_few_images_names_the_class():
    labels = _labels([30, 30, 12])
    with pytest.raises(ValueError, match=r"class 2 has 12 .* needs 5 \+ 10 = 15"):
        gd.split_indices(labels, "balanced:10", 5, 0)


# ------------------------------------------------------------------------------------------------
# augmentation and batching


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_crop_equals_slice_of_padded_image(mode):
    x = torch.randint(0, 256, (6, 3, 10, 12), dtype=torch.uint8)
    pad = 3
    padded = F.pad(x.float(), (pad,) * 4, mode="reflect" if mode == "reflect" else "constant").to(torch.uint8)
    dy = torch.tensor([0, 6, 3, 1, 5, 2])
    dx = torch.tensor([6, 0, 3, 4, 1, 2])
    flip = torch.tensor([False, True, False, True, True, False])
    out = gd.crop_flip(x, dy, dx, flip, pad=pad, padding_mode=mode)
    assert out.dtype == x.dtype and out.shape == x.shape
    for b in range(6):
        want = padded[b, :, dy[b]:dy[b] + 10, dx[b]:dx[b] + 12]
        if flip[b]:
            want = want.flip(-1)
        assert torch.equal(out[b], want), b
    # offset (pad, pad) and no flip is the identity
    same = gd.crop_flip(x, torch.full((6,), pad), torch.full((6,), pad), None, pad=pad, padding_mode=mode)
    assert torch.equal(same, x)


def test_random_crop_flip_outputs_are_crops_and_change_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(32)
    out = gd.random_crop_flip(x, pad=2, generator=g)
    assert out.shape == x.shape and out.dtype == torch.uint8 and torch.equal(y, torch.arange(32))
    assert not torch.equal(out, x)
    padded = F.pad(x.float(), (2,) * 4, mode="reflect").to(torch.uint8)
    flips = 0
    for b in range(32):
        cands = [(padded[b, :, i:i + 8, j:j + 8], f) for i in range(5) for j in range(5) for f in (0, 1)]
        hits = [f for c, f in cands if torch.equal(out[b], c.flip(-1) if f else c)]
        assert hits, f"image {b} is not a crop/flip of its padded original"
        flips += hits[0]
    assert 0 < flips < 32
    again = gd.random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    no_flip = gd.random_crop_flip(x, pad=0, flip=False, generator=g)
    assert torch.equal(no_flip, x)


def test_iterate_batches_is_one_permutation():
    x = torch.arange(23).view(23, 1).float()
    y = torch.arange(23) * 10
    g = torch.Generator().manual_seed(0)
    batches = list(gd.iterate_batches(x, y, 5, shuffle=True, generator=g))
    assert [len(b[0]) for b in batches] == [5, 5, 5, 5, 3]
    seen = torch.cat([b[0][:, 0] for b in batches]).long()
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    for xb, yb in batches:
        assert torch.equal(yb, xb[:, 0].long() * 10)
    assert [len(b[0]) for b in gd.iterate_batches(x, y, 5, True, g, drop_last=True)] == [5] * 4
    ordered = list(gd.iterate_batches(x, y, 10, shuffle=False))
    assert torch.equal(torch.cat([b[1] for b in ordered]), y)
    a = [b[1] for b in gd.iterate_batches(x, y, 5, True, torch.Generator().manual_seed(1))]
    b = [b[1] for b in gd.iterate_batches(x, y, 5, True, torch.Generator().manual_seed(1))]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


# ------------------------------------------------------------------------------------------------
# OOD sets


def _cifar_dir(tmp_path, rng):
    files, arrays = cifar_pickles(rng, "cifar10")
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return arrays


def test_ood_other_dataset_converted(tmp_path):
    rng = np.random.default_rng(12)
    _cifar_dir(tmp_path, rng)
    make_mnist_like(tmp_path / "mnist", rng, gz=True, n_test=12)
    cifar = gd.load_dataset("cifar10", tmp_path)
    o = gd.load_ood("mnist", cifar, n=5, seed=0)
    assert o.shape == (5, 3, 32, 32) and o.dtype == torch.uint8
    assert torch.equal(o[:, 0], o[:, 1]) and torch.equal(o[:, 0], o[:, 2])  # gray repeated into RGB
    assert torch.equal(o, gd.load_ood("mnist", cifar, n=5, seed=0))
    assert len(gd.load_ood("mnist", cifar, n=100)) == 12  # never more than the source's test split
    # the resize keeps a flat image flat, and the conversion to gray uses the 601 luma weights
    flat = torch.full((1, 1, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(gd.convert_images(flat, (3, 32, 32)), torch.full((1, 3, 32, 32), 77, dtype=torch.uint8))
    rgb = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    gray = gd.convert_images(rgb, (1, 28, 28))
    assert gray.shape == (1, 1, 28, 28) and torch.all(gray == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50))
    mnist = gd.load_dataset("mnist", tmp_path)
    c = gd.load_ood("cifar10", mnist, n=7)
    assert c.shape == (7, 1, 28, 28) and c.dtype == torch.uint8
    with pytest.raises(ValueError, match="heldout"):
        gd.load_ood("mnist", mnist)


def test_ood_noise_and_heldout():
    six = gd.load_dataset("digits", classes=[0, 1, 2, 3, 4, 5])
    for name in ("gaussian_noise", "uniform_noise"):
        a = gd.load_ood(name, six, n=50, seed=3)
        assert a.shape == (50, 1, 8, 8) and a.dtype == torch.uint8
        assert torch.equal(a, gd.load_ood(name, six, n=50, seed=3))
        assert not torch.equal(a, gd.load_ood(name, six, n=50, seed=4))
    g = gd.load_ood("gaussian_noise", six, n=2000).double() / 255
    assert g.mean().item() == pytest.approx(six.mean.item(), abs=0.05)
    held = gd.load_ood("heldout", six, n=10_000)
    full = gd.load_dataset("digits")
    assert torch.equal(held, full.test_x[full.test_y >= 6])
    assert len(gd.load_ood("heldout", six, n=10)) == 10
    with pytest.raises(ValueError, match="classes="):
        gd.load_ood("heldout", full)
    with pytest.raises(ValueError, match="unknown OOD"):
        gd.load_ood("places365", full)


def test_default_augment_by_shape(tmp_path):
    _cifar_dir(tmp_path, np.random.default_rng(13))
    assert gd.default_augment(gd.load_dataset("cifar10", tmp_path))
    assert not gd.default_augment(gd.load_dataset("digits"))
