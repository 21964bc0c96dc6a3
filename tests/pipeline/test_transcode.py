"""TranscodeStage: frame-accurate re-encoding, stream copy on keyframes, one pass per chunk."""

from __future__ import annotations

import io
import os

import av
import numpy as np
import pytest
from support.jobs import run_stage

from clipforge.codec.encode import output_size, parse_bitrate
from clipforge.samples import SampleVideo, Segment, write_video
from clipforge.stages.transcode import TranscodeStage
from clipforge.tasks import clip_uuid

FAST = {"preset": "ultrafast"}


def transcode(spec, task):  # noqa: ANN001
    return run_stage(TranscodeStage, spec, task)


def pixel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def assert_frame_accurate(clip, frames, source):  # noqa: ANN001
    """The clip's first and last frames are the source's frames at start and end - 1, not their neighbours."""
    for got, index in ((frames[0], clip.start_frame), (frames[-1], clip.end_frame - 1)):
        error = pixel_error(got, source[index])
        assert error < 6, f"clip {clip.start_frame}-{clip.end_frame}: frame {index} differs by {error}"
        for neighbour in (index - 1, index + 1):
            if 0 <= neighbour < len(source) and pixel_error(source[neighbour], source[index]) > 10:
                assert error < pixel_error(got, source[neighbour]), f"frame {index} looks like {neighbour}"


class CountingContainer:
    """Wraps an input container: counts seeks, demux passes and the packets they read."""

    def __init__(self, container, log):  # noqa: ANN001
        self._container, self._log = container, log

    def __getattr__(self, name):  # noqa: ANN001
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):  # noqa: ANN002
        return self._container.__exit__(*exc)

    def seek(self, *args, **kwargs):  # noqa: ANN002, ANN003
        self._log["seeks"] += 1
        return self._container.seek(*args, **kwargs)

    def demux(self, *args, **kwargs):  # noqa: ANN002, ANN003
        self._log["demux_calls"] += 1
        for packet in self._container.demux(*args, **kwargs):
            if packet.size:
                self._log["packets"] += 1
            yield packet


@pytest.fixture
def source_reads(monkeypatch):
    """Counts what the stage reads from its source (containers av.open opens for reading).

    Only sources opened as file objects count: the stage reads through Storage.open_read, while
    the tests' own probing opens paths (and stream copy decodes its clips from memory).
    """
    log = {"opens": 0, "seeks": 0, "demux_calls": 0, "packets": 0}
    real_open = av.open

    def counting_open(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        container = real_open(file, mode, *args, **kwargs)
        if mode != "r" or isinstance(file, (str, os.PathLike, io.BytesIO)):
            return container
        log["opens"] += 1
        return CountingContainer(container, log)

    monkeypatch.setattr(av, "open", counting_open)
    return log


def test_encode_is_frame_accurate_with_overlapping_clips(stage_source, stage_source_frames, make_task, make_spec,
                                                         decode_clip):
    spans = [(5, 29), (20, 60), (47, 49), (60, 96), (90, 144)]  # overlaps, a 2-frame clip, keyframe edges
    task = transcode(make_spec(transcoding=FAST), make_task(stage_source, spans))
    assert not task.errors
    for clip, (start, end) in zip(task.clips, spans):
        assert clip.errors == {}
        assert (clip.start_frame, clip.end_frame, clip.keyframe_aligned) == (start, end, False)
        frames, codec, width, height = decode_clip(clip.encoded)
        assert len(frames) == clip.num_frames == end - start
        assert (codec, width, height) == ("h264", 320, 180) == (clip.video_codec, clip.width, clip.height)
        assert clip.framerate == 24
        assert_frame_accurate(clip, frames, stage_source_frames)
        # +faststart: the index comes before the media data, so the MP4 streams.
        assert clip.encoded.index(b"moov") < clip.encoded.index(b"mdat")


def test_one_seek_and_one_pass_per_chunk(stage_source, make_task, make_spec, source_reads):
    # Keyframes are at 0, 48 and 96. Clip by clip, each seek would re-read from 48 (or 96):
    # at least 62 + 92 + 44 = 198 packets. One pass reads from 48 to the end once.
    spans = [(50, 110), (80, 140), (110, 144)]
    task = transcode(make_spec(transcoding=FAST), make_task(stage_source, spans))
    assert all(c.encoded and not c.errors for c in task.clips)
    assert source_reads["opens"] == 1
    assert source_reads["seeks"] == 1
    assert source_reads["demux_calls"] == 1
    assert source_reads["packets"] <= 144 - 48


def test_adjacent_clips_decode_each_source_frame_once(stage_source, make_task, make_spec, source_reads):
    spans = [(52, 70), (70, 88), (88, 106)]
    task = transcode(make_spec(transcoding=FAST), make_task(stage_source, spans))
    assert all(c.num_frames == 18 for c in task.clips)
    assert source_reads["seeks"] == 1 and source_reads["demux_calls"] == 1
    # From the keyframe at 48 to 106, plus the decoder's few frames of reordering delay.
    assert source_reads["packets"] <= (106 - 48) + 6


def test_a_chunk_from_the_start_does_not_seek(stage_source, make_task, make_spec, source_reads):
    task = transcode(make_spec(transcoding=FAST), make_task(stage_source, [(0, 24), (24, 48)]))
    assert [c.num_frames for c in task.clips] == [24, 24]
    assert source_reads["seeks"] == 0
    assert source_reads["packets"] <= 48 + 6


def test_downscale_keeps_aspect_with_even_sides(stage_source, stage_source_frames, make_task, make_spec, decode_clip):
    task = transcode(make_spec(transcoding={**FAST, "maxHeight": 101}), make_task(stage_source, [(10, 30)]))
    clip = task.clips[0]
    frames, _, width, height = decode_clip(clip.encoded)
    assert (width, height) == (clip.width, clip.height) == (178, 100)
    assert len(frames) == 20
    small = av.VideoFrame.from_ndarray(stage_source_frames[10], format="rgb24").reformat(178, 100)
    assert pixel_error(frames[0], small.to_ndarray(format="rgb24")) < 6
    assert output_size(320, 180, 720) == (320, 180)
    assert output_size(321, 181, None) == (320, 180)


def test_default_encoder_settings_and_bitrate(stage_source, make_task, make_spec, decode_clip):
    # Default preset (medium) and crf 23, then a bitrate instead of crf.
    for transcoding in ({}, {"bitrate": "300k", "preset": "veryfast"}):
        task = transcode(make_spec(transcoding=transcoding), make_task(stage_source, [(30, 60)]))
        frames, codec, _, _ = decode_clip(task.clips[0].encoded)
        assert (len(frames), codec) == (30, "h264")
    assert parse_bitrate("4M") == 4_000_000 and parse_bitrate("800k") == 800_000 and parse_bitrate("1000") == 1000


@pytest.mark.parametrize(("encoder", "codec"), [("libvpx-vp9", "vp9"), ("libsvtav1", "av1")])
def test_other_encoders(encoder, codec, stage_source, stage_source_frames, make_task, make_spec, decode_clip):
    transcoding = {"encoder": encoder, "crf": 35, "preset": "8" if encoder == "libvpx-vp9" else "12"}
    task = transcode(make_spec(transcoding=transcoding), make_task(stage_source, [(50, 62), (58, 70)]))
    for clip in task.clips:
        assert clip.errors == {} and clip.video_codec == codec
        frames, decoder, width, height = decode_clip(clip.encoded)
        assert codec in decoder and (width, height) == (320, 180)
        assert len(frames) == clip.num_frames == 12
        assert pixel_error(frames[0], stage_source_frames[clip.start_frame]) < 6


def test_nvenc_without_a_gpu_is_an_environment_failure(stage_source, make_task, make_spec, decode_clip):
    """No GPU (or no free NVENC session) is not the clips' fault: the stage raises it for the
    executor to retry the task (clipforge.failures), instead of recording the clips as failed."""
    from clipforge.failures import EnvironmentFailure, environmental

    spec = make_spec(transcoding={"encoder": "h264_nvenc", "preset": "p1"})
    task = make_task(stage_source, [(0, 12), (12, 24)])
    try:
        transcode(spec, task)
    except EnvironmentFailure as exc:  # the usual case: no NVIDIA GPU here
        assert "h264_nvenc needs an NVIDIA GPU with NVENC" in str(exc) and environmental(exc)
        assert all(clip.errors == {} for clip in task.clips)
    else:  # a machine with NVENC
        for clip in task.clips:
            frames, codec, _, _ = decode_clip(clip.encoded)
            assert (len(frames), codec) == (12, "h264")


def test_stream_copy_moves_each_boundary_to_the_nearest_keyframe(stage_source, stage_source_frames, make_task,
                                                                 make_spec, decode_clip, source_reads):
    # Keyframes at 0, 48 and 96; the source ends at 144. [80, 120) has both ends nearest 96: it
    # cannot be cut without re-encoding. [60, 100) snaps to [48, 96), which [40, 80) already is.
    spans = [(0, 40), (40, 80), (60, 100), (80, 120), (120, 144)]
    task = make_task(stage_source, spans)
    transcode(make_spec(transcoding={"mode": "copy"}), task)
    first, second, duplicate, short, last = task.clips
    assert "same keyframe-aligned span [48, 96]" in duplicate.errors["transcode"] and duplicate.encoded is None
    assert "no keyframe-aligned span" in short.errors["transcode"] and short.encoded is None
    written = [first, second, last]
    # The written spans partition the source: no frame twice, none left out.
    assert [(c.start_frame, c.end_frame) for c in written] == [(0, 48), (48, 96), (96, 144)]
    for clip in written:
        assert clip.errors == {} and clip.keyframe_aligned
        # The id names the span written, as the split stage would have named that span.
        assert clip.uuid == clip_uuid(str(stage_source), clip.start_frame, clip.end_frame)
        assert clip.start_s == pytest.approx(clip.start_frame / 24) and clip.end_s == pytest.approx(clip.end_frame / 24)
        frames, codec, width, height = decode_clip(clip.encoded)
        assert (codec, width, height, clip.video_codec) == ("h264", 320, 180, "h264")
        assert len(frames) == clip.num_frames == clip.end_frame - clip.start_frame
        # Packets are copied, not re-encoded: the decoded pictures are the source's, exactly.
        assert np.array_equal(frames[0], stage_source_frames[clip.start_frame])
        assert np.array_equal(frames[-1], stage_source_frames[clip.end_frame - 1])
        assert clip.encoded.index(b"moov") < clip.encoded.index(b"mdat")
        # The later stages' frames come from one decode of the copied clip, upright and sampled.
        assert sorted(clip.frames) == ["embed", "motion", "preview"]
        assert clip.frames["embed"].indices == [0, 12, 24, 36]
    assert source_reads["seeks"] == 0 and source_reads["demux_calls"] == 1
    assert source_reads["packets"] <= 144


def test_stream_copy_of_fixed_stride_clips_writes_the_source_once(tmp_path, make_task, make_spec):
    """Ten-second clips of a source whose keyframes do not fall on clip boundaries: before, each clip
    started at the keyframe before it and ended at the one after, so neighbours overlapped."""
    from clipforge.spec import FixedStrideSpec
    from clipforge.stages.split import fixed_stride_spans

    video = SampleVideo("gops", 64, 36, 10, (Segment(60, True, 3),))  # 600 frames, keyframes every 70
    path = write_video(video, tmp_path / "gops.mp4", gop=70)
    spans = fixed_stride_spans(600, 10.0, FixedStrideSpec(clip_length_s=10, stride_s=10, min_clip_length_s=2))
    task = transcode(make_spec(transcoding={"mode": "copy"}, previews={"enabled": False},
                               embeddings={"enabled": False}, motionFilter={"mode": "disable"}),
                     make_task(path, spans))
    written = sorted((c.start_frame, c.end_frame) for c in task.clips if c.encoded)
    # Boundaries 100, 200, ... move to the nearest of 70, 140, 210, ...: 70, 210, 280, 420, 490.
    assert written == [(0, 70), (70, 210), (210, 280), (280, 420), (420, 490), (490, 600)]
    assert sum(end - start for start, end in written) == 600
    assert all(c.frames == {} for c in task.clips)


@pytest.mark.parametrize("suffix", [".mkv", ".ts"])  # MPEG-TS: timestamps start at 1.4 s, no index to seek by
def test_other_containers(suffix, tmp_path, make_task, make_spec, decode_clip):
    video = SampleVideo("other", 160, 90, 25, (Segment(3, True, 5),))
    path = write_video(video, tmp_path / f"source{suffix}", gop=25)
    with av.open(str(path)) as container:
        source = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for mode in ("encode", "copy"):
        task = transcode(make_spec(transcoding={**FAST, "mode": mode}), make_task(path, [(30, 45), (45, 70)]))
        for clip in task.clips:
            assert clip.errors == {}
            frames = decode_clip(clip.encoded)[0]
            assert len(frames) == clip.end_frame - clip.start_frame
            assert pixel_error(frames[0], source[clip.start_frame]) < 3
        if mode == "copy":
            assert [(c.start_frame, c.end_frame) for c in task.clips] == [(25, 50), (50, 75)]


@pytest.mark.parametrize("suffix", [".ts", ".mkv"])
def test_stream_copy_of_open_gops(suffix, tmp_path, make_task, make_spec, decode_clip):
    # x265's defaults: open GOPs, whose leading pictures are decoded after their keyframe but
    # shown before it, referring to both GOPs. They belong to neither clip, so no frame is twice.
    video = SampleVideo("hevc", 160, 96, 25, (Segment(4, True, 6),))
    path = write_video(video, tmp_path / f"source{suffix}", codec="libx265", gop=25)
    with av.open(str(path)) as container:
        source = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    task = transcode(make_spec(transcoding={"mode": "copy"}), make_task(path, [(30, 45), (45, 70), (80, 100)]))
    for clip in task.clips:
        assert clip.errors == {} and clip.keyframe_aligned and clip.video_codec == "hevc"
        frames, codec, _, _ = decode_clip(clip.encoded)
        assert len(frames) == clip.num_frames == clip.end_frame - clip.start_frame
        assert np.array_equal(frames[0], source[clip.start_frame])
        assert np.array_equal(frames[-1], source[clip.end_frame - 1])
    assert [c.start_frame for c in task.clips] == [25, 50, 75]
    assert all(a.end_frame <= b.start_frame for a, b in zip(task.clips, task.clips[1:]))
    assert task.clips[-1].end_frame == 100


def test_clip_errors_are_recorded_per_clip(stage_source, make_task, make_spec, decode_clip):
    # A clip running past the end keeps the frames that exist; one starting after the end fails;
    # an empty span fails; the others are unaffected.
    task = transcode(make_spec(transcoding=FAST), make_task(stage_source, [(20, 30), (30, 30), (130, 200), (300, 320)]))
    assert not task.errors
    good, empty, tail, missing = task.clips
    assert good.errors == {} and good.num_frames == 10
    assert "empty" in empty.errors["transcode"] and empty.encoded is None
    assert tail.errors == {} and (tail.end_frame, tail.num_frames) == (144, 14)
    assert len(decode_clip(tail.encoded)[0]) == 14
    assert "before the clip starts" in missing.errors["transcode"] and missing.encoded is None


def test_unreadable_sources_fail_the_video_not_the_run(tmp_path, stage_source, make_task, make_spec):
    meta = make_task(stage_source, []).meta
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(stage_source.read_bytes()[: stage_source.stat().st_size // 2])
    for path in (tmp_path / "missing.mp4", garbage, truncated):
        task = make_task(path, [(0, 10)], meta=meta)
        transcode(make_spec(transcoding=FAST), task)
        assert "transcode" in task.errors or "transcode" in task.clips[0].errors, path
        assert task.clips[0].encoded is None


def test_damaged_source_data_fails_only_the_clips_it_reaches(tmp_path, stage_source, stage_source_frames, make_task,
                                                             make_spec, decode_clip):
    # Break the biggest non-key packet between frames 100 and 120: its first NAL unit's length
    # prefix now points past the packet, which the decoder rejects (the file's index stays intact).
    with av.open(str(stage_source)) as container:
        stream = container.streams.video[0]
        packets = [(round(p.pts * stream.time_base * 24), p.pos, p.size) for p in container.demux(stream)
                   if p.size and not p.is_keyframe]
    _, position, size = max((p for p in packets if 100 <= p[0] < 120), key=lambda p: p[2])
    data = bytearray(stage_source.read_bytes())
    data[position: position + 4] = (size * 16).to_bytes(4, "big")
    path = tmp_path / "scribbled.mp4"
    path.write_bytes(bytes(data))

    meta = make_task(stage_source, []).meta
    task = transcode(make_spec(transcoding=FAST), make_task(path, [(0, 48), (40, 96), (96, 144)], meta=meta))
    assert not task.errors
    first, second, damaged = task.clips
    for clip in (first, second):
        frames = decode_clip(clip.encoded)[0]
        assert clip.errors == {} and len(frames) == clip.num_frames == clip.end_frame - clip.start_frame
        assert_frame_accurate(clip, frames, stage_source_frames)
    assert "damaged" in damaged.errors["transcode"] and damaged.encoded is None


# -- real footage shapes -------------------------------------------------------------------

AUDIO_RATE = 48000


def write_av_source(path, video: SampleVideo, audio_codec: str | None = "aac", rotation: int = 0,  # noqa: ANN001
                    tone_from_s: float = 1.0, gop: int = 48):
    """A source with a silent audio track that turns into a tone at `tone_from_s`, and optionally
    a display rotation (degrees counterclockwise, as FFmpeg states it)."""
    from fractions import Fraction

    from clipforge.samples import frames as sample_frames

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(video.fps))
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"preset": "ultrafast"}
        if rotation:
            stream.set_display_rotation(rotation)
        audio = container.add_stream(audio_codec, rate=AUDIO_RATE, layout="mono") if audio_codec else None
        for picture in sample_frames(video):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        if audio is not None:
            seconds = video.num_frames / video.fps
            t = np.arange(round(seconds * AUDIO_RATE)) / AUDIO_RATE
            samples = np.where(t >= tone_from_s, 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0).astype(np.float32)
            size = audio.codec_context.frame_size or 1024
            fmt = audio.codec_context.format.name
            for start in range(0, len(samples), size):
                chunk = samples[start:start + size][None]
                if fmt == "s16":
                    chunk = (chunk * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
                frame.sample_rate, frame.pts = AUDIO_RATE, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode(None))
        container.mux(stream.encode(None))
    return path


def clip_audio(data: bytes) -> tuple[str, np.ndarray]:
    """(codec, mono samples at 48 kHz) of a clip's audio track."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        chunks = [r.to_ndarray().reshape(-1) for f in container.decode(stream) for r in resampler.resample(f)]
        return stream.codec_context.name, np.concatenate(chunks)


def tone_onset_s(samples: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(samples) > 0.1)
    return loud[0] / AUDIO_RATE if len(loud) else float("inf")


@pytest.mark.parametrize(("source_codec", "suffix"), [("aac", ".mp4"), ("pcm_s16le", ".mov")])
def test_clips_keep_the_audio_of_their_span(source_codec, suffix, tmp_path, make_task, make_spec):
    video = SampleVideo("av", 160, 96, 24, (Segment(4, True, 9),))
    path = write_av_source(tmp_path / f"av{suffix}", video, source_codec)
    # The tone starts at 1 s: 0.5 s into [12, 60), at the first sample of [24, 72).
    task = transcode(make_spec(transcoding=FAST), make_task(path, [(12, 60), (24, 72)]))
    for clip, onset in zip(task.clips, (0.5, 0.0)):
        assert clip.errors == {} and clip.audio_codec == "aac"  # AAC copied, PCM re-encoded
        codec, samples = clip_audio(clip.encoded)
        assert codec == "aac"
        # The audio spans the clip (2 s) to within an AAC frame, aligned to its first frame.
        assert abs(len(samples) / AUDIO_RATE - 2.0) <= 2 * 1024 / AUDIO_RATE
        assert abs(tone_onset_s(samples) - onset) < 0.03
    copied = transcode(make_spec(transcoding={"mode": "copy"}), make_task(path, [(48, 96)]))
    codec, samples = clip_audio(copied.clips[0].encoded)
    assert codec == "aac" and copied.clips[0].audio_codec == "aac"
    assert abs(len(samples) / AUDIO_RATE - 2.0) <= 2 * 1024 / AUDIO_RATE and tone_onset_s(samples) < 0.03


def test_audio_can_be_left_out(tmp_path, make_task, make_spec):
    video = SampleVideo("av", 160, 96, 24, (Segment(2, True, 9),))
    path = write_av_source(tmp_path / "av.mp4", video)
    for mode in ("encode", "copy"):
        task = transcode(make_spec(transcoding={**FAST, "mode": mode, "keepAudio": False}), make_task(path, [(0, 48)]))
        clip = task.clips[0]
        with av.open(io.BytesIO(clip.encoded)) as container:
            assert not container.streams.audio and clip.audio_codec is None


@pytest.mark.parametrize("rotation", [90, -90])
def test_rotated_phone_video_gives_upright_clips(rotation, tmp_path, make_task, make_spec, decode_clip):
    from clipforge.samples import frames as sample_frames

    video = SampleVideo("phone", 640, 360, 24, (Segment(2, True, 4),))
    path = write_av_source(tmp_path / "phone.mp4", video, audio_codec=None, rotation=rotation)
    source = list(sample_frames(video))
    task = transcode(make_spec(transcoding=FAST), make_task(path, [(0, 24)]))
    clip = task.clips[0]
    frames, _, width, height = decode_clip(clip.encoded)
    assert (width, height) == (clip.width, clip.height) == (360, 640) and clip.rotation == rotation
    # Turned the way the display matrix says: counterclockwise for 90, clockwise for -90.
    assert pixel_error(frames[0], np.rot90(source[0], k=1 if rotation == 90 else -1)) < 6
    # The later stages see the clip upright too.
    assert clip.frames["preview"].frames.shape[1:] == (240 * 3 // 2, 136)
    assert clip.frames["motion"].frames.shape[1:] == (640, 360)
    # Stream copy cannot turn pixels: the copied stream keeps the display matrix, players turn it.
    copied = transcode(make_spec(transcoding={"mode": "copy"}), make_task(path, [(0, 48)])).clips[0]
    with av.open(io.BytesIO(copied.encoded)) as container:
        assert next(container.decode(video=0)).rotation == rotation
    assert copied.frames["motion"].frames.shape[1:] == (640, 360)


def test_split_and_transcode_agree_on_frames_of_a_variable_rate_source(tmp_path, make_spec, make_task):
    """15 frames a second before the cut at 2 s, 30 after: decode order and time disagree about
    which frame is 'frame n'. Both stages count on the time grid, so a clip starting at the cut
    the detector found starts with the new scene."""
    from fractions import Fraction

    from clipforge.samples import frames as sample_frames
    from clipforge.scenes import SceneDetectDetector
    from clipforge.spec import InputLimits
    from clipforge.stages.probe import probe_container

    before, after = SampleVideo("a", 160, 96, 15, (Segment(2, True, 31),)), SampleVideo("b", 160, 96, 30, (Segment(2, True, 32),))
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.codec_context.options = {"preset": "ultrafast", "bf": "0"}
        stamps = [round(i * 1000 / 15) for i in range(30)] + [2000 + round(i * 1000 / 30) for i in range(60)]
        pictures = list(sample_frames(before)) + list(sample_frames(after))
        for pts, picture in zip(stamps, pictures):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        meta = probe_container(container, path.stat().st_size, InputLimits())
    cuts, _, _ = SceneDetectDetector().find_cuts(str(path))
    fps = meta.framerate
    assert cuts == [round(2.0 * fps)] != [30]  # the cut's index on the grid, not in decode order
    task = transcode(make_spec(transcoding=FAST), make_task(path, [(cuts[0], cuts[0] + 10)], meta=meta))
    first = task.clips[0]
    frames = [f.to_ndarray(format="rgb24") for f in av.open(io.BytesIO(first.encoded)).decode(video=0)]
    assert len(frames) == 10
    new_scene, old_scene = pictures[30], pictures[29]
    assert pixel_error(frames[0], new_scene) < 6 < pixel_error(frames[0], old_scene)


PATCHES = {"red": (200, 40, 40), "blue": (40, 160, 220)}


def write_still_source(path, picture: np.ndarray, picture_format: str, codec: str, pix_fmt: str,  # noqa: ANN001
                       matrix: str, tags: tuple[int, int, int] | None, frames: int, options: dict | None = None) -> None:
    """`frames` copies of `picture` converted to pix_fmt with `matrix` (limited range) and
    encoded; `tags`: the stream's (primaries, transfer, matrix) codes, or None: untagged."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=24)
        stream.height, stream.width = picture.shape[:2]
        stream.pix_fmt = pix_fmt
        stream.codec_context.options = options or {}
        if tags:
            ctx = stream.codec_context
            ctx.color_primaries, ctx.color_trc, ctx.colorspace = tags
            ctx.color_range = 1  # limited
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(picture, format=picture_format).reformat(
                format=pix_fmt, dst_colorspace=matrix, dst_color_range=1)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_hd_colour_source(path, tagged: bool) -> None:  # noqa: ANN001
    """12 frames of 1920x1080, the left half PATCHES["red"], the right half PATCHES["blue"],
    encoded with the BT.709 matrix; `tagged`: the stream says so (else players guess it from HD)."""
    rgb = np.zeros((1080, 1920, 3), np.uint8)
    rgb[:, :960], rgb[:, 960:] = PATCHES["red"], PATCHES["blue"]
    write_still_source(path, rgb, "rgb24", "libx264", "yuv420p", "itu709", (1, 1, 1) if tagged else None, 12,
                       {"preset": "ultrafast", "crf": "12"})


@pytest.mark.parametrize("tagged", [True, False], ids=["tagged-bt709", "untagged-hd"])
def test_a_bt709_source_scaled_to_sd_keeps_its_colour_tags_and_colours(tagged, tmp_path, make_task, make_spec):
    """Scaled to 480 lines, an untagged clip would be shown as BT.601 (SD's default): a hue shift."""
    path = tmp_path / "hd.mp4"
    write_hd_colour_source(path, tagged)
    clip = transcode(make_spec(transcoding={**FAST, "maxHeight": 480}), make_task(path, [(0, 12)])).clips[0]
    assert (clip.width, clip.height) == (854, 480)
    with av.open(io.BytesIO(clip.encoded)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range) == (1, 1, 1, 1)
        frame = next(container.decode(video=0))
        rgb = frame.to_ndarray(format="rgb24")  # as a player shows it: by the stream's tags
    for name, region in (("red", rgb[100:380, 60:380]), ("blue", rgb[100:380, 480:800])):
        mean = region.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - PATCHES[name]).max() < 4, f"{name}: {mean.round(1)} vs {PATCHES[name]}"
    # The models' frames are converted with the same matrix.
    embed = clip.frames["embed"].frames[0]  # 224x224 RGB, the clip's picture squeezed
    for name, region in (("red", embed[40:180, 20:90]), ("blue", embed[40:180, 134:204])):
        mean = region.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - PATCHES[name]).max() < 4, f"embed frame {name}: {mean.round(1)} vs {PATCHES[name]}"


def pq_code(nits: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084's inverse EOTF (absolute luminance to code values), written out here."""
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = np.power(np.asarray(nits, np.float64) / 10000, m1)
    return np.power((c1 + c2 * y) / (1 + c3 * y), m2)


def hlg_code(nits: np.ndarray) -> np.ndarray:
    """BT.2100 HLG on a 1000-nit display, inverted: display light to scene light (the OOTF's
    inverse, system gamma 1.2), then the OETF."""
    luma = np.asarray(nits, np.float64) @ [0.2627, 0.6780, 0.0593] / 1000
    scene = np.asarray(nits, np.float64) / 1000 / np.power(luma, 0.2 / 1.2)[..., None]
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    return np.where(scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-9)) + c)


def write_hdr_source(path, transfer: int) -> np.ndarray:  # noqa: ANN001
    """6 frames of a 10-bit BT.2020 source (PQ or HLG) holding two SDR colours at BT.2408's
    reference white (203 nits) and a 1000-nit highlight, in thirds; their 16-bit RGB codes."""
    sdr = np.array([PATCHES["red"], PATCHES["blue"], (255, 255, 255)], np.float64) / 255
    linear709 = np.power(sdr, 2.4) * 203
    linear709[2] = 1000  # the highlight: five times SDR white
    to2020 = np.array([[0.6274039, 0.3292830, 0.0433131],  # BT.2087
                       [0.0690973, 0.9195404, 0.0113623],
                       [0.0163914, 0.0880133, 0.8955953]])
    code = pq_code if transfer == 16 else hlg_code
    codes = np.rint(code(linear709 @ to2020.T) * 65535).astype(np.uint16)
    rgb48 = np.zeros((720, 1284, 3), np.uint16)
    for i in range(3):
        rgb48[:, 428 * i: 428 * (i + 1)] = codes[i]
    write_still_source(path, rgb48, "rgb48le", "ffv1", "yuv420p10le", "bt2020", (9, transfer, 9), 6)  # BT.2020
    return codes


@pytest.mark.parametrize("transfer", [16, 18], ids=["pq", "hlg"])
def test_an_hdr_source_becomes_an_sdr_bt709_clip(transfer, tmp_path, make_task, make_spec):
    """An HDR source (write_hdr_source): the clip is SDR BT.709 with its colours, the highlight white."""
    path = tmp_path / "hdr.mkv"
    write_hdr_source(path, transfer)
    clip = transcode(make_spec(transcoding={**FAST, "maxHeight": 360}), make_task(path, [(0, 6)])).clips[0]
    with av.open(io.BytesIO(clip.encoded)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range) == (1, 1, 1, 1)
        assert ctx.pix_fmt == "yuv420p"
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
    width = rgb.shape[1] // 3
    # 10-bit PQ codes carry dark channels of saturated colours coarsely (blue's red: 2.4 nits under
    # 142 of blue): within 6 of 255, where an untouched PQ signal would be off by tens.
    for i, (name, expected, tolerance) in enumerate((("red", PATCHES["red"], 6), ("blue", PATCHES["blue"], 6),
                                                      ("highlight", (255, 255, 255), 12))):
        region = rgb[40:320, width * i + 30: width * (i + 1) - 30]
        mean = region.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - expected).max() < tolerance, f"{name}: {mean.round(1)} vs {expected}"
    # The models see the same SDR picture.
    embed = clip.frames["embed"].frames[0]
    assert np.abs(embed[60:160, 10:60].reshape(-1, 3).mean(axis=0) - PATCHES["red"]).max() < 5


@pytest.mark.parametrize("encoder, options", [("libx264", FAST), ("libsvtav1", {"preset": "12"})])
def test_hdr_keep_gives_10_bit_hdr_clips_and_the_models_the_same_sdr_frames(encoder, options, tmp_path, make_task,
                                                                            make_spec):
    path = tmp_path / "hdr.mkv"
    codes = write_hdr_source(path, 16)
    settings = {**options, "encoder": encoder, "maxHeight": 360}
    mapped = transcode(make_spec(transcoding=settings), make_task(path, [(0, 6)])).clips[0]
    kept = transcode(make_spec(transcoding={**settings, "hdr": "keep"}), make_task(path, [(0, 6)])).clips[0]
    with av.open(io.BytesIO(kept.encoded)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range) == (9, 16, 9, 1)  # PQ, BT.2020
        assert ctx.pix_fmt == "yuv420p10le"
        rgb48 = next(container.decode(video=0)).to_ndarray(format="rgb48le")  # BT.2020 RGB, PQ-coded
    width = rgb48.shape[1] // 3
    for i in range(3):  # the source's code values, to within 10-bit steps (64 of 65535) and the encoder's loss
        mean = rgb48[40:320, width * i + 30: width * (i + 1) - 30].reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - codes[i]).max() < 400, f"patch {i}: {mean.round()} vs {codes[i]}"
    # The models' frames are those of the tone-mapped clip, to the bit.
    assert mapped.frames.keys() == kept.frames.keys() and "embed" in kept.frames
    for stage, sampled in mapped.frames.items():
        assert kept.frames[stage].indices == sampled.indices
        assert np.array_equal(kept.frames[stage].frames, sampled.frames), stage


def test_stream_copy_keeps_hdr_and_gives_the_models_the_same_sdr_frames(tmp_path, make_task, make_spec):
    path = tmp_path / "hdr.mkv"
    write_hdr_source(path, 16)
    mapped = transcode(make_spec(transcoding=FAST), make_task(path, [(0, 6)])).clips[0]
    copied = transcode(make_spec(transcoding={"mode": "copy"}), make_task(path, [(0, 6)])).clips[0]
    with av.open(io.BytesIO(copied.encoded)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.pix_fmt) == (9, 16, 9, "yuv420p10le")
    assert mapped.frames.keys() == copied.frames.keys() and "embed" in copied.frames
    for stage, sampled in mapped.frames.items():
        assert copied.frames[stage].indices == sampled.indices
        assert np.array_equal(copied.frames[stage].frames, sampled.frames), stage

def test_the_10_bit_encoders_are_those_that_open_10_bit():
    """TEN_BIT_ENCODERS, which hdr: keep accepts, is what this PyAV's FFmpeg really does (h264_nvenc
    needs a GPU to tell, and is left out)."""
    from fractions import Fraction

    from clipforge.spec.sections import TEN_BIT_ENCODERS

    for encoder in ("libx264", "libsvtav1", "libvpx-vp9"):
        ctx = av.CodecContext.create(encoder, "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 64, 64, "yuv420p10le", Fraction(1, 24)
        try:
            ctx.open()
            opened = True
        except av.error.FFmpegError:
            opened = False
        assert opened == (encoder in TEN_BIT_ENCODERS), encoder
