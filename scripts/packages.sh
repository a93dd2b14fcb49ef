# Sourced by the set-up scripts: Debian packages installed on demand. `ensure_packages pkg...` installs the missing
# ones as root and fails naming them otherwise; `packages_in FILE` lists a package file (one a line, # comments).

missing_packages() {
    local pkg
    for pkg in "$@"; do
        [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || echo "$pkg"
    done
}

ensure_packages() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    ((${#missing[@]} == 0)) && return 0
    if ((EUID != 0)); then
        echo "error: missing packages (install them as root): ${missing[*]}" >&2
        return 1
    fi
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

packages_in() { grep -v '^[[:space:]]*#' "$1" | awk NF; }
