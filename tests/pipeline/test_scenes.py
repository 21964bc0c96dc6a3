"""Scene-detection splitting: the length rules, TransNetV2 (real weights) and PySceneDetect.

TransNetV2 runs at roughly 50-80 frames/s on two CPU cores, so the generated video is short
(14 s at 24 fps, 320x180) and the model is loaded and run once per module.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from clipforge.samples import SampleVideo, Segment, write_video
from clipforge.scenes import (
    SceneDetectDetector,
    SceneDetection,
    TransNetV2Detector,
    cuts_to_scenes,
    predictions_to_scenes,
    scenes_to_spans,
)
from clipforge.spec import SceneDetectSpec, SceneLengthSpec, TransNetV2Spec
from clipforge.storage import Storage

# Cuts: moving -> static, static -> static, static -> moving, moving -> moving.
# A cut between two pans of the same speed is the hardest for TransNetV2; these seeds give
# every cut a probability above 0.85 while no other frame gets above 0.05.
VIDEO = SampleVideo("cuts", 320, 180, 24, (
    Segment(3, True, 41), Segment(2.5, False, 42), Segment(2, False, 43), Segment(3.5, True, 44),
    Segment(3, True, 45),
))
TOLERANCE = 2


@pytest.fixture(scope="module")
def video_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(VIDEO, tmp_path_factory.mktemp("scenes") / "cuts.mp4")


@pytest.fixture(scope="module")
def transnet() -> dict:
    before = _torch_global_state()
    detector = TransNetV2Detector()
    return {"detector": detector, "before": before, "after": _torch_global_state()}


@pytest.fixture(scope="module")
def transnet_detection(transnet: dict, video_path: Path) -> SceneDetection:
    with Storage().open_read(str(video_path)) as reader:
        return transnet["detector"].detect(reader)


def _torch_global_state() -> tuple:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.get_rng_state(),
        np.random.get_state()[1].copy(),
    )


def _assert_same_state(before: tuple, after: tuple) -> None:
    assert before[:4] == after[:4]
    assert torch.equal(before[4], after[4])
    assert np.array_equal(before[5], after[5])


def _assert_cuts_found(found: list[int], expected: list[int]) -> None:
    assert len(found) == len(expected), f"found cuts {found}, expected {expected}"
    for f, e in zip(found, expected):
        assert abs(f - e) <= TOLERANCE, f"found cuts {found}, expected {expected}"


def _frames_48x27(path: Path, limit: int) -> np.ndarray:
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.reformat(width=48, height=27, format="rgb24", interpolation="BICUBIC").to_ndarray())
            if len(frames) == limit:
                break
    return np.stack(frames)


# --- length rules ---------------------------------------------------------------------------

FPS = 24  # min 2 s = 48 frames, max 10 s = 240 frames, crop 0.5 s = 12 frames


def _lengths(**kw) -> SceneLengthSpec:
    return SceneLengthSpec(**{"min_length_s": 2.0, "max_length_s": 10.0, "crop_s": 0.5, **kw})


@pytest.mark.parametrize(("scenes", "expected"), [
    ([(0, 100)], [(12, 88)]),
    ([(0, 71)], []),  # 47 frames after cropping: shorter than 2 s
    ([(0, 72)], [(12, 60)]),  # exactly 2 s after cropping
    ([(0, 264)], [(12, 228)]),  # max length plus 1 s: the 24-frame remainder is dropped
    ([(0, 240)], [(12, 228)]),  # exactly max: one piece
    # Stride: pieces of 240, each cropped; the 120-frame remainder is long enough.
    ([(0, 600)], [(12, 228), (252, 468), (492, 588)]),
    # A remainder under min length (30 frames) is dropped before cropping...
    ([(0, 270)], [(12, 228)]),
    # ...and one that is long enough (60) but not after cropping (36) is dropped after it.
    ([(0, 300)], [(12, 228)]),
    ([(100, 200), (200, 250), (300, 900)], [(112, 188), (312, 528), (552, 768), (792, 888)]),
    ([(5, 5), (9, 3)], []),  # empty and reversed scenes
])
def test_stride_spans(scenes, expected):
    assert scenes_to_spans(scenes, FPS, _lengths()) == expected


def test_truncate_keeps_the_first_max_length_piece():
    spans = scenes_to_spans([(0, 600), (1000, 1100), (2000, 2240)], FPS, _lengths(max_length_mode="truncate"))
    assert spans == [(12, 228), (1012, 1088), (2012, 2228)]


def test_no_crop_and_no_min_length_keep_every_frame():
    lengths = _lengths(min_length_s=0, crop_s=0)
    assert scenes_to_spans([(0, 241), (241, 242)], FPS, lengths) == [(0, 240), (240, 241), (241, 242)]


def test_crop_longer_than_the_scene_drops_it_even_without_min_length():
    lengths = _lengths(min_length_s=0, crop_s=3.0)  # 72 frames off each end
    assert scenes_to_spans([(0, 144), (0, 145)], FPS, lengths) == [(72, 73)]


def test_seconds_become_frames_by_truncation():
    # At 29.97 fps: min int(59.94) = 59, max int(299.7) = 299, crop int(14.985) = 14 frames.
    lengths = _lengths()
    assert scenes_to_spans([(0, 400)], 29.97, lengths) == [(14, 285), (313, 386)]
    # A 87-frame remainder is cropped to 59 frames: exactly the min length, so it stays.
    assert scenes_to_spans([(0, 386)], 29.97, lengths) == [(14, 285), (313, 372)]
    assert scenes_to_spans([(0, 385)], 29.97, lengths) == [(14, 285)]


def test_a_tiny_max_length_still_makes_progress():
    assert scenes_to_spans([(0, 3)], FPS, _lengths(min_length_s=0, crop_s=0, max_length_s=0.01)) == [
        (0, 1), (1, 2), (2, 3)
    ]


def test_bad_fps_is_rejected():
    with pytest.raises(ValueError):
        scenes_to_spans([(0, 10)], 0, _lengths())


@pytest.mark.parametrize(("flags", "expected"), [
    ([0] * 10, [(0, 10)]),
    ([0, 0, 0, 1, 0, 0, 0, 0], [(0, 3), (4, 8)]),
    ([0, 0, 1, 1, 0, 0], [(0, 2), (4, 6)]),  # a run of transition frames is one transition
    ([1, 0, 0, 1, 0], [(1, 3), (4, 5)]),  # a transition on the first frame
    ([0, 0, 0, 1], [(0, 3)]),  # a transition at the end: no empty trailing scene
    ([1, 1, 1], [(0, 3)]),  # nothing but transitions: the whole video
    ([], []),
])
def test_predictions_to_scenes(flags, expected):
    predictions = np.array(flags, dtype=np.float32) * 0.9
    assert predictions_to_scenes(predictions, 0.4) == expected


def test_threshold_is_strict():
    assert predictions_to_scenes(np.array([0.0, 0.4, 0.0, 0.41, 0.0]), 0.4) == [(0, 3), (4, 5)]


def test_cuts_to_scenes():
    assert cuts_to_scenes([], 30) == [(0, 30)]
    assert cuts_to_scenes([20, 10, 10, 0, 30, 45], 30) == [(0, 10), (10, 20), (20, 30)]
    assert cuts_to_scenes([5], 0) == []


# --- TransNetV2 ------------------------------------------------------------------------------


def test_constructing_transnet_leaves_torch_global_state_alone(transnet: dict):
    _assert_same_state(transnet["before"], transnet["after"])
    assert transnet["detector"].device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_constructing_transnet_restores_an_enabled_deterministic_flag():
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)  # not warn-only: the constructor sets warn-only
    try:
        before = _torch_global_state()
        TransNetV2Detector(device="cpu")
        _assert_same_state(before, _torch_global_state())
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def test_transnet_finds_every_cut_and_nothing_else(transnet_detection: SceneDetection):
    detection = transnet_detection
    assert detection.num_frames == VIDEO.num_frames
    assert detection.fps == pytest.approx(24)
    _assert_cuts_found([start for start, _ in detection.scenes[1:]], VIDEO.cut_frames())
    assert detection.scenes[0][0] == 0 and detection.scenes[-1][1] == VIDEO.num_frames
    assert detection.spans == scenes_to_spans(detection.scenes, 24, TransNetV2Spec())
    # A scene ends where its transition (here its last frame) starts, as in NeMo: the first three
    # scenes (3 s, 2.5 s, 2 s) lose a frame and are under 2 s after 1 s of crops; the 3.5 s scene
    # and the last one stay.
    assert len(detection.spans) == 2
    assert all(any(s <= a and b <= e for s, e in detection.scenes) for a, b in detection.spans)


def test_streaming_predictions_equal_the_original_predict_frames(transnet: dict, video_path: Path):
    detector: TransNetV2Detector = transnet["detector"]
    frames = _frames_48x27(video_path, 180)  # past a cut, ending mid-window
    threads = torch.get_num_threads()
    torch.set_num_threads(detector.threads)  # the detector's own: float sums depend on the split
    try:
        with torch.no_grad():
            original = detector.model.predict_frames(torch.from_numpy(frames), quiet=True)[0].numpy()
    finally:
        torch.set_num_threads(threads)
    streamed = detector.predict_frame_stream(iter(frames))  # one window per forward call
    np.testing.assert_array_equal(streamed, original)
    assert original.max() > 0.5  # the comparison covers a real transition

    # Several windows per forward call: the same up to float rounding.
    windows_per_batch = detector.windows_per_batch
    detector.windows_per_batch = 3
    try:
        np.testing.assert_allclose(detector.predict_frame_stream(iter(frames)), original, atol=1e-5)
    finally:
        detector.windows_per_batch = windows_per_batch


def _windowing_only_detector(windows_per_batch: int, seen: list) -> TransNetV2Detector:
    """A detector whose model is replaced by a recorder of the windows it is given."""
    detector = TransNetV2Detector.__new__(TransNetV2Detector)
    detector.windows_per_batch = windows_per_batch

    def run(windows):
        seen.extend(windows)
        # Each output is the id (pixel value) of the window's frame it stands for.
        return np.stack([w[25:75, 0, 0, 0].astype(np.float32) for w in windows])

    detector._run = run
    return detector


@pytest.mark.parametrize("num_frames", [1, 49, 50, 51, 75, 99, 100, 101, 149, 150, 151, 230])
@pytest.mark.parametrize("windows_per_batch", [1, 4])
def test_windows_are_padded_like_the_original(num_frames: int, windows_per_batch: int):
    frames = [np.full((27, 48, 3), i % 256, dtype=np.uint8) for i in range(num_frames)]
    # The original: 25 copies of the first frame, the frames, then the last frame up to a multiple
    # of 50 plus 25; 100-frame windows every 50 frames.
    pad_end = 25 + 50 - (num_frames % 50 or 50)
    padded = np.stack([frames[0]] * 25 + frames + [frames[-1]] * pad_end)
    expected = [padded[p:p + 100] for p in range(0, len(padded) - 100 + 1, 50)]

    seen: list = []
    predictions = _windowing_only_detector(windows_per_batch, seen).predict_frame_stream(iter(frames))
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(predictions, np.arange(num_frames) % 256)


def test_prediction_streams_instead_of_reading_everything_first():
    consumed = 0
    lag = []

    def frames():
        nonlocal consumed
        for i in range(1000):
            consumed += 1
            yield np.full((27, 48, 3), i % 256, dtype=np.uint8)

    detector = _windowing_only_detector(1, [])
    window_run = detector._run

    def run(windows):
        lag.append(consumed)
        return window_run(windows)

    detector._run = run
    assert len(detector.predict_frame_stream(frames())) == 1000
    # Window j needs frames up to 50 j + 74 and runs as soon as that frame arrives.
    assert lag == [min(50 * j + 75, 1000) for j in range(20)]


def test_transnet_reads_an_open_container_and_leaves_it_open(transnet: dict, tmp_path: Path):
    short = SampleVideo("short", 160, 90, 24, (Segment(1, True, 41), Segment(1, False, 42)))
    path = write_video(short, tmp_path / "short.mp4")
    with av.open(str(path)) as container:
        detection = transnet["detector"].detect(container, fps=25)
        assert detection.num_frames == short.num_frames and detection.fps == 25
        assert len(container.streams.video) == 1  # still usable


def test_no_frames_is_an_empty_prediction():
    assert _windowing_only_detector(1, []).predict_frame_stream(iter([])).shape == (0,)


# --- PySceneDetect ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["content", "adaptive", "histogram"])
def test_scenedetect_finds_every_cut(kind: str, video_path: Path):
    detector = SceneDetectDetector(SceneDetectSpec(detector=kind))
    with Storage().open_read(str(video_path)) as reader:
        detection = detector.detect(reader)
    assert detection.num_frames == VIDEO.num_frames
    _assert_cuts_found([start for start, _ in detection.scenes[1:]], VIDEO.cut_frames())
    assert detection.scenes[0][0] == 0 and detection.scenes[-1][1] == VIDEO.num_frames
    assert detection.spans == scenes_to_spans(detection.scenes, 24, detector.spec)


def test_scenedetect_threshold_comes_from_the_spec(video_path: Path):
    with av.open(str(video_path)) as container:
        # No content change scores 255: nothing is a cut, so the video is one scene.
        detection = SceneDetectDetector(SceneDetectSpec(threshold=255)).detect(container)
    assert detection.scenes == [(0, VIDEO.num_frames)]
    assert SceneDetectDetector(SceneDetectSpec()).make_detector()._threshold == 27.0
    assert SceneDetectDetector(SceneDetectSpec(threshold=12)).make_detector()._threshold == 12
