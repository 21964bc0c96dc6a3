"""The chart's RBAC in cluster scope, as the real kube-apiserver's authorizer judges it.

The chart's ServiceAccount and RBAC objects (rendered by the real helm, applied as they are) and
`kubectl auth can-i --as=system:serviceaccount:...` against the real API server: the operator's
account reads no pod anywhere, and with watchNamespaces it may act in those namespaces only. No
operator runs here (nothing of this needs one): the authorizer's answer is the whole point.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "clipforge-operator"
HELM = REPO / ".tools" / "bin" / "helm"
OPERATOR_NS = "rbac-operator"
WATCHED, OTHER = "rbac-watched", "rbac-other"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@pytest.fixture(scope="module")
def cp(control_plane):  # noqa: ANN001, ANN201
    for ns in (OPERATOR_NS, WATCHED, OTHER):
        control_plane.create_namespace(ns)
    yield control_plane
    control_plane.kubectl("delete", "namespace", OPERATOR_NS, WATCHED, OTHER, "--timeout=120s")


def install_rbac(cp, release: str, *sets: str) -> str:  # noqa: ANN001
    """The release's ServiceAccount and RBAC on the API server; returns the account's username."""
    args = [str(HELM), "template", release, str(CHART), "--namespace", OPERATOR_NS]
    for value in sets:
        args += ["--set", value]
    rendered = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o and o["kind"] in RBAC_KINDS]
    cp.apply(*objects)
    return f"system:serviceaccount:{OPERATOR_NS}:{release}-clipforge-operator"


def can(cp, user: str, question: str, namespace: str | None) -> str:  # noqa: ANN001
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    done = cp.kubectl("auth", "can-i", *question.split(), *scope, f"--as={user}", check=False)
    return done.stdout.strip()


def answers(cp, user: str, questions: dict[tuple[str, str | None], str]) -> dict:  # noqa: ANN001
    return {q: can(cp, user, *q) for q in questions}


def test_cluster_scope_reads_no_pod_anywhere(cp):
    user = install_rbac(cp, "rbac-cluster")
    questions = {
        ("list pods", None): "no", ("list pods", WATCHED): "no", ("get pods", WATCHED): "no",
        ("watch pods", OTHER): "no",
        # What it does need, everywhere (every namespace is served).
        ("create rayjobs.ray.io", WATCHED): "yes", ("create rayjobs.ray.io", OTHER): "yes",
        ("get rayclusters.ray.io", OTHER): "yes", ("list customresourcedefinitions", None): "yes",
    }
    assert answers(cp, user, questions) == questions


def test_watched_namespaces_bound_what_the_operator_may_do_to_them(cp):
    user = install_rbac(cp, "rbac-watched", f"watchNamespaces={{{WATCHED}}}")
    questions = {
        # In the watched namespace: what the operator needs, and still no pod.
        ("create rayjobs.ray.io", WATCHED): "yes", ("create secrets", WATCHED): "yes",
        ("create networkpolicies.networking.k8s.io", WATCHED): "yes", ("watch videocurationjobs.clipforge.dev", WATCHED): "yes",
        ("list pods", WATCHED): "no",
        # Anywhere else, nothing: another team's namespace, a system namespace, all namespaces at once.
        ("create rayjobs.ray.io", OTHER): "no", ("create secrets", OTHER): "no", ("create configmaps", OTHER): "no",
        ("get secrets/clipforge-s3", OTHER): "no", ("watch videocurationjobs.clipforge.dev", OTHER): "no",
        ("create rayjobs.ray.io", "kube-system"): "no", ("create secrets", "kube-system"): "no",
        ("list rayjobs.ray.io", None): "no", ("list videocurationjobs.clipforge.dev", None): "no",
        # CRDs live in no namespace: kopf follows them cluster-wide, read only.
        ("list customresourcedefinitions", None): "yes", ("create customresourcedefinitions", None): "no",
    }
    assert answers(cp, user, questions) == questions
