#!/usr/bin/env bash
# Builds ClipForge's images without a daemon or a registry: clipforge/operator:<version> and
# clipforge/pipeline:<version> (version from pyproject.toml), with buildah over a Debian bookworm
# base made here by debootstrap and stored as debian:bookworm-slim. Each image becomes an archive
# in the format of `docker save` (an OCI layout plus Docker's manifest.json), which docker load,
# podman load, skopeo copy, kind load image-archive and ctr import all accept, under
# ${CLIPFORGE_IMAGE_CACHE:-~/.cache/clipforge/images}, named by a hash of its inputs (Dockerfile,
# copied files, build arguments, the base's recipe, this script): an unchanged image is not rebuilt.
#
#   scripts/build-images.sh [--build-arg NAME=VALUE]...   build what changed; print digests and sizes
#   scripts/build-images.sh --print-archives [...]        print name=archive per image, build nothing
#
# --build-arg goes to the pipeline image (TORCH_INDEX: an index with a CPU-only torch 2.13.0).
# Needs root, buildah, skopeo and debootstrap (installed from apt when missing). docs/images.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=$HOME/.cache/clipforge
IMAGES=${CLIPFORGE_IMAGE_CACHE:-$CACHE/images}
# overlay: copy-on-write layers (a code change adds a layer of MBs, not a copy of the GBs below).
# Where the kernel refuses overlay (inside an unprivileged container), buildah's own
# STORAGE_DRIVER=vfs works too, at the cost of a full copy per layer.
DRIVER=${STORAGE_DRIVER:-overlay}
STORE=$CACHE/buildah-$DRIVER
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
BASE_REF=docker.io/library/debian:bookworm-slim
# TLS to PyPI may go through a proxy with its own CA: builds mount the host's bundle for pip.
HOST_CA=/etc/ssl/certs/ca-certificates.crt
BUILD_CA=/run/clipforge-build/ca-certificates.crt

print_archives=false
pipeline_args=()
while (($#)); do
    case $1 in
        --print-archives) print_archives=true; shift ;;
        --build-arg) pipeline_args+=("$2"); shift 2 ;;
        *) echo "usage: $0 [--print-archives] [--build-arg NAME=VALUE]..." >&2; exit 2 ;;
    esac
done

# The base's identity is its recipe (the base_rootfs function below, the suite, the architecture):
# debootstrap output differs from run to run, so a rebuilt base does not invalidate the images.
BASE_KEY=$(sed -n '/^base_rootfs()/,/^}/p' "$0" | cat - <(echo "bookworm $ARCH") | sha256sum | cut -c1-16)
SCRIPT_INPUTS=(scripts/build-images.sh scripts/images/oci.py)

image_key() {  # name dockerfile build-args...
    local dockerfile=$2
    shift 2
    python3 scripts/images/oci.py input-hash "$dockerfile" "${SCRIPT_INPUTS[@]}" \
        --build-arg "base=$BASE_KEY" "${@/#/--build-arg=}" | cut -c1-16
}

declare -A DOCKERFILE=([operator]=operator/Dockerfile [pipeline]=pipeline_image/Dockerfile)
declare -A KEY ARCHIVE
KEY[operator]=$(image_key operator operator/Dockerfile)
KEY[pipeline]=$(image_key pipeline pipeline_image/Dockerfile ${pipeline_args[@]+"${pipeline_args[@]}"})
for name in operator pipeline; do
    ARCHIVE[$name]=$IMAGES/$name-$ARCH-${KEY[$name]}.tar
done

if $print_archives; then
    for name in operator pipeline; do
        echo "clipforge/$name:$VERSION=${ARCHIVE[$name]}"
    done
    exit 0
fi

install_tools() {
    local missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    command -v skopeo >/dev/null || missing+=(skopeo)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
    if ((${#missing[@]})); then
        apt-get update -q && apt-get install -y -q "${missing[@]}"
    fi
}

bah() {
    buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver "$DRIVER" "$@"
}

base_rootfs() {  # dir: a Debian bookworm minbase trimmed as debian:bookworm-slim is
    local rootfs=$1
    debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        bookworm "$rootfs" http://deb.debian.org/debian
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
EOF
    cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
    rm -f "$rootfs/etc/apt/sources.list"
    cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # debootstrap copies the host's resolv.conf and hostname in; the runtime provides its own.
    rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf "$rootfs"/usr/share/{info,man,groff,lintian}/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/log/{apt,bootstrap.log,dpkg.log,alternatives.log} "$rootfs"/debootstrap
}

ensure_base() {
    local marker=$STORE/base-$BASE_KEY
    if [[ -f $marker ]] && bah inspect --type image "$BASE_REF" >/dev/null 2>&1; then
        return
    fi
    local started=$SECONDS work container
    work=$(mktemp -d "$CACHE/base.XXXXXX")
    base_rootfs "$work/rootfs" >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }
    tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$work/rootfs.tar" .
    container=$(bah from scratch)
    bah add "$container" "$work/rootfs.tar" / >/dev/null
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash \
        --created-by "debootstrap --variant=minbase bookworm (scripts/build-images.sh)" "$container"
    bah commit --quiet --rm "$container" "$BASE_REF" >/dev/null
    rm -rf "$work"
    rm -f "$STORE"/base-*
    touch "$marker"
    echo "base $BASE_REF ($ARCH, recipe $BASE_KEY) built in $((SECONDS - started)) s"
}

bud() {  # buildah-bud-args... dockerfile
    nice -n 10 buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver "$DRIVER" \
        bud --layers --pull-never --isolation chroot --format oci "${@:1:$#-1}" -f "${!#}" .
}

build_image() {  # name build-args...
    local name=$1 started=$SECONDS
    shift
    local ref=docker.io/clipforge/$name:$VERSION archive=${ARCHIVE[$name]} args=() layout
    [[ -f $HOST_CA ]] && args+=(--volume "$HOST_CA:$BUILD_CA:ro" --build-arg "PIP_CERT=$BUILD_CA")
    for arg in "$@"; do args+=(--build-arg "$arg"); done
    # The previous build of this image goes first (its layers are GBs for the pipeline); the
    # tagged stages below keep what the new build can reuse.
    bah rm --all >/dev/null  # working containers an interrupted build left
    bah rmi "$ref" >/dev/null 2>&1 || true
    bah rmi --prune >/dev/null 2>&1 || true
    # Each named stage is built and tagged first: the pruning below then keeps its layers (the
    # pipeline's heavy layer is its `deps` stage) as buildah's cache for the next build.
    local stage
    for stage in $(sed -n 's/^FROM .* AS \([a-z0-9_-]*\)$/\1/ip' "${DOCKERFILE[$name]}"); do
        bud "${args[@]}" --target "$stage" -t "localhost/clipforge-stage/$name-$stage" "${DOCKERFILE[$name]}"
    done
    bud "${args[@]}" -t "$ref" "${DOCKERFILE[$name]}"
    layout=$(mktemp -d "$IMAGES/$name.layout.XXXXXX")
    # After a first build, layers go out uncompressed and oci.py takes the gzip blobs of the
    # unchanged ones from its layer cache: buildah would compress the pipeline's 6.5 GB
    # dependency layer again on every code change. A first build lets buildah compress (faster).
    local layers=$IMAGES/layers/$name push_args=()
    compgen -G "$layers/*.json" >/dev/null && push_args+=(--disable-compression)
    nice -n 10 buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver "$DRIVER" \
        push --quiet ${push_args[@]+"${push_args[@]}"} "$ref" "oci:$layout:$VERSION"
    python3 scripts/images/oci.py archive "$layout" "$ref" "$archive" "$layers"
    rm -rf "$layout"
    # Earlier archives of this image on this architecture are superseded.
    find "$IMAGES" -maxdepth 1 -name "$name-$ARCH-*.tar" -not -path "$archive" -delete
    bah rmi --prune >/dev/null 2>&1 || true
    echo "built clipforge/$name:$VERSION in $((SECONDS - started)) s"
}

mkdir -p "$IMAGES" "$STORE"
# One run at a time: runs share buildah's storage, and each prunes what it no longer needs.
exec 9>"$STORE/lock"
flock 9
# What an interrupted run left half-written.
rm -rf "$IMAGES"/*.layout.* "$IMAGES"/*.partial
for name in operator pipeline; do
    if [[ ! -f ${ARCHIVE[$name]} ]]; then
        install_tools
        ensure_base
        if [[ $name == pipeline ]]; then
            build_image "$name" ${pipeline_args[@]+"${pipeline_args[@]}"}
        else
            build_image "$name"
        fi
    else
        echo "cached clipforge/$name:$VERSION"
    fi
done
for name in operator pipeline; do
    echo "clipforge/$name:$VERSION $(python3 scripts/images/oci.py digest "${ARCHIVE[$name]}")" \
        "$(du -h "${ARCHIVE[$name]}" | cut -f1) ${ARCHIVE[$name]}"
done
