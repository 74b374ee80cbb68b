"""InceptionV3 features through torch-fidelity, as a worker process (run by its file path).

This file imports nothing from reflowma: it runs under any interpreter where ``torch_fidelity``
imports (the CPU machines' ``.venv-inception`` with its own torch/torchvision pair, or a
cluster's conda env), while the evaluation runs in the main environment
(``reflowma.evaluation.inception.FeatureWorker`` starts it and talks to it).

    python inception_worker.py --weights W [--device cpu] [--batch-size 200]

loads torch-fidelity's ``FeatureExtractorInceptionV3`` from the local file ``W`` (a
``torch.save`` of its ``state_dict``; a missing file is an error, never a download), prints
one JSON line ``{"ready": ...}`` (versions, device), then answers each stdin line
``{"in": IN.npy, "out": OUT.npy}`` (``IN``: uint8 ``[N, 3, H, W]``) by saving the float32
``[N, 2048]`` pool features to ``OUT`` and printing ``{"n": N}``; it exits at the end of
stdin.

    python inception_worker.py --write-random-weights W [--seed 0]

writes a randomly initialised weights file of the same format (for tests: the loading path
runs without the real weights, which are never downloaded).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

FEATURE = "2048"  # torch-fidelity's layer for FID, KID and precision/recall
EXTRACTOR_NAME = "inception-v3-compat"


def load_extractor(weights: str, device: str = "cpu"):
    """torch-fidelity's InceptionV3 (features ``2048``) from the local file ``weights``."""
    if not Path(weights).is_file():  # torch-fidelity downloads when given no path: never
        raise FileNotFoundError(f"Inception weights file {weights!r} does not exist")
    net = FeatureExtractorInceptionV3(EXTRACTOR_NAME, [FEATURE],
                                      feature_extractor_weights_path=str(weights))
    return net.to(torch.device(device))


def features(net, images, batch_size: int = 200):
    """float32 ``[N, 2048]`` numpy features of uint8 ``images [N, 3, H, W]`` (resized to
    299 x 299 inside the extractor, as torch-fidelity does)."""
    dev = next(net.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i: i + batch_size])).to(dev)
            (f,) = net(x)
            out.append(f.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)


def write_random_weights(path: str, seed: int = 0) -> None:
    """A randomly initialised ``FeatureExtractorInceptionV3`` state_dict at ``path``: the
    module is built with an empty state_dict loaded non-strictly (no download, default init).
    Its batch-norm statistics are then set from one forward pass on 4 random images (with
    the default running statistics the activations shrink layer by layer to ~1e-8; with
    these the pool features are O(1), so distances between feature sets mean something)."""
    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return super().load_state_dict(state_dict, strict=False)

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as d:
        empty = Path(d) / "empty.pt"
        torch.save({}, empty)
        net = _Unloaded(EXTRACTOR_NAME, [FEATURE], feature_extractor_weights_path=str(empty))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # running statistics = the statistics of the batches seen
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    net.eval()
    torch.save(net.state_dict(), path)


def serve(net, batch_size: int, stdin=sys.stdin, stdout=sys.stdout) -> None:
    for line in stdin:
        req = json.loads(line)
        f = features(net, np.load(req["in"]), batch_size)
        np.save(req["out"], f)
        print(json.dumps({"n": int(f.shape[0])}), file=stdout, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--write-random-weights", metavar="PATH")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.write_random_weights:
        write_random_weights(a.write_random_weights, a.seed)
        return 0
    if not Path(a.weights or "").is_file():
        raise FileNotFoundError(f"Inception weights file {a.weights!r} does not exist")
    net = load_extractor(a.weights, a.device)
    print(json.dumps({"ready": True, "torch_fidelity": torch_fidelity.__version__,
                      "torch": torch.__version__, "device": a.device, "feature": FEATURE,
                      "python": sys.executable}), flush=True)
    serve(net, a.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
