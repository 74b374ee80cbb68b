"""``training.loop.lr_factor`` at its corners: linear warm-up, then cosine (to 0 at ``steps``)
or constant."""

from __future__ import annotations

import math

import pytest

from reflowma.training.loop import lr_factor


def cfg(steps, warmup, schedule="cosine"):
    return {"steps": steps, "warmup_steps": warmup, "lr_schedule": schedule}


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_warmup_is_linear_from_one_step_to_full(schedule):
    c = cfg(110, 10, schedule)
    assert lr_factor(0, c) == pytest.approx(0.1)  # step 0 already trains: (0 + 1) / 10
    assert lr_factor(4, c) == pytest.approx(0.5)
    assert lr_factor(9, c) == pytest.approx(1.0)  # last warm-up step reaches the full LR
    assert lr_factor(10, c) == pytest.approx(1.0)  # first step after: cosine starts at 1


def test_constant_schedule_stays_at_one():
    c = cfg(100, 5, "constant")
    assert [lr_factor(s, c) for s in (5, 50, 99, 100, 1000)] == [1.0] * 5
    assert [lr_factor(s, cfg(100, 0, "constant")) for s in (0, 99)] == [1.0, 1.0]


def test_cosine_without_warmup_start_middle_end():
    c = cfg(100, 0)
    assert lr_factor(0, c) == 1.0
    assert lr_factor(25, c) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(50, c) == pytest.approx(0.5)
    assert lr_factor(99, c) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert lr_factor(100, c) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(150, c) == pytest.approx(0.0, abs=1e-15)  # clamped past the end


def test_cosine_after_warmup_spans_the_remaining_steps():
    c = cfg(110, 10)
    assert lr_factor(60, c) == pytest.approx(0.5)  # middle of the 100 cosine steps
    assert lr_factor(110, c) == pytest.approx(0.0, abs=1e-15)
    vals = [lr_factor(s, c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))  # non-increasing


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_steps_equal_to_warmup_is_all_warmup(schedule):
    c = cfg(10, 10, schedule)
    # every trained step (0..9) is a warm-up step; no division by a zero cosine span
    assert [lr_factor(s, c) for s in range(10)] == pytest.approx([(s + 1) / 10
                                                                  for s in range(10)])
    assert lr_factor(10, c) == 1.0


def test_single_step_without_warmup_trains_at_full_lr():
    assert lr_factor(0, cfg(1, 0)) == 1.0
