"""`helm install` and `helm upgrade` of the chart with the real helm against a real API server.

The previous release of the chart, 0.1.0, is charts/clipforge-operator-0.1.0.tgz here: the chart of
commit ecaec55 as `helm package` made it (`git archive ecaec55 charts/clipforge-operator | tar -x`,
then `helm package`), so the test needs no git history. It installed the CRD from crds/, which Helm
never upgrades; the current chart's CRD is a template.

These tests replace the VideoCurationJob CRD, which every other operator test uses, so they run
on a control plane of their own, with real nodes (tests/harness/node_cluster.py) that have the
operator's image: besides what the API server holds after each helm command, the release's
Deployment must roll out, its operator running from the image as the chart configures it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.control_plane import ControlPlane
from harness.node_cluster import Nodes, image_archives

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".tools" / "bin" / "helm"
CHART = REPO / "charts" / "clipforge-operator"
PREVIOUS = Path(__file__).resolve().parent / "charts" / "clipforge-operator-0.1.0.tgz"
CRD = "videocurationjobs.clipforge.dev"
OPERATOR_IMAGE = "clipforge/operator:0.1.0"  # the chart's appVersion (scripts/build-images.sh builds it)


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("upgrade-control-plane")
    with ControlPlane(workdir / "control-plane") as plane, Nodes(plane, workdir / "nodes") as nodes:
        nodes.import_image(image_archives()[OPERATOR_IMAGE], OPERATOR_IMAGE)
        yield plane


def rolled_out(cp, namespace: str, release: str) -> None:  # noqa: ANN001
    """The release's operator Deployment is available: its pod runs the image and passes its probes."""
    done = cp.kubectl("-n", namespace, "rollout", "status", f"deployment/{release}-clipforge-operator",
                      "--timeout=180s", check=False, timeout=200)
    assert done.returncode == 0, (done.stdout, done.stderr, cp.kubectl("-n", namespace, "get", "pods,events",
                                                                       check=False).stdout)


@pytest.fixture
def helm(cp, tmp_path):  # noqa: ANN001, ANN201
    home = tmp_path / "helm-home"
    env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=300, env=env)
        if check and done.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    return run


@pytest.fixture
def no_crd(cp):  # noqa: ANN001
    """Each test starts from a cluster without the CRD (the control plane installs the current one).

    The jobs go first, while an earlier test's operator still serves them and removes its finalizer:
    once the CRD is terminating it no longer can, and the CRD would wait for them forever."""
    if cp.kubectl("get", "crd", CRD, check=False).returncode == 0:
        cp.kubectl("delete", "videocurationjobs", "--all", "--all-namespaces", "--timeout=120s")
    cp.kubectl("delete", "crd", CRD, "--ignore-not-found", "--timeout=120s")


def crd_cluster_fields(cp) -> set[str]:  # noqa: ANN001
    crd = json.loads(cp.kubectl("get", "crd", CRD, "-o", "json").stdout)
    (version,) = crd["spec"]["versions"]
    return set(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["cluster"]["properties"])


def job(name: str, namespace: str, **cluster) -> dict:  # noqa: ANN003
    return {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"input": {"uri": "s3://in/"}, "output": {"uri": "s3://out/"}, "cluster": cluster}}


def apply(cp, doc: dict, check: bool = True):  # noqa: ANN001, ANN201
    return cp.kubectl("apply", "-f", "-", input=json.dumps(doc), check=check)


def wait_established(cp) -> None:  # noqa: ANN001
    cp.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")


WITH_VOLUMES = {"volumes": [{"name": "scratch", "emptyDir": {}}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}


def test_helm_upgrade_from_the_previous_chart_brings_the_crd_to_the_new_schema(cp, helm, no_crd, tmp_path):
    ns, jobs = "clipforge-upgrade", "videos-upgrade"
    helm("install", "cf", str(PREVIOUS), "-n", ns, "--create-namespace")
    wait_established(cp)
    assert "volumes" not in crd_cluster_fields(cp)
    cp.create_namespace(jobs)
    apply(cp, job("before", jobs))
    uid = json.loads(cp.kubectl("-n", jobs, "get", "vcj", "before", "-o", "json").stdout)["metadata"]["uid"]
    refused = apply(cp, job("with-volumes", jobs, **WITH_VOLUMES), check=False)
    assert refused.returncode != 0 and 'unknown field "spec.cluster.volumes"' in refused.stderr, refused.stderr

    # A 0.1.0 release's CRD came from crds/, which no release owns: a plain upgrade is refused, naming
    # it, and changes nothing; the one command docs/operator.md gives takes it over, once.
    plain = helm("upgrade", "cf", str(CHART), "-n", ns, check=False)
    assert plain.returncode != 0 and f'CustomResourceDefinition "{CRD}" in namespace "" exists and cannot be' \
        " imported into the current release" in plain.stderr, plain.stderr
    assert "volumes" not in crd_cluster_fields(cp)
    helm("upgrade", "cf", str(CHART), "-n", ns, "--take-ownership")
    wait_established(cp)
    rolled_out(cp, ns, "cf")
    assert {"volumes", "volumeMounts", "env", "imagePullSecrets"} <= crd_cluster_fields(cp)
    meta = json.loads(cp.kubectl("get", "crd", CRD, "-o", "json").stdout)["metadata"]
    assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
    assert meta["annotations"]["meta.helm.sh/release-name"] == "cf" and meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    after = json.loads(cp.kubectl("-n", jobs, "get", "vcj", "before", "-o", "json").stdout)
    assert after["metadata"]["uid"] == uid  # the jobs survive the upgrade
    apply(cp, job("with-volumes", jobs, **WITH_VOLUMES))
    stored = json.loads(cp.kubectl("-n", jobs, "get", "vcj", "with-volumes", "-o", "json").stdout)
    assert stored["spec"]["cluster"]["volumes"] == [{"name": "scratch", "emptyDir": {"medium": ""}}]

    # Later upgrades are plain `helm upgrade`: a chart with a newer schema changes the CRD.
    newer = tmp_path / "clipforge-operator"
    shutil.copytree(CHART, newer)
    crd_file = newer / "files" / "videocurationjobs.yaml"
    doc = yaml.safe_load(crd_file.read_text())
    cluster = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["cluster"]
    cluster["properties"]["laterField"] = {"type": "string", "description": "Added by the next chart version."}
    crd_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    chart = yaml.safe_load((newer / "Chart.yaml").read_text())
    (newer / "Chart.yaml").write_text(yaml.safe_dump({**chart, "version": "99.0.0"}, sort_keys=False))
    helm("upgrade", "cf", str(newer), "-n", ns)
    wait_established(cp)
    rolled_out(cp, ns, "cf")
    assert "laterField" in crd_cluster_fields(cp)
    history = json.loads(helm("history", "cf", "-n", ns, "-o", "json").stdout)
    current = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    assert [(h["chart"], h["status"]) for h in history if h["status"] != "failed"] == [
        ("clipforge-operator-0.1.0", "superseded"), (f"clipforge-operator-{current}", "superseded"),
        ("clipforge-operator-99.0.0", "deployed")]


def test_both_scopes_install_and_uninstalling_keeps_the_crd_and_the_jobs(cp, helm, no_crd):
    helm("install", "cluster-wide", str(CHART), "-n", "clipforge-scopes", "--create-namespace")
    wait_established(cp)
    rolled_out(cp, "clipforge-scopes", "cluster-wide")
    rbac = json.loads(cp.kubectl("get", "clusterrole", "cluster-wide-clipforge-operator", "-o", "json").stdout)
    assert {"resources": ["secrets"], "resourceNames": ["clipforge-s3"]}.items() <= \
        next(r for r in rbac["rules"] if "secrets" in r["resources"]).items()
    # A namespace-scoped release beside it leaves the CRD to the release that owns it ...
    helm("install", "team-a", str(CHART), "-n", "team-a", "--create-namespace", "--set", "scope=namespace",
         "--set", "installCRD=false")
    role = json.loads(cp.kubectl("-n", "team-a", "get", "role", "team-a-clipforge-operator", "-o", "json").stdout)
    rolled_out(cp, "team-a", "team-a")
    assert next(r for r in role["rules"] if "secrets" in r["resources"])["resourceNames"] == ["clipforge-s3"]
    # ... and one that does not is refused before it changes anything.
    clash = helm("install", "team-b", str(CHART), "-n", "team-b", "--create-namespace", "--set", "scope=namespace",
                 check=False)
    assert clash.returncode != 0 and "exists and cannot be imported into the current release" in clash.stderr, \
        clash.stderr
    assert cp.kubectl("-n", "team-b", "get", "role,serviceaccount,deployment", "-o", "name").stdout.strip() in (
        "", "serviceaccount/default")
    cp.create_namespace("videos-scopes")
    apply(cp, job("kept", "videos-scopes"))
    helm("uninstall", "cluster-wide", "-n", "clipforge-scopes")
    assert cp.kubectl("get", "clusterrole", "cluster-wide-clipforge-operator", check=False).returncode != 0
    assert cp.kubectl("get", "crd", CRD, check=False).returncode == 0  # helm.sh/resource-policy: keep
    assert cp.kubectl("-n", "videos-scopes", "get", "vcj", "kept", check=False).returncode == 0
