"""The pipeline's stages, in execution order."""

from __future__ import annotations

from clipforge.spec import VideoCurationJobSpec
from clipforge.stages.base import Stage


def pipeline_stages(spec: VideoCurationJobSpec) -> list[type[Stage]]:
    """The stages this job runs, in order: a stage the spec switches off is not started at all."""
    return [stage for stage in all_stages() if stage.enabled(spec)]


def all_stages() -> list[type[Stage]]:
    # Imported here so that importing clipforge.stages stays cheap for tools that only
    # need the stage contract.
    from clipforge.stages.aesthetic import AestheticStage
    from clipforge.stages.caption import CaptionStage
    from clipforge.stages.embed import EmbedStage
    from clipforge.stages.motion import MotionStage
    from clipforge.stages.preview import PreviewStage
    from clipforge.stages.probe import ProbeStage
    from clipforge.stages.split import SplitStage
    from clipforge.stages.transcode import TranscodeStage
    from clipforge.stages.write import WriteStage

    return [
        ProbeStage, SplitStage, TranscodeStage, MotionStage, AestheticStage, EmbedStage, CaptionStage,
        PreviewStage, WriteStage,
    ]
