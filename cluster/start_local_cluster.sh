#!/usr/bin/env bash
# A head and one worker node on this machine, to try multi-node placement locally.
#   bash cluster/start_local_cluster.sh        # start
#   ray stop                                   # stop both
# Token authentication is on (cluster/start_head.sh makes the token, mode 0600, when missing; the
# worker joins with it). Clients: mlsys and the jobs find the token themselves; for `ray job submit`
# and `serve deploy` export RAY_AUTH_MODE=token (the token is in ~/.ray/auth_token).
# With two nodes, stores on one node's disk are refused; both nodes share this machine's disk, so
# declare it: MLSYS_RAY__SHARED_PATHS=$HOME/.mlsys MLSYS_ONLINE_STORE__TYPE=redis (README, "More than one node").
set -euo pipefail
HEAD_PORT=${HEAD_PORT:-6380}   # 6379 is the machine's Redis
# the settings of the documented start path (README), as cluster/ray-cluster.yaml uses them
export RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1
bash "$(dirname "$0")/start_head.sh" --port "$HEAD_PORT" --num-cpus "${HEAD_CPUS:-1}" \
  --object-store-memory 800000000 --dashboard-host 127.0.0.1 --resources '{"head": 1}'
RAY_AUTH_MODE=token ray start --address "127.0.0.1:$HEAD_PORT" --num-cpus "${WORKER_CPUS:-1}" \
  --object-store-memory 800000000 --resources '{"worker": 1}'
echo "dashboard: http://127.0.0.1:8265   jobs: RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 ray job submit ..."
