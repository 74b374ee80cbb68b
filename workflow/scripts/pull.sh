#!/usr/bin/env bash
# Fetch results from the DVC remote, then mark them up to date for Snakemake: DVC restores files
# in any order (and a fresh clone has no .snakemake/ metadata), so without `--touch` Snakemake's
# timestamp check would retrain what is already there. Run from the repository root with the
# environment's bin on PATH (make pull does this). Extra arguments go to `dvc pull`.
set -euo pipefail
cd "$(dirname "$0")/../.."
dvc pull "$@"
config=$(python -c "import yaml; c = yaml.safe_load(open('params/config.yaml')); \
print(' '.join(f'{k}={v}' for k, v in c.items()))")
# shellcheck disable=SC2086  # one word per key=value
snakemake --cores 1 --touch --config $config
