#!/usr/bin/env bash
# Fetch results from the DVC remote, then mark them up to date for Snakemake: DVC restores files
# in any order (and a fresh clone has no .snakemake/ metadata), so without `--touch` Snakemake's
# timestamp check would retrain what is already there. The touch is for params/config.yaml's
# preset and grid (the Snakefile reads it); another preset's results pulled along:
# `snakemake --cores 1 --touch --config preset=P grid=G`. Run from the repository root with the
# environment's bin on PATH (make pull does this). Extra arguments go to `dvc pull`.
set -euo pipefail
cd "$(dirname "$0")/../.."
dvc pull "$@"
snakemake --cores 1 --touch
