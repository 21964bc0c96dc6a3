#!/usr/bin/env bash
# Installs the Debian packages behind tests/support/s3_server.py: a one-node Ceph cluster (monitor,
# memstore OSD) with the RADOS gateway serving S3 on loopback. Idempotent and quiet: does
# nothing when the commands are already there. Run as root (or with sudo) on Debian 12.
set -euo pipefail

source "$(dirname "$0")/apt-install.sh"

# Without recommends (they would pull the rest of Ceph); keep any ceph.conf a host already has.
install_missing install-ceph.sh "--no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold" \
    ceph-mon=ceph-mon ceph-osd=ceph-osd radosgw=radosgw radosgw-admin=ceph-common ceph=ceph-common monmaptool=ceph-base
