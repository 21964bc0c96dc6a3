"""The pipeline's settings sections of a VideoCurationJob: what it reads, how it cuts, encodes, filters,
embeds and captions clips, and where its models are."""

from __future__ import annotations

from enum import Enum

from pydantic import ConfigDict, model_validator

from clipforge.spec.base import PositiveSeconds, SpecModel, _f


class InputSpec(SpecModel):
    # The CRD says it too: the API server refuses a job with neither or both.
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["uri"]}, {"required": ["manifest"]}]})

    uri: str | None = _f(
        None,
        "Where the raw videos are: a local directory or file, or an s3:// URI (bucket or prefix). One of uri and"
        " manifest.",
        min_length=1,
    )
    manifest: str | None = _f(
        None,
        "A table of the videos instead of a listing: a parquet, CSV or JSONL file (local or s3://) with a column"
        " `uri` (local paths or s3:// URIs) and any other columns, which the video's records and clip index rows"
        " carry as input_columns (JSON text); optional columns `size` and `mtime` say which version of each video"
        " it is. One of uri and manifest.",
        min_length=1,
    )
    patterns: list[str] = _f(
        ["*.mp4", "*.mov", "*.mkv", "*.webm", "*.avi", "*.m4v"],
        "Glob patterns (matched against the file name, ignoring case) of the files to curate under uri.",
        min_length=1,
    )
    limit: int = _f(0, "Curate at most this many videos (in sorted path order); 0 means all.", ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        if (self.uri is None) == (self.manifest is None):
            raise ValueError("give one of input.uri (a directory or prefix to list) and input.manifest (a table of"
                             " videos)")
        return self


class OutputSpec(SpecModel):
    uri: str = _f(
        description="Where the curated dataset is written: a local directory or an s3:// URI.",
        min_length=1,
    )


class StorageSpec(SpecModel):
    endpoint: str | None = _f(
        None, "S3 endpoint URL (for example http://rgw.storage:7480). Unset means AWS's default."
    )
    region: str = _f("us-east-1", "S3 region.")
    credentials_secret: str | None = _f(
        None,
        "Name of a Secret in the job's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        " The operator passes them to the pods as environment variables; the local CLI reads the"
        " same variables from its environment.",
    )


class SplitAlgorithm(str, Enum):
    fixed_stride = "fixed-stride"
    transnetv2 = "transnetv2"
    scenedetect = "scenedetect"


class MaxLengthMode(str, Enum):
    stride = "stride"
    truncate = "truncate"


class FixedStrideSpec(SpecModel):
    clip_length_s: PositiveSeconds = _f(10.0, "Length of each clip in seconds.")
    stride_s: PositiveSeconds = _f(10.0, "Seconds between the starts of consecutive clips.")
    min_clip_length_s: float = _f(2.0, "A trailing clip shorter than this is dropped; at most clipLengthS.", ge=0)

    @model_validator(mode="after")
    def _lengths(self) -> FixedStrideSpec:
        # Every clip is at most clipLengthS long: a longer minimum drops them all.
        if self.min_clip_length_s > self.clip_length_s:
            raise ValueError(f"minClipLengthS ({self.min_clip_length_s:g}) is more than clipLengthS"
                             f" ({self.clip_length_s:g}): every clip would be dropped")
        return self


class SceneLengthSpec(SpecModel):
    min_length_s: float = _f(2.0, "Scenes shorter than this (after cropping) are dropped.", ge=0)
    max_length_s: PositiveSeconds = _f(
        10.0,
        "Scenes longer than this are cut according to maxLengthMode. Less cropS at both ends, it must leave"
        " at least minLengthS (and more than nothing).",
    )
    max_length_mode: MaxLengthMode = _f(
        MaxLengthMode.stride,
        "stride: cut a long scene into consecutive clips of maxLengthS; truncate: keep only its first maxLengthS.",
    )
    crop_s: float = _f(0.5, "Seconds cropped from both ends of each scene, away from the transition.", ge=0)

    @model_validator(mode="after")
    def _lengths(self) -> SceneLengthSpec:
        # Every clip is a piece of at most maxLengthS with cropS cut from both ends (scenes.py):
        # when that leaves less than minLengthS, or nothing, every clip is dropped.
        if self.min_length_s > self.max_length_s:
            raise ValueError(f"minLengthS ({self.min_length_s:g}) is more than maxLengthS ({self.max_length_s:g}):"
                             " every clip would be dropped")
        longest = self.max_length_s - 2 * self.crop_s
        if longest <= 0 or longest < self.min_length_s:
            left = f"{longest:g} s, less than minLengthS ({self.min_length_s:g})" if longest > 0 else "nothing"
            raise ValueError(f"maxLengthS ({self.max_length_s:g}) less cropS ({self.crop_s:g}) at both ends leaves"
                             f" {left}: every clip would be dropped")
        return self


class TransNetV2Spec(SceneLengthSpec):
    threshold: float = _f(0.4, "Shot-boundary probability above which a frame is a transition.", gt=0, lt=1)


class SceneDetectorKind(str, Enum):
    content = "content"
    adaptive = "adaptive"
    histogram = "histogram"


class SceneDetectSpec(SceneLengthSpec):
    detector: SceneDetectorKind = _f(SceneDetectorKind.content, "PySceneDetect detector to run.")
    threshold: float | None = _f(None, "Detector threshold; unset uses PySceneDetect's default for the detector.")
    analysis_height: int = _f(
        144, "Frames are scaled to this height before detection (speed over a little precision).", ge=16
    )


class SplittingSpec(SpecModel):
    algorithm: SplitAlgorithm = _f(SplitAlgorithm.fixed_stride, "How videos are cut into clips.")
    fixed_stride: FixedStrideSpec = _f(default_factory=FixedStrideSpec, description="Fixed-stride settings.")
    transnetv2: TransNetV2Spec = _f(default_factory=TransNetV2Spec, description="TransNetV2 settings.")
    scenedetect: SceneDetectSpec = _f(default_factory=SceneDetectSpec, description="PySceneDetect settings.")


class TranscodeMode(str, Enum):
    encode = "encode"
    copy = "copy"


class Encoder(str, Enum):
    libx264 = "libx264"
    h264_nvenc = "h264_nvenc"
    libvpx_vp9 = "libvpx-vp9"
    libsvtav1 = "libsvtav1"


class HdrMode(str, Enum):
    tone_map = "toneMap"
    keep = "keep"


# The highest crf each encoder takes (x264's scale and NVENC's cq end at 51; libvpx's and SVT-AV1's at 63).
MAX_CRF = {Encoder.libx264.value: 51, Encoder.h264_nvenc.value: 51, Encoder.libvpx_vp9.value: 63,
           Encoder.libsvtav1.value: 63}
# The encoders that write 10-bit 4:2:0 in PyAV 18's FFmpeg (measured 2026-12-07): libx264 (as
# H.264 High 10) and libsvtav1. Its libvpx is built 8-bit only; h264_nvenc refuses yuv420p10le.
TEN_BIT_ENCODERS = (Encoder.libx264.value, Encoder.libsvtav1.value)


class TranscodingSpec(SpecModel):
    mode: TranscodeMode = _f(
        TranscodeMode.encode,
        "encode: frame-accurate re-encode; copy: stream copy, spans snapped to keyframes (recorded in the metadata).",
    )
    encoder: Encoder = _f(Encoder.libx264, "Video encoder; h264_nvenc needs an NVIDIA GPU with NVENC.")
    crf: int | None = _f(
        23,
        "Constant quality (lower is better): 0-51 for libx264 and h264_nvenc, 0-63 for libvpx-vp9 and libsvtav1."
        " Ignored when bitrate is set.",
        ge=0, le=63,
    )
    bitrate: str | None = _f(None, "Target bitrate such as 4M; overrides crf.", pattern=r"^[0-9]+[kKmM]?$")
    preset: str | None = _f(None, "Encoder preset (libx264: ultrafast..veryslow; nvenc: p1..p7). Unset: encoder default.")
    max_height: int | None = _f(
        None, "Downscale clips taller than this (keeping the aspect ratio); unset keeps the source size.", ge=16
    )
    keep_audio: bool = _f(
        True,
        "Keep the source's first audio track in each clip, cut to the clip's span (AAC and MP3 are copied,"
        " other codecs re-encoded to AAC); false writes video-only clips.",
    )
    hdr: HdrMode = _f(
        HdrMode.tone_map,
        "HDR sources (PQ or HLG, BT.2020) in mode encode. toneMap: SDR BT.709 clips; keep: 10-bit clips that"
        f" stay HDR (BT.2020, PQ or HLG), with an encoder that writes 10-bit ({', '.join(TEN_BIT_ENCODERS)})."
        " The models get tone-mapped SDR frames in every case. Mode copy keeps the source as it is.",
    )

    @model_validator(mode="after")
    def _crf_range(self) -> TranscodingSpec:
        if self.mode == TranscodeMode.encode.value and not self.bitrate and self.crf is not None \
                and self.crf > MAX_CRF[self.encoder]:
            raise ValueError(f"crf ({self.crf}) is more than encoder {self.encoder} takes ({MAX_CRF[self.encoder]})")
        return self

    @model_validator(mode="after")
    def _hdr_encoder(self) -> TranscodingSpec:
        # Known from the spec alone: rejected before a run, not as every HDR clip's failure.
        if self.mode == TranscodeMode.encode.value and self.hdr == HdrMode.keep.value \
                and self.encoder not in TEN_BIT_ENCODERS:
            raise ValueError(f"hdr: keep needs an encoder that writes 10-bit video ({', '.join(TEN_BIT_ENCODERS)}),"
                             f" not {self.encoder} (or hdr: toneMap)")
        return self


class MotionMode(str, Enum):
    enable = "enable"
    score_only = "score-only"
    disable = "disable"


class MotionFilterSpec(SpecModel):
    mode: MotionMode = _f(
        MotionMode.enable, "enable: score and move static clips to filtered_clips/; score-only: score only."
    )
    global_mean_threshold: float = _f(0.00098, "Clips whose mean motion is below this are static.", ge=0)
    per_patch_min_threshold: float = _f(
        1e-6, "Clips whose least-moving 256x256 patch moves less than this are static.", ge=0
    )


class SharpnessFilterSpec(SpecModel):
    enabled: bool = _f(
        False, "Score each clip's sharpness (the variance of the Laplacian of its luma) and filter blurry clips."
    )
    threshold: float = _f(
        100.0,
        "Clips whose mean frame score is below this go to filtered_clips/. Frames are scored at a short side of"
        " at most 360 pixels, so the threshold holds at every resolution.",
        ge=0,
    )
    fps: float = _f(1.0, "Frames sampled per second of clip.", gt=0, le=30)


class PreviewSpec(SpecModel):
    enabled: bool = _f(True, "Write an animated WebP preview per clip.")
    fps: float = _f(1.0, "Preview frame rate.", gt=0, le=30)
    height: int = _f(240, "Preview height in pixels (width follows the aspect ratio).", ge=16, le=1080)
    quality: int = _f(50, "WebP quality, 0-100.", ge=0, le=100)


class ModelsSpec(SpecModel):
    uri: str | None = _f(
        None,
        "Root of the model directory (local path or s3:// URI): one subdirectory per model, staged by"
        " the user. Models are never downloaded from a hub at run time.",
    )
    cache_dir: str = _f(
        "/tmp/clipforge-models", "Local directory where models under an s3:// root are copied once per node."
    )


class EmbeddingAlgorithm(str, Enum):
    efficientnet_lite0 = "efficientnet-lite0"
    clip = "clip"
    siglip = "siglip"
    cosmos_embed1_224p = "cosmos-embed1-224p"
    cosmos_embed1_336p = "cosmos-embed1-336p"
    cosmos_embed1_448p = "cosmos-embed1-448p"


# Embedders without a text tower: they cannot score embeddings.textsToVerify.
IMAGE_ONLY_EMBEDDERS = (EmbeddingAlgorithm.efficientnet_lite0.value,)


class EmbeddingsSpec(SpecModel):
    enabled: bool = _f(True, "Compute a clip embedding for search and deduplication.")
    algorithm: EmbeddingAlgorithm = _f(
        EmbeddingAlgorithm.efficientnet_lite0,
        "Embedding model. efficientnet-lite0 ships with ClipForge and needs no model directory;"
        " the others load from models.uri.",
    )
    model: str | None = _f(None, "Subdirectory of models.uri holding the model; unset: the algorithm's name.")
    texts_to_verify: list[str] = _f(
        [],
        "Texts to match against each clip (embedders with a text tower: every algorithm but"
        f" {', '.join(IMAGE_ONLY_EMBEDDERS)}): best match and scores go to the metadata.",
    )

    @model_validator(mode="after")
    def _text_tower(self) -> EmbeddingsSpec:
        if self.texts_to_verify and self.algorithm in IMAGE_ONLY_EMBEDDERS:
            raise ValueError(f"textsToVerify needs an embedder with a text tower; algorithm {self.algorithm} has none"
                             " (clip, siglip and cosmos-embed1-* have one)")
        return self


class Reduction(str, Enum):
    min = "min"
    mean = "mean"


class AestheticFilterSpec(SpecModel):
    enabled: bool = _f(False, "Score clips with CLIP ViT-L/14 and the LAION aesthetic MLP; filter low scores.")
    threshold: float = _f(3.5, "Clips scoring below this go to filtered_clips/.")
    reduction: Reduction = _f(Reduction.min, "How frame scores become the clip's score.")
    fps: float = _f(1.0, "Frames sampled per second of clip.", gt=0, le=30)
    clip_model: str = _f("clip-vit-large-patch14", "Subdirectory of models.uri with the CLIP model.")
    mlp_model: str = _f("laion-aesthetic-mlp", "Subdirectory of models.uri with the aesthetic MLP's state dict.")


class PromptVariant(str, Enum):
    default = "default"
    detailed = "detailed"
    av = "av"
    av_surveillance = "av-surveillance"


class CaptionsSpec(SpecModel):
    enabled: bool = _f(False, "Caption each clip's windows with a vision-language model.")
    model: str = _f("qwen2.5-vl-7b-instruct", "Subdirectory of models.uri with the vision-language model.")
    window_size: int = _f(256, "Frames per caption window.", ge=1)
    remainder_threshold: int = _f(128, "A trailing window shorter than this many frames is dropped.", ge=0)
    fps: float = _f(2.0, "Frames sampled per second of clip for the model.", gt=0, le=30)
    prompt_variant: PromptVariant = _f(
        PromptVariant.default,
        "Named prompt: default (the scene and what happens), detailed (everything visible),"
        " av (a car's dash camera: road users and safety), av-surveillance (a fixed traffic camera).",
    )
    prompt_text: str | None = _f(None, "A prompt of your own; overrides promptVariant.")
    max_new_tokens: int = _f(512, "Longest caption generated.", ge=1)
    refine: bool = _f(False, "A second pass that asks the model to refine its first caption.")
    enhance_model: str | None = _f(None, "Subdirectory of models.uri with a text LLM that rewrites captions; unset: off.")
    window_previews: bool = _f(False, "Write an animated WebP per caption window.")


class DedupSpec(SpecModel):
    enabled: bool = _f(False, "Find semantic duplicates among the clip embeddings after the pipeline.")
    eps: float = _f(
        0.01,
        "Clips whose cosine similarity is at least 1 - eps are duplicates. The best value depends on"
        " the embedder: for efficientnet-lite0 about 0.03 finds re-encoded and resized copies.",
        gt=0, lt=1,
    )
    n_clusters: int | None = _f(None, "k-means clusters; unset: about sqrt(number of clips).", ge=1)
    input_uri: str | None = _f(None, "Deduplicate an existing output's embeddings instead of this job's output.")

