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
