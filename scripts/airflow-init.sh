#!/usr/bin/env bash
# One-time (idempotent) initialisation of a trait-lora Airflow deployment, run before any component:
#   1. migrate the metadata database (creates it on first run, upgrades it after an image upgrade);
#   2. create or resize the together_api pool WITH --include-deferred: it paces the launch tasks (the
#      submissions). The number of Together jobs in flight is bounded by [trait_lora] max_jobs_in_flight,
#      counted in the ledger before each create, not by this pool.
# Used by the airflow-init service of docker-compose.yaml and by the live end-to-end test (make e2e).
#
# Environment ([trait_lora] settings; the legacy TRAIT_LORA_* names still work for this release):
#   AIRFLOW__TRAIT_LORA__TOGETHER_POOL        pool name (default together_api; the DAG reads the same
#                                             setting; legacy TRAIT_LORA_TOGETHER_POOL)
#   AIRFLOW__TRAIT_LORA__TOGETHER_POOL_SLOTS  pool size = concurrent launch tasks (default 4; legacy
#                                             TRAIT_LORA_TOGETHER_POOL_SLOTS)
#   AIRFLOW_BIN                               the airflow command (default: airflow on PATH)
# A value set only in airflow.cfg's [trait_lora] is not read here: set the env var.
set -euo pipefail

AIRFLOW_BIN="${AIRFLOW_BIN:-airflow}"
for legacy in TRAIT_LORA_TOGETHER_POOL TRAIT_LORA_TOGETHER_POOL_SLOTS; do
    if [[ -n "${!legacy:-}" ]]; then
        echo "airflow-init: $legacy is deprecated: set AIRFLOW__TRAIT_LORA__${legacy#TRAIT_LORA_} instead" >&2
    fi
done
POOL="${AIRFLOW__TRAIT_LORA__TOGETHER_POOL:-${TRAIT_LORA_TOGETHER_POOL:-together_api}}"
SLOTS="${AIRFLOW__TRAIT_LORA__TOGETHER_POOL_SLOTS:-${TRAIT_LORA_TOGETHER_POOL_SLOTS:-4}}"

if ! [[ "$SLOTS" =~ ^[1-9][0-9]*$ ]]; then
    echo "airflow-init: [trait_lora] together_pool_slots (AIRFLOW__TRAIT_LORA__TOGETHER_POOL_SLOTS) must be" \
        "a positive integer, got '$SLOTS'" >&2
    exit 2
fi

echo "airflow-init: migrating the metadata database"
"$AIRFLOW_BIN" db migrate

echo "airflow-init: pool $POOL = $SLOTS slot(s), deferred tasks included"
"$AIRFLOW_BIN" pools set "$POOL" "$SLOTS" \
    "Together AI job submissions (launch tasks; jobs in flight are capped separately)" --include-deferred

echo "airflow-init: done"
