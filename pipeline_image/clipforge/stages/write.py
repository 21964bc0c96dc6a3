"""Write: one chunk's clips, previews and metadata, then the chunk's record.

The chunk record is written last: its presence means every object of the chunk exists, which
is what lets a rerun skip the chunk. Every object is written atomically (see storage.py).
The task passed on carries no clip bytes, so the driver only ever sees small records.
"""

from __future__ import annotations

import json
from dataclasses import replace

from clipforge import layout
from clipforge.embedding_files import embedding_pickle
from clipforge.stages.base import Stage
from clipforge.storage import Storage
from clipforge.tasks import Clip, VideoTask


def _json(document: dict) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def clip_metadata(root: str, task: VideoTask, clip: Clip) -> dict:
    meta = task.meta
    has_file = clip.encoded is not None
    return {
        "span_uuid": clip.uuid,
        "source_video": clip.source_video,
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
        "num_bytes": len(clip.encoded) if has_file else 0,
        "clip_location": layout.clip_file(root, clip.uuid, clip.filtered_by is not None) if has_file else None,
        "preview_location": layout.preview_file(root, clip.uuid) if clip.preview is not None else None,
        "motion_score": {
            "global_mean": clip.motion_score_global_mean,
            "per_patch_min_256": clip.motion_score_per_patch_min,
        },
        "filtered_by": clip.filtered_by,
        "embedding": (
            {
                "algorithm": clip.embedding_algorithm,
                "dim": int(clip.embedding.shape[-1]),
                "location": layout.embedding_file(root, clip.embedding_algorithm, clip.uuid),
            }
            if clip.embedding is not None
            else None
        ),
        "text_match": clip.text_match,
        # valid: the clip file and every requested output exist.
        "valid": has_file and not clip.errors,
        "errors": clip.errors,
    }


def chunk_summary(task: VideoTask) -> dict:
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
    }


class WriteStage(Stage):
    name = "write"

    def setup(self) -> None:
        self.storage = Storage.from_spec(self.spec.storage)
        self.root = self.spec.output.uri

    def process(self, task: VideoTask) -> list[VideoTask]:
        record_uri = layout.chunk_record(self.root, task.relative_path, task.chunk_index)
        if task.resumed:
            task.chunk_record = json.loads(self.storage.read_bytes(record_uri))
            return [task]
        for clip in task.clips:
            if clip.encoded is not None:
                filtered = clip.filtered_by is not None
                self.storage.write_bytes(layout.clip_file(self.root, clip.uuid, filtered), clip.encoded)
                # A rerun with other thresholds may move a clip: never leave it in both places.
                self.storage.delete(layout.clip_file(self.root, clip.uuid, not filtered))
            if clip.preview is not None:
                self.storage.write_bytes(layout.preview_file(self.root, clip.uuid), clip.preview)
            if clip.embedding is not None:
                self.storage.write_bytes(
                    layout.embedding_file(self.root, clip.embedding_algorithm, clip.uuid),
                    embedding_pickle(clip.embedding),
                )
            self.storage.write_bytes(layout.clip_meta(self.root, clip.uuid), _json(clip_metadata(self.root, task, clip)))
        summary = chunk_summary(task)
        if task.clips:
            self.storage.write_bytes(record_uri, _json(summary))
        light_clips = [replace(c, encoded=None, preview=None) for c in task.clips]
        return [replace(task, clips=light_clips, chunk_record=summary)]
