#!/usr/bin/env bash
# Build the images of docker-compose.yaml on the local base image, offline:
#   scripts/build_platform_images.sh [airflow|postgres|redis|registry ...]     (default: all four)
# Each image is tagged sera-<name>:${SERA_IMAGE_TAG:-local}. Its build context is a tar of only the files its
# Dockerfile copies (never the venv or var/), so any docker CLI builds it, BuildKit or not, and the layer cache makes
# a rebuild with nothing changed take seconds. Downloads nothing: it needs what scripts/fetch_platform_wheels.sh
# fetched. Settings: SERA_BASE_IMAGE, SERA_IMAGE_TAG, DOCKER_HOST.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${SERA_BASE_IMAGE:-sera-base:bookworm}"
TAG="${SERA_IMAGE_TAG:-local}"
CACHE=var/cache/platform
declare -A CONTEXT=(
    [airflow]="pyproject.toml sera_ops dags plugins docker/airflow $CACHE/wheels $CACHE/debs/airflow"
    [postgres]="docker/postgres $CACHE/debs/postgres"
    [redis]="docker/redis $CACHE/debs/redis"
    [registry]="docker/registry $CACHE/debs/registry"
)

say() { echo "[platform-images] $*"; }

images=("$@")
((${#images[@]})) || images=(airflow postgres redis registry)
for name in "${images[@]}"; do
    [[ -n ${CONTEXT[$name]:-} ]] || { say "error: unknown image '$name' (airflow, postgres, redis, registry)" >&2; exit 2; }
done
if ! compgen -G "$ROOT/$CACHE/.stamp-*" >/dev/null; then
    say "error: no wheels and debs in $CACHE: run scripts/fetch_platform_wheels.sh first (it downloads them once)" >&2
    exit 1
fi
for name in "${images[@]}"; do
    started=$SECONDS
    # shellcheck disable=SC2086 # the context is a word list of paths
    tar -C "$ROOT" -c --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' ${CONTEXT[$name]} \
        | docker build --quiet -f "docker/$name/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
            -t "sera-$name:$TAG" - >/dev/null
    say "sera-$name:$TAG built in $((SECONDS - started)) s"
done
