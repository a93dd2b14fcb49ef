#!/usr/bin/env bash
# Fetch, once, everything the platform images of docker-compose.yaml install, so that their builds need no network:
#   wheels/        the platform's Python wheels (requirements.txt without the training stack and the dev tools, plus
#                  Airflow's PostgreSQL drivers); what those need: the newest releases that fit, as for the venv
#   debs/<image>/  Debian packages per image, with the dependencies the base image lacks: postgres (postgresql-15),
#                  redis (redis-server), registry (docker-registry); airflow gets docker.io alone, since only its
#                  docker CLI is installed (tasks drive the host's engine through its socket)
# into var/cache/platform/. Downloads come from PyPI and the machine's apt sources, here on the
# host: the image builds (scripts/build_platform_images.sh) then only COPY these files. A stamp keyed by the inputs
# (requirements, base image packages and Python, this script) makes a rerun free. Needs Debian's python3-pip and the
# Docker engine with the base image; `--if-docker`: say so and exit 0 when no engine answers (`make test` off CI).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/var/cache/platform"  # inside the project: scripts/build_platform_images.sh sends it as build context
# The resolver must run on the image's interpreter: markers and Requires-Python depend on the full version (bookworm's
# 3.11.2 needs async-timeout for redis; the newest soupsieve wants 3.11.5). The base is bookworm's python3, as here.
PY="${PYTHON:-/usr/bin/python3}"
BASE_IMAGE="${SERA_BASE_IMAGE:-sera-base:bookworm}"
# Training runs in its own image (the kubernetes backend's pod), so the Airflow image leaves these out.
TRAINING_STACK='torch|transformers|peft|accelerate|trl'
# Airflow's metadata database in the stack is PostgreSQL: a sync and an async driver.
POSTGRES_DRIVERS=(psycopg2-binary==2.9.13 asyncpg==0.32.0)
# The project installs into the image's venv without build isolation (offline): a setuptools that builds wheels by
# itself (>= 70.1; the venv's own 66 needs the `wheel` package). The venv's version.
BUILD_TOOLS=(setuptools==84.2.1)
declare -A DEBS=([postgres]="postgresql-15" [redis]="redis-server" [registry]="docker-registry")
APT=(apt-get -qq -o Debug::NoLocking=1 -o APT::Sandbox::User=root)

say() { echo "[platform-cache] $*"; }

if [[ ${1:-} == --if-docker ]] && ! timeout 10 docker info >/dev/null 2>&1; then
    say "no Docker engine answers: nothing fetched (tests/test_compose.py needs one)"
    exit 0
fi

mkdir -p "$OUT"
work="$(mktemp -d "$OUT/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The platform's requirements: runtime pins up to the "# Dev" section, training stack removed, drivers and build
# tools added.
awk '/^# Dev/ { exit } /^[A-Za-z]/' "$ROOT/requirements.txt" | grep -Ev "^($TRAINING_STACK)([=<>~ ]|$)" \
    >"$work/requirements.txt"
printf '%s\n' "${POSTGRES_DRIVERS[@]}" "${BUILD_TOOLS[@]}" >>"$work/requirements.txt"
# The base image's installed packages: apt resolves against them, so only what the base lacks is fetched.
docker run --rm --network none "$BASE_IMAGE" cat /var/lib/dpkg/status >"$work/base-status"
# ... and its Python.
version='import platform; print(platform.python_version())'
base_python="$(docker run --rm --network none "$BASE_IMAGE" python3 -c "$version")"
[[ "$("$PY" -c "$version")" == "$base_python" ]] || { say "error: set PYTHON to a Python $base_python with pip" >&2; exit 1; }

key="$( (cat "$work/requirements.txt" "$work/base-status" "${BASH_SOURCE[0]}"
        echo "$base_python") | sha256sum | cut -c1-16)"
stamp="$OUT/.stamp-$key"
if [[ -f $stamp ]]; then
    say "up to date ($OUT)"
    exit 0
fi

say "wheels for $(wc -l <"$work/requirements.txt") requirements (Python $base_python) into $OUT/wheels"
"$PY" -m pip wheel --quiet --disable-pip-version-check --prefer-binary -r "$work/requirements.txt" -w "$work/wheels"

for image in "${!DEBS[@]}"; do
    mkdir -p "$work/debs/$image/partial"
    # shellcheck disable=SC2086 # the package list is a word list
    "${APT[@]}" -o Dir::State::status="$work/base-status" -o Dir::Cache::archives="$work/debs/$image" \
        -o APT::Install-Recommends=false \
        install --download-only -y ${DEBS[$image]} >/dev/null
    rm -rf "$work/debs/$image/partial" "$work/debs/$image/lock"
    say "debs/$image: $(find "$work/debs/$image" -name '*.deb' | wc -l) packages for ${DEBS[$image]}"
done
mkdir -p "$work/debs/airflow"
(cd "$work/debs/airflow" && "${APT[@]}" download docker.io)

cp "$work/requirements.txt" "$work/wheels/"
rm -rf "$OUT/wheels" "$OUT/debs" "$OUT"/.stamp-*
mv "$work/wheels" "$work/debs" "$OUT/"
touch "$stamp"
say "ready: $(du -sh "$OUT" | cut -f1) in $OUT"
