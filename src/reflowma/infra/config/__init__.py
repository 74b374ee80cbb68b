"""Params: a stage's config from the defaults, a named preset and ``key=value`` overrides,
validated before any work (``schemas/params.schema.yaml``); a violation raises ``ConfigError``
with one line naming the field, the value and what is allowed.

One module per job: ``locate`` (which params folder, which preset file), ``load`` (YAML files,
merging, overrides), ``validate`` (the schema and the checks it cannot express), ``stage`` (the
layering of one stage's config), ``fields`` (the fields list of ``--help``), ``errors``. The
names below are the ones the rest of the package and the workflow use.
"""

from reflowma.infra.config.errors import ConfigError, exit_on_bad_params
from reflowma.infra.config.fields import field_docs
from reflowma.infra.config.load import load_yaml, set_by_override
from reflowma.infra.config.locate import PACKAGE_DIR, params_dir, preset_path, repo_root
from reflowma.infra.config.stage import defaults, layered, resolve, stage_config
from reflowma.infra.config.validate import (
    SCHEMA_PATH,
    SHARED,
    STAGES,
    check_dataset_name,
    check_preset,
    schema_error,
)
from reflowma.registry import InputError

__all__ = ["PACKAGE_DIR", "SCHEMA_PATH", "SHARED", "STAGES", "ConfigError", "InputError",
           "check_dataset_name", "check_preset", "defaults", "exit_on_bad_params", "field_docs",
           "layered", "load_yaml", "params_dir", "preset_path", "repo_root", "resolve",
           "schema_error", "set_by_override", "stage_config"]
