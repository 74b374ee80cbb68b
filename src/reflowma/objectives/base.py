"""The objective interface: a training loss is a weighted sum of registered terms.

A term is built from the reflow config and a ``Context`` (the teacher states at the window ends,
K, the device, the frozen teacher) by a factory registered in ``OBJECTIVES``. Calling it draws
its own batch from the shared generator and returns ``(loss, logs)``. ``Objective`` sums the
terms that are on at a step (``term.start_step``); it is the ``loss_fn(v, step, generator)`` the
training loop calls, and the benchmarks time the same object.

Draws happen where the generator lives (``device=generator.device``), and the batch is indexed
out of ``Context.ends`` where they live: the CPU generator with ends on the CPU (batches are
moved to ``device``), or a generator and ends both on ``device`` (``train.data_on_device``).
Logs are detached tensors (no host-device sync per step): the training loop converts them to
floats on the steps it logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reflowma.registry import Registry

OBJECTIVES = Registry("reflow.objectives[].name")


def eager(v):
    """The module behind ``torch.compile(module)`` (its ``_orig_mod``), else ``v`` itself: what a
    term calls when it differentiates twice (AOTAutograd, behind a compiled module, has no
    double backward). Same parameters, same values."""
    return getattr(v, "_orig_mod", v)


@dataclass
class Context:
    """What a term may use. ``ends``: teacher states at the K + 1 window ends ``[N, K + 1, *data]``
    (``t_k = k / K``, t = 0 noise), on the CPU or on ``device`` (on the generator's device,
    see the module docstring); batches are moved to ``device``."""

    ends: torch.Tensor
    K: int
    device: torch.device
    teacher: torch.nn.Module | None = None
    steps: int = 1


@dataclass
class Term:
    """One weighted loss term: subclasses implement ``loss(v, generator) -> (tensor, logs)``,
    logs a dict of detached tensors (or floats)."""

    key: str
    weight: float = 1.0
    start_step: int = 0

    def loss(self, v, generator: torch.Generator):  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Objective:
    """Weighted sum of terms; logs each term's value under its key (``key_stat`` for stats),
    as detached tensors."""

    terms: list[Term] = field(default_factory=list)

    def __call__(self, v, step: int, generator: torch.Generator):
        total, logs = None, {}
        for term in self.terms:
            if step < term.start_step:
                continue
            value, stats = term.loss(v, generator)
            total = value * term.weight if total is None else total + term.weight * value
            logs[term.key] = value.detach()
            logs.update({f"{term.key}_{k}": s for k, s in stats.items()})
        return total, logs

    def keys(self) -> list[str]:
        return [t.key for t in self.terms]
