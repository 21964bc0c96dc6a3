"""The VideoCurationJob manifest: the one source of truth for the CRD, the operator and the pipeline.

One module per idea: `job` (the manifest and its loading), `sections` (the pipeline's settings),
`stages` (the stage table), `execution` (how the pipeline runs), `cluster` (the operator's Ray
cluster), `status` (output files and the operator's status), `report` (the run report the
pipeline writes and the operator reads: run states, progress.json and summary.json). The names
the rest of the product and the tests use are re-exported here (`from clipforge.spec import X`);
a stage's own settings model is reached through VideoCurationJobSpec and needs no entry.
"""

from clipforge.spec.base import (
    PositiveSeconds, SpecModel,
)
from clipforge.spec.sections import (
    AestheticFilterSpec, CaptionsSpec, DedupSpec, EmbeddingAlgorithm, EmbeddingsSpec, Encoder, FixedStrideSpec,
    HdrMode, InputSpec, MaxLengthMode, ModelsSpec, MotionFilterSpec, MotionMode, OutputSpec, PreviewSpec,
    PromptVariant, Reduction, SceneDetectSpec, SceneDetectorKind, SceneLengthSpec, SplitAlgorithm, SplittingSpec,
    StorageSpec, TransNetV2Spec, TranscodeMode, TranscodingSpec,
)
from clipforge.spec.stages import (
    STAGES, STAGE_DEFAULTS, STAGE_TABLE, StageDeclaration, StageResources, clip_settings, stage_enabled,
    stage_resource_name,
)
from clipforge.spec.execution import (
    ExecutionSpec, FailuresSpec, InputLimits, StageExecution, StagesExecution, stage_resources,
)
from clipforge.spec.cluster import (
    DEFAULT_IMAGE, DEFAULT_RAY_VERSION, DNS_LABEL, DNS_SUBDOMAIN, ENV_NAME, QUANTITY_PATTERN, ClusterSpec,
    ConfigMapSource, EmptyDirSource, EnvVar, GpuWorkerGroupSpec, GpuWorkerGroups, HeadGroupSpec, ImagePullPolicy,
    LocalObjectReference, PersistentVolumeClaimSource, PodResources, Quantity, ResourceAmounts, RetryBackoffSpec,
    TaintEffect, Toleration, TolerationOperator, Volume, VolumeMount, WorkerGroupSpec,
)
from clipforge.spec.report import (
    FAILED_ON_INPUTS, NO_INPUT_VIDEOS, NOT_STARTED, PROGRESS_FILE, PROGRESS_INTERVAL_S, SUMMARY_FILE,
    TOO_MANY_CLIPS_FAILED, TOO_MANY_VIDEOS_FAILED, TOO_MANY_VIDEOS_FAILED_RETRYABLE, ClipCounts, RunReport, RunState,
    VideoCounts, VideoFailure,
)
from clipforge.spec.status import (
    INDEX_DIR, REPORT_DIR, REPORT_PAGE, TERMINAL_PHASES, Condition, ConditionStatus, JobOutputs, JobPhase,
    JobProgress, VideoCurationJobStatus, WorkerGroupStatus,
)
from clipforge.spec.job import (
    API_GROUP, API_VERSION, KIND, PLURAL, InvalidJobError, ObjectMeta, VideoCurationJob, VideoCurationJobSpec,
    load_job, parse_job,
)
