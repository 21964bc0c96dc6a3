"""The output dataset's layout: every path the pipeline writes is named here.

Each function takes the output root and gives the URI under it; given the root "" it gives the
path relative to the root, "/"-separated, which is how records (metas/v0, processed_videos) and
the clip index name locations: they resolve under wherever the output is now (`location`), so a
copied or moved output, or one read from another machine, still finds its files.
"""

from __future__ import annotations

import hashlib

from clipforge.spec import INDEX_DIR, PROGRESS_FILE, REPORT_DIR, REPORT_PAGE, SUMMARY_FILE
from clipforge.storage import join

CLIPS = "clips"
FILTERED_CLIPS = "filtered_clips"
PREVIEWS = "previews"
METAS = "metas/v0"
PROCESSED_VIDEOS = "processed_videos"
PROCESSED_CHUNKS = "processed_clip_chunks"
# Which videos are done, read by a restart in a few large reads (resume_state.py); rebuildable from
# processed_videos/.
RESUME = "resume"
# What a chunk is about to write, written before its first object and deleted after its record:
# one left behind names the objects of a chunk that never finished (clip_outputs.py removes them).
PENDING_CHUNKS = "pending_clip_chunks"
# Embeddings: Cosmos-Embed1's directory keeps NeMo Curator's name; other embedders write
# <algorithm>_embd. One <uuid>.pickle per clip, one parquet per video under <dir>_parquet.
EMBEDDINGS = "ce1_embd"
PROGRESS = PROGRESS_FILE
SUMMARY = SUMMARY_FILE
# Claims of the runs writing this output (lease.py): one live at a time.
LEASES = "leases"
# Derived from the records above (clip_index.py, report.py), rebuildable: the index as each chunk
# and video is recorded, the report at the end of every run.
INDEX = INDEX_DIR
CLIP_INDEX = f"{INDEX_DIR}/clips"
VIDEO_INDEX = f"{INDEX_DIR}/videos"
REPORT = REPORT_DIR


# A clip's file is MP4, or Matroska where stream copy keeps a codec MP4 cannot carry (VP8).
CLIP_CONTAINERS = ("mp4", "mkv")


def location(root: str, relative: str | None) -> str | None:
    """A location a record or the index gives (relative to the output root) as a URI under root."""
    return None if relative is None else join(root, relative)


def clip_file(root: str, clip_id: str, filtered: bool, container: str) -> str:
    return join(root, FILTERED_CLIPS if filtered else CLIPS, f"{clip_id}.{container}")


def every_clip_file(root: str, clip_id: str) -> list[str]:
    """Every place a clip's file may be: passed or filtered, in each container."""
    return [clip_file(root, clip_id, filtered, c) for filtered in (False, True) for c in CLIP_CONTAINERS]


def clip_container(location: str) -> str:
    """The container of a clip's file, from its location (a metas record's clip_location)."""
    return location.rsplit(".", 1)[-1]


def preview_file(root: str, clip_id: str) -> str:
    return join(root, PREVIEWS, f"{clip_id}.webp")


def embeddings_dir(algorithm: str) -> str:
    return EMBEDDINGS if algorithm.startswith("cosmos-embed1") else f"{algorithm}_embd"


def embedding_file(root: str, algorithm: str, clip_id: str) -> str:
    return join(root, embeddings_dir(algorithm), f"{clip_id}.pickle")


def embeddings_parquet_dir(algorithm: str) -> str:
    return f"{embeddings_dir(algorithm)}_parquet"


def embeddings_parquet(root: str, algorithm: str, relative_path: str) -> str:
    return join(root, embeddings_parquet_dir(algorithm), f"{relative_path}.parquet")


def window_preview_file(root: str, clip_id: str, start_frame: int, end_frame: int) -> str:
    """A caption window's preview; frames are the window's half-open span within the clip."""
    return join(root, PREVIEWS, clip_id, f"{start_frame}_{end_frame}.webp")


def clip_meta(root: str, clip_id: str) -> str:
    return join(root, METAS, f"{clip_id}.json")


def video_record(root: str, relative_path: str) -> str:
    return join(root, PROCESSED_VIDEOS, f"{relative_path}.json")


def _index_key(relative_path: str) -> str:
    """A video's name in the index's flat folders: any relative path, as a fixed-length file name."""
    return hashlib.sha1(relative_path.encode()).hexdigest()


def index_chunk(root: str, relative_path: str, chunk_index: int) -> str:
    """The index/clips file of one chunk's clips: the same name for every run, so a redo replaces it."""
    return join(root, CLIP_INDEX, f"chunk-{_index_key(relative_path)}-{chunk_index:05d}.parquet")


def index_video(root: str, relative_path: str) -> str:
    """The index/videos file of one video's row."""
    return join(root, VIDEO_INDEX, f"video-{_index_key(relative_path)}.parquet")


def report_file(root: str, *parts: str) -> str:
    return join(root, REPORT, *parts)


def report_page(root: str) -> str:
    return report_file(root, REPORT_PAGE)


def chunk_record(root: str, relative_path: str, chunk_index: int) -> str:
    return join(root, PROCESSED_CHUNKS, f"{relative_path}_{chunk_index}.json")


def chunk_manifest(root: str, relative_path: str, chunk_index: int) -> str:
    return join(root, PENDING_CHUNKS, f"{relative_path}_{chunk_index}.json")


def lease_file(root: str, run_id: str) -> str:
    return join(root, LEASES, f"{run_id}.json")
