#!/usr/bin/env bash
# Build the local base image (default sera-base:bookworm) without pulling anything: debootstrap a Debian rootfs from
# the machine's own apt mirror and `docker import` it. The rootfs tarball is cached under
# ${SERA_SERVICES_DIR}/cache/, keyed by its contents, so a rebuild on the same machine skips debootstrap.
#
# Settings: SERA_BASE_IMAGE (tag), SERA_SERVICES_DIR (state dir), DOCKER_HOST (default: the engine that
# scripts/services.sh runs), SERA_DEBIAN_MIRROR (mirror URL; default: read from the apt sources).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$(realpath -m "${SERA_SERVICES_DIR:-$ROOT/var/services}")"
IMAGE="${SERA_BASE_IMAGE:-sera-base:bookworm}"
SUITE=bookworm
PACKAGES=python3,python3-pip,python3-setuptools,python3-wheel,python3-venv,git,ca-certificates
CACHE="$STATE/cache"
# Image config. No PIP_NO_INDEX: install steps reach an index, a proxy or a wheelhouse through images.build_env.
IMAGE_CHANGES=(
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    'ENV LANG=C.UTF-8'
    'ENV PIP_BREAK_SYSTEM_PACKAGES=1'
    'ENV PIP_DISABLE_PIP_VERSION_CHECK=1'
    'ENV PYTHONDONTWRITEBYTECODE=1'
    'WORKDIR /'
    'CMD ["/bin/bash"]'
)
GITCONFIG='[user]
	name = sera
	email = sera@localhost
[safe]
	directory = *
'
export DOCKER_HOST="${DOCKER_HOST:-unix://$STATE/docker.sock}"

say() { echo "[services] $*"; }
die() { say "error: $*" >&2; exit 1; }

# First mirror URI that serves $SUITE, from deb822 *.sources files, then one-line sources.list entries.
debian_mirror() {
    local uri="" file deb822=() oneline=()
    shopt -s nullglob
    deb822=(/etc/apt/sources.list.d/*.sources)
    oneline=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    shopt -u nullglob
    if ((${#deb822[@]})); then
        uri="$(awk -v suite="$SUITE" '
            function flush() {
                if (!found && enabled != "no" && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ")) {
                    split(uris, u, " "); if (u[1] != "") { print u[1]; found = 1 }
                }
                types = suites = uris = enabled = ""
            }
            FNR == 1 { flush() }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            { key = tolower($1); $1 = "" }
            key == "types:" { types = $0 }
            key == "uris:" { uris = $0 }
            key == "suites:" { suites = $0 }
            key == "enabled:" { enabled = tolower($2) }
            END { flush() }' "${deb822[@]}")"
    fi
    if [[ -z $uri ]]; then
        for file in "${oneline[@]}"; do [[ -r $file ]] || continue
            uri="$(awk -v suite="$SUITE" '
                $1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == suite) { print $i; exit }
                }' "$file")"
            [[ -n $uri ]] && break
        done
    fi
    [[ -n $uri ]] || return 1
    echo "$uri"
}

ROOTFS=""
cleanup() {
    [[ -n $ROOTFS && -d $ROOTFS ]] || return 0
    # debootstrap mounts /proc and /sys inside the target: unmount before deleting, never delete through a mount.
    awk -v r="$ROOTFS/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" || true
    done
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

make_rootfs_tarball() {
    local tarball=$1 mirror
    ((EUID == 0)) || die "debootstrap needs root"
    mirror="${SERA_DEBIAN_MIRROR:-$(debian_mirror)}" || die "no Debian mirror for $SUITE found in /etc/apt sources"
    ROOTFS="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    say "debootstrap $SUITE (minbase + $PACKAGES) from $mirror"
    if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$mirror" \
        >"$CACHE/debootstrap.log" 2>&1; then
        say "debootstrap failed; last log lines ($CACHE/debootstrap.log):"
        tail -n 20 "$CACHE/debootstrap.log" | sed 's/^/    /'
        exit 1
    fi
    printf '%s' "$GITCONFIG" >"$ROOTFS/etc/gitconfig"
    rm -f "$ROOTFS"/var/cache/apt/archives/*.deb
    tar -C "$ROOTFS" --numeric-owner -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    cleanup
    ROOTFS=""
}

main() {
    local started=$SECONDS key tarball old_id new_id image_key
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    key="$(printf '%s\n' "$SUITE" minbase "$PACKAGES" "$GITCONFIG" | sha256sum | cut -c1-16)"
    tarball="$CACHE/rootfs-$SUITE-$key.tar"
    if [[ -s $tarball ]]; then
        say "reusing cached rootfs $tarball"
    else
        make_rootfs_tarball "$tarball"
    fi
    # The image's identity: the rootfs and the config below. An image already carrying it is kept as it is.
    image_key="$(printf '%s\n' "$key" "${IMAGE_CHANGES[@]}" | sha256sum | cut -c1-16)"
    if [[ "$(docker image inspect --format '{{index .Config.Labels "sera.base-key"}}' "$IMAGE" 2>/dev/null)" \
          == "$image_key" ]]; then
        say "$IMAGE is up to date ($image_key)"
        return 0
    fi
    old_id="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
    local changes=() change
    for change in "${IMAGE_CHANGES[@]}" "LABEL sera.base-key=$image_key"; do changes+=(--change "$change"); done
    new_id="$(docker import "${changes[@]}" --message "debootstrap $SUITE minbase + $PACKAGES" \
        - "$IMAGE" <"$tarball")"
    if [[ -n $old_id && $old_id != "$new_id" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
    docker run --rm --network none "$IMAGE" python3 -c 'import ssl, sqlite3' || die "$IMAGE: python3 lacks ssl/sqlite3"
    docker run --rm --network none "$IMAGE" git --version >/dev/null || die "$IMAGE: git does not run"
    say "built $IMAGE (${new_id:7:12}) in $((SECONDS - started))s"
}

main "$@"
