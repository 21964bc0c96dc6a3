"""Helpers of scripts/build-images.sh: an image's input hash, and its archive in the format of
`docker save` (Docker 25+): an OCI image layout whose index names the image for containerd (kind,
`ctr import`) and skopeo/podman, plus the manifest.json older `docker load` reads.

  oci.py input-hash DOCKERFILE [EXTRA_INPUT...] [--build-arg K=V...]   prints a sha256 hex digest
  oci.py archive LAYOUT_DIR REFERENCE ARCHIVE LAYER_CACHE              writes the archive
  oci.py digest ARCHIVE                                                prints its manifest digest
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shlex
import shutil
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The build context leaves these out (.dockerignore), so they must not change the hash either.
IGNORED_DIRS = {"__pycache__"}
IGNORED_SUFFIXES = (".pyc", ".egg-info")


def copied_sources(dockerfile: Path) -> list[str]:
    """The context paths the Dockerfile's COPY/ADD instructions read (a COPY --from reads a stage)."""
    sources: list[str] = []
    logical = dockerfile.read_text().replace("\\\n", " ")
    for line in logical.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from=") for w in words[1:]):
            continue
        sources += args[:-1]
    return sources


def _files(source: str) -> list[Path]:
    path = ROOT / source
    if path.is_file():
        return [path]
    found = []
    for directory, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS and not d.endswith(IGNORED_SUFFIXES))
        found += [Path(directory) / n for n in sorted(names) if not n.endswith(IGNORED_SUFFIXES)]
    if not found:
        raise SystemExit(f"{source}: copied by the Dockerfile but not in the build context")
    return found


def input_hash(dockerfile: Path, extra_inputs: list[str], build_args: list[str]) -> str:
    digest = hashlib.sha256()
    for path in [dockerfile, *(ROOT / p for p in extra_inputs),
                 *(f for s in copied_sources(dockerfile) for f in _files(s))]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
        digest.update(b"\x01" if os.access(path, os.X_OK) else b"\x00")
    for arg in sorted(build_args):
        digest.update(b"arg\0" + arg.encode() + b"\0")
    return digest.hexdigest()


def familiar(reference: str) -> str:
    """docker.io/clipforge/operator:0.1.0 -> clipforge/operator:0.1.0 (Docker's RepoTags form)."""
    return reference.removeprefix("docker.io/").removeprefix("library/")


GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def _put_blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob(layout, digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def compress_layers(layout: Path, manifest_desc: dict, cache: Path) -> dict:
    """Gives every layer of the layout's image its gzip blob, from `cache` (by the layer's
    uncompressed digest) where an earlier build made it, else compressed here and cached.

    A code change then costs the gzip of its own small layers only: the pipeline image's
    dependency layer (6.5 GB) is compressed once, not on every build. Layers buildah pushed
    compressed go into the cache as they are. The cache keeps this image's layers only.
    Returns the new manifest (`manifest_desc` now names it).
    """
    cache.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(_blob(layout, manifest_desc["digest"]).read_text())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    kept = set()
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        cached, meta = cache / diff_id.split(":")[1], cache / (diff_id.split(":")[1] + ".json")
        kept |= {cached.name, meta.name}
        source = _blob(layout, layer["digest"])
        if not layer["mediaType"].endswith("+gzip"):  # pushed uncompressed: its digest is diff_id
            if not meta.is_file():
                with open(source, "rb") as raw, gzip.open(cached, "wb", compresslevel=6, mtime=0) as out:
                    shutil.copyfileobj(raw, out, 16 << 20)
                with open(cached, "rb") as packed:
                    meta.write_text(json.dumps({"digest": "sha256:" + hashlib.file_digest(packed, "sha256")
                                                .hexdigest(), "size": cached.stat().st_size}))
            source.unlink()
            layer.update(mediaType=GZIP_LAYER, **json.loads(meta.read_text()))
            os.link(cached, _blob(layout, layer["digest"]))
        elif not meta.is_file():
            cached.unlink(missing_ok=True)  # what an interrupted build left
            os.link(source, cached)
            meta.write_text(json.dumps({"digest": layer["digest"], "size": layer["size"]}))
    for stale in cache.iterdir():
        if stale.name not in kept:
            stale.unlink()
    _blob(layout, manifest_desc["digest"]).unlink()
    manifest_desc.update(_put_blob(layout, json.dumps(manifest).encode()))
    return manifest


def write_archive(layout: Path, reference: str, archive: Path, layer_cache: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    [manifest_desc] = index["manifests"]
    manifest = compress_layers(layout, manifest_desc, layer_cache)
    manifest_desc["annotations"] = {
        "io.containerd.image.name": reference,
        "org.opencontainers.image.ref.name": reference.rsplit(":", 1)[1],
    }
    (layout / "index.json").write_text(json.dumps(index))
    docker_manifest = [{"Config": str(_blob(Path(), manifest["config"]["digest"])), "RepoTags": [familiar(reference)],
                        "Layers": [str(_blob(Path(), layer["digest"])) for layer in manifest["layers"]]}]
    (layout / "manifest.json").write_text(json.dumps(docker_manifest))
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("oci-layout", "index.json", "manifest.json", "blobs", "blobs/sha256"):
            tar.add(layout / name, arcname=name, recursive=False, filter=_normalised)
        # Each blob leaves the layout once it is in the archive: the two never both hold the image.
        for blob in sorted((layout / "blobs" / "sha256").iterdir()):
            tar.add(blob, arcname=f"blobs/sha256/{blob.name}", filter=_normalised)
            blob.unlink()
    partial.rename(archive)


def manifest_digest(archive: Path) -> str:
    """Read from the index at the archive's start, without reading the layers after it."""
    with tarfile.open(archive) as tar:
        while (member := tar.next()) is not None:
            if member.name == "index.json":
                [manifest] = json.load(tar.extractfile(member))["manifests"]
                return manifest["digest"]
    raise SystemExit(f"{archive}: no index.json")


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    hashing = commands.add_parser("input-hash")
    hashing.add_argument("dockerfile", type=Path)
    hashing.add_argument("extra_inputs", nargs="*")
    hashing.add_argument("--build-arg", action="append", default=[])
    packing = commands.add_parser("archive")
    packing.add_argument("layout", type=Path)
    packing.add_argument("reference")
    packing.add_argument("archive", type=Path)
    packing.add_argument("layer_cache", type=Path)
    commands.add_parser("digest").add_argument("archive", type=Path)
    args = parser.parse_args()
    if args.command == "input-hash":
        print(input_hash(args.dockerfile.resolve(), args.extra_inputs, args.build_arg))
    elif args.command == "archive":
        write_archive(args.layout, args.reference, args.archive, args.layer_cache)
    else:
        print(manifest_digest(args.archive))


if __name__ == "__main__":
    main()
