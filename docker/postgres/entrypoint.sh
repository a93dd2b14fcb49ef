#!/bin/bash
# Start PostgreSQL on PGHOST:PGPORT (loopback by default: compose runs it in the host's network). On the first start
# of an empty data volume, make the cluster with POSTGRES_USER as superuser, password POSTGRES_PASSWORD (required,
# read from the environment, never a file in the image) and the database POSTGRES_DB.
set -euo pipefail
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user="${POSTGRES_USER:-airflow}" db="${POSTGRES_DB:-airflow}"
if [[ ! -s $PGDATA/PG_VERSION ]]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "CREATE DATABASE \"$db\" OWNER \"$user\"" | postgres --single -D "$PGDATA" -c log_min_messages=warning \
        postgres >/dev/null
    echo "[postgres] initialised $PGDATA: user $user, database $db"
fi
exec postgres -D "$PGDATA" -c listen_addresses="${PGHOST:-127.0.0.1}" -p "${PGPORT:-5432}" "$@"
