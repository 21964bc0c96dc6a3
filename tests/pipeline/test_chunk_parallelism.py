"""Parallel within a video: the chunks of one video are transcoded by different workers at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from clipforge.samples import SampleVideo, Segment, write_samples
from support.jobs import FIVE_SECOND_CLIPS, clipforge, load_json, manifest, worker_hooks, write_manifest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_chunks_of_one_video_go_to_several_workers(tmp_path):
    inputs = tmp_path / "inputs"
    scenes = tuple(Segment(5, True, 40 + i) for i in range(4))  # four 5 s clips, one chunk each
    write_samples(inputs, [SampleVideo("long", 320, 180, 24, scenes)])
    out, trace = tmp_path / "out", tmp_path / "trace"
    spec = {"splitting": FIVE_SECOND_CLIPS, "embeddings": {"enabled": False},
            # No retries: workers starting side by side are not deaths while starting.
            "execution": {"executor": "ray", "clipsPerChunk": 1, "failures": {"taskRetries": 0},
                          "stages": {"transcode": {"minWorkers": 2, "maxWorkers": 2}}}}
    job = write_manifest(tmp_path / "job.yaml", manifest(str(inputs), str(out), **spec))
    # Each transcode records its worker and holds on until a second worker has begun one too.
    env = worker_hooks("trace:long.mp4:transcode", CLIPFORGE_TEST_TRACE=str(trace))
    result = clipforge("run", str(job), "--no-progress", env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    transcoded = [line.split() for line in trace.read_text().splitlines()]
    assert sorted(int(chunk) for _pid, chunk in transcoded) == [0, 1, 2, 3]
    assert len({pid for pid, _chunk in transcoded}) == 2, transcoded
    record = load_json(out / "processed_videos" / "long.mp4.json")
    assert record["num_chunks"] == 4 and record["num_clips_passed"] == 4 and not record["errors"]
    assert len(list(Path(out / "clips").glob("*.mp4"))) == 4
