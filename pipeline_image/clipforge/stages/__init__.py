"""The pipeline's stages, in execution order."""

from __future__ import annotations

from clipforge.stages.base import Stage


def pipeline_stages() -> list[type[Stage]]:
    # Imported here so that importing clipforge.stages stays cheap for tools that only
    # need the stage contract.
    from clipforge.stages.motion import MotionStage
    from clipforge.stages.preview import PreviewStage
    from clipforge.stages.probe import ProbeStage
    from clipforge.stages.split import SplitStage
    from clipforge.stages.transcode import TranscodeStage
    from clipforge.stages.write import WriteStage

    return [ProbeStage, SplitStage, TranscodeStage, MotionStage, PreviewStage, WriteStage]
