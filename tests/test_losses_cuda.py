"""Registry losses on CUDA: buffers follow .to(device), results match CPU, autocast logits are
computed in float32. Skipped where no GPU is present (CI); run on a GPU machine."""
import pytest
import torch

import gence.losses as L

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

COUNTS = [40, 12, 5, 1]
ALL = list(L.available())


def _batch(seed=0, n=16, k=4):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 4
    y = torch.randint(0, k, (n,), generator=g)
    z[0] = torch.tensor([1e4, -1e4, 0.0, 0.0])  # p = 1 exactly for y = 0
    z[1] = torch.tensor([-1e4, 1e4, 0.0, 0.0])
    y[0], y[1] = 0, 0  # p = 0 for the second
    return z, y


def _build(name, **params):
    extra = {"class_balanced_beta": 0.99} if name in ("ce", "focal", "gence") else {}
    loss = L.build(name, num_classes=4, class_counts=COUNTS, **extra, **params)
    loss.on_epoch_start(9, 10)  # DRW on for ldam
    return loss


@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu_with_finite_gradients(name):
    z, y = _batch()
    cpu = _build(name)
    z_cpu = z.clone().requires_grad_(True)
    expected = cpu(z_cpu, y)
    expected.backward()

    gpu = _build(name).cuda()
    z_gpu = z.cuda().requires_grad_(True)
    got = gpu(z_gpu, y.cuda())
    got.backward()
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z_gpu.grad.cpu(), z_cpu.grad, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(z_gpu.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ALL)
def test_cuda_autocast_computes_in_float32(name, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=g).cuda()
    y = torch.randint(0, 4, (32,), generator=g).cuda()
    head = torch.nn.Linear(8, 4).cuda()
    loss = _build(name).cuda()
    with torch.autocast("cuda", dtype=dtype):
        z = head(x) * 50
        assert z.dtype == dtype
        value = loss(z, y)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(z.float(), y))
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
