"""Augmentation, batching and normalisation on a CUDA device: same results as on the CPU, nothing leaves the
device. Skipped where no GPU is present."""
import time

import pytest
import torch

import gence.data as gd

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_crop_flip_on_cuda_matches_cpu(mode):
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 9, (64,), generator=g), torch.randint(0, 9, (64,), generator=g)
    flip = torch.randint(0, 2, (64,), generator=g).bool()
    cpu = gd.crop_flip(x, dy, dx, flip, pad=4, padding_mode=mode)
    gpu = gd.crop_flip(x.cuda(), dy.cuda(), dx.cuda(), flip.cuda(), pad=4, padding_mode=mode)
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


def test_random_crop_flip_and_batches_stay_on_device():
    x = torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, device="cuda")
    y = torch.arange(1000, device="cuda")
    for gen in (torch.Generator(device="cuda").manual_seed(0), torch.Generator().manual_seed(0), None):
        out = gd.random_crop_flip(x, generator=gen)
        assert out.is_cuda and out.shape == x.shape and out.dtype == torch.uint8 and not torch.equal(out, x)
        seen = []
        for xb, yb in gd.iterate_batches(x, y, 128, shuffle=True, generator=gen):
            assert xb.is_cuda and yb.is_cuda and torch.equal(xb, x[yb])
            seen.append(yb)
        assert torch.equal(torch.cat(seen).sort().values, y)
    a = gd.random_crop_flip(x, generator=torch.Generator(device="cuda").manual_seed(5))
    b = gd.random_crop_flip(x, generator=torch.Generator(device="cuda").manual_seed(5))
    assert torch.equal(a, b)


def test_normalize_on_cuda():
    ds = gd.load_dataset("digits")
    z = ds.normalize(ds.train_x.cuda())
    assert z.is_cuda and z.dtype == torch.float32
    assert torch.allclose(z.cpu(), ds.normalize(ds.train_x), atol=1e-6)


def test_epoch_throughput_report():
    """Not an assertion of speed: prints one epoch of shuffle + crop/flip + normalise over 50,000 images."""
    ds_like = gd.ArrayDataset("fake", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
                              torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
                              10, [str(i) for i in range(10)], (3, 32, 32))
    x = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, device="cuda")
    y = torch.randint(0, 10, (50_000,), device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    for rep in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for xb, yb in gd.iterate_batches(x, y, 512, shuffle=True, generator=g):
            z = ds_like.normalize(gd.random_crop_flip(xb, generator=g))
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    print(f"\n[data] one epoch, 50,000 images, batch 512, crop+flip+normalise on {torch.cuda.get_device_name()}: "
          f"{dt * 1e3:.1f} ms ({50_000 / dt:,.0f} images/s)")
    assert z.is_cuda
