"""Suite-wide settings: one intra-op thread (the tensors here are small; on 2 shared cores a
second thread made small-tensor steps several times slower), offline DVC/Sacred."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
