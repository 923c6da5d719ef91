#!/usr/bin/env bash
# Create .venv with Python 3.11 and install ml_system with the pinned dependency set.
# System packages the tests and benchmarks use (redis-server, wrk, openssl) come from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the Redis TLS test makes a throwaway certificate
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: install ${missing[*]} (tests that need them will fail)" >&2
  fi
fi
# PostgreSQL on its standard port: MLflow's tracking store in the cluster-mode test (docs/cluster.md).
# Machines of this project run it already; a Debian machine without it gets the package and its cluster started.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    command -v pg_ctlcluster >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
    pg_lsclusters -h | while read -r version name _; do pg_ctlcluster "$version" "$name" start || true; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || echo "warning: PostgreSQL is not running on 127.0.0.1:5432 (tests/features/test_cluster_mode.py needs it; or set MLSYS_TEST_POSTGRES_URL)" >&2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/python -m pip check
# Airflow 3 in its own venv (its pins clash with MLflow's): the exported DAG's test uses it.
# About 2 minutes the first time; MLSYS_SKIP_AIRFLOW=1 skips it (that test is then skipped).
[ "${MLSYS_SKIP_AIRFLOW:-0}" = 1 ] || bash scripts/setup_airflow.sh
