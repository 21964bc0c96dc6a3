"""Captions: a tiny random Qwen2.5-VL (and a tiny text LLM) saved on disk with an offline tokenizer.

A random model writes garbage; the tests check the windowing, the frames and prompt each
window gets, and where the captions land, not what they say.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from clipforge.cli import main  # noqa: E402
from clipforge.models import ModelNotFoundError  # noqa: E402
from clipforge.samples import write_samples  # noqa: E402
from clipforge.stages import caption as caption_module  # noqa: E402
from clipforge.stages.caption import (  # noqa: E402
    PROMPTS,
    CaptionStage,
    QwenVLCaptioner,
    VisionGeometry,
    compute_windows,
    window_frame_count,
)
from support.jobs import load_json, manifest, small_samples, write_manifest  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Small frames: 56x56 .. 112x112 pixels, so a window of 8 frames is 4 x 4 x 4 patches = 16 tokens.
VIDEO_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112, "total_pixels": 112 * 112 * 64}


def _save_tokenizer(directory: Path, chat_template: str | None = CHAT_TEMPLATE) -> dict[str, int]:
    """A character-level WordLevel tokenizer with Qwen's special tokens, built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL)
    kwargs = {"chat_template": chat_template} if chat_template else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", **kwargs)
    fast.save_pretrained(directory)
    return vocab


def save_tiny_qwen_vl(directory: Path, chat_template: str | None = CHAT_TEMPLATE) -> None:
    import json

    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    vocab = _save_tokenizer(directory, chat_template)
    Qwen2VLImageProcessor(patch_size=14, temporal_patch_size=2, merge_size=2).save_pretrained(directory)
    (directory / "video_preprocessor_config.json").write_text(json.dumps(
        {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, **VIDEO_PIXELS}
    ))
    ids = {"eos_token_id": vocab["<|im_end|>"], "bos_token_id": vocab["<|im_start|>"], "pad_token_id": 0}
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1]},
                     "tie_word_embeddings": False, **ids},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
                       "out_hidden_size": 32, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "fullatt_block_indexes": [1], "window_size": 56},
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"], **ids,
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(directory)


def save_tiny_llm(directory: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab = _save_tokenizer(directory)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=vocab["<|im_end|>"],
                         bos_token_id=vocab["<|im_start|>"], pad_token_id=0)
    torch.manual_seed(1)
    Qwen2ForCausalLM(config).save_pretrained(directory)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_qwen_vl(root / "qwen2.5-vl-7b-instruct")
    save_tiny_llm(root / "enhancer")
    return root


def captions_spec(make_spec, models_root: Path, **captions):
    return make_spec(
        models={"uri": str(models_root)},
        transcoding={"preset": "ultrafast"},
        previews={"enabled": False},
        embeddings={"enabled": False},
        captions={"enabled": True, "maxNewTokens": 6, **captions},
    )


class Recorder:
    """Wraps QwenVLCaptioner.caption to record each call's prompt and frames."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = QwenVLCaptioner.caption

        def caption(captioner, window, prompt):
            self.calls.append((window.start, window.end, window.frames.shape, prompt))
            return original(captioner, window, prompt)

        monkeypatch.setattr(QwenVLCaptioner, "caption", caption)


def webp_frames(data: bytes) -> int:
    """Frames (ANMF chunks) of an animated WebP, read from its RIFF chunks."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    count, pos = 0, 12
    while pos < len(data):
        size = struct.unpack("<I", data[pos + 4: pos + 8])[0]
        count += data[pos: pos + 4] == b"ANMF"
        pos += 8 + size + (size & 1)
    return count


def test_compute_windows_follows_nemo():
    assert compute_windows(3, 256, 128) == []
    assert compute_windows(100, 256, 128) == [(0, 100)]
    assert compute_windows(256, 256, 128) == [(0, 256)]
    assert compute_windows(600, 256, 128) == [(0, 256), (256, 600)]  # remainder 88 < 128: merged
    assert compute_windows(700, 256, 128) == [(0, 256), (256, 512), (512, 700)]
    assert compute_windows(48, 16, 8) == [(0, 16), (16, 32), (32, 48)]
    assert compute_windows(52, 16, 8) == [(0, 16), (16, 32), (32, 52)]
    assert compute_windows(60, 16, 8) == [(0, 16), (16, 32), (32, 48), (48, 60)]
    assert window_frame_count(48, 24, 2) == 4  # 2 s at 2 fps, and never fewer than 4
    assert window_frame_count(240, 24, 2) == 20
    assert window_frame_count(5, 24, 30) == 4  # even and within the window


def test_patchify_matches_qwen_layout():
    geometry = VisionGeometry(min_pixels=56 * 56, max_pixels=56 * 56)
    frames = np.random.default_rng(0).integers(0, 255, (3, 56, 56, 3), dtype=np.uint8)
    patches, grid = geometry.patchify(frames)
    assert grid == (2, 4, 4)  # 3 frames padded to 4, 56 / 14 = 4 patches a side
    assert patches.shape == (32, 3 * 2 * 14 * 14)
    # The first patch is the top-left 14x14 of frames 0 and 1, channel-major then time.
    x = (frames.astype(np.float32) / 255 - np.array(geometry.mean, np.float32)) / np.array(geometry.std, np.float32)
    first = x[:2, :14, :14, :].transpose(3, 0, 1, 2).reshape(-1)
    np.testing.assert_allclose(patches[0], first, rtol=1e-6)


def test_windows_prompts_and_metas(models_root, stage_clips, make_spec, monkeypatch, transcoded):
    recorder = Recorder(monkeypatch)
    spec = captions_spec(make_spec, models_root, windowSize=16, remainderThreshold=8, fps=8,
                         promptVariant="av", windowPreviews=True)
    stage = CaptionStage(spec)
    stage.setup()
    task = transcoded(spec, stage_clips)
    task.clips[1].filtered_by = "motion"  # filtered clips are not captioned, as in NeMo
    stage.run(task)
    assert not task.errors
    for index in (0, 2):
        clip = task.clips[index]
        assert not clip.errors
        assert [(w["start_frame"], w["end_frame"]) for w in clip.windows] == [(0, 16), (16, 32), (32, 48)]
        assert all(isinstance(w["caption"], str) and w["caption"] for w in clip.windows)
        assert sorted(clip.window_previews) == [0, 1, 2]
        assert webp_frames(clip.window_previews[0]) == 6  # the 6 frames the model saw
    assert task.clips[1].windows == []
    assert len(recorder.calls) == 6
    for start, end, shape, prompt in recorder.calls:
        assert prompt == PROMPTS["av"]
        assert shape[0] == window_frame_count(end - start, 24, 8) == 6
        assert shape[1] % 28 == 0 and shape[2] % 28 == 0

    from clipforge.stages import pipeline_stages
    from clipforge.stages.write import clip_metadata, missing_outputs

    stages = pipeline_stages(spec)
    meta = clip_metadata(task, task.clips[0], missing_outputs(stages, spec, task.clips[0]))
    assert meta["valid"] is True and missing_outputs(stages, spec, task.clips[0]) == []
    assert meta["windows"][1]["preview_location"] == "previews/%s/16_32.webp" % task.clips[0].uuid
    task.clips[0].windows[1]["caption"] = ""
    assert missing_outputs(stages, spec, task.clips[0]) == ["windows[1].caption"]
    assert clip_metadata(task, task.clips[0], missing_outputs(stages, spec, task.clips[0]))["valid"] is False


def test_prompt_text_refine_and_enhance(models_root, stage_clips, make_spec, monkeypatch, transcoded):
    recorder = Recorder(monkeypatch)
    spec = captions_spec(make_spec, models_root, fps=4, promptText="Say what moves.", refine=True,
                         enhanceModel="enhancer")
    stage = CaptionStage(spec)
    stage.setup()
    task = transcoded(spec, stage_clips)
    task.clips = task.clips[:1]
    stage.run(task)
    (window,) = task.clips[0].windows
    assert (window["start_frame"], window["end_frame"]) == (0, 48)
    assert {"draft_caption", "caption", "enhanced_caption"} <= set(window)
    assert [call[3] for call in recorder.calls][0] == "Say what moves."
    assert recorder.calls[1][3].startswith("Here is a first description") and window["draft_caption"] in recorder.calls[1][3]


def test_prompt_without_chat_template_uses_qwen_format(tmp_path):
    save_tiny_qwen_vl(tmp_path / "m", chat_template=None)
    captioner = QwenVLCaptioner(tmp_path / "m", 4)
    text = captioner.prompt_text("Hello")
    assert text.startswith("<|im_start|>system\n") and "<|vision_start|><|video_pad|><|vision_end|>Hello" in text


def test_missing_and_wrong_files_name_the_path(models_root, tmp_path, make_spec):
    spec = captions_spec(make_spec, tmp_path)
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "qwen2.5-vl-7b-instruct")):
        CaptionStage(spec).setup()
    spec = captions_spec(make_spec, models_root, enhanceModel="no-such-llm")
    with pytest.raises(ModelNotFoundError, match=str(models_root / "no-such-llm")):
        CaptionStage(spec).setup()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=str(broken)):
        QwenVLCaptioner(broken, 4)
    bad_geometry = tmp_path / "geometry"
    bad_geometry.mkdir()
    (bad_geometry / "video_preprocessor_config.json").write_text("{")
    with pytest.raises(ValueError, match=str(bad_geometry / "video_preprocessor_config.json")):
        VisionGeometry.from_dir(bad_geometry)
    with pytest.raises(ValueError, match="promptVariant"):
        caption_module.caption_prompt("poetic", None)
    from clipforge.spec import InvalidJobError, parse_job

    with pytest.raises(InvalidJobError, match="captions.promptVariant"):
        parse_job(manifest("/in", "/out", captions={"enabled": True, "promptVariant": "poetic"}))
    assert set(PROMPTS) == {"default", "detailed", "av", "av-surveillance"}


def test_models_check_lists_caption_files(models_root, tmp_path, make_spec):
    from clipforge.preflight import check

    assert check(captions_spec(make_spec, models_root, enhanceModel="enhancer")) == []
    problems = check(captions_spec(make_spec, tmp_path, enhanceModel="enhancer"))
    assert any(str(tmp_path / "qwen2.5-vl-7b-instruct") in p for p in problems)
    assert any(str(tmp_path / "enhancer") in p for p in problems)


@pytest.mark.gpu
def test_captions_on_cuda(models_root, stage_clips, make_spec, transcoded):
    spec = captions_spec(make_spec, models_root, fps=4)
    stage = CaptionStage(spec)
    stage.setup()
    task = transcoded(spec, stage_clips)
    stage.run(task)
    assert all(c.windows and c.windows[0]["caption"] is not None for c in task.clips)


def test_job_writes_captions_into_metas(tmp_path, models_root):
    samples = tmp_path / "samples"
    write_samples(samples, small_samples()[:1])  # 10 s at 24 fps: clips of 120 frames
    out = tmp_path / "out"
    document = manifest(
        str(samples), str(out),
        splitting={"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 5, "strideS": 5}},
        transcoding={"preset": "ultrafast"},
        motionFilter={"mode": "score-only"},
        previews={"enabled": False},
        embeddings={"enabled": False},
        models={"uri": str(models_root)},
        captions={"enabled": True, "windowSize": 48, "remainderThreshold": 20, "fps": 1, "maxNewTokens": 4,
                  "windowPreviews": True},
        execution={"executor": "local", "clipsPerChunk": 2},
    )
    assert main(["run", str(write_manifest(tmp_path / "job.yaml", document)), "--no-progress"]) == 0
    metas = [load_json(p) for p in (out / "metas" / "v0").glob("*.json")]
    assert len(metas) == 2
    for meta in metas:
        # 120 frames: two windows of 48, the remainder of 24 >= 20 is a window of its own.
        assert [(w["start_frame"], w["end_frame"]) for w in meta["windows"]] == [(0, 48), (48, 96), (96, 120)]
        assert all(w["caption"] for w in meta["windows"])
        assert all((out / w["preview_location"]).exists() for w in meta["windows"])
        assert meta["valid"] is True and meta["missing_outputs"] == []
