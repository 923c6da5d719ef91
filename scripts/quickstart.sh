#!/usr/bin/env bash
# Set up (idempotent) and run the whole loop once on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mlsys quickstart "$@"
