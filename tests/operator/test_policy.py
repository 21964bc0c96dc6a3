"""The administrator's policy for jobs' Ray pods (clipforge_operator.policy): a pure function of spec and policy.

How a refused job fails (phase, condition, event, nothing created) is in test_handlers.py; the
operator under the chart's values against the real API server is in test_security_kube.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from clipforge.spec import DEFAULT_IMAGE, VideoCurationJobSpec
from clipforge_operator.pipeline_pods import with_pipeline_image
from clipforge_operator.policy import (
    JobPolicy,
    PolicyError,
    image_allowed,
    normalize_image,
    parse_policy,
    violations,
)

CHART_DEFAULT = JobPolicy(images=("docker.io/clipforge/pipeline",), service_accounts=(),
                          credentials_secrets=("clipforge-s3",))


def spec(**cluster: Any) -> VideoCurationJobSpec:
    """A job as the policy judges it: with the operator's default image where it names none."""
    storage = {"credentialsSecret": cluster.pop("secret")} if "secret" in cluster else {}
    return with_pipeline_image(VideoCurationJobSpec.model_validate(
        {"input": {"uri": "s3://in/"}, "output": {"uri": "s3://out/"}, "storage": storage, "cluster": cluster}),
        DEFAULT_IMAGE)


@pytest.mark.parametrize("reference, full", [
    ("clipforge/pipeline:0.1.0", "docker.io/clipforge/pipeline:0.1.0"),
    ("ubuntu", "docker.io/library/ubuntu"),
    ("docker.io/ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
    ("registry.example.com/ml/pipeline@sha256:ab", "registry.example.com/ml/pipeline@sha256:ab"),
    ("registry.example.com:5000/pipeline", "registry.example.com:5000/pipeline"),
    ("localhost/pipeline", "localhost/pipeline"),
])
def test_image_references_are_compared_in_full(reference: str, full: str):
    assert normalize_image(reference) == full


@pytest.mark.parametrize("image, allowed, admitted", [
    ("clipforge/pipeline:0.1.0", "docker.io/clipforge/pipeline", True),  # short and full forms are one image
    ("docker.io/clipforge/pipeline@sha256:ab", "clipforge/pipeline", True),
    ("clipforge/pipeline", "clipforge/pipeline", True),
    ("clipforge/pipeline-evil:1", "clipforge/pipeline", False),  # a prefix ends at a path, tag or digest
    ("evil.example.com/clipforge/pipeline:1", "clipforge/pipeline", False),  # another registry
    ("registry.example.com/ml/team/pipe:2", "registry.example.com/ml/", True),
    ("registry.example.com/mlx/pipe:2", "registry.example.com/ml/", False),
    ("registry.example.com/anything:1", "registry.example.com", True),  # a bare registry: all of it
    ("registry.example.com.evil.io/x:1", "registry.example.com", False),
    ("registry.example.com:5000/x:1", "registry.example.com", False),  # another port is another registry
    ("ubuntu:22.04", "clipforge/", False),
    ("anything/at:all", "*", True),
])
def test_images_are_admitted_by_registry_or_prefix(image: str, allowed: str, admitted: bool):
    assert image_allowed(image, (allowed,)) is admitted


def test_the_charts_default_admits_the_default_job():
    assert violations(spec(), CHART_DEFAULT) == []
    assert DEFAULT_IMAGE.startswith("clipforge/pipeline:")
    assert violations(spec(secret="clipforge-s3", serviceAccountName="default"), CHART_DEFAULT) == []


def test_each_refused_field_is_named_with_what_is_allowed():
    problems = violations(spec(image="evil.example.com/miner:1", serviceAccountName="cluster-admin-sa",
                               secret="prod-db-password"), CHART_DEFAULT)
    assert problems == [
        "spec.cluster.image: evil.example.com/miner:1 is not an allowed image (allowed: docker.io/clipforge/pipeline)",
        "spec.cluster.serviceAccountName: cluster-admin-sa is not an allowed service account (leave it unset: only"
        " the namespace's default is allowed)",
        "spec.storage.credentialsSecret: prod-db-password is not a Secret jobs may use (allowed: clipforge-s3)",
    ]


def test_listed_service_accounts_and_secrets_are_admitted():
    policy = JobPolicy(images=("*",), service_accounts=("model-reader",), credentials_secrets=("a", "b"))
    assert violations(spec(serviceAccountName="model-reader", secret="b"), policy) == []
    assert [p.split(":")[0] for p in violations(spec(serviceAccountName="other", secret="c"), policy)] == \
        ["spec.cluster.serviceAccountName", "spec.storage.credentialsSecret"]


def test_no_policy_restricts_nothing():
    assert parse_policy(None) == JobPolicy() == parse_policy("")
    assert violations(spec(image="any/thing:1", serviceAccountName="x", secret="y"), JobPolicy()) == []


def test_the_charts_json_is_the_policy():
    text = json.dumps({"allowedImages": ["docker.io/clipforge/pipeline"], "allowedServiceAccounts": [],
                       "allowedCredentialsSecrets": ["clipforge-s3"]})
    assert parse_policy(text) == CHART_DEFAULT
    assert violations(spec(secret="any-secret"), parse_policy('{"allowedCredentialsSecrets": ["*"]}')) == []
    assert parse_policy('{"allowedImages": ["x/"]}').service_accounts == ("*",)  # what is not given is open


@pytest.mark.parametrize("text, problem", [
    ("{not json", "is not JSON"),
    ("[]", "must be a JSON object"),
    ('{"allowedImage": []}', "unknown key allowedImage"),
    ('{"allowedImages": "x"}', "allowedImages must be a list of non-empty strings"),
    ('{"allowedImages": [""]}', "allowedImages must be a list of non-empty strings"),
])
def test_a_bad_policy_is_an_error_naming_what_is_wrong(text: str, problem: str):
    with pytest.raises(PolicyError, match=problem):
        parse_policy(text)


def test_the_operator_refuses_to_start_with_a_bad_policy(capsys: pytest.CaptureFixture[str]):
    from clipforge_operator.config import parse_config

    with pytest.raises(SystemExit):
        parse_config(["-A"], {"CLIPFORGE_JOB_POLICY": '{"allowedImages": "docker.io/"}'})
    assert "CLIPFORGE_JOB_POLICY: allowedImages must be a list" in capsys.readouterr().err


def test_jobs_naming_no_image_run_the_operators_pipeline_image():
    from clipforge_operator.config import parse_config

    assert parse_config(["-A"], {}).pipeline_image == DEFAULT_IMAGE  # an operator run by hand: this version's
    configured = parse_config(["-A"], {"CLIPFORGE_PIPELINE_IMAGE": "registry.example.com/ml/pipeline:2"})
    assert configured.pipeline_image == "registry.example.com/ml/pipeline:2"
    assert spec().cluster.image == DEFAULT_IMAGE
    assert with_pipeline_image(spec(), "registry.example.com/ml/pipeline:2").cluster.image == DEFAULT_IMAGE  # set
    unset = VideoCurationJobSpec.model_validate({"input": {"uri": "s3://in/"}, "output": {"uri": "s3://out/"}})
    assert unset.cluster.image is None  # the CRD has no default: the operator tells "unset" apart
    assert with_pipeline_image(unset, "registry.example.com/ml/pipeline:2").cluster.image == \
        "registry.example.com/ml/pipeline:2"


# ---------------------------------------------------------------- image references, as the runtime reads them


@pytest.mark.parametrize("reference, full", [
    ("Evil/x", "Evil/x"),  # an uppercase first component is a host, not a Docker Hub namespace
    ("Evil/x:1", "Evil/x:1"),
    ("index.docker.io/clipforge/pipeline:1", "docker.io/clipforge/pipeline:1"),  # the legacy name of Docker Hub
    ("index.docker.io/ubuntu", "docker.io/library/ubuntu"),
])
def test_references_are_read_as_the_container_runtime_reads_them(reference: str, full: str):
    assert normalize_image(reference) == full


@pytest.mark.parametrize("image, allowed, admitted", [
    ("Evil/x:1", "docker.io", False),  # pulled from the host Evil, not from Docker Hub
    ("evil/x:1", "docker.io", True),
    ("Clipforge/pipeline:1", "clipforge/pipeline", False),
    ("index.docker.io/clipforge/pipeline:1", "clipforge/pipeline", True),
    ("docker.io/library/ubuntu:22.04", "ubuntu", True),
    ("registry.example.com/ml/../evil:1", "registry.example.com/ml/", False),  # not a reference at all
    ("registry.example.com/ml/Pipe:1", "registry.example.com/ml/", False),  # uppercase path: not a reference
    ("registry.example.com/ml/pipe:1 ", "registry.example.com/ml/", False),
])
def test_images_are_judged_as_the_runtime_would_pull_them(image: str, allowed: str, admitted: bool):
    assert image_allowed(image, (allowed,)) is admitted


def test_an_image_the_runtime_cannot_read_is_refused_as_such():
    (problem,) = violations(spec(image="registry.example.com/ml/../evil:1"), JobPolicy())
    assert problem.startswith("spec.cluster.image: registry.example.com/ml/../evil:1 is not an image reference")


# ------------------------------------------------------------------------- tolerations and nodeSelectors


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PLACED = JobPolicy(tolerations=("nvidia.com/gpu",), node_selectors=("pool", "nvidia.com/gpu.present=true"))


def test_tolerations_of_allowed_taint_keys_are_admitted_and_others_named():
    assert violations(spec(cpuWorkers={"tolerations": [GPU_TOLERATION]}), PLACED) == []
    problems = violations(spec(head={"tolerations": [{"key": "node-role.kubernetes.io/control-plane",
                                                      "operator": "Exists"}]},
                               gpuWorkers={"split": {"tolerations": [GPU_TOLERATION, {"key": "spot", "value": "1"}]}}),
                          PLACED)
    assert problems == [
        "spec.cluster.head.tolerations[0]: the taint key node-role.kubernetes.io/control-plane is not one jobs may"
        " tolerate (allowed: nvidia.com/gpu)",
        "spec.cluster.gpuWorkers.split.tolerations[1]: the taint key spot is not one jobs may tolerate"
        " (allowed: nvidia.com/gpu)",
    ]


def test_a_toleration_of_every_taint_needs_the_policy_to_say_so():
    blanket = {"tolerations": [{"operator": "Exists"}]}
    (problem,) = violations(spec(cpuWorkers=blanket), PLACED)
    assert problem.startswith("spec.cluster.cpuWorkers.tolerations[0]: a toleration without a key tolerates every"
                              " taint"), problem
    assert violations(spec(cpuWorkers=blanket), JobPolicy(tolerations=("*",))) == []


def test_node_selectors_are_admitted_by_label_key_or_pair():
    assert violations(spec(head={"nodeSelector": {"pool": "anything"}},
                           cpuWorkers={"nodeSelector": {"nvidia.com/gpu.present": "true"}}), PLACED) == []
    problems = violations(spec(cpuWorkers={"nodeSelector": {"nvidia.com/gpu.present": "false",
                                                            "kubernetes.io/hostname": "control-1"}}), PLACED)
    assert problems == [
        "spec.cluster.cpuWorkers.nodeSelector: kubernetes.io/hostname=control-1 is not a node label jobs may select"
        " (allowed: pool, nvidia.com/gpu.present=true)",
        "spec.cluster.cpuWorkers.nodeSelector: nvidia.com/gpu.present=false is not a node label jobs may select"
        " (allowed: pool, nvidia.com/gpu.present=true)",
    ]


def test_the_placement_policy_is_read_from_json():
    policy = parse_policy('{"allowedTolerations": ["nvidia.com/gpu"], "allowedNodeSelectors": ["pool=gpu"]}')
    assert policy.tolerations == ("nvidia.com/gpu",) and policy.node_selectors == ("pool=gpu",)
    assert parse_policy("{}").tolerations == ("*",) == parse_policy("{}").node_selectors  # not given: open


# ---------------------------------------------------------------------------------------------- env


@pytest.mark.parametrize("name", ["PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "LD_PRELOAD", "LD_LIBRARY_PATH",
                                  "BASH_ENV", "RAY_DEDUP_LOGS", "RAY_ADDRESS", "KUBERAY_GEN_RAY_START_CMD"])
def test_env_that_changes_how_processes_start_is_refused_whatever_the_policy(name: str):
    (problem,) = violations(spec(env=[{"name": name, "value": "/tmp/x"}, {"name": "HTTPS_PROXY", "value": "p"}]),
                            JobPolicy())
    assert problem.startswith(f"spec.cluster.env: {name} may not be set"), problem


def test_other_env_is_admitted():
    assert violations(spec(env=[{"name": "HTTPS_PROXY", "value": "p"}, {"name": "HF_HUB_OFFLINE", "value": "1"},
                                {"name": "MY_PYTHON_FLAG", "value": "1"}]), JobPolicy()) == []
