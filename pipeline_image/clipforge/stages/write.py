"""Write: one chunk's clips, previews and metadata, then the chunk's record.

A manifest naming the chunk's clips is written first and the chunk record last: the record's
presence means every object of the chunk exists, which is what lets a rerun skip the chunk when
it was made the way the rerun would make it (clipforge.provenance); a manifest without a record
names the objects of a chunk that never finished, for split to remove. Every object is written
atomically (see storage.py). Right after the record, the chunk's clips are committed to the clip
index (clip_index.commit_chunk); a resumed chunk whose commit was lost (a crash between the two)
commits it then. The task passed on carries
no clip bytes, so the driver only ever sees small records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from clipforge import clip_index, layout
from clipforge.clip_outputs import recorded_clip_ids
from clipforge.embedding_files import embedding_pickle
from clipforge.provenance import spans_digest
from clipforge.spec import VideoCurationJobSpec, clip_settings
from clipforge.stages.base import Stage
from clipforge.storage import Storage, json_bytes
from clipforge.tasks import Clip, VideoTask


def missing_outputs(stages: Sequence[type[Stage]], spec: VideoCurationJobSpec, clip: Clip) -> list[str]:
    """The outputs `stages` (the job's) should have made for this clip and did not (Stage.missing_outputs);
    none for a clip without a file."""
    if clip.encoded is None:
        return []
    return [missing for stage in stages for missing in stage.missing_outputs(spec, clip)]


def _windows(clip: Clip) -> list[dict]:
    out = []
    for i, window in enumerate(clip.windows):
        entry = dict(window)
        if i in clip.window_previews:
            entry["preview_location"] = layout.window_preview_file(
                "", clip.uuid, window["start_frame"], window["end_frame"]
            )
        out.append(entry)
    return out


def clip_metadata(task: VideoTask, clip: Clip, missing: list[str]) -> dict:
    """The clip's metas/v0 record; `missing`: what the stages should have made and did not.
    Its locations are relative to the output root (layout.py), so they resolve wherever the
    output is copied or moved."""
    meta = task.meta
    has_file = clip.encoded is not None
    return {
        "span_uuid": clip.uuid,
        "source_video": clip.source_video,
        "input_columns": task.input_columns,
        "duration_span": [clip.start_s, clip.end_s],
        "span_frames": [clip.start_frame, clip.end_frame],
        "keyframe_aligned": clip.keyframe_aligned,
        "width_source": meta.width,
        "height_source": meta.height,
        "framerate_source": meta.framerate,
        "width": clip.width,
        "height": clip.height,
        "framerate": clip.framerate,
        "num_frames": clip.num_frames,
        "video_codec": clip.video_codec,
        "audio_codec": clip.audio_codec,
        "rotation": clip.rotation,
        "num_bytes": len(clip.encoded) if has_file else 0,
        "clip_location": (layout.clip_file("", clip.uuid, clip.filtered_by is not None, clip.container)
                          if has_file else None),
        "preview_location": layout.preview_file("", clip.uuid) if clip.preview is not None else None,
        "motion_score": {
            "global_mean": clip.motion_score_global_mean,
            "per_patch_min_256": clip.motion_score_per_patch_min,
        },
        "filtered_by": clip.filtered_by,
        "aesthetic_score": clip.aesthetic_score,
        "scores": clip.scores,
        "windows": _windows(clip),
        "embedding": (
            {
                "algorithm": clip.embedding_algorithm,
                "dim": int(clip.embedding.shape[-1]),
                "location": layout.embedding_file("", clip.embedding_algorithm, clip.uuid),
            }
            if clip.embedding is not None
            else None
        ),
        "text_match": clip.text_match,
        # valid: the clip file and every requested output exist.
        "valid": has_file and not clip.errors and not missing,
        "missing_outputs": missing,
        "errors": clip.errors,
    }


def chunk_summary(task: VideoTask, settings: dict) -> dict:
    passed = [c.uuid for c in task.clips if c.encoded is not None and c.filtered_by is None]
    filtered = [c.uuid for c in task.clips if c.encoded is not None and c.filtered_by is not None]
    failed = {c.uuid: c.errors for c in task.clips if c.encoded is None}
    return {
        "video": task.source,
        "relative_path": task.relative_path,
        "chunk_index": task.chunk_index,
        "num_chunks": task.num_chunks,
        "num_clips": len(task.clips),
        "num_clips_passed": len(passed),
        "num_clips_filtered": len(filtered),
        "num_clips_failed": len(failed),
        "clip_seconds": sum(c.duration_s for c in task.clips if c.encoded is not None),
        "clips": passed,
        "filtered_clips": filtered,
        "failed_clips": failed,
        "settings": settings,
        # What made it (clipforge.provenance): a rerun resumes the chunk only when they match.
        "source": task.source_version,
        "spans": spans_digest((c.start_frame, c.end_frame) for c in task.clips),
        **(task.provenance.fields() if task.provenance else {}),
    }


class WriteStage(Stage):
    name = "write"

    def __init__(self, spec: VideoCurationJobSpec, pipeline: Sequence[type[Stage]]):
        # Required, as transcode's: each clip's expected outputs are those of the job's stages.
        super().__init__(spec, pipeline)

    def setup(self) -> None:
        self.storage = Storage.from_spec(self.spec.storage)
        self.root = self.spec.output.uri

    def process(self, task: VideoTask) -> list[VideoTask]:
        record_uri = layout.chunk_record(self.root, task.relative_path, task.chunk_index)
        if task.resumed:
            task.chunk_record = json.loads(self.storage.read_bytes(record_uri))
            if not self.storage.exists(layout.index_chunk(self.root, task.relative_path, task.chunk_index)):
                metas = clip_index.recorded_metas(self.storage, self.root, task.chunk_record, [])
                clip_index.commit_chunk(self.storage, self.root, task.relative_path, task.chunk_index, metas)
            return [task]
        manifest_uri = layout.chunk_manifest(self.root, task.relative_path, task.chunk_index)
        if task.clips:
            manifest = {"clips": [c.uuid for c in task.clips], "num_chunks": task.num_chunks}
            self.storage.write_json(manifest_uri, manifest)
        metas: dict[str, dict] = {}
        for clip in task.clips:
            if clip.encoded is not None:
                uri = layout.clip_file(self.root, clip.uuid, clip.filtered_by is not None, clip.container)
                self.storage.write_bytes(uri, clip.encoded)
                # A rerun with other thresholds (or mode) may move a clip: never leave it in two places.
                for other in layout.every_clip_file(self.root, clip.uuid):
                    if other != uri:
                        self.storage.delete(other)
            if clip.preview is not None:
                self.storage.write_bytes(layout.preview_file(self.root, clip.uuid), clip.preview)
            for i, webp in sorted(clip.window_previews.items()):
                window = clip.windows[i]
                uri = layout.window_preview_file(self.root, clip.uuid, window["start_frame"], window["end_frame"])
                self.storage.write_bytes(uri, webp)
            if clip.embedding is not None:
                self.storage.write_bytes(
                    layout.embedding_file(self.root, clip.embedding_algorithm, clip.uuid),
                    embedding_pickle(clip.embedding),
                )
            meta = json_bytes(clip_metadata(task, clip, missing_outputs(self.pipeline, self.spec, clip)))
            self.storage.write_bytes(layout.clip_meta(self.root, clip.uuid), meta)
            metas[clip.uuid] = json.loads(meta)  # as a rebuild reads it back: the index file's bytes are the same
        summary = chunk_summary(task, clip_settings(self.spec))
        if task.clips:
            self.storage.write_json(record_uri, summary)
            self.storage.delete(manifest_uri)
            clip_index.commit_chunk(self.storage, self.root, task.relative_path, task.chunk_index,
                                    [metas[clip_id] for clip_id in recorded_clip_ids(summary)])
        light_clips = [replace(c, encoded=None, preview=None, window_previews={}, frames={}) for c in task.clips]
        return [replace(task, clips=light_clips, chunk_record=summary)]
