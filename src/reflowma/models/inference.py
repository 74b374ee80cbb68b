"""A velocity network called for inference (ODE solves): ``couplings.amp`` and
``couplings.compile``.

``wrap(model, cfg)`` returns what the solver calls, ``v(x, t)``:

* both ``none`` (or absent): ``model`` itself, so the numbers are those of the plain network;
* ``amp: bf16`` (CUDA only; refused elsewhere): the network under bf16 autocast, its output
  cast back to the state's dtype, so the solver's state and its Runge-Kutta sums stay float32
  (only the network's evaluations are rounded);
* ``compile: default | reduce-overhead``: ``torch.compile(model, mode=...)``, shapes static
  (the last, smaller chunk of a stage compiles once more). ``reduce-overhead`` replays CUDA
  graphs, whose outputs live in memory the next replay reuses: the wrapper marks a new step
  before every call and returns a copy, so the stages of a Runge-Kutta step stay valid.

The couplings stage records the options that are not ``none`` in its file's provenance
(``attrs``), so a file is never resumed with other numerics; files made without them keep
the attributes they had.
"""

from __future__ import annotations

import contextlib

import torch

from reflowma.registry import InputError

AMP = ("none", "bf16")
COMPILE = ("none", "default", "reduce-overhead")


def options(cfg: dict) -> dict:
    """The inference options of a stage config that are not ``none`` (provenance)."""
    return {k: cfg[k] for k in ("amp", "compile") if cfg.get(k, "none") != "none"}


def wrap(model: torch.nn.Module, cfg: dict, where: str = "couplings"):
    """The callable ``v(x, t)`` a solver uses for ``model`` under ``cfg``'s ``amp`` and
    ``compile`` (see the module docstring)."""
    amp, mode = cfg.get("amp", "none"), cfg.get("compile", "none")
    if amp not in AMP:
        raise InputError(f"{where}.amp: {amp!r}; allowed: {', '.join(AMP)}")
    if mode not in COMPILE:
        raise InputError(f"{where}.compile: {mode!r}; allowed: {', '.join(COMPILE)}")
    if amp == "none" and mode == "none":
        return model
    dev = next(model.parameters()).device
    if amp == "bf16" and dev.type != "cuda":
        raise InputError(f"{where}.amp: 'bf16' autocast needs a CUDA device, the model is on "
                         f"{dev.type!r}; allowed here: none")
    return InferenceNet(model, amp, mode)


class InferenceNet:
    """``model`` under bf16 autocast and/or ``torch.compile`` (``wrap``); float outputs in
    the input's dtype."""

    def __init__(self, model: torch.nn.Module, amp: str, mode: str):
        self.model = model
        self.net = model if mode == "none" else torch.compile(model, mode=mode, dynamic=False)
        self.amp, self.mode = amp, mode
        self.graphs = mode == "reduce-overhead" and next(model.parameters()).is_cuda

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx = (torch.autocast(x.device.type, dtype=torch.bfloat16) if self.amp == "bf16"
               else contextlib.nullcontext())
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with ctx:
            out = self.net(x, t)
        if out.dtype != x.dtype:
            return out.to(x.dtype)
        return out.clone() if self.graphs else out
