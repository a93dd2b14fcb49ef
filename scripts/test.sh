#!/usr/bin/env bash
# `make test`: the whole suite, set up the way CI sets it up.
#
# As root it installs the missing system packages (scripts/test-packages.txt), makes the venv, starts the Docker
# engine and registry when none answers (scripts/services.sh), fetches the test data, builds the docs (`mkdocs build --strict`) and runs
# pytest with every part required (SERA_REQUIRE_PARTS=1: a missing part fails its tests instead of skipping them);
# what it started it stops again. Without root it uses what is there and says up front, in one block, which tests
# will skip and how to enable them. Arguments go to pytest: `scripts/test.sh -x -k pipeline`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${SERA_VENV:-$ROOT/.venv}/bin/python"
started_services=0

say() { echo "[test] $*"; }
# shellcheck source=packages.sh
source "$ROOT/scripts/packages.sh"

finish() {
    local rc=$?
    if ((started_services)); then
        scripts/services.sh stop >/dev/null 2>&1 || say "warning: stopping the services failed"
    fi
    exit "$rc"
}
trap finish EXIT

if ((EUID == 0)); then
    mapfile -t packages < <(packages_in scripts/test-packages.txt)
    ensure_packages "${packages[@]}"
    if scripts/services.sh status >/dev/null 2>&1; then
        say "using the running Docker engine and registry"
    else
        scripts/services.sh start
        started_services=1
    fi
    export SERA_REQUIRE_PARTS=1
fi
scripts/setup_venv.sh
if scripts/services.sh status >/dev/null 2>&1; then
    eval "$(scripts/services.sh env)"
fi
scripts/fetch_test_data.sh
scripts/fetch_platform_wheels.sh --if-docker
"$PY" -m tests.support.parts
say "docs: mkdocs build --strict"
site="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet -d "$site"
rm -rf "$site"
"$PY" -m pytest "$@"
