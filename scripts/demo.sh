#!/usr/bin/env bash
# `make demo [REPO=name]`: the whole pipeline on one repository (default: the bundled sample; any other with
# `scripts/demo.sh --repo name`) — scripted teacher on loopback, a Docker engine + registry when they can be started
# here (else the local sandbox), SQLite Airflow home in var/. The platform file is $SERA_PLATFORM_CONFIG or
# config/platform.yaml; with `images.sandbox: local` in it no engine is started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
started_services=0
sandbox="$(.venv/bin/python -c 'from sera_ops.settings import load_platform; print(load_platform().images.sandbox)' \
  2>/dev/null || true)"  # an invalid platform file is reported by demo.py
if [ "$sandbox" = local ]; then
  echo "[demo] images.sandbox is local: rollouts run in the LOCAL sandbox, no Docker engine needed"
elif scripts/services.sh status >/dev/null 2>&1; then
  echo "[demo] using the running Docker engine and registry"
elif [ "$(id -u)" = 0 ] && scripts/services.sh start; then
  started_services=1
  echo "[demo] the Docker engine and registry started for the demo will be stopped when it ends"
else
  echo "[demo] no Docker engine could be started: rollouts will run in the LOCAL sandbox (see docs/threat-model.md)"
fi
# Quiet, so that the demo's last line stays `dataset: <path>`.
cleanup() { if [ "$started_services" = 1 ]; then scripts/services.sh stop >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
if [ "$sandbox" != local ] && scripts/services.sh status >/dev/null 2>&1; then eval "$(scripts/services.sh env)"; fi
export AIRFLOW_HOME="$ROOT/var/airflow"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export MSWEA_GLOBAL_CONFIG_DIR="$ROOT/var/mini-swe-agent" MSWEA_SILENT_STARTUP=1 MSWEA_CONFIGURED=true
.venv/bin/python scripts/demo.py "$@"
