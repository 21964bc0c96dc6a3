"""What flows between stages: one VideoTask per video, then one per chunk of its clips.

Tasks are plain dataclasses so Ray can pickle them between actors; clip bytes travel
inside them through Ray's object store.
"""

from __future__ import annotations

import pickle
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipforge.provenance import Provenance


def clip_uuid(source: str, start_frame: int, end_frame: int) -> str:
    # The same id scheme as NeMo Curator, so reruns and other tools agree on clip identity.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}_{start_frame}_{end_frame}"))


@dataclass
class VideoMeta:
    container: str
    size_bytes: int
    duration_s: float
    width: int
    height: int
    framerate: float
    num_frames: int
    video_codec: str
    pix_fmt: str
    bit_rate: int | None
    has_audio: bool
    # Display rotation in degrees counterclockwise (phone video); width and height are as coded.
    rotation: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Clip:
    uuid: str
    source_video: str
    # Half-open span of source frame indices [start, end) and the same span in seconds.
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    # Filled by transcode.
    encoded: bytes | None = None
    width: int | None = None
    height: int | None = None
    framerate: float | None = None
    num_frames: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None  # None: the clip has no audio
    # The source's display rotation: applied to the pixels when encoding (width and height are
    # as shown), kept as the stream's display matrix by stream copy (width and height as coded).
    rotation: int = 0
    # Stream copy snaps the span to keyframes: the span actually written, when it differs.
    keyframe_aligned: bool = False
    # The file's container (layout.CLIP_CONTAINERS): its name's extension.
    container: str = "mp4"
    # Filled by transcode for the later stages: stage name -> the frames it asked for (frames.py).
    # Each stage drops its entry once used, so what travels on shrinks; the writer drops the rest.
    frames: dict[str, Any] = field(default_factory=dict)
    # Filled by motion.
    motion_score_global_mean: float | None = None
    motion_score_per_patch_min: float | None = None
    filtered_by: str | None = None
    # Filled by embed: a float16 array of shape (1, dim), L2-normalised; it stays in the light
    # chunk the writer passes on (small), so the driver can write the per-video parquet.
    embedding: Any = None
    embedding_algorithm: str | None = None
    # embeddings.textsToVerify: {"best": text, "scores": {text: cosine similarity}}.
    text_match: dict | None = None
    # Filled by aesthetic: the CLIP aesthetic score (min or mean over the sampled frames).
    aesthetic_score: float | None = None
    # Filled by the other scoring stages: stage name -> the clip's score. (Motion and aesthetic
    # keep the fields of their own above: metas/v0 names them as NeMo Curator does.)
    scores: dict[str, float] = field(default_factory=dict)
    # Filled by caption: one dict per caption window, in order: start_frame, end_frame (half-open,
    # relative to the clip), caption, and enhanced_caption / refined when those passes ran.
    windows: list[dict] = field(default_factory=list)
    # Filled by caption when captions.windowPreviews: window index -> animated WebP bytes.
    window_previews: dict[int, bytes] = field(default_factory=dict)
    # Filled by preview.
    preview: bytes | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class VideoTask:
    source: str  # URI of the input video (a local path or s3://...)
    relative_path: str  # path below the input root; names its processed_videos/ record
    source_version: dict | None = None  # the source's size and mtime when listed (runner.source_version)
    provenance: Provenance | None = None  # the run's, for the records (clipforge.provenance)
    input_columns: str | None = None  # its input.manifest row's other columns, JSON text (input_manifest.py)
    meta: VideoMeta | None = None
    # stage name -> message; a video with errors skips the remaining work and is reported failed.
    errors: dict[str, str] = field(default_factory=dict)
    # The errors are the environment's (clipforge.failures): every rerun tries the video again.
    retryable: bool = False
    clips: list[Clip] = field(default_factory=list)
    chunk_index: int = 0
    num_chunks: int = 1
    num_clips_total: int = 0
    # Which splitter produced the spans, recorded in processed_videos/.
    split_algorithm: str | None = None
    # True when an interrupted earlier run already wrote this chunk: nothing to redo.
    resumed: bool = False
    # True under `--overwrite`: earlier chunk records are replaced, never resumed.
    redo: bool = False
    # True under `--retry-failed`: an earlier chunk record with failed clips is redone, not resumed.
    retry_failed: bool = False
    # Set by the writer: the chunk's record as written to processed_clip_chunks/.
    chunk_record: dict | None = None

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    @property
    def video_seconds(self) -> float:
        """Seconds of video this task holds: its clips' once split, else the whole video's (0 before probe)."""
        if self.clips:
            return sum(clip.duration_s for clip in self.clips)
        return self.meta.duration_s if self.meta else 0.0


def task_row(task: VideoTask) -> dict:
    """The task as a Ray Data row. Tasks travel pickled in a binary column: Arrow cannot type nested
    dataclasses, and an explicit pickle spares Ray Data a failed conversion attempt on every block."""
    return {"task": pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)}
