"""Run by tests/test_distributed.py under torchrun: ``fit`` on a fixed data set whose global
batch of B rows is split across the ranks (rank r takes the r-th B / world_size rows).

Writes ``<out>/plain.pt`` (an uninterrupted run) and, with ``--interrupt STEP``, also
``<out>/resumed.pt``: a run that rank 1 signals itself at STEP, then a fresh ``fit`` that
resumes from the saved state.
"""

import argparse
import os
import signal
from pathlib import Path

import torch

from reflowma.infra import distributed as ddp
from reflowma.infra.signals import Interrupted
from reflowma.training.loop import fit

CFG = {"lr": 3e-3, "steps": 30, "warmup_steps": 3, "lr_schedule": "cosine", "ema_decay": 0.9,
       "grad_clip": 1.0, "log_every": 5, "checkpoint_every": 10}
B = 64


def train(state: Path, interrupt_at: int | None = None):
    torch.manual_seed(0)
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    ws, rank = ddp.world_size(), ddp.rank()

    def loss_fn(m, step, gen):
        if step == interrupt_at and rank == ws - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        g = torch.Generator().manual_seed(1000 + step)  # one global batch per step
        idx = torch.randint(0, data.shape[0], (B,), generator=g)
        x = data[idx].chunk(ws)[rank]
        return ((m(x) - x.flip(1)) ** 2).mean(), {}

    gen = torch.Generator().manual_seed(7)
    return fit(model, loss_fn, CFG, gen, state, "fp", "ddp-test")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--interrupt", type=int, default=None)
    a = ap.parse_args()
    ddp.init(torch.device("cpu"))
    out = Path(a.out)
    ema, hist = train(out / "plain-state.pt")
    if ddp.is_main():
        torch.save({"ema": ema.state_dict(), "history": hist, "ws": ddp.world_size()},
                   out / "plain.pt")
    if a.interrupt is not None:
        try:
            train(out / "resume-state.pt", a.interrupt)
            raise SystemExit("not interrupted")
        except Interrupted as e:
            step = e.step
        ema, hist = train(out / "resume-state.pt")
        if ddp.is_main():
            torch.save({"ema": ema.state_dict(), "history": hist, "stopped_at": step},
                       out / "resumed.pt")
    ddp.finish()


if __name__ == "__main__":
    main()
