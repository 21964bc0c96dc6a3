"""The playground: `kubectl apply` a VideoCurationJob on this machine and get real clips.

    python3 tests/harness/playground.py [--workdir DIR]

starts, as the operator tests do: the real control plane (control_plane.py), the real nodes with
ClipForge's images and KubeRay's operator (node_cluster.py), a Ceph RADOS gateway
on the host bridge (tests/support/s3_server.py) and the ClipForge operator with the Helm chart's
ServiceAccount and RBAC (operator_process.py). It uploads sample videos to a bucket, puts the
gateway's keys in the Secret `clipforge-s3` of the namespace `default`, writes `cpu-job.yaml`
(examples/cpu-job.yaml pointed at that bucket, sized for a small machine), prints what to type,
and runs until Ctrl-C, which stops everything it started.

Pods run from the images scripts/build-images.sh made (about 11 GB of disk per node); there is
no GPU. See docs/testing.md for what the nodes do and do not do. Needs root (namespaces, cgroups),
scripts/install-kube-tools.sh, scripts/install-node-packages.sh and scripts/install-ceph.sh.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

if __package__ in (None, ""):  # run as a script: make `harness` and the test helpers importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.cluster_jobs import make_stack  # noqa: E402
from harness import netns  # noqa: E402
from harness.control_plane import ControlPlane  # noqa: E402
from harness.node_cluster import Nodes  # noqa: E402
from support.s3_server import CephS3Gateway  # noqa: E402

NAMESPACE = "default"
JOB = "cpu-demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="kubeconfig, job manifest and logs (default: a temp dir)")
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="clipforge-playground-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        print("starting the control plane, the nodes, KubeRay, Ceph RGW and the operator ...", flush=True)
        cp = stack.enter_context(ControlPlane(workdir / "control-plane"))
        nodes = stack.enter_context(Nodes(cp, workdir / "nodes"))
        nodes.import_clipforge_images()
        nodes.start_kuberay()
        s3 = stack.enter_context(CephS3Gateway(bind_address=netns.HOST_IP))
        jobs = make_stack(cp, nodes, s3, workdir, NAMESPACE)
        stack.callback(jobs.operator.stop)
        bucket = jobs.upload_samples(workdir)
        manifest = workdir / f"{JOB}.yaml"
        manifest.write_text(yaml.safe_dump(jobs.job_manifest(JOB, bucket), sort_keys=False))
        (workdir / "s3.env").write_text("".join(f"export {k}={v}\n" for k, v in {
            **s3.env(), "AWS_ENDPOINT_URL": s3.endpoint, "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}.items()))
        print(f"""
ClipForge playground up: {", ".join(f"{k} {v}" for k, v in cp.versions.items())}.
The videos are in s3://{bucket}/raw/ on {s3.endpoint}; the job writes to s3://{bucket}/out/.

    export KUBECONFIG={cp.kubeconfig}
    kubectl apply -f {manifest}
    kubectl get videocurationjobs -w        # Provisioning -> Running -> Succeeded
    kubectl get rayjobs,rayclusters,pods    # what KubeRay made of it
    kubectl describe videocurationjob {JOB}

    . {workdir / "s3.env"}                  # the bucket's keys, for any S3 client
    python3 -c "import boto3; c = boto3.client('s3'); print([o['Key'] for o in c.list_objects_v2(Bucket='{bucket}', Prefix='out/clips/')['Contents']])"

Logs: operator {jobs.operator.log_path}, pods `kubectl logs`, control plane {cp.logs_dir}.
Ctrl-C stops everything.""", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds the ExitStack, as Ctrl-C does
        try:
            while jobs.operator.alive():
                time.sleep(2)
        except KeyboardInterrupt:
            pass
        if not jobs.operator.alive():
            print(f"the operator exited; its log: {jobs.operator.log_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
