#!/usr/bin/env bash
# Install qsync with its dev extras into .venv (created if missing), then run every check:
# ruff (lint + format), mypy (strict), and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${QSYNC_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[dev]'
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest "$@"
