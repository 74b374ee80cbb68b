"""Suite-wide settings: one intra-op thread (the tensors here are small; on 2 shared cores a
second thread made small-tensor steps several times slower), offline DVC/Sacred, and the
``cuda`` marker: those tests are skipped where ``torch.cuda.is_available()`` is false, unless
``REFLOWMA_TEST_DEVICE`` names the device to run them on (``cpu`` checks the tests themselves on
a machine without a GPU; the ``gpu`` fixture still skips there)."""

from __future__ import annotations

import os
import re

import pytest
import torch

os.environ.setdefault("DVC_NO_ANALYTICS", "1")

DEVICE_ENV = "REFLOWMA_TEST_DEVICE"


def cuda_test_device() -> str | None:
    """The device of the ``cuda`` tests: ``$REFLOWMA_TEST_DEVICE``, else ``cuda`` where torch
    sees a GPU, else None (skipped)."""
    name = os.environ.get(DEVICE_ENV)
    if name:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
            raise pytest.UsageError(f"{DEVICE_ENV}: {name!r} is not a device; allowed: cpu, "
                                    "cuda, cuda:N")
        return name
    return "cuda" if torch.cuda.is_available() else None


def pytest_collection_modifyitems(config, items):
    if cuda_test_device() is not None:
        return
    skip = pytest.mark.skip(reason=f"no CUDA device (torch.cuda.is_available() is False); "
                            f"{DEVICE_ENV}=cpu runs them on the CPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cuda_device() -> str:
    """The device the ``cuda`` tests run their stages on (``device=...`` overrides)."""
    return cuda_test_device()


@pytest.fixture
def gpu(cuda_device):
    """A test that checks the GPU itself (e.g. ``device: auto`` choosing it): skipped where
    no CUDA device is available, whatever ``REFLOWMA_TEST_DEVICE`` says."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
