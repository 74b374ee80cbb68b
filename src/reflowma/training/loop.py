"""One training loop for teacher and students.

Adam, linear warm-up then cosine or constant LR, EMA of the weights, optional bf16 autocast
(``train.amp``, CUDA only), global grad-norm clipping,
a guard that stops on a non-finite loss, a progress bar, periodic resume checkpoints (atomic),
and preemption handling: SIGTERM/SIGINT make the loop save its state at the next step boundary
and raise ``Interrupted``. A rerun with the same fingerprint resumes from that state and ends
bit-identical (on the same device) to an uninterrupted run: model, optimizer, EMA, the
generator of the draws (CPU or device), the global RNGs (dropout) and history are all restored.

No step waits for the device except the logged ones: the loss and the objectives' logs stay
tensors, and the non-finite guard keeps each step's loss on the device (``FiniteGuard``) and
reads them on logged steps, before every checkpoint and at the end, so no state or model file
ever holds weights updated from a non-finite loss. The error names the first bad step.

Levers for accelerators, each on its own (``docs/gpu.md``): ``train.fused_optimizer`` (fused
Adam; ``auto``: on CUDA), ``train.channels_last`` (image nets: weights and inputs in
channels-last memory format), ``train.compile`` (``torch.compile`` of the network: its forward
and backward; ``reduce-overhead``: CUDA graphs), ``train.lr_scaling`` with
``train.lr_reference_batch`` (a larger batch with its learning-rate rule). The stages place the
draws (``train.data_on_device``): the loop saves whichever generator it is given.

A time budget (``train.time_budget_s``, absent or null = off) ends training at the first step
boundary where the training time so far (summed over resumes, saved in the state) has reached
it; the learning-rate schedule still runs over ``train.steps``. Unlike the step count, where a
budget ends a run depends on the machine's speed: ``info`` records the steps done, the seconds
and what stopped the run.

Under torchrun (``infra.distributed``) each rank draws its own share of the batch from its own
generator; gradients are averaged across ranks before clipping, logged losses are rank means,
ranks agree on a preemption at the same step and on the first non-finite step, and rank 0
alone writes the state (holding every rank's generator). With one process nothing of this
runs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reflowma.infra import distributed
from reflowma.infra.signals import Interrupted, PreemptionSignals
from reflowma.infra.storage import atomic, checkpoint
from reflowma.registry import InputError

log = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
    pass


def lr_factor(step: int, cfg: dict) -> float:
    warm = cfg["warmup_steps"]
    if warm and step < warm:
        return (step + 1) / warm
    if cfg["lr_schedule"] == "constant":
        return 1.0
    span = max(1, cfg["steps"] - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))


# lr_eff = lr * f(batch_size / lr_reference_batch) (docs/gpu.md: when each rule holds)
LR_SCALING = {"linear": lambda r: r, "sqrt": math.sqrt}


def base_lr(cfg: dict) -> float:
    """The peak learning rate: ``train.lr``, times ``f(batch_size / lr_reference_batch)`` under
    ``train.lr_scaling`` (``linear``: f(r) = r, ``sqrt``: f(r) = sqrt(r); ``none``: lr)."""
    mode = cfg.get("lr_scaling") or "none"
    if mode == "none":
        return cfg["lr"]
    return cfg["lr"] * LR_SCALING[mode](cfg["batch_size"] / cfg["lr_reference_batch"])


def on_accelerator(value, dev: torch.device) -> bool:
    """A ``auto | true | false`` field on ``dev``: ``auto`` (or absent) is true on CUDA."""
    return dev.type == "cuda" if value in (None, "auto") else bool(value)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def make_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """Adam at ``base_lr(cfg)``: fused (one kernel per parameter group) under
    ``train.fused_optimizer`` (``auto``: on CUDA), else PyTorch's default implementation
    (the for-loop one on the CPU, multi-tensor on CUDA)."""
    if on_accelerator(cfg.get("fused_optimizer"), model_device(model)):
        return torch.optim.Adam(model.parameters(), lr=base_lr(cfg), fused=True)
    return torch.optim.Adam(model.parameters(), lr=base_lr(cfg))


def check_amp(mode: str, dev) -> None:
    """``train.amp`` other than ``none`` needs a CUDA device: refused on any other (e.g.
    ``device: auto`` without a GPU), not silently ignored. The training stages call it as soon
    as the device is resolved, before anything is written."""
    dev = torch.device(dev)
    if mode != "none" and dev.type != "cuda":
        raise InputError(f"train.amp: {mode!r} autocast needs a CUDA device, the model is on "
                         f"{dev.type!r}; allowed here: none")


def autocast(mode: str, model: torch.nn.Module):
    """The context of ``train.amp``: bf16 autocast on CUDA, nothing for ``none``
    (``check_amp`` refuses it elsewhere)."""
    if mode == "none":
        return contextlib.nullcontext()
    check_amp(mode, model_device(model))
    return torch.autocast("cuda", dtype=torch.bfloat16)


def check_channels_last(cfg: dict, data_shape, where: str) -> None:
    """``train.channels_last: true`` needs image data ``[C, H, W]``: one line otherwise."""
    if cfg.get("channels_last") and len(tuple(data_shape)) != 3:
        raise InputError(f"{where}.train.channels_last: true needs image data [C, H, W]; the "
                         f"data's samples have shape {tuple(data_shape)}; allowed here: false")


class ChannelsLastInputs(torch.nn.Module):
    """Calls ``model`` with its first input in channels-last memory format (the model's
    weights are converted once, by ``fit``); the parameters are the model's own."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, *args, **kwargs):
        return self.model(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)


def compiled(model: torch.nn.Module, mode: str | None):
    """The module the loss calls under ``train.compile``: ``model`` itself for ``none`` (or
    absent), else ``torch.compile(model, mode=...)`` (``default``, ``reduce-overhead`` = CUDA
    graphs, ``max-autotune``): the network's forward and, through AOTAutograd, its backward.
    Parameters are shared, so the optimizer, the EMA and every checkpoint keep working on the
    plain module, and saved states do not depend on the mode. A term that differentiates twice
    (the regularizer's log-det) calls the plain module (``objectives.base.eager``): AOTAutograd
    has no double backward."""
    if mode in (None, "none"):
        return model
    return torch.compile(model, mode=mode)


def budget_reached(seconds: float, budget: float | None) -> bool:
    """Whether ``seconds`` of training have used up a time budget (None: no budget)."""
    return budget is not None and seconds >= budget


def optimizer_step(model: torch.nn.Module, opt, loss: torch.Tensor, grad_clip: float | None,
                   sync_gradients=None, params: list | None = None) -> None:
    """One update: zero the gradients, backward, ``sync_gradients(params)`` (data-parallel
    ranks), clip the global norm to ``grad_clip`` (None: no clipping), the optimizer's step.
    ``params``: ``list(model.parameters())`` if given (a loop keeps the list instead of walking
    the modules on every step). ``fit`` and the reflow stage's pace measurement both step
    through this. Nothing here reads a value back from the device."""
    params = list(model.parameters()) if params is None else params
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if sync_gradients is not None:
        sync_gradients(params)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def ema_update(ema_params: list, params: list, decay: float) -> None:
    """``e <- decay e + (1 - decay) p`` for every pair, as one multi-tensor op each (the
    per-tensor ``mul_`` / ``add_`` in the same order: the same values to the bit)."""
    with torch.no_grad():
        torch._foreach_mul_(ema_params, decay)
        torch._foreach_add_(ema_params, [p.detach() for p in params], alpha=1 - decay)


# train fields that say how a step runs, at the values that compute what a config without them
# computes: a run's fingerprint leaves them out at these values (``identity``)
NEUTRAL = {"compile": "none", "channels_last": False, "data_on_device": "auto",
           "fused_optimizer": "auto", "lr_scaling": "none", "lr_reference_batch": None}
# the same for the fields of other sections: options that, at these values, compute what a
# config without them computes
NEUTRAL_BY_SECTION = {"train": NEUTRAL, "regularizer": {"share_window_start": False}}


def identity(cfg: dict) -> dict:
    """A stage config as its run's fingerprint sees it: without the stage's own ``eval``
    section (it does not change training) and without the fields of ``NEUTRAL_BY_SECTION``
    at those values, so that spelling them out changes no resume state or model file."""
    out = {k: v for k, v in cfg.items() if k != "eval"}
    for section, neutral in NEUTRAL_BY_SECTION.items():
        if isinstance(cfg.get(section), dict):
            out[section] = {k: v for k, v in cfg[section].items()
                            if k not in neutral or v != neutral[k]}
    return out


NO_STEP = 2**62  # no non-finite loss so far


class FiniteGuard:
    """The non-finite-loss guard without a host-device sync per step: ``update`` keeps each
    step's loss (a detached 0-d tensor: no kernel, no read), ``check`` reads the losses kept
    since the last check at once (one sync) and raises ``NonFiniteLoss`` naming the first
    non-finite one's step. Under torchrun every rank calls ``check`` at the same steps and all
    agree on the earliest bad step of any rank."""

    def __init__(self, desc: str, lr_at):
        self.desc, self.lr_at = desc, lr_at
        self.steps: list[int] = []
        self.losses: list[torch.Tensor] = []

    def update(self, loss: torch.Tensor, step: int) -> None:
        self.steps.append(step)
        self.losses.append(loss.detach())

    def check(self) -> None:
        first, value = NO_STEP, 0.0
        if self.losses:
            vals = torch.stack(self.losses)
            bad = ~torch.isfinite(vals)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                first, value = self.steps[i], float(vals[i])
            self.steps, self.losses = [], []
        if distributed.world_size() > 1:  # the earliest bad step of any rank, and its loss there
            earliest = int(distributed.all_reduce([float(first)], "min")[0])
            value = distributed.all_reduce([value if first == earliest else 0.0], "sum")[0]
            first = earliest
        if first != NO_STEP:
            raise NonFiniteLoss(f"{self.desc}: non-finite loss {value} at step {first} "
                                f"(lr={self.lr_at(first):.3g}); nothing was promoted")


def global_rng_state(dev: torch.device) -> dict:
    """The global RNGs a step may draw from outside its generator (dropout): the CPU's, and
    ``dev``'s on CUDA."""
    state = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def set_global_rng_state(state: dict | None, dev: torch.device) -> None:
    if not state:
        return
    torch.set_rng_state(state["cpu"])
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def fit(model: torch.nn.Module, loss_fn, cfg: dict, generator: torch.Generator,
        state_path: str | Path, fingerprint: str, desc: str = "train", on_log=None,
        info: dict | None = None):
    """Train ``model`` in place; return ``(ema_model, history)``.

    ``loss_fn(model, step, generator) -> (loss, extras)``; ``extras`` is a dict of detached
    tensors (or floats), logged as floats every ``log_every`` steps with the loss and learning
    rate. ``generator`` draws every random number of a step, on the CPU or on the model's
    device; its state is part of the resume state. ``info`` (a dict, if given) receives
    ``steps_done``, ``train_seconds`` (the time inside the step loop, summed over resumes),
    ``time_budget_s`` and ``stopped_by`` (``"steps"`` or ``"time_budget"``).
    """
    state_path = Path(state_path)
    world_size, rank = distributed.world_size(), distributed.rank()
    if world_size > 1:  # a state of another world size holds other generators
        fingerprint = f"{fingerprint}-ws{world_size}"
    if generator.device.type != "cpu":  # a device generator's state is another kind
        fingerprint = f"{fingerprint}-gen-{generator.device.type}"
    dev = model_device(model)
    if cfg.get("channels_last"):  # the weights once; the inputs on every call
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    history: list[dict] = []
    start, spent = 0, 0.0  # steps done and training seconds of earlier (interrupted) runs
    budget = cfg.get("time_budget_s")
    if distributed.is_main():
        atomic.sweep_stale(state_path)  # temporary files of a writer that was killed outright
    distributed.barrier()
    if state_path.exists():
        st = checkpoint.load(state_path)
        if st.get("fingerprint") == fingerprint:
            model.load_state_dict(st["model"])
            ema.load_state_dict(st["ema"])
            opt.load_state_dict(st["optimizer"])
            generator.set_state(st["generators"][rank] if world_size > 1 else st["generator"])
            set_global_rng_state((st.get("rngs") or [None] * world_size)[rank] if world_size > 1
                                 else st.get("rng"), dev)
            history, start = list(st["history"]), int(st["step"])
            spent = float(st.get("train_seconds", 0.0))
            log.info("resuming %s from step %d (%s)", desc, start, state_path)
        else:
            log.warning("ignoring %s: made with another config", state_path)
    distributed.broadcast_params(model)
    lr0 = base_lr(cfg)
    guard = FiniteGuard(desc, lambda step: lr0 * lr_factor(step, cfg))

    def elapsed():
        return spent + time.perf_counter() - t0

    def save_state(step):
        guard.check()  # never a state with weights updated from a non-finite loss
        if world_size > 1:  # a collective: every rank sends its generator, rank 0 writes
            gens = distributed.gather_objects(generator.get_state())
            rngs = distributed.gather_objects(global_rng_state(dev))
            if distributed.is_main():
                checkpoint.save(state_path, {
                    "fingerprint": fingerprint, "step": step, "model": model.state_dict(),
                    "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                    "generators": gens, "rngs": rngs, "world_size": world_size,
                    "history": history, "train_seconds": elapsed()})
            return
        checkpoint.save(state_path, {
            "fingerprint": fingerprint, "step": step, "model": model.state_dict(),
            "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "generator": generator.get_state(), "rng": global_rng_state(dev),
            "history": history, "train_seconds": elapsed()})

    def logged_row(step1, loss, extras, lr):
        """The history row of a step: floats (rank means under torchrun)."""
        names = list(extras)
        vals = [float(loss), *(float(extras[k]) for k in names)]
        if world_size > 1:
            vals = distributed.all_reduce(vals, "mean")
        return {"step": step1, "loss": vals[0], "lr": lr,
                **dict(zip(names, vals[1:], strict=True))}

    amp = autocast(cfg.get("amp", "none"), model)
    mode = cfg.get("compile")
    net = compiled(ChannelsLastInputs(model) if cfg.get("channels_last") else model, mode)
    cudagraphs = mode == "reduce-overhead" and dev.type == "cuda"
    decay = cfg["ema_decay"]
    params, ema_params = list(model.parameters()), list(ema.parameters())
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg["steps"]), desc=desc, initial=start, total=cfg["steps"],
               mininterval=1.0, dynamic_ncols=True, disable=not distributed.is_main())
    done, stopped_by, last = start, "steps", None
    try:
        with PreemptionSignals() as sig:
            for step in bar:
                if budget is not None:
                    over = budget_reached(elapsed(), budget)
                    if world_size > 1:  # every rank stops at the same step (clocks need not agree)
                        over = bool(distributed.all_reduce([float(over)], "max")[0])
                    if over:
                        stopped_by = "time_budget"
                        break
                received = sig.received
                if world_size > 1:  # every rank stops at the same step when any was signalled
                    received = int(distributed.all_reduce([received or 0], "max")[0]) or None
                if received is not None:
                    save_state(step)
                    raise Interrupted(received, step)
                lr = lr0 * lr_factor(step, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                if cudagraphs:  # a new iteration: the graphs' outputs of the last one are done
                    torch.compiler.cudagraph_mark_step_begin()
                with amp:
                    loss, extras = loss_fn(net, step, generator)
                guard.update(loss, step)
                logs = (step + 1) % cfg["log_every"] == 0 or step + 1 == cfg["steps"]
                if logs:
                    guard.check()
                optimizer_step(model, opt, loss, cfg["grad_clip"], distributed.average_gradients,
                               params)
                ema_update(ema_params, params, decay)
                done = step + 1
                if logs:
                    row = logged_row(step + 1, loss.detach(), extras, lr)
                    history.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                    if on_log:
                        on_log(row)
                else:  # kept in case a time budget ends the run before the next logged step
                    last = (step + 1, loss.detach(), extras, lr)
                if (step + 1) % cfg["checkpoint_every"] == 0 and step + 1 < cfg["steps"]:
                    save_state(step + 1)
    finally:
        bar.close()
    seconds = elapsed()
    guard.check()  # the weights returned are never updated from a non-finite loss
    if stopped_by == "time_budget" and last is not None and last[0] == done:
        row = logged_row(*last)  # the last step's row, as a logged step has one
        history.append(row)
        if on_log:
            on_log(row)
    log.info("%s: %d steps in %.1f s%s", desc, done - start, time.perf_counter() - t0,
             f" (time budget {budget:g} s reached)" if stopped_by == "time_budget" else "")
    if info is not None:
        info.update(steps_done=done, train_seconds=seconds, time_budget_s=budget,
                    stopped_by=stopped_by)
    return ema, history
