"""Velocity networks ``v(x, t)``, chosen by ``net.name`` (x ``[B, *data]``, t ``[B]``).

``MODELS`` maps a name to ``factory(data_shape, net_cfg) -> nn.Module``; ``build`` looks the name
up (``mlp`` when the section names none, as in files written before names existed). A factory
may carry a ``schema`` attribute (a JSON schema of its ``net`` section), checked at validation;
the built-ins' schemas are ``net_<name>`` in ``schemas/params.schema.yaml``.
"""

from __future__ import annotations

from reflowma.registry import Registry

MODELS = Registry("net.name")
MODELS.register("mlp", "reflowma.models.mlp:build")
MODELS.register("unet", "reflowma.models.unet:build")


def build(data_shape, cfg: dict):
    """Network from the ``net`` section of a stage config (``name`` picks the architecture)."""
    return MODELS.get(cfg.get("name", "mlp"))(tuple(data_shape), cfg)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
