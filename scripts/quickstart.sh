#!/usr/bin/env bash
# Install onereason (CPU torch first) and run the whole pipeline on the synthetic world.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
DS_BUILD_OPS=0 python -m pip install -q -e ".[embed]"
onereason quickstart --out "${1:-runs/quickstart}"
