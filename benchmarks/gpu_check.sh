#!/usr/bin/env bash
# GPU checks for the serving GPU variant; run on a machine with an NVIDIA GPU after scripts/setup.sh.
#   bash benchmarks/gpu_check.sh [MLSYS_HOME]
# 1. tests/gpu (CUDA scoring equals CPU scoring); 2. the GPU serve config deployed on a local
# cluster with a trained home, one request, and the device the scorer reports (must be cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
nvidia-smi -L
python -c "import xgboost; print('xgboost', xgboost.__version__, 'CUDA build:', xgboost.build_info().get('USE_CUDA'))"
python -m pytest -q tests/gpu -rs
HOME_DIR=${1:-${MLSYS_HOME:-$(mktemp -d)/mlsys}}
python - "$HOME_DIR" <<'PY'
import sys, tempfile, httpx, ray, yaml
from pathlib import Path
from ml_system.config import load_config
from ml_system.serving.deploy import deploy_config
from ml_system.pipelines import steps
from ml_system.usecase import load_usecase
from ml_system.usecases.flights.demo import DEMO_CUTOFF, demo_requests

home = sys.argv[1]
cfg = load_config(environ={"MLSYS_HOME": home})
ray.init(address="local", object_store_memory=1_000_000_000, include_dashboard=False)
if not (Path(home) / "online.db").exists():
    flights = load_usecase("flights")
    steps.build_features(cfg, flights)
    steps.train(cfg, flights, num_samples=1, num_boost_round=200)
    steps.materialize(cfg, end=DEMO_CUTOFF.to_pydatetime())
doc = yaml.safe_load(open("serve_configs/flight_delay_gpu.yaml"))
doc["http_options"]["port"] = 8123
doc["applications"][0]["args"]["home"] = home
url = deploy_config(doc)["flight_delay"]
info = httpx.get(f"{url}/info", timeout=30).json()
print("scorer device:", info["device"], "served by", info["served_by"])
rows = demo_requests(cfg)
resp = httpx.post(f"{url}/predict", json={"flights": rows[:100]}, timeout=60)
print("predict:", resp.status_code, resp.json()["predictions"][0])
ray.shutdown()
assert info["device"] == "cuda", "the GPU variant scored on CPU"
PY
