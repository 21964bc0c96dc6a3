"""Small single-layer OCI image archives, written directly, for the test node's own images.

The node needs a sandbox image (Kubernetes' pause), cluster DNS (CoreDNS) and a test image with a
shell; none can be pulled (no registry is reachable), and each is one static binary plus a few
files, so a daemon or a builder would add nothing. The archives are OCI image layouts in a tar
(what `skopeo copy oci-archive:`, `podman load` and `ctr images import` read), named by the
`io.containerd.image.name` annotation.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def normalized_name(name: str) -> str:
    """The full reference the kubelet and containerd use for `name` (`busybox` -> `docker.io/library/busybox:latest`)."""
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if rest else f"docker.io/library/{name}"
    if ":" not in name.rsplit("/", 1)[-1] and "@" not in name:
        name += ":latest"
    return name


@dataclass
class ImageSpec:
    """An image of one layer: `files` maps paths in the image to host files (copied with their mode)."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)  # path in the image -> target
    directories: dict[str, int] = field(default_factory=dict)  # path in the image -> mode
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])


def _layer(spec: ImageSpec) -> bytes:
    buf = io.BytesIO()
    # Every parent directory once, before what is in it (a layer must not list a path twice).
    dirs = {d.strip("/"): mode for d, mode in spec.directories.items()}
    for path in [*spec.files, *spec.symlinks, *spec.directories]:
        for parent in Path(path.strip("/")).parents:
            if str(parent) != ".":
                dirs.setdefault(str(parent), 0o755)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(dirs):
            info = tarfile.TarInfo(path)
            info.type, info.mode = tarfile.DIRTYPE, dirs[path]
            tar.addfile(info)
        for path, source in sorted(spec.files.items()):
            data = Path(source).read_bytes()
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode = len(data), Path(source).stat().st_mode & 0o7777
            tar.addfile(info, io.BytesIO(data))
        for path, target in sorted(spec.symlinks.items()):
            info = tarfile.TarInfo(path.strip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def write_archive(spec: ImageSpec, path: Path) -> str:
    """Writes the image as an OCI archive at `path`; returns its manifest digest (`sha256:...`)."""
    layer = _layer(spec)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": spec.entrypoint or None, "Cmd": spec.cmd or None, "User": spec.user,
                   "Env": spec.env},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }, sort_keys=True).encode()
    config_desc = {"mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)}
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
    }, sort_keys=True).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    full_name = normalized_name(spec.name)
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": full_name,
                        "org.opencontainers.image.ref.name": full_name.rsplit(":", 1)[1]},
    }]}).encode()
    blobs = {layer_digest: layer, config_desc["digest"]: config, manifest_digest: manifest}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        entries = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
        entries += [(f"blobs/sha256/{d.split(':', 1)[1]}", data) for d, data in blobs.items()]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return manifest_digest
