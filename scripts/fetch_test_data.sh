#!/usr/bin/env bash
# Fetch, once, the real projects the tests build (tests/data/real-projects.txt): sdists of consecutive releases and
# a wheelhouse of their dependencies, into var/testdata/. Runs on the host before the tests (`make test` calls it);
# the tests then only serve these files on loopback. A stamp keyed by the list's content makes a rerun free.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIST="$ROOT/tests/data/real-projects.txt"
OUT="${SERA_TESTDATA_DIR:-$ROOT/var/testdata}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
stamp="$OUT/.stamp-$(sha256sum "$LIST" | cut -c1-16)"
[[ -f $stamp ]] && exit 0
mkdir -p "$OUT/sdists.partial" "$OUT/wheelhouse.partial"
mapfile -t sdists < <(awk '$1 == "sdist" { print $2 }' "$LIST")
mapfile -t wheels < <(awk '$1 == "wheel" { print $2 }' "$LIST")
echo "[testdata] fetching ${#sdists[@]} sdists and ${#wheels[@]} wheels into $OUT"
for spec in "${sdists[@]}"; do
    "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$OUT/sdists.partial" "$spec"
done
# Wheels for the images' Python (the base image's CPython 3.11 on this architecture), dependencies pinned above.
"$PY" -m pip download --quiet --no-deps --only-binary :all: --python-version 3.11 -d "$OUT/wheelhouse.partial" \
    "${wheels[@]}"
rm -rf "$OUT/sdists" "$OUT/wheelhouse" "$OUT"/.stamp-*
mv "$OUT/sdists.partial" "$OUT/sdists"
mv "$OUT/wheelhouse.partial" "$OUT/wheelhouse"
touch "$stamp"
