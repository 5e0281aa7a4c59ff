#!/usr/bin/env bash
# Sets up everything the tests need, then runs lint, format check and every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k stop, scripts/test.sh --soak-long).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements-dev.txt
scripts/install_packages.sh
scripts/build_web.sh

.venv/bin/ruff check .
.venv/bin/ruff format --check .
(cd client/web && npm test)

exec .venv/bin/python -m pytest "$@"
