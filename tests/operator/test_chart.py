"""The operator's Helm chart, rendered by the real `helm` (installed by scripts/install-kube-tools.sh)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "clipforge-operator"
HELM = REPO / ".tools" / "bin" / "helm"
KUBECTL = REPO / ".tools" / "bin" / "kubectl"

# What the operator may do, per resource: anything more is a least-privilege regression,
# anything less breaks the operator (see handlers.py / kube.py for each call).
EXPECTED_RULES = {
    ("clipforge.dev", "videocurationjobs"): {"get", "list", "watch", "patch"},
    ("clipforge.dev", "videocurationjobs/status"): {"get", "patch"},
    ("clipforge.dev", "videocurationjobs/finalizers"): {"update"},
    ("ray.io", "rayjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("ray.io", "rayclusters"): {"get", "patch"},  # its status counts the Ready workers: no rule on pods
    ("", "configmaps"): {"get", "create", "patch", "delete"},
    # get: only the names in jobPolicy.allowedCredentialsSecrets (resourceNames); create: each job's Ray token
    ("", "secrets"): {"get", "create"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create"},  # each job's, deleted with it by the GC
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
CLUSTER_ONLY_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}


@pytest.fixture(scope="module", autouse=True)
def tools() -> None:
    if not (HELM.exists() and KUBECTL.exists()):
        pytest.fail(f"helm/kubectl missing in {HELM.parent}; install them with: bash scripts/install-kube-tools.sh")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {shlex.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(*sets: str, namespace: str = "clipforge-system") -> list[dict]:
    args = ["template", "cf", str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def rules(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert not rule.get("resourceNames") or rule["resources"] == ["secrets"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def container(objects: list[dict]) -> dict:
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


# ------------------------------------------------------------------------------------ lint


@pytest.mark.parametrize("sets", [[], ["scope=namespace"], ["scope=namespace", "watchNamespace=videos",
                                                            "rbac.readJobSecrets=false", "metrics.enabled=false"],
                                  ["watchNamespaces={videos,team-b}"]],
                         ids=["cluster", "namespace", "namespace-other", "cluster-watched"])
def test_helm_lint(sets: list[str]):
    args = ["lint", "--strict", str(CHART)]
    for s in sets:
        args += ["--set", s]
    helm(*args)


def test_values_schema_rejects_bad_values():
    for bad in ("scope=everywhere", "logFormat=xml", "progressIntervalSeconds=120", "image.pullPolicy=Sometimes",
                "unknownKey=1", "jobPolicy.allowedCredentialsSecrets={Not_A_Name}", "jobPolicy.allowedImages={,}",
                "jobPolicy.allowedServiceAccounts={a/b}", "jobPolicy.other=1", "pipelineImage.repository=",
                "pipelineImage.other=1", "watchNamespaces={kube-system}", "watchNamespaces={videos,videos}",
                "watchNamespaces={Not_A_Name}"):
        proc = helm("template", "cf", str(CHART), "--set", bad, check=False)
        assert proc.returncode != 0, bad
    json.loads((CHART / "values.schema.json").read_text())  # plain JSON


# ------------------------------------------------------------------------------- rendering


def test_cluster_scope_renders_a_locked_down_single_replica_operator():
    objects = render()
    assert sorted(o["kind"] for o in objects) == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                                                 "Deployment", "Service", "ServiceAccount"]
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(objects)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["command"] == ["python", "-m", "clipforge_operator"]
    assert "--all-namespaces" in c["args"] and not any(a.startswith("--namespace") for a in c["args"])
    # The liveness probe hits kopf's liveness endpoint.
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    probe = c["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert "--metrics-port=9090" in c["args"] and ports["metrics"] == 9090
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_cluster_scope_rbac_is_exactly_what_the_operator_needs():
    objects = render()
    role = one(objects, "ClusterRole")
    assert rules(role) == {**EXPECTED_RULES, **CLUSTER_ONLY_RULES}
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = one(objects, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "clipforge-system"}]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]


def test_namespace_scope_uses_a_role_and_starts_kopf_with_namespace():
    objects = render("scope=namespace")
    kinds = sorted(o["kind"] for o in objects)
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    role, binding = one(objects, "Role"), one(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "clipforge-system"
    assert rules(role) == EXPECTED_RULES
    c = container(objects)
    assert "--namespace=clipforge-system" in c["args"] and "--all-namespaces" not in c["args"]


def test_namespace_scope_can_serve_another_namespace():
    objects = render("scope=namespace", "watchNamespace=videos")
    role, binding = one(objects, "Role"), one(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "videos"
    assert binding["subjects"][0]["namespace"] == "clipforge-system"  # the operator's own namespace
    assert "--namespace=videos" in container(objects)["args"]


def test_cluster_scope_can_serve_a_list_of_namespaces_with_a_role_binding_in_each():
    objects = render("watchNamespaces={videos,team-b}")
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    assert set(roles) == {"cf-clipforge-operator", "cf-clipforge-operator-crds"}
    assert rules(roles["cf-clipforge-operator"]) == EXPECTED_RULES  # bound per namespace: no CRD rule needed there
    assert rules(roles["cf-clipforge-operator-crds"]) == CLUSTER_ONLY_RULES
    # Cluster-wide, the operator's account is bound to the CRD rule alone.
    (cluster_binding,) = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"] == "cf-clipforge-operator-crds"
    bindings = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "RoleBinding"}
    assert set(bindings) == {"videos", "team-b"}
    for binding in bindings.values():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                      "name": "cf-clipforge-operator"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cf-clipforge-operator",
                                        "namespace": "clipforge-system"}]
    args = container(objects)["args"]
    assert [a for a in args if a.startswith("--namespace") or a == "--all-namespaces"] == [
        "--namespace=videos", "--namespace=team-b"]
    # One namespace list per scope: namespace scope serves watchNamespace, and says so.
    refused = helm("template", "cf", str(CHART), "--set", "scope=namespace", "--set", "watchNamespaces={videos}",
                   check=False)
    assert refused.returncode != 0 and "watchNamespaces is for scope=cluster" in refused.stderr, refused.stderr


def secret_rules(role: dict) -> list[dict]:
    """The rules that let the operator read Secrets."""
    return [rule for rule in role["rules"] if "secrets" in rule["resources"] and rule["verbs"] != ["create"]]


@pytest.mark.parametrize("sets", [[], ["scope=namespace"], ["rbac.readJobSecrets=false"]],
                         ids=["cluster", "namespace", "no-read-secrets"])
def test_the_operator_may_create_secrets_and_read_none_it_made(sets: list[str]):
    """Jobs' Ray tokens: created under generated names the create answers with, never read back."""
    (role,) = [o for o in render(*sets) if o["kind"] in ("ClusterRole", "Role")]
    created = [r for r in role["rules"] if "secrets" in r["resources"] and "create" in r["verbs"]]
    assert created == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_the_operator_may_read_only_the_secrets_jobs_may_name(scope: str):
    role = one(render(f"scope={scope}"), "ClusterRole" if scope == "cluster" else "Role")
    assert secret_rules(role) == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["clipforge-s3"],
                                   "verbs": ["get"]}]
    listed = one(render(f"scope={scope}", "jobPolicy.allowedCredentialsSecrets={team-a-s3,team-b-s3}"),
                 "ClusterRole" if scope == "cluster" else "Role")
    assert secret_rules(listed)[0]["resourceNames"] == ["team-a-s3", "team-b-s3"]


def test_reading_any_secret_is_an_explicit_option():
    role = one(render("jobPolicy.allowedCredentialsSecrets={*}"), "ClusterRole")
    assert secret_rules(role) == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def test_no_secret_names_means_no_secret_rule():
    # An empty resourceNames would grant every Secret: with no names the rule must not exist.
    out = helm("template", "cf", str(CHART), "--set-json", "jobPolicy.allowedCredentialsSecrets=[]").stdout
    objects = [d for d in yaml.safe_load_all(out) if d]
    assert secret_rules(one(objects, "ClusterRole")) == []


def test_secrets_access_can_be_turned_off():
    objects = render("rbac.readJobSecrets=false")
    assert rules(one(objects, "ClusterRole"))[("", "secrets")] == {"create"}  # the jobs' Ray tokens only
    assert secret_rules(one(objects, "ClusterRole")) == []
    assert "--no-read-secrets" in container(objects)["args"]


def test_the_job_policy_reaches_the_operator_as_json():
    from clipforge_operator.policy import JobPolicy, parse_policy

    env = {e["name"]: e["value"] for e in container(render())["env"]}
    assert parse_policy(env["CLIPFORGE_JOB_POLICY"]) == JobPolicy(
        images=("docker.io/clipforge/pipeline",), service_accounts=(), credentials_secrets=("clipforge-s3",),
        tolerations=("nvidia.com/gpu",), node_selectors=("*",))  # no toleration of every taint by default
    env = {e["name"]: e["value"] for e in container(render(
        "jobPolicy.allowedImages={registry.example.com/ml/}", "jobPolicy.allowedServiceAccounts={model-reader}"))["env"]}
    policy = parse_policy(env["CLIPFORGE_JOB_POLICY"])
    assert policy.images == ("docker.io/clipforge/pipeline", "registry.example.com/ml/")  # the pipeline image's too
    assert policy.service_accounts == ("model-reader",)


def operator_config(*sets: str):  # noqa: ANN201
    """The OperatorConfig the operator parses from the rendered Deployment's arguments and environment."""
    from clipforge_operator.config import parse_config

    c = container(render(*sets))
    return parse_config(c["args"], {e["name"]: e["value"] for e in c["env"]})


def stock_job(**cluster: str):  # noqa: ANN201
    """A job as the operator judges it, with its image filled in from the operator's pipelineImage."""
    from clipforge.spec import VideoCurationJobSpec

    return VideoCurationJobSpec.model_validate({"input": {"uri": "s3://raw/"}, "output": {"uri": "s3://sets/out/"},
                                                "storage": {"credentialsSecret": "clipforge-s3"}, "cluster": cluster})


def test_a_stock_install_admits_a_stock_job_and_the_images_its_values_name():
    from clipforge.spec import DEFAULT_IMAGE
    from clipforge_operator.pipeline_pods import with_pipeline_image
    from clipforge_operator.policy import violations

    config = operator_config()
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert config.pipeline_image == f"docker.io/clipforge/pipeline:{app_version}"
    assert DEFAULT_IMAGE == f"clipforge/pipeline:{app_version}"  # the operator's own default: the same image
    assert violations(with_pipeline_image(stock_job(), config.pipeline_image), config.policy) == []
    assert violations(with_pipeline_image(stock_job(image=f"clipforge/pipeline:{app_version}"), config.pipeline_image),
                      config.policy) == []
    # Your registry: the image of jobs that name none, admitted as it is, and nothing else by default.
    config = operator_config("pipelineImage.repository=registry.example.com/ml/pipeline", "pipelineImage.tag=v2")
    assert config.pipeline_image == "registry.example.com/ml/pipeline:v2"
    assert violations(with_pipeline_image(stock_job(), config.pipeline_image), config.policy) == []
    assert violations(with_pipeline_image(stock_job(image="registry.example.com/ml/pipeline@sha256:ab"),
                                          config.pipeline_image), config.policy) == []
    (refused,) = violations(with_pipeline_image(stock_job(image="clipforge/pipeline:1"), config.pipeline_image),
                            config.policy)
    assert refused.startswith("spec.cluster.image: clipforge/pipeline:1 is not an allowed image")


def test_a_stock_install_admits_the_gpu_toleration_and_no_toleration_of_every_taint():
    from clipforge_operator.pipeline_pods import with_pipeline_image
    from clipforge_operator.policy import violations

    config = operator_config()
    gpu = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
           "nodeSelector": {"nvidia.com/gpu.present": "true"}}
    blanket = {"tolerations": [{"operator": "Exists"}]}
    assert violations(with_pipeline_image(stock_job(cpuWorkers=gpu), config.pipeline_image), config.policy) == []
    (refused,) = violations(with_pipeline_image(stock_job(cpuWorkers=blanket), config.pipeline_image), config.policy)
    assert refused.startswith("spec.cluster.cpuWorkers.tolerations[0]: a toleration without a key tolerates every taint")
    config = operator_config("jobPolicy.allowedTolerations={*}")  # the administrator's explicit choice
    assert violations(with_pipeline_image(stock_job(cpuWorkers=blanket), config.pipeline_image), config.policy) == []


def test_where_kuberay_runs_reaches_the_operator_as_json():
    from clipforge_operator.config import KubeRayPods

    env = {e["name"]: e["value"] for e in container(render())["env"]}
    assert KubeRayPods.from_json(env["CLIPFORGE_KUBERAY_PODS"]) == KubeRayPods()  # KubeRay's chart's labels
    env = {e["name"]: e["value"] for e in container(render(
        "kuberay.namespace=ray-system", "kuberay.podLabels.app=kuberay"))["env"]}
    assert KubeRayPods.from_json(env["CLIPFORGE_KUBERAY_PODS"]) == KubeRayPods(
        "ray-system", (("app", "kuberay"), ("app.kubernetes.io/name", "kuberay-operator")))
    for bad in ("kuberay.namespace=Not_A_Namespace", "kuberay.other=1"):
        assert helm("template", "cf", str(CHART), "--set", bad, check=False).returncode != 0, bad
    no_labels = 'kuberay.podLabels={"app.kubernetes.io/name": null}'  # would admit every pod
    assert helm("template", "cf", str(CHART), "--set-json", no_labels, check=False).returncode != 0


def test_metrics_and_service_account_toggles():
    objects = render("metrics.enabled=false", "serviceAccount.create=false", "serviceAccount.name=ops-sa")
    kinds = {o["kind"] for o in objects}
    assert "Service" not in kinds and "ServiceAccount" not in kinds
    c = container(objects)
    assert "--metrics-port=0" in c["args"] and "metrics" not in {p["name"] for p in c["ports"]}
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "ops-sa"
    assert not any(o["kind"] in ("ClusterRole", "Role") for o in render("rbac.create=false"))


def test_a_service_monitor_scrapes_the_metrics_service_when_asked_and_readiness_is_probed():
    assert "ServiceMonitor" not in {o["kind"] for o in render()}
    objects = render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prometheus",
                     "metrics.serviceMonitor.interval=15s")
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["clipforge-system"]}
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert {p["name"] for p in service["spec"]["ports"]} == {"metrics"}
    # Nothing to scrape, nothing to monitor; a bad interval is refused by the values schema.
    assert "ServiceMonitor" not in {o["kind"] for o in render("metrics.serviceMonitor.enabled=true",
                                                              "metrics.enabled=false")}
    assert helm("template", "cf", str(CHART), "--set", "metrics.serviceMonitor.interval=soon",
                check=False).returncode != 0
    probe = container(objects)["readinessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "liveness"}


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_chart_installs_and_upgrades_the_generated_crd(scope: str):
    # A template, not crds/ (which Helm never upgrades), kept when the release is uninstalled.
    assert not (CHART / "crds").exists()
    crd = one(render(f"scope={scope}"), "CustomResourceDefinition")
    assert crd == yaml.safe_load((REPO / "crds" / "videocurationjobs.yaml").read_text())
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["spec"]["names"]["shortNames"] == ["vcj"]


def test_a_second_release_can_leave_the_crd_to_the_first():
    assert not [o for o in render("installCRD=false", "scope=namespace") if o["kind"] == "CustomResourceDefinition"]


def test_dockerfile_runs_the_operator_extra_as_non_root():
    text = (REPO / "operator" / "Dockerfile").read_text()
    assert "FROM debian:bookworm-slim" in text and "python3-venv" in text  # Debian's Python, in a venv
    assert "[operator]" in text and "[pipeline]" not in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert all(part.isdigit() and part != "0" for part in users[-1].split(":"))  # numeric: runAsNonRoot can check it
    assert 'ENTRYPOINT ["python", "-m", "clipforge_operator"]' in text


def test_the_operator_pod_knows_itself_for_the_event_of_its_kuberay_check():
    from clipforge_operator.kuberay_schema import POD_INFO_DIR

    objects = render()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in container(objects)["volumeMounts"] if m["mountPath"] == str(POD_INFO_DIR)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert {item["path"]: item["fieldRef"]["fieldPath"] for item in volume["downwardAPI"]["items"]} == {
        "name": "metadata.name", "namespace": "metadata.namespace", "uid": "metadata.uid"}
