"""A clip's outputs as its metas/v0 record names them, and removing what an earlier run wrote for a
chunk's clips: split does it before a chunk is redone under other settings, so no stale clip,
preview or embedding stays in the dataset."""

from __future__ import annotations

import json

from clipforge import layout
from clipforge.storage import Storage, StorageError


def recorded_clip_ids(record: dict) -> list[str]:
    """The clips a chunk record (or manifest) names: passed, filtered, then failed."""
    return [*record.get("clips", []), *record.get("filtered_clips", []), *record.get("failed_clips", {})]


def current_locations(meta: dict) -> dict:
    """The metas/v0 record with its locations as they are written now: relative to the output root.

    Records written before that name them under the run's output.uri as it was given
    (`./out/clips/<id>.mp4`, `/data/out/...`, `s3://...`), which resolves only where that run
    started. The layout decides every location from the record's own fields (its id, whether a
    filter set it aside, the container, the caption windows, the embedder), so each is made again
    from those: the same values for a current record, the current ones for an older record.
    """
    clip_id = meta["span_uuid"]
    current = dict(meta)
    if meta.get("clip_location"):
        current["clip_location"] = layout.clip_file("", clip_id, meta.get("filtered_by") is not None,
                                                    layout.clip_container(meta["clip_location"]))
    if meta.get("preview_location"):
        current["preview_location"] = layout.preview_file("", clip_id)
    if meta.get("windows"):
        current["windows"] = [
            {**w, "preview_location": layout.window_preview_file("", clip_id, w["start_frame"], w["end_frame"])}
            if w.get("preview_location") else w
            for w in meta["windows"]
        ]
    if (meta.get("embedding") or {}).get("location"):
        embedding = meta["embedding"]
        current["embedding"] = {**embedding, "location": layout.embedding_file("", embedding["algorithm"], clip_id)}
    return current


def output_locations(meta: dict) -> list[str]:
    """Every location (relative to the output root) a metas/v0 record names."""
    meta = current_locations(meta)
    found = [meta.get("clip_location"), meta.get("preview_location"), (meta.get("embedding") or {}).get("location")]
    found += [w.get("preview_location") for w in meta.get("windows") or []]
    return [location for location in found if location]


def remove_chunk_outputs(storage: Storage, root: str, record: dict) -> None:
    """Deletes every object an earlier run wrote for the clips of chunk `record` (their metas say
    what), then the metas: a chunk redone under other settings leaves nothing stale behind. Only
    objects under `root` are touched, whatever path an older record gives."""
    for clip_id in recorded_clip_ids(record):
        meta_uri = layout.clip_meta(root, clip_id)
        try:
            meta = {**json.loads(storage.read_bytes(meta_uri)), "span_uuid": clip_id}
        except (StorageError, ValueError, TypeError):  # missing, torn, or not a JSON object
            meta = {"span_uuid": clip_id}
        uris = {*layout.every_clip_file(root, clip_id), layout.preview_file(root, clip_id)}
        uris.update(layout.location(root, location) for location in output_locations(meta))
        for uri in sorted(uris):
            storage.delete(uri)
        storage.delete(meta_uri)
