#!/usr/bin/env bash
# A head and one worker node on this machine, to try multi-node placement locally.
#   bash cluster/start_local_cluster.sh        # start
#   ray stop                                   # stop both
# Token authentication is on: the token is made when missing (~/.ray/auth_token, mode 0600) and
# both nodes start with RAY_AUTH_MODE=token. Clients: mlsys and the jobs find the token themselves;
# for `ray job submit` and `serve deploy` export RAY_AUTH_MODE=token.
# With two nodes, stores on one node's disk are refused; both nodes share this machine's disk, so
# declare it: MLSYS_RAY__SHARED_PATHS=$HOME/.mlsys MLSYS_ONLINE_STORE__TYPE=redis (README, "More than one node").
set -euo pipefail
HEAD_PORT=${HEAD_PORT:-6380}   # 6379 is the machine's Redis
# the settings of the documented start path (README), as cluster/ray-cluster.yaml uses them
export RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_AUTH_MODE=token
python -c 'from ml_system.cluster import ensure_auth_token; ensure_auth_token()'
ray start --head --port "$HEAD_PORT" --num-cpus "${HEAD_CPUS:-1}" --object-store-memory 800000000 \
  --dashboard-host 127.0.0.1 --resources '{"head": 1}'
ray start --address "127.0.0.1:$HEAD_PORT" --num-cpus "${WORKER_CPUS:-1}" --object-store-memory 800000000 \
  --resources '{"worker": 1}'
echo "dashboard: http://127.0.0.1:8265   jobs: RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 ray job submit ..."
