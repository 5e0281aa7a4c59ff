#!/usr/bin/env bash
# Sets up everything the tests need, then runs lint, format check and every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k stop).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements-dev.txt

.venv/bin/ruff check .
.venv/bin/ruff format --check .

exec .venv/bin/python -m pytest "$@"
