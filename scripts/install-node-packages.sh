#!/usr/bin/env bash
# Installs the Debian packages the tests' real node needs beside the binaries that
# scripts/build-kube-binaries.sh builds: runc (the OCI runtime containerd's shim runs), the CNI
# plugins (bridge, host-local, loopback), nftables (kube-proxy's `nft`), conntrack (kube-proxy
# flushes stale UDP entries with it), iptables and ipset (kube-router's NetworkPolicy firewall),
# busybox-static (the test image's userland) and a C
# compiler with a static libc (Kubernetes' pause binary is C).
#
# Idempotent: installs nothing when every package is there.
set -euo pipefail

PACKAGES=(runc containernetworking-plugins nftables conntrack ipset iptables busybox-static gcc libc6-dev)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "node packages are already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "installing ${missing[*]} with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
