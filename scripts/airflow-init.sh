#!/usr/bin/env bash
# One-time (idempotent) initialisation of a trait-lora Airflow deployment, run before any component:
#   1. migrate the metadata database (creates it on first run, upgrades it after an image upgrade);
#   2. create or resize the together_api pool WITH --include-deferred: it paces the launch tasks (the
#      submissions). The number of Together jobs in flight is bounded by TRAIT_LORA_MAX_JOBS_IN_FLIGHT,
#      counted in the ledger before each create, not by this pool.
# Used by the airflow-init service of docker-compose.yaml and by the live end-to-end test (make e2e).
#
# Environment:
#   TRAIT_LORA_TOGETHER_POOL        pool name (default together_api; the DAG reads the same variable)
#   TRAIT_LORA_TOGETHER_POOL_SLOTS  pool size = concurrent launch tasks (default 4)
#   AIRFLOW_BIN                     the airflow command (default: airflow on PATH)
set -euo pipefail

AIRFLOW_BIN="${AIRFLOW_BIN:-airflow}"
POOL="${TRAIT_LORA_TOGETHER_POOL:-together_api}"
SLOTS="${TRAIT_LORA_TOGETHER_POOL_SLOTS:-4}"

if ! [[ "$SLOTS" =~ ^[1-9][0-9]*$ ]]; then
    echo "airflow-init: TRAIT_LORA_TOGETHER_POOL_SLOTS must be a positive integer, got '$SLOTS'" >&2
    exit 2
fi

echo "airflow-init: migrating the metadata database"
"$AIRFLOW_BIN" db migrate

echo "airflow-init: pool $POOL = $SLOTS slot(s), deferred tasks included"
"$AIRFLOW_BIN" pools set "$POOL" "$SLOTS" \
    "Together AI job submissions (launch tasks; jobs in flight are capped separately)" --include-deferred

echo "airflow-init: done"
