#!/usr/bin/env bash
# Create the project venv (.venv) and install the pinned requirements plus this package (editable).
# Idempotent: a stamp file records the hash of the inputs, so a warm venv costs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SERA_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.sera-installed"
want="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "[venv] error: Python >= 3.11 is needed (the Airflow providers require it); set PYTHON=python3.11" >&2
  exit 1
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
echo "$want" > "$STAMP"
echo "[venv] ready in $(( $(date +%s) - start )) s: $VENV"
