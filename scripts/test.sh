#!/usr/bin/env bash
# Install qsync with its dev extras into .venv (created if missing), then run every check:
# ruff (lint + format), mypy (strict, qsync and tests), the API reference (pdoc), and the whole pytest suite on two workers (Debian's chromium is
# installed for the browser test when missing and we are root).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${QSYNC_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[dev]'
# The browser test drives Debian's chromium (Playwright's own browser download does not work offline).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
# The API reference, from the docstrings (build/api/index.html): built on every run, so it cannot rot.
"$VENV/bin/pdoc" --docformat markdown -o build/api qsync qsync.spec qsync.catalog qsync.embedders qsync.sink \
  qsync.ledger qsync.input qsync.engine qsync.stages qsync.money qsync.ops qsync.app qsync.cli qsync.notebook \
  qsync.testing '!qsync.testing.__main__' >/dev/null
# Two workers (pytest-xdist; QSYNC_TEST_WORKERS=0 for none), fed one test at a time so that the slow tests,
# collected first (tests/conftest.py), never start last.
"$VENV/bin/python" -m pytest -n "${QSYNC_TEST_WORKERS:-2}" --dist load --maxschedchunk 1 "$@"
