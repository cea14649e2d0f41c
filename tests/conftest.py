"""Fixtures shared by the test modules."""
import signal

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


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in the main thread, as in a Python started from a terminal. A shell
    that starts pytest as a background job without job control (``nohup pytest &`` in a script) hands it
    SIGINT ignored, which Python keeps: a test that interrupts a grid by SIGINT then saw no interrupt and
    waited for the whole grid (12 min of 120 s runs). The process's setting comes back afterwards."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)
