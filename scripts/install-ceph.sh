#!/usr/bin/env bash
# Installs the Debian packages behind tests/support/s3_server.py: a one-node Ceph cluster (monitor,
# memstore OSD) with the RADOS gateway serving S3 on loopback. Idempotent and quiet: does
# nothing when the commands are already there. Run as root (or with sudo) on Debian 12.
set -euo pipefail

# command -> the package that provides it
declare -A PROVIDER=(
    [ceph-mon]=ceph-mon
    [ceph-osd]=ceph-osd
    [radosgw]=radosgw
    [radosgw-admin]=ceph-common
    [ceph]=ceph-common
    [monmaptool]=ceph-base
)

missing=()
for cmd in "${!PROVIDER[@]}"; do
    pkg=${PROVIDER[$cmd]}
    if ! command -v "$cmd" >/dev/null 2>&1 \
        || ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-ceph.sh: run as root to install ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "install-ceph.sh: installing ${missing[*]}"
if ! { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "install-ceph.sh: apt-get failed installing ${missing[*]}" >&2
    exit 1
fi

for cmd in "${!PROVIDER[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || { echo "install-ceph.sh: $cmd still missing after install" >&2; exit 1; }
done
