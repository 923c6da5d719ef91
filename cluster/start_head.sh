#!/usr/bin/env bash
# `ray start --head` with Ray's token authentication on, whatever the machine had before.
#   bash cluster/start_head.sh --port 6380 --num-cpus 2 [other `ray start` options]
# A bare `ray start` turns token checks on only when a token file already exists: on a fresh
# machine it starts a cluster that runs any job from anyone who reaches the dashboard port.
# Here the token is made when missing (32 random bytes, mode 0600) where Ray reads it:
# $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
# Clients then need the same token and RAY_AUTH_MODE=token (mlsys, the jobs and the exported
# Airflow DAG find it by themselves; `ray job submit` and `serve deploy` need the variable).
set -euo pipefail
export RAY_AUTH_MODE=token
python -c 'from ml_system.cluster import ensure_auth_token; ensure_auth_token()'
exec ray start --head "$@"
