"""Captions: a vision-language model (Qwen2.5-VL class) describes each window of each clip.

The method follows NeMo Curator's caption preparation, generation and enhancement:

- Windows: a clip of N frames is cut into windows of `windowSize` frames. A clip of at most
  `windowSize` frames is one window; a trailing remainder of at least `remainderThreshold`
  frames becomes a window of its own, a shorter one is merged into the last full window (as
  NeMo's `compute_windows` does: no frame is left uncaptioned). Clips under 4 frames get none.
  Windows are half-open frame spans [start_frame, end_frame) relative to the clip.
- Frames: within each window, an even number of frames (about `fps` per second, at least 4,
  at most 768) evenly spaced over the window, resized so both sides are multiples of 28 within
  NeMo's per-video pixel budget, normalised with the model's mean/std and cut into the
  vision tower's patches here (so no torchvision is needed). Transcode samples them, at that
  size, from its decode of the source (frames.py): the clip is not decoded again.
- Prompt: `promptText`, or the `promptVariant`'s text, in the model's chat template with one
  video placeholder expanded to the video's token count. Decoding is greedy with a light
  repetition penalty (NeMo samples at temperature 0.1, top-p 0.001: practically greedy).
- refine: a second pass over the same frames, given the first caption, asked to correct and
  complete it; the window keeps both (`draft_caption`, `caption`).
- enhance: a text-only LLM (`enhanceModel`) rewrites each caption with more detail
  (`enhanced_caption`).
- windowPreviews: an animated WebP per window of the frames the model saw.

Models load from `<models.uri>/<model>/` with transformers (`Qwen2_5_VLForConditionalGeneration`,
the tokenizer and its chat template, `preprocessor_config.json` and, when present,
`video_preprocessor_config.json` for the patch geometry and pixel budget), local files only.
When vLLM is importable and CUDA is present the VL model runs on vLLM instead; that path is
small and not exercised by the CPU test suite.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from clipforge.failures import raise_if_environmental
from clipforge.frames import FramePlanFn, FrameRequest, SampledFrames
from clipforge.models import TOKENIZER, WEIGHTS, ModelRequirement, model_dir, model_json
from clipforge.spec import VideoCurationJobSpec
from clipforge.stages.base import Stage
from clipforge.tasks import Clip, VideoTask
from clipforge.webp import encode_animated_webp, preview_size

log = logging.getLogger(__name__)

WINDOW_MIN_FRAMES = 4
# NeMo Curator's (and qwen-vl-utils') video sampling and pixel budget.
FRAME_FACTOR = 2
MIN_FRAMES = 4
MAX_FRAMES = 768
PIXEL_FACTOR = 28
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REPETITION_PENALTY = 1.05

SYSTEM_PROMPT = "You are a helpful assistant."

PROMPTS = {
    "default": "Describe this video in detail: what is shown, what happens and in what order,"
    " and how the scene, the subjects and the camera change over time.",
    "detailed": "Write a thorough, precise description of this video. Cover every visible subject"
    " and object with its appearance, the setting and lighting, each action and movement in order,"
    " the camera's framing and motion, and any text on screen. Describe only what can be seen.",
    "av": "This video was filmed by a camera mounted on a car while driving. Describe how the"
    " vehicles move, this car included, and everything that matters for driving safety: where"
    " pedestrians and cyclists are, lane markings, road signs, traffic lights, and any risky or"
    " aggressive manoeuvres by other drivers. Also describe notable landmarks along the way.",
    "av-surveillance": "This video comes from a fixed surveillance camera overlooking traffic."
    " Describe how the vehicles move and everything that matters for road safety: where"
    " pedestrians are, lane markings, road signs, traffic lights and any risky or aggressive"
    " driving. Also describe notable landmarks in view.",
}

REFINE_PROMPT = (
    "Here is a first description of this video:\n{caption}\n"
    "Watch the video again and rewrite the description so that it is accurate and complete:"
    " fix anything it gets wrong and add what it misses."
)

ENHANCE_PROMPTS = {
    "default": "You rewrite video captions. Keep every fact of the caption you are given and"
    " make it richer: add colour, texture and detail, and make it flow. Your answer must be"
    " longer than the caption.",
    "av": "You rewrite captions of videos from vehicle dash cameras and traffic cameras. Keep"
    " every fact, add detail about the road users and the traffic situation, and end with a"
    " short summary. Your answer must be longer than the caption.",
}
ENHANCE_PROMPTS["detailed"] = ENHANCE_PROMPTS["default"]
ENHANCE_PROMPTS["av-surveillance"] = ENHANCE_PROMPTS["av"]

# What transformers needs to load the VL model and its tokenizer. The processor configs are
# optional: the vision geometry has Qwen2.5-VL's defaults.
CAPTION_FILES = ("config.json", WEIGHTS, TOKENIZER)
ENHANCE_FILES = ("config.json", WEIGHTS, TOKENIZER)


def caption_prompt(variant: str, text: str | None) -> str:
    if text:
        return text
    if variant not in PROMPTS:
        raise ValueError(f"unknown captions.promptVariant {variant!r} (known: {', '.join(PROMPTS)})")
    return PROMPTS[variant]


def compute_windows(num_frames: int, window_size: int, remainder_threshold: int) -> list[tuple[int, int]]:
    """Half-open [start, end) windows over a clip of `num_frames` frames (NeMo's rule, see above)."""
    if num_frames < WINDOW_MIN_FRAMES:
        return []
    if num_frames <= window_size:
        return [(0, num_frames)]
    full, remainder = divmod(num_frames, window_size)
    windows = [(i * window_size, (i + 1) * window_size) for i in range(full)]
    if remainder >= remainder_threshold:
        windows.append((full * window_size, num_frames))
    elif remainder:
        windows[-1] = (windows[-1][0], num_frames)
    return windows


def _round_to(value: float, factor: int) -> int:
    return round(value / factor) * factor


def window_frame_count(length: int, source_fps: float, target_fps: float) -> int:
    """Frames the model sees from a window of `length` frames: even, >= 4, <= min(768, length)."""
    upper = math.floor(min(MAX_FRAMES, length) / FRAME_FACTOR) * FRAME_FACTOR
    wanted = length / source_fps * target_fps
    count = _round_to(min(max(wanted, MIN_FRAMES), upper), FRAME_FACTOR)
    return max(FRAME_FACTOR, min(count, upper))


def window_indices(start: int, end: int, count: int) -> list[int]:
    """`count` frame indices evenly spread over [start, end) (first and last frame included)."""
    return [int(round(x)) for x in np.linspace(start, end - 1, count)]


def resized_size(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width): multiples of 28, close to the aspect ratio, area within [min, max] pixels."""
    h = max(PIXEL_FACTOR, _round_to(height, PIXEL_FACTOR))
    w = max(PIXEL_FACTOR, _round_to(width, PIXEL_FACTOR))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(PIXEL_FACTOR, math.floor(height / beta / PIXEL_FACTOR) * PIXEL_FACTOR)
        w = max(PIXEL_FACTOR, math.floor(width / beta / PIXEL_FACTOR) * PIXEL_FACTOR)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / PIXEL_FACTOR) * PIXEL_FACTOR
        w = math.ceil(width * beta / PIXEL_FACTOR) * PIXEL_FACTOR
    return h, w


@dataclass(frozen=True)
class VisionGeometry:
    """How frames become vision tokens, read from the model directory's processor configs."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = VIDEO_MAX_PIXELS
    total_pixels: int = VIDEO_TOTAL_PIXELS

    @classmethod
    def from_dir(cls, directory: Path) -> VisionGeometry:
        configs = []
        for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
            path = directory / name
            try:
                configs.append(json.loads(path.read_text()) if path.exists() else {})
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path} is not a readable JSON processor config: {exc}") from exc
        return cls.from_configs(*configs)

    @classmethod
    def from_configs(cls, image: dict, video: dict) -> VisionGeometry:
        """From the image and video processor configs (either may be empty: Qwen2.5-VL's defaults)."""
        values: dict = {}
        for config, budget in ((image, False), (video, True)):
            for key in ("patch_size", "temporal_patch_size", "merge_size"):
                if key in config:
                    values[key] = int(config[key])
            if "image_mean" in config:
                values["mean"] = tuple(config["image_mean"])
            if "image_std" in config:
                values["std"] = tuple(config["image_std"])
            if budget:  # the image config's budget is for still images, far too large for video
                size = config.get("size") or {}
                low = config.get("min_pixels", size.get("shortest_edge"))
                high = config.get("max_pixels", size.get("longest_edge"))
                if low:
                    values["min_pixels"] = int(low)
                if high:
                    values["max_pixels"] = int(high)
                if config.get("total_pixels"):
                    values["total_pixels"] = int(config["total_pixels"])
        return cls(**values)

    def frame_size(self, height: int, width: int, num_frames: int) -> tuple[int, int]:
        budget = max(
            min(self.max_pixels, int(self.total_pixels / num_frames * FRAME_FACTOR)), int(self.min_pixels * 1.05)
        )
        return resized_size(height, width, self.min_pixels, budget)

    def patchify(self, frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        """(patches [grid_t*grid_h*grid_w, 3*tps*ps*ps] float32, (grid_t, grid_h, grid_w)) of
        frames [T, H, W, 3] uint8, in the order Qwen2-VL's processors produce them."""
        ps, tps, ms = self.patch_size, self.temporal_patch_size, self.merge_size
        x = frames.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        x = x.transpose(0, 3, 1, 2)  # T, C, H, W
        if len(x) % tps:
            x = np.concatenate([x, np.repeat(x[-1:], tps - len(x) % tps, axis=0)])
        t, c, h, w = x.shape
        gt, gh, gw = t // tps, h // ps, w // ps
        x = x.reshape(gt, tps, c, gh // ms, ms, ps, gw // ms, ms, ps)
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tps * ps * ps)), (gt, gh, gw)


@dataclass
class WindowFrames:
    start: int
    end: int
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB at the model's size
    fps: float  # the rate the frames represent


def window_plan(num_frames: int, fps: float, window_size: int, remainder_threshold: int,
                target_fps: float) -> list[tuple[int, int, list[int]]]:
    """(start, end, the frame indices the model sees) of each caption window of a clip."""
    return [
        (start, end, window_indices(start, end, window_frame_count(end - start, fps, target_fps)))
        for start, end in compute_windows(num_frames, window_size, remainder_threshold)
    ]


def caption_frame_plan(spec: VideoCurationJobSpec, geometry: VisionGeometry) -> FramePlanFn:
    """Which frames of a clip the captioner sees, at the size its vision tower takes."""
    captions = spec.captions

    def plan(num_frames: int, fps: float, width: int, height: int) -> tuple[list[int], tuple[int, int]]:
        windows = window_plan(num_frames, fps, captions.window_size, captions.remainder_threshold, captions.fps)
        if not windows:
            return [], (width, height)
        size_h, size_w = geometry.frame_size(height, width, max(len(w[2]) for w in windows))
        return sorted({i for _, _, indices in windows for i in indices}), (size_w, size_h)

    return plan


def window_frames(sampled: SampledFrames | None, num_frames: int, fps: float, window_size: int,
                  remainder_threshold: int, target_fps: float) -> list[WindowFrames]:
    """The clip's windows with the frames transcode sampled for them (none for a clip too short)."""
    plan = window_plan(num_frames, fps, window_size, remainder_threshold, target_fps)
    if not plan:
        return []
    if sampled is None or not sampled.indices:
        raise ValueError("transcode handed over no frames for caption")
    decoded = dict(zip(sampled.indices, sampled.frames))
    last = max(decoded)
    out = []
    for start, end, indices in plan:
        # A clip its source cut short: fall back on the last frame it has.
        frames = np.stack([decoded.get(i, decoded[last]) for i in indices])
        seconds = (end - start) / fps
        out.append(WindowFrames(start, end, frames, len(indices) / seconds if seconds else target_fps))
    return out


def encode_webp(frames: np.ndarray, fps: float, quality: int = 50, height: int = 240) -> bytes:
    """An animated WebP of RGB `frames` shown at `fps`, scaled to `height` (the preview stage's format)."""
    size = preview_size(frames.shape[2], frames.shape[1], min(height, frames.shape[1]))
    scaled = (av.VideoFrame.from_ndarray(f, format="rgb24").reformat(*size, "yuv420p") for f in frames)
    return encode_animated_webp(scaled, (round(i / fps * 1000) for i in range(len(frames))), quality)


def _chat_text(tokenizer, messages: list[dict], fallback: str) -> str:  # noqa: ANN001
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return fallback


class QwenVLCaptioner:
    """A Qwen2.5-VL-class model on transformers (or vLLM with CUDA), captioning frame windows."""

    def __init__(self, directory: Path, max_new_tokens: int):
        import importlib.util

        import torch
        from transformers import AutoConfig, AutoTokenizer

        self.directory = directory
        self.max_new_tokens = max_new_tokens
        self.geometry = VisionGeometry.from_dir(directory)
        try:
            self.config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"caption model in {directory} cannot be loaded: {exc}") from exc
        video_token_id = getattr(self.config, "video_token_id", None)
        if video_token_id is None:
            raise ValueError(f"{directory / 'config.json'} has no video_token_id: not a Qwen2-VL-class model")
        self.video_token = self.tokenizer.convert_ids_to_tokens(int(video_token_id))
        self.use_vllm = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
        if self.use_vllm:  # pragma: no cover - needs a GPU and vLLM
            from vllm import LLM, SamplingParams

            self.llm = LLM(model=str(directory), limit_mm_per_prompt={"image": 0, "video": 1})
            self.sampling = SamplingParams(
                temperature=0.0, repetition_penalty=REPETITION_PENALTY, max_tokens=max_new_tokens
            )
            return
        from transformers import Qwen2_5_VLForConditionalGeneration

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                str(directory), local_files_only=True, dtype=dtype
            )
        except (OSError, ValueError) as exc:
            raise ValueError(f"caption model in {directory} cannot be loaded: {exc}") from exc
        self.model = model.to(self.device).eval()

    def prompt_text(self, prompt: str) -> str:
        """The chat-formatted prompt with one video placeholder."""
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]},
        ]
        fallback = (
            f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|>{self.video_token}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
        )
        text = _chat_text(self.tokenizer, messages, fallback)
        if text.count(self.video_token) != 1:
            raise ValueError(
                f"the chat template of {self.directory} does not place exactly one {self.video_token} for a video"
            )
        return text

    def caption(self, window: WindowFrames, prompt: str) -> str:
        text = self.prompt_text(prompt)
        if self.use_vllm:  # pragma: no cover - needs a GPU and vLLM
            request = {"prompt": text, "multi_modal_data": {"video": window.frames}}
            return self.llm.generate([request], self.sampling, use_tqdm=False)[0].outputs[0].text.strip()
        import torch

        patches, grid = self.geometry.patchify(window.frames)
        tokens = grid[0] * grid[1] * grid[2] // (self.geometry.merge_size ** 2)
        text = text.replace(self.video_token, self.video_token * tokens)
        inputs = self.tokenizer([text], return_tensors="pt")
        seconds_per_grid = self.geometry.temporal_patch_size / window.fps
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=inputs["input_ids"].to(self.device),
                attention_mask=inputs["attention_mask"].to(self.device),
                pixel_values_videos=torch.from_numpy(patches).to(self.device, self.model.dtype),
                video_grid_thw=torch.tensor([grid], device=self.device),
                second_per_grid_ts=torch.tensor([seconds_per_grid], device=self.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                repetition_penalty=REPETITION_PENALTY,
            )
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


class TextEnhancer:
    """A text LLM (AutoModelForCausalLM) that rewrites captions with more detail."""

    def __init__(self, directory: Path, max_new_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ValueError(f"caption enhancement model in {directory} cannot be loaded: {exc}") from exc
        self.model = model.to(self.device).eval()
        self.max_new_tokens = max_new_tokens

    def enhance(self, caption: str, system_prompt: str) -> str:
        import torch

        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": caption}]
        fallback = f"{system_prompt}\n\nCaption: {caption}\n\nEnhanced caption:"
        text = _chat_text(self.tokenizer, messages, fallback)
        inputs = self.tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(
                **{k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")},
                max_new_tokens=self.max_new_tokens, do_sample=False, repetition_penalty=REPETITION_PENALTY,
            )
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


class CaptionStage(Stage):
    name = "caption"

    @classmethod
    def frame_request(cls, spec: VideoCurationJobSpec) -> FrameRequest | None:
        geometry = VisionGeometry.from_configs(
            model_json(spec, spec.captions.model, ("preprocessor_config.json",)),
            model_json(spec, spec.captions.model, ("video_preprocessor_config.json",)),
        )
        # Bicubic, as the ffmpeg command line scales and qwen-vl-utils' frames are made.
        return FrameRequest(cls.name, caption_frame_plan(spec, geometry), interpolation="BICUBIC")

    @classmethod
    def models(cls, spec: VideoCurationJobSpec) -> list[ModelRequirement]:
        cfg = spec.captions
        out = [ModelRequirement(cls.name, cfg.model, CAPTION_FILES, description="Qwen2.5-VL-class captioner")]
        if cfg.enhance_model:
            out.append(
                ModelRequirement(cls.name, cfg.enhance_model, ENHANCE_FILES, description="caption enhancement LLM")
            )
        return out

    @classmethod
    def missing_outputs(cls, spec: VideoCurationJobSpec, clip: Clip) -> list[str]:
        if clip.filtered_by is not None:
            return []  # captions are asked of the clips no filter moved aside
        missing = [] if clip.windows else ["windows"]
        for i, window in enumerate(clip.windows):
            if not window.get("caption"):
                missing.append(f"windows[{i}].caption")
            if spec.captions.enhance_model and not window.get("enhanced_caption"):
                missing.append(f"windows[{i}].enhanced_caption")
            if spec.captions.window_previews and i not in clip.window_previews:
                missing.append(f"windows[{i}].preview")
        return missing

    def setup(self) -> None:
        spec = self.spec.captions
        self.prompt = caption_prompt(spec.prompt_variant, spec.prompt_text)
        with self.torch_threads():
            self.captioner = QwenVLCaptioner(model_dir(self.spec, spec.model, CAPTION_FILES), spec.max_new_tokens)
            self.enhancer = None
            if spec.enhance_model:
                self.enhancer = TextEnhancer(
                    model_dir(self.spec, spec.enhance_model, ENHANCE_FILES), spec.max_new_tokens
                )
        self.enhance_prompt = ENHANCE_PROMPTS.get(spec.prompt_variant, ENHANCE_PROMPTS["default"])

    def caption_clip(self, clip: Clip) -> None:
        spec = self.spec.captions
        windows = window_frames(
            clip.frames.get(self.name), clip.num_frames, clip.framerate, spec.window_size,
            spec.remainder_threshold, spec.fps,
        )
        if not windows:
            raise ValueError(f"clip has fewer than {WINDOW_MIN_FRAMES} frames: no caption window")
        for index, window in enumerate(windows):
            entry: dict = {"start_frame": window.start, "end_frame": window.end, "frames_used": len(window.frames)}
            caption = self.captioner.caption(window, self.prompt)
            if spec.refine:
                entry["draft_caption"] = caption
                caption = self.captioner.caption(window, REFINE_PROMPT.format(caption=caption))
            entry["caption"] = caption
            if self.enhancer is not None:
                entry["enhanced_caption"] = self.enhancer.enhance(caption, self.enhance_prompt)
            clip.windows.append(entry)
            if spec.window_previews:
                clip.window_previews[index] = encode_webp(
                    window.frames, window.fps, self.spec.previews.quality, self.spec.previews.height
                )

    def process(self, task: VideoTask) -> list[VideoTask]:
        for clip in task.clips:
            clip.windows, clip.window_previews = [], {}
            if not clip.encoded or clip.filtered_by is not None:
                continue  # NeMo captions the clips that passed the filters
            clip.errors.pop(self.name, None)
            try:
                with self.torch_threads():
                    self.caption_clip(clip)
            except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
                raise_if_environmental(exc)
                log.warning("captioning clip %s failed: %s", clip.uuid, exc)
                clip.errors[self.name] = f"{type(exc).__name__}: {exc}"
        for clip in task.clips:
            clip.frames.pop(self.name, None)
        return [task]
