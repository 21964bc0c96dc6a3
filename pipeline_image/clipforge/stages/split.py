"""Split: clip spans for one video, then one task per chunk of clips.

Chunking bounds the memory of everything downstream: a two-hour video becomes many small
tasks instead of one huge one. A chunk already recorded under processed_clip_chunks/ by an
interrupted earlier run, under the same settings (spec.clip_settings: splitting, chunk size,
encoding, filters, outputs), is passed on empty, marked resumed, so its clips are not redone.
A chunk an earlier run recorded under other settings, or any chunk under `--overwrite`, is
redone, and what it wrote (and any
chunk past this run's last) is deleted first, so no stale clip stays in the dataset.
"""

from __future__ import annotations

import json
from dataclasses import replace

from clipforge import layout
from clipforge.clip_outputs import remove_chunk_outputs
from clipforge.spec import FixedStrideSpec, SplitAlgorithm, clip_settings
from clipforge.stages.base import Stage
from clipforge.storage import Storage
from clipforge.tasks import Clip, VideoTask, clip_uuid


def fixed_stride_spans(num_frames: int, fps: float, spec: FixedStrideSpec) -> list[tuple[int, int]]:
    length = max(1, round(spec.clip_length_s * fps))
    stride = max(1, round(spec.stride_s * fps))
    min_frames = spec.min_clip_length_s * fps
    spans = []
    for start in range(0, num_frames, stride):
        end = min(start + length, num_frames)
        if end - start >= min_frames and end > start:
            spans.append((start, end))
    return spans


class SplitStage(Stage):
    name = "split"

    def setup(self) -> None:
        self.storage = Storage.from_spec(self.spec.storage)
        algorithm = self.spec.splitting.algorithm
        self.detector = None
        if algorithm == SplitAlgorithm.transnetv2.value:
            from clipforge.scenes import TransNetV2Detector

            self.detector = TransNetV2Detector(self.spec.splitting.transnetv2, threads=self.threads)
        elif algorithm == SplitAlgorithm.scenedetect.value:
            from clipforge.scenes import SceneDetectDetector

            self.detector = SceneDetectDetector(self.spec.splitting.scenedetect, threads=self.threads)

    def spans(self, task: VideoTask) -> list[tuple[int, int]]:
        meta = task.meta
        if self.detector is None:
            return fixed_stride_spans(meta.num_frames, meta.framerate, self.spec.splitting.fixed_stride)
        with self.storage.open_read(task.source) as reader:
            return self.detector.detect(reader, meta.framerate).spans

    def process(self, task: VideoTask) -> list[VideoTask]:
        fps = task.meta.framerate
        clips = [
            Clip(
                uuid=clip_uuid(task.source, start, end),
                source_video=task.source,
                start_frame=start,
                end_frame=end,
                start_s=start / fps,
                end_s=end / fps,
            )
            for start, end in sorted(self.spans(task))
        ]
        task.split_algorithm = self.spec.splitting.algorithm
        size = self.spec.execution.clips_per_chunk
        groups = [clips[i : i + size] for i in range(0, len(clips), size)] or [[]]
        out_root = self.spec.output.uri
        settings = clip_settings(self.spec)
        stale = self.earlier_chunks(task, len(groups))
        chunks = []
        for index, group in enumerate(groups):
            chunk = replace(task, clips=group, chunk_index=index, num_chunks=len(groups), num_clips_total=len(clips))
            if group and index in stale and not task.redo and stale[index].get("settings") == settings:
                del stale[index]
                chunk = replace(chunk, clips=[], resumed=True)
            chunks.append(chunk)
        for index, record in stale.items():
            remove_chunk_outputs(self.storage, out_root, record)
            self.storage.delete(layout.chunk_record(out_root, task.relative_path, index))
        return chunks

    def earlier_chunks(self, task: VideoTask, count: int) -> dict[int, dict]:
        """The chunk records earlier runs left for this video: at this run's `count` indices, and at
        as many more as those records say their run had."""
        found: dict[int, dict] = {}
        index, limit = 0, count
        while index < limit:
            uri = layout.chunk_record(self.spec.output.uri, task.relative_path, index)
            if self.storage.exists(uri):
                found[index] = json.loads(self.storage.read_bytes(uri))
                limit = max(limit, int(found[index].get("num_chunks", 0)))
            index += 1
        return found
