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
bash scripts/install-chromium.sh
# The real control plane and KubeRay operator, built from their Go modules once per version
# (cached under ~/.cache/clipforge/kube-bin: minutes on a fresh machine, nothing afterwards).
bash scripts/build-kube-binaries.sh
# The test node's kubelet, kube-proxy, pause, containerd and CoreDNS, cached the same way.
bash scripts/build-kube-binaries.sh --node
# The operator and pipeline images, built with buildah without a daemon (docs/images.md; about 25
# minutes the first time, cached by a hash of their inputs afterwards).
bash scripts/build-images.sh

python3 -m pytest "$@"
