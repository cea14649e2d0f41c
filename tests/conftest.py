"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a small shared machine, two spinning OpenMP threads make training runs
    several times slower, not faster. The caller's setting comes back afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
