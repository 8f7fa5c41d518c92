#!/usr/bin/env bash
# Set up .venv from nothing: torch first with the exact pin (an unpinned torch, or a package that
# pulls a newer one, installs a multi-GB CUDA build), then the toolkit with the pin as a constraint.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".[convert,test]"
