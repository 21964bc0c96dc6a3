"""What every container running the pipeline image gets, and where a job's local paths must be.

- the image: the job's cluster.image, else the operator's pipeline image (OperatorConfig.pipeline_image,
  the chart's pipelineImage), filled in once when the job is read, so that the policy judges, and
  the job's ConfigMap records, the image its pods run;
- security contexts that pass the `restricted` Pod Security Standard, with a read-only root
  filesystem, and the two emptyDir volumes the image writes to instead (docs/images.md);
- the job's local input and output paths: a pod sees only what a volume of cluster.volumes puts there.

builders.py puts these into the head, worker and submitter pods and KubeRay's autoscaler.
"""

from __future__ import annotations

import copy
import posixpath

from clipforge.spec import VideoCurationJobSpec

# KubeRay copies a worker's container securityContext and volumeMounts to its wait-gcs-ready init
# container and takes the autoscaler's (which runs the head's image) from autoscalerOptions. The user
# is the image's own (uid 1000, group `users`), by number: runAsNonRoot alone cannot check a name.
POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100,
                        "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                              "capabilities": {"drop": ["ALL"]}}

# Everything the image writes at run time (Ray's session directory, temporary files, the model cache,
# the caches under HOME), by volume name. KubeRay adds /dev/shm and, for the head and the autoscaler,
# a shared /tmp/ray on top. A container of the head pod shares the pod's two.
SCRATCH_DIRS = {"tmp": "/tmp", "home": "/home/ray"}


# Of a job's Ray pods, only KubeRay's autoscaler (a container of the head pod) talks to the API
# server, with the Role KubeRay binds to the head pod's service account (patch pods, patch the
# RayCluster). Job code runs beside it in ray-head and must not hold that: every Ray pod opts out
# of the automatic token, and the head pod carries, as a volume only the autoscaler mounts, what
# the ServiceAccount admission would have mounted into every container.
API_ACCESS_VOLUME = "kube-api-access"
API_ACCESS_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_SECONDS = 3607  # the admission's own: the kubelet refreshes the token well before it ends


def api_access_volume() -> dict:
    return {"name": API_ACCESS_VOLUME, "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}


def api_access_mount() -> dict:
    return {"name": API_ACCESS_VOLUME, "mountPath": API_ACCESS_DIR, "readOnly": True}


def pod_security() -> dict:
    return copy.deepcopy(POD_SECURITY_CONTEXT)


def container_security() -> dict:
    return copy.deepcopy(CONTAINER_SECURITY_CONTEXT)


def scratch_volumes() -> list[dict]:
    return [{"name": name, "emptyDir": {}} for name in SCRATCH_DIRS]


def scratch_mounts() -> list[dict]:
    return [{"name": name, "mountPath": path} for name, path in SCRATCH_DIRS.items()]


def with_pipeline_image(spec: VideoCurationJobSpec, image: str) -> VideoCurationJobSpec:
    """The spec with `image` as its cluster.image if it names none."""
    if spec.cluster.image:
        return spec
    return spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"image": image})})


def is_under(path: str, directory: str) -> bool:
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def unmounted_paths(spec: VideoCurationJobSpec) -> list[str]:
    """The job's local input and output paths its Ray pods could not use, one problem each naming the
    field and the path (empty: both are s3:// URIs or on volumes that serve them)."""
    cluster = spec.cluster
    volumes = {v.name: v for v in cluster.volumes}
    problems = []
    source = ("spec.input.manifest", spec.input.manifest) if spec.input.manifest else ("spec.input.uri", spec.input.uri)
    for field, path, writes in ((*source, False), ("spec.output.uri", spec.output.uri, True)):
        if path.startswith("s3://"):
            continue
        where = f"{field}: {path} is a local path"
        mounts = [m for m in cluster.volume_mounts if path.startswith("/") and is_under(path, m.mount_path)]
        if not path.startswith("/"):
            problems.append(f"{where}, relative to nothing in a pod: give an s3:// URI or an absolute path on a"
                            " volume in cluster.volumes, mounted by cluster.volumeMounts")
        elif not mounts:
            mounted = ", ".join(m.mount_path for m in cluster.volume_mounts) or "none"
            problems.append(f"{where} that no volume in cluster.volumes mounts (cluster.volumeMounts: {mounted}):"
                            " the Ray pods would not see it; give an s3:// URI or mount a volume there")
        else:
            mount = max(mounts, key=lambda m: len(m.mount_path))  # the innermost holds the path
            volume = volumes[mount.name]
            if volume.empty_dir is not None:
                problems.append(f"{where} on the emptyDir volume {volume.name}, which each pod has its own of,"
                                " empty at start and gone with the pod: give an s3:// URI or a persistentVolumeClaim")
            elif writes and (mount.read_only or volume.config_map is not None or
                             (volume.persistent_volume_claim is not None and volume.persistent_volume_claim.read_only)):
                problems.append(f"{where} on the read-only volume {volume.name}, where the job would write its output:"
                                " give an s3:// URI or a path on a writable persistentVolumeClaim")
    return problems
