"""``reflowma describe``: every stage's resolved config under a preset and overrides, and for
the stages that train a network (teacher, reflow) the data shape and the parameter count,
built on the meta device (no weights allocated, no data read)."""

from __future__ import annotations

import json

import torch

from reflowma import data, models
from reflowma.infra import config


def stage_config(stage: str, params, overrides, refused: dict) -> dict:
    """A stage's config under ``describe``'s overrides: ``STAGE.key=value`` ones of this stage,
    and each unqualified one that this stage's own command accepts (``net.channels=32`` sets
    the teacher's and the students' UNet; the couplings have no net and the classifier's
    ``channels`` is a list). An unqualified override this stage refuses is kept in
    ``refused`` with the error; ``describe`` fails on one that every stage refuses."""
    mine = [o for o in overrides if o.split("=", 1)[0].split(".")[0] == stage]
    for o in overrides:
        if o.split("=", 1)[0].split(".")[0] in config.STAGES:
            continue
        try:
            config.stage_config(stage, params, [*mine, o], check_files=False)
        except config.ConfigError as e:
            if not config.set_by_override(e.field, [o]):
                raise
            refused.setdefault(o, []).append(e)
            continue
        mine.append(o)
        refused.setdefault(o, []).append(None)
    return config.stage_config(stage, params, mine, check_files=False)


def describe(params, overrides=()) -> dict:
    """``{stage: {"config": ..., ["data_shape": ..., "n_params": ...]}}`` of a preset."""
    out, taken = {}, {}
    for stage in config.STAGES:
        if stage == "classifier" and not out["evaluate"]["config"].get("fd_classifier"):
            continue  # a job only where evaluate uses it
        out[stage] = {"config": stage_config(stage, params, overrides, taken)}
    for errors in taken.values():
        if None not in errors:  # refused by every stage: the first stage's reason
            raise errors[0]
    for stage, d in out.items():
        cfg = d["config"]
        if "net" in cfg and stage != "classifier":
            shape = data.declared_shape(cfg["data"])
            with torch.device("meta"):
                net = models.build(shape, cfg["net"])
            d |= {"data_shape": list(shape), "n_params": models.n_params(net)}
    return out


def main(params, overrides=()) -> int:
    """Print ``describe`` as JSON."""
    print(json.dumps(describe(params, overrides), indent=2))
    return 0
