#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: lint, architecture contracts, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAY_DATA_DISABLE_PROGRESS_BARS=1
ruff check ml_system tests benchmarks jobs
lint-imports
python -m pytest "$@"
