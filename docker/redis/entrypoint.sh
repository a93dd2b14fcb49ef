#!/bin/bash
# Redis on REDIS_HOST:REDIS_PORT (loopback by default), password REDIS_PASSWORD (required). The password goes in on
# stdin as configuration, so it is in no command line and no file. A broker only: nothing is persisted.
set -euo pipefail
: "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
exec redis-server - --bind "${REDIS_HOST:-127.0.0.1}" --port "${REDIS_PORT:-6379}" --save '' --appendonly no \
    --dir /tmp "$@" < <(printf 'requirepass "%s"\n' "$REDIS_PASSWORD")
