"""The few Kubernetes calls the operator makes, over the `kubernetes` client's transport.

Objects go in and come out as plain dicts (the manifests builders.py makes), so one small
request helper serves core and custom resources alike, with the client's configuration,
authentication and TLS. Errors surface as `kubernetes.client.exceptions.ApiException`;
`get_*` return None for 404, `create_*` raise AlreadyExists for 409.

Every create and patch asks for strict field validation: a field the installed CRD (KubeRay's, or an
older VideoCurationJob CRD) does not have is refused with its path (HTTP 400), never silently pruned.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from clipforge.spec import API_GROUP, API_VERSION, PLURAL
from clipforge_operator.builders import LABEL_JOB_UID, RAY_GROUP, RAY_VERSION, RAYCLUSTER_PLURAL, RAYJOB_PLURAL

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (5, 30)
WRITE_METHODS = ("POST", "PUT", "PATCH")
STRICT = {"fieldValidation": "Strict"}


class AlreadyExists(Exception):
    """A create hit an existing object of the same name (HTTP 409)."""


def status_message(exc: ApiException) -> str:
    """What the API server said it refused and why: the message of the Status object an API error carries
    ('' if none). A Status never carries Secret data."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        return ""
    return message if isinstance(message, str) else ""


def load_config() -> None:
    """In-cluster service account if there is one, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # $KUBECONFIG read now: the client reads it once, at import, for its default.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)


def _custom(group: str, version: str, namespace: str, plural: str, name: str | None = None) -> str:
    path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def _core(namespace: str, plural: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class Kube:
    """Thin, synchronous access to the objects the operator reads and writes."""

    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = api_client or client.ApiClient()

    # -- transport

    def request(self, method: str, path: str, body: Any = None, query: dict | None = None,
                content_type: str = "application/json") -> dict:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if method in WRITE_METHODS:
            query = {**(query or {}), **STRICT}
        method, url, headers, body, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()) or None,
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT)
        response.read()
        if not 200 <= response.status < 300:
            if response.status == 409 and method == "POST":
                raise AlreadyExists(path)
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else {}

    def _get(self, path: str) -> dict | None:
        try:
            return self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete(self, path: str) -> bool:
        try:
            self.request("DELETE", path, body={"propagationPolicy": "Background"})
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def get_openapi(self, path: str) -> dict | None:
        """An OpenAPI v3 document the API server publishes (/openapi/v3/...); None if it serves none there."""
        return self._get(path)

    def create_event(self, body: dict) -> dict:
        return self.request("POST", _core(body["metadata"]["namespace"], "events"), body=body)

    # -- VideoCurationJob

    def get_job(self, namespace: str, name: str) -> dict | None:
        return self._get(_custom(API_GROUP, API_VERSION, namespace, PLURAL, name))

    def patch_job_status(self, namespace: str, name: str, status: dict, resource_version: str | None) -> dict:
        """Merges `status` in, if the job is still at `resource_version` (the API server answers 409 if not)."""
        path = _custom(API_GROUP, API_VERSION, namespace, PLURAL, name) + "/status"
        body: dict = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    # -- RayJob / RayCluster

    def get_rayjob(self, namespace: str, name: str) -> dict | None:
        return self._get(_custom(RAY_GROUP, RAY_VERSION, namespace, RAYJOB_PLURAL, name))

    def create_rayjob(self, body: dict) -> dict:
        ns = body["metadata"]["namespace"]
        return self.request("POST", _custom(RAY_GROUP, RAY_VERSION, ns, RAYJOB_PLURAL), body=body)

    def delete_rayjob(self, namespace: str, name: str) -> bool:
        return self._delete(_custom(RAY_GROUP, RAY_VERSION, namespace, RAYJOB_PLURAL, name))

    def list_rayjobs(self, namespace: str, job_uid: str) -> list[dict]:
        """The job's RayJobs; none when KubeRay's CRD is not installed (404), so deletion never hangs."""
        path = _custom(RAY_GROUP, RAY_VERSION, namespace, RAYJOB_PLURAL)
        try:
            return self.request("GET", path, query={"labelSelector": f"{LABEL_JOB_UID}={job_uid}"}).get("items") or []
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise

    def json_patch_rayjob(self, namespace: str, name: str, ops: list[dict]) -> dict:
        path = _custom(RAY_GROUP, RAY_VERSION, namespace, RAYJOB_PLURAL, name)
        return self.request("PATCH", path, body=ops, content_type=JSON_PATCH)

    def get_raycluster(self, namespace: str, name: str) -> dict | None:
        return self._get(_custom(RAY_GROUP, RAY_VERSION, namespace, RAYCLUSTER_PLURAL, name))

    def json_patch_raycluster(self, namespace: str, name: str, ops: list[dict]) -> dict:
        path = _custom(RAY_GROUP, RAY_VERSION, namespace, RAYCLUSTER_PLURAL, name)
        return self.request("PATCH", path, body=ops, content_type=JSON_PATCH)

    # -- ConfigMap / Secret

    def get_configmap(self, namespace: str, name: str) -> dict | None:
        return self._get(_core(namespace, "configmaps", name))

    def create_configmap(self, body: dict) -> dict:
        return self.request("POST", _core(body["metadata"]["namespace"], "configmaps"), body=body)

    def patch_configmap_data(self, namespace: str, name: str, data: dict) -> dict:
        return self.request("PATCH", _core(namespace, "configmaps", name), body={"data": data},
                            content_type=MERGE_PATCH)

    def delete_configmap(self, namespace: str, name: str) -> bool:
        return self._delete(_core(namespace, "configmaps", name))

    def get_secret(self, namespace: str, name: str) -> dict | None:
        """A Secret's body. Callers must keep its values out of logs, status and events."""
        return self._get(_core(namespace, "secrets", name))

    def create_secret(self, body: dict) -> dict:
        """Creates a Secret; the answer holds its data, which callers must keep out of logs, status and events."""
        return self.request("POST", _core(body["metadata"]["namespace"], "secrets"), body=body)

    # -- NetworkPolicy

    def get_network_policy(self, namespace: str, name: str) -> dict | None:
        return self._get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}")

    def create_network_policy(self, body: dict) -> dict:
        namespace = body["metadata"]["namespace"]
        return self.request("POST", f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies", body=body)
