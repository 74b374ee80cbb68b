"""One training loop for teacher and students.

Adam, linear warm-up then cosine or constant LR, EMA of the weights, optional bf16 autocast
(``train.amp``, CUDA only), global grad-norm clipping,
a guard that stops on a non-finite loss, a progress bar, periodic resume checkpoints (atomic),
and preemption handling: SIGTERM/SIGINT make the loop save its state at the next step boundary
and raise ``Interrupted``. A rerun with the same fingerprint resumes from that state and ends
bit-identical (on CPU) to an uninterrupted run: model, optimizer, EMA, generator and history
are all restored.

A time budget (``train.time_budget_s``, absent or null = off) ends training at the first step
boundary where the training time so far (summed over resumes, saved in the state) has reached
it; the learning-rate schedule still runs over ``train.steps``. Unlike the step count, where a
budget ends a run depends on the machine's speed: ``info`` records the steps done, the seconds
and what stopped the run.

Under torchrun (``infra.distributed``) each rank draws its own share of the batch from its own
generator; gradients are averaged across ranks before clipping, logged losses are rank means,
ranks agree on a preemption at the same step, and rank 0 alone writes the state (holding every
rank's generator). With one process nothing of this runs: the numbers are those of before.
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

from reflowma.infra import distributed as ddp
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
    check_amp(mode, next(model.parameters()).device)
    return torch.autocast("cuda", dtype=torch.bfloat16)


def compiled(model: torch.nn.Module, mode: str | None):
    """The module the loss calls under ``train.compile``: ``model`` itself for ``none`` (or
    absent), else ``torch.compile(model, mode=...)`` (``default``, ``reduce-overhead`` = CUDA
    graphs, ``max-autotune``). Parameters are shared, so the optimizer, the EMA and every
    checkpoint keep working on the plain module, and saved states do not depend on the mode."""
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
    through this."""
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


def fit(model: torch.nn.Module, loss_fn, cfg: dict, generator: torch.Generator,
        state_path: str | Path, fingerprint: str, desc: str = "train", on_log=None,
        info: dict | None = None):
    """Train ``model`` in place; return ``(ema_model, history)``.

    ``loss_fn(model, step, generator) -> (loss, extras)``; ``extras`` is a dict of floats that
    is logged every ``log_every`` steps with the loss and learning rate. ``info`` (a dict, if
    given) receives ``steps_done``, ``train_seconds`` (the time inside the step loop, summed
    over resumes), ``time_budget_s`` and ``stopped_by`` (``"steps"`` or ``"time_budget"``).
    """
    state_path = Path(state_path)
    ws, rank = ddp.world_size(), ddp.rank()
    if ws > 1:  # a state of another world size holds other generators
        fingerprint = f"{fingerprint}-ws{ws}"
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    ema = copy.deepcopy(model).requires_grad_(False)
    history: list[dict] = []
    start, spent = 0, 0.0  # steps done and training seconds of earlier (interrupted) runs
    budget = cfg.get("time_budget_s")
    if ddp.is_main():
        atomic.sweep_stale(state_path)  # temporary files of a writer that was killed outright
    ddp.barrier()
    if state_path.exists():
        st = checkpoint.load(state_path)
        if st.get("fingerprint") == fingerprint:
            model.load_state_dict(st["model"])
            ema.load_state_dict(st["ema"])
            opt.load_state_dict(st["optimizer"])
            generator.set_state(st["generators"][rank] if ws > 1 else st["generator"])
            history, start = list(st["history"]), int(st["step"])
            spent = float(st.get("train_seconds", 0.0))
            log.info("resuming %s from step %d (%s)", desc, start, state_path)
        else:
            log.warning("ignoring %s: made with another config", state_path)
    ddp.broadcast_params(model)

    def elapsed():
        return spent + time.perf_counter() - t0

    def save_state(step):
        if ws > 1:  # a collective: every rank sends its generator, rank 0 writes
            gens = ddp.gather_objects(generator.get_state())
            if ddp.is_main():
                checkpoint.save(state_path, {
                    "fingerprint": fingerprint, "step": step, "model": model.state_dict(),
                    "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                    "generators": gens, "world_size": ws, "history": history,
                    "train_seconds": elapsed()})
            return
        checkpoint.save(state_path, {
            "fingerprint": fingerprint, "step": step, "model": model.state_dict(),
            "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "generator": generator.get_state(), "history": history,
            "train_seconds": elapsed()})

    amp = autocast(cfg.get("amp", "none"), model)
    net = compiled(model, cfg.get("compile"))
    decay = cfg["ema_decay"]
    params, ema_params = list(model.parameters()), list(ema.parameters())
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg["steps"]), desc=desc, initial=start, total=cfg["steps"],
               mininterval=1.0, dynamic_ncols=True, disable=not ddp.is_main())
    done, stopped_by, last = start, "steps", None
    with PreemptionSignals() as sig:
        for step in bar:
            if budget is not None:
                over = budget_reached(elapsed(), budget)
                if ws > 1:  # every rank stops at the same step (rank 0's clock need not agree)
                    over = bool(ddp.all_reduce([float(over)], "max")[0])
                if over:
                    stopped_by = "time_budget"
                    break
            received = sig.received
            if ws > 1:  # every rank stops at the same step when any of them was signalled
                received = int(ddp.all_reduce([received or 0], "max")[0]) or None
            if received is not None:
                save_state(step)
                bar.close()
                raise Interrupted(received, step)
            for g in opt.param_groups:
                g["lr"] = cfg["lr"] * lr_factor(step, cfg)
            with amp:
                loss, extras = loss_fn(net, step, generator)
            if ws > 1:  # rank means: every rank sees the same loss, finite or not
                names = list(extras)
                vals = ddp.all_reduce([loss.item(), *(float(extras[k]) for k in names)], "mean")
                extras = dict(zip(names, vals[1:], strict=True))
                logged = torch.tensor(vals[0])
            else:
                logged = loss
            if not torch.isfinite(logged):
                bar.close()
                raise NonFiniteLoss(f"{desc}: non-finite loss {logged.item()} at step {step} "
                                    f"(lr={opt.param_groups[0]['lr']:.3g}); nothing was promoted")
            optimizer_step(model, opt, loss, cfg["grad_clip"], ddp.average_gradients, params)
            ema_update(ema_params, params, decay)
            done = step + 1
            if (step + 1) % cfg["log_every"] == 0 or step + 1 == cfg["steps"]:
                row = {"step": step + 1, "loss": logged.item(), "lr": opt.param_groups[0]["lr"],
                       **{k: float(v) for k, v in extras.items()}}
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                if on_log:
                    on_log(row)
            else:  # kept in case a time budget ends the run before the next logged step
                last = (step + 1, logged.detach(), extras, opt.param_groups[0]["lr"])
            if (step + 1) % cfg["checkpoint_every"] == 0 and step + 1 < cfg["steps"]:
                save_state(step + 1)
    seconds = elapsed()
    bar.close()
    if stopped_by == "time_budget" and last is not None and last[0] == done:
        step1, logged, extras, lr = last  # the last step's row, as a logged step has one
        row = {"step": step1, "loss": logged.item(), "lr": lr,
               **{k: float(v) for k, v in extras.items()}}
        history.append(row)
        if on_log:
            on_log(row)
    log.info("%s: %d steps in %.1f s%s", desc, done - start, time.perf_counter() - t0,
             f" (time budget {budget:g} s reached)" if stopped_by == "time_budget" else "")
    if info is not None:
        info.update(steps_done=done, train_seconds=seconds, time_budget_s=budget,
                    stopped_by=stopped_by)
    return ema, history
