#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then runs the whole suite.
# `.ci/run` calls this file exactly; so does the README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."

# torch first and pinned: anything looser pulls a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[pipeline,operator,dev]'
bash scripts/install-ceph.sh
bash scripts/install-kube-tools.sh
bash scripts/install-node-packages.sh
bash scripts/install-test-tools.sh
# The operator and pipeline images, built with buildah without a daemon (docs/images.md; about 25
# minutes the first time, cached by a hash of their inputs afterwards). Mostly downloads and disk,
# so it runs beside the Go builds below, which are mostly CPU; it starts after the apt installs
# above because it may apt-get buildah itself.
images_log=$(mktemp)
bash scripts/build-images.sh >"$images_log" 2>&1 &
images_pid=$!
trap 'kill "$images_pid" 2>/dev/null || true' EXIT   # a failed Go build leaves no build behind
# The real control plane and KubeRay operator, built from their Go modules once per version
# (cached under ~/.cache/clipforge/kube-bin: minutes on a fresh machine, nothing afterwards).
bash scripts/build-kube-binaries.sh
# The test nodes' kubelet, kube-proxy, pause, containerd, CoreDNS and kube-router, cached the same way.
bash scripts/build-kube-binaries.sh --node
images_status=0
wait "$images_pid" || images_status=$?
cat "$images_log"
rm -f "$images_log"
trap - EXIT
[ "$images_status" -eq 0 ] || { echo "scripts/build-images.sh failed ($images_status)" >&2; exit "$images_status"; }

# The slowest tests named at the end: a cached CI run has 30 minutes.
python3 -m pytest --durations=25 "$@"
