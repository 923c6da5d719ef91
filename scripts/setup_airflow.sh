#!/usr/bin/env bash
# .venv-airflow: Apache Airflow 3 and Ray's job submission client, pinned, apart from .venv.
# Airflow's pins (SQLAlchemy, FastAPI, ...) and MLflow's cannot share one environment; the DAG file
# that `mlsys pipeline export-airflow` writes imports only airflow and ray (whose job client needs aiohttp).
# The test of the exported DAG (tests/pipelines/test_airflow_dag.py) runs when this venv exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${AIRFLOW_VENV:-.venv-airflow}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c scripts/airflow-constraints.txt "apache-airflow==3.3.2" "ray==2.60.0" aiohttp
"$VENV/bin/python" -m pip check
