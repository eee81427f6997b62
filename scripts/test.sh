#!/usr/bin/env bash
# Install onereason with its test extras (CPU torch first) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0
DS_BUILD_OPS=0 python -m pip install -q -e ".[dev]"
# Plain `pytest`, as a contributor types it (not `python -m pytest`, which adds the current folder
# to sys.path and would hide an import that only works from the repository root).
pytest -q --durations=15 "$@"
