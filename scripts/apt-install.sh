# Sourced by the install-*.sh scripts: installs, with apt-get, the Debian packages behind the
# commands that are missing, quietly (apt's output only when it fails), then checks the commands.
#
#   install_missing SCRIPT "APT-GET OPTIONS" COMMAND=PACKAGE...

install_missing() {
    local script=$1 options=$2 pair cmd pkg log missing=() sudo=()
    shift 2
    for pair in "$@"; do
        cmd=${pair%%=*} pkg=${pair#*=}
        if ! command -v "$cmd" >/dev/null 2>&1 \
            || ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "$script: run as root to install ${missing[*]}" >&2; return 1; }
        sudo=(sudo)
    fi
    log=$(mktemp)
    echo "$script: installing ${missing[*]}"
    # $options is word-split on purpose: several apt-get options in one argument.
    # shellcheck disable=SC2086
    if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
           && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $options "${missing[@]}"; } \
           >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        echo "$script: apt-get failed installing ${missing[*]}" >&2
        return 1
    fi
    rm -f "$log"
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null 2>&1 || { echo "$script: ${pair%%=*} still missing after install" >&2; return 1; }
    done
}
