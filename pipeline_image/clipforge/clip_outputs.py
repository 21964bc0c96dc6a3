"""Removing what an earlier run wrote for a chunk's clips: split does it before a chunk is redone
under other settings, so no stale clip, preview or embedding stays in the dataset."""

from __future__ import annotations

import json

from clipforge import layout
from clipforge.storage import Storage, StorageError


def recorded_clip_ids(record: dict) -> list[str]:
    """The clips a chunk record (or manifest) names: passed, filtered, then failed."""
    return [*record.get("clips", []), *record.get("filtered_clips", []), *record.get("failed_clips", {})]


def remove_chunk_outputs(storage: Storage, root: str, record: dict) -> None:
    """Deletes every object an earlier run wrote for the clips of chunk `record` (their metas say
    where), then the metas: a chunk redone under other settings leaves nothing stale behind."""
    for clip_id in recorded_clip_ids(record):
        meta_uri = layout.clip_meta(root, clip_id)
        try:
            meta = json.loads(storage.read_bytes(meta_uri))
        except (StorageError, ValueError):
            meta = {}
        uris = {*layout.every_clip_file(root, clip_id), layout.preview_file(root, clip_id)}
        uris.update(meta[key] for key in ("clip_location", "preview_location") if meta.get(key))
        uris.update(w["preview_location"] for w in meta.get("windows") or [] if w.get("preview_location"))
        if (meta.get("embedding") or {}).get("location"):
            uris.add(meta["embedding"]["location"])
        for uri in sorted(uris):
            storage.delete(uri)
        storage.delete(meta_uri)
