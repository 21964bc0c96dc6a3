#!/usr/bin/env bash
# Builds the real Kubernetes control plane, etcd and the KubeRay operator from their published Go
# modules, for the tests (the way controller-runtime's envtest ships binaries; nothing of ClipForge
# is Go). With --node it builds the test node's binaries instead: kubelet and kube-proxy (the
# control plane's Kubernetes version, same wrapper module and Go build cache), Kubernetes' pause
# binary (C, from the same module), containerd with its runc shim and ctr, CoreDNS, and kube-router
# (its NetworkPolicy firewall). Each set is
# cached by version outside the repository, so a fresh machine builds once and later runs reuse it.
# Prints what it builds and how long it took.
#
#   KUBE_BIN_CACHE   cache root (default ~/.cache/clipforge/kube-bin)
#
# Prints, as its last line, the directory holding the binaries. With --print-dir it prints only
# that directory and builds nothing (tests/harness/kube_binaries.py asks it so, to keep one rule).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One source for the versions: the Python harness and this script both read this file.
source "$REPO_ROOT/tests/harness/kube-versions.env"

CACHE="${KUBE_BIN_CACHE:-$HOME/.cache/clipforge/kube-bin}"
OUT="$CACHE/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kuberay-$KUBERAY_VERSION"
NODE=false PRINT_DIR=false
for arg in "$@"; do
    case $arg in
        --node) NODE=true; OUT="$CACHE/node-k8s-$KUBERNETES_VERSION-containerd-$CONTAINERD_VERSION-coredns-$COREDNS_VERSION-kube-router-$KUBE_ROUTER_VERSION" ;;
        --print-dir) PRINT_DIR=true ;;
        *) echo "usage: $0 [--node] [--print-dir]" >&2; exit 2 ;;
    esac
done
if $PRINT_DIR; then echo "$OUT"; exit 0; fi
command -v go >/dev/null || { echo "building the kube binaries needs Go (1.26) on PATH" >&2; exit 1; }
mkdir -p "$OUT"
# Two test sessions starting at once build once: the second waits here, then finds the cache.
exec 9>"$CACHE/.build.lock"
flock 9
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

have() { [ -x "$OUT/$1" ] && [ -f "$OUT/$1.ok" ]; }
timed() {  # timed NAME CMD...: run CMD, report how long it took
    local name=$1 start=$SECONDS; shift
    echo "building $name ..."
    "$@"
    echo "built $name in $((SECONDS - start)) s"
}

# A wrapper module whose go.mod replaces every module that `mod` replaces with a relative path
# by its published version, so `go build` can build `mod`'s commands outside its own repository.
wrapper_module() {  # wrapper_module DIR MODULE VERSION STAGING_VERSION
    local dir=$1 mod=$2 ver=$3 staging=$4
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir"
     go mod init clipforge.test/kubebuild >/dev/null 2>&1
     go mod edit -require="$mod@$ver"
     go mod download -json "$mod@$ver" >/dev/null
     local gomod; gomod=$(go list -m -f '{{.GoMod}}' "$mod@$ver")
     # lines like `k8s.io/api => ./staging/src/k8s.io/api` (or `=> ../api` in etcd); etcd's
     # `=> ./FORBIDDEN_DEPENDENCY` guards name modules nothing may require, so they stay out.
     sed -E 's/^[[:space:]]*replace[[:space:]]+//' "$gomod" |
         awk '/=>[ \t]+\.\.?\// && !/FORBIDDEN/ {print $1}' | sort -u | while read -r dep; do
         go mod edit -replace="$dep=$dep@$staging"
     done)
}

build_kubernetes() {  # build_kubernetes CMD...: commands of k8s.io/kubernetes/cmd
    local dir="$CACHE/src/kubernetes-$KUBERNETES_VERSION"
    wrapper_module "$dir" k8s.io/kubernetes "v$KUBERNETES_VERSION" "v0.${KUBERNETES_VERSION#1.}"
    (cd "$dir"
     go mod edit -replace="k8s.io/kubernetes=k8s.io/kubernetes@v$KUBERNETES_VERSION"
     for cmd in "$@"; do
         go get "k8s.io/kubernetes/cmd/$cmd@v$KUBERNETES_VERSION" 2>&1 | grep -v '^go: added' || true
     done
     for cmd in "$@"; do
         go build -trimpath -tags selinux,notest -ldflags="-s -w \
            -X k8s.io/component-base/version.gitVersion=v$KUBERNETES_VERSION \
            -X k8s.io/component-base/version.gitMajor=1 \
            -X k8s.io/component-base/version.gitMinor=${KUBERNETES_VERSION#1.} \
            -X k8s.io/client-go/pkg/version.gitVersion=v$KUBERNETES_VERSION" \
            -o "$OUT/$cmd" "k8s.io/kubernetes/cmd/$cmd"
         touch "$OUT/$cmd.ok"
     done)
}

build_etcd() {
    local dir="$CACHE/src/etcd-$ETCD_VERSION"
    wrapper_module "$dir" go.etcd.io/etcd/server/v3 "v$ETCD_VERSION" "v$ETCD_VERSION"
    (cd "$dir"
     go get go.etcd.io/etcd/server/v3@"v$ETCD_VERSION" 2>&1 | grep -v '^go: added' || true
     go build -trimpath -ldflags="-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
     touch "$OUT/etcd.ok")
}

# The pause binary every pod sandbox runs (C, static), from the same k8s.io/kubernetes module.
build_pause() {
    local src
    src=$(go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" |
          sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    gcc -Os -Wall -Werror -static -DVERSION="v$KUBERNETES_VERSION" -o "$OUT/pause" "$src/build/pause/linux/pause.c"
    strip "$OUT/pause"
    touch "$OUT/pause.ok"
}

# Commands of a module that builds as it is (no relative replaces), from a wrapper that requires it.
build_module_commands() {  # build_module_commands NAME VERSION TAGS PKG...
    local name=$1 ver=$2 tags=$3; shift 3
    local dir="$CACHE/src/$name-$ver"
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir"
     go mod init "clipforge.test/${name}build" >/dev/null 2>&1
     for pkg in "$@"; do
         go get "$pkg@v$ver" 2>&1 | grep -v '^go: added' || true
     done
     for pkg in "$@"; do
         go build -trimpath -tags "$tags" -ldflags="-s -w $LDFLAGS_EXTRA" -o "$OUT/${pkg##*/}" "$pkg"
         touch "$OUT/${pkg##*/}.ok"
     done)
}

build_containerd() {
    LDFLAGS_EXTRA="-X github.com/containerd/containerd/v2/version.Version=v$CONTAINERD_VERSION" \
        build_module_commands containerd "$CONTAINERD_VERSION" \
        "no_btrfs no_devmapper no_zfs" github.com/containerd/containerd/v2/cmd/{containerd,containerd-shim-runc-v2,ctr}
}

build_coredns() {
    LDFLAGS_EXTRA="" build_module_commands coredns "$COREDNS_VERSION" "" github.com/coredns/coredns
}

build_kube_router() {
    LDFLAGS_EXTRA="-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=v$KUBE_ROUTER_VERSION" \
        build_module_commands kube-router "$KUBE_ROUTER_VERSION" "" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
}

build_kuberay() {
    local dir="$CACHE/src/kuberay-$KUBERAY_VERSION"
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir"
     go mod init clipforge.test/kuberaybuild >/dev/null 2>&1
     go get "github.com/ray-project/kuberay/ray-operator@v$KUBERAY_VERSION" 2>&1 | grep -v '^go: added' || true
     go build -trimpath -ldflags="-s -w" -o "$OUT/kuberay-operator" github.com/ray-project/kuberay/ray-operator
     touch "$OUT/kuberay-operator.ok")
}

# KubeRay's CRDs, and the ClusterRole its own deployment binds to the operator, from the same module.
copy_kuberay_manifests() {
    local src
    src=$(go mod download -json "github.com/ray-project/kuberay/ray-operator@v$KUBERAY_VERSION" |
          sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    rm -rf "$OUT/kuberay-crds"; cp -r "$src/config/crd/bases" "$OUT/kuberay-crds"
    cp "$src/config/rbac/role.yaml" "$OUT/kuberay-role.yaml"
    chmod -R u+w "$OUT/kuberay-crds" "$OUT/kuberay-role.yaml"
    touch "$OUT/kuberay-manifests.ok"
}

total=$SECONDS
if $NODE; then
    if have kubelet && have kube-proxy; then echo "kubelet, kube-proxy $KUBERNETES_VERSION: cached"
    else timed "kubelet, kube-proxy $KUBERNETES_VERSION" build_kubernetes kubelet kube-proxy; fi
    if have pause; then echo "pause $KUBERNETES_VERSION: cached"; else timed "pause $KUBERNETES_VERSION" build_pause; fi
    if have containerd && have containerd-shim-runc-v2 && have ctr; then echo "containerd $CONTAINERD_VERSION: cached"
    else timed "containerd, containerd-shim-runc-v2, ctr $CONTAINERD_VERSION" build_containerd; fi
    if have coredns; then echo "coredns $COREDNS_VERSION: cached"; else timed "coredns $COREDNS_VERSION" build_coredns; fi
    if have kube-router; then echo "kube-router $KUBE_ROUTER_VERSION: cached"
    else timed "kube-router $KUBE_ROUTER_VERSION" build_kube_router; fi
    echo "node binaries ready in $((SECONDS - total)) s"
    echo "$OUT"
    exit 0
fi
if have etcd; then echo "etcd $ETCD_VERSION: cached"; else timed "etcd $ETCD_VERSION" build_etcd; fi
if have kuberay-operator; then echo "kuberay-operator $KUBERAY_VERSION: cached"; else timed "kuberay-operator $KUBERAY_VERSION" build_kuberay; fi
[ -f "$OUT/kuberay-manifests.ok" ] || copy_kuberay_manifests
if have kube-apiserver && have kube-controller-manager && have kube-scheduler; then
    echo "kubernetes $KUBERNETES_VERSION: cached"
else
    timed "kube-apiserver, kube-controller-manager, kube-scheduler $KUBERNETES_VERSION" \
        build_kubernetes kube-apiserver kube-controller-manager kube-scheduler
fi
echo "kube binaries ready in $((SECONDS - total)) s"
echo "$OUT"
