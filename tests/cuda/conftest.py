"""Shared by the CUDA tests (marker ``cuda``): the preset they start from and its smoke-size
overrides per stage. The device is the ``cuda_device`` fixture of tests/conftest.py (``cuda``,
or ``$REFLOWMA_TEST_DEVICE``); the ``gpu`` fixture marks a test that needs the GPU itself."""

from __future__ import annotations

import copy

import pytest

PRESET = "mnist_smoke"  # MNIST, a 17,341-parameter UNet, every stage at toy size
# On top of the preset: each stage in a few seconds; reflow with the marginal regularizer
# (Hutchinson log-det on from the first step, window-start term on), evaluate with fd_classifier.
SMOKE = {
    "teacher": ["train.steps=20", "train.warmup_steps=2", "train.checkpoint_every=10",
                "train.log_every=5"],
    "classifier": ["train.steps=100", "train.checkpoint_every=50", "train.log_every=25"],
    "couplings": ["n_train=64", "n_test=64", "chunk_size=32"],
    "reflow": ["K=1", "window_start_weight=1.0", "regularizer.weight=0.1",
               "regularizer.logdet=hutchinson", "regularizer.warm_start=0.0",
               "train.steps=6", "train.warmup_steps=1", "train.checkpoint_every=3",
               "train.log_every=2"],
    "evaluate": ["nfe=[1,2]", "n_samples=64", "fd_classifier=true"],
}


@pytest.fixture(scope="module")
def smoke_preset() -> str:
    """The preset the CUDA tests run (``--params``)."""
    return PRESET


@pytest.fixture(scope="module")
def smoke() -> dict[str, list[str]]:
    """``{stage: [key=value, ...]}``: the smoke-size overrides of ``smoke_preset`` (a copy per
    test module)."""
    return copy.deepcopy(SMOKE)
