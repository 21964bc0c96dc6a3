"""A real S3 server for the tests: a throwaway one-node Ceph cluster with the RADOS gateway.

One monitor, one OSD on the in-memory ``memstore`` object store (no disks) and ``radosgw``
serving the S3 API over HTTP on 127.0.0.1 (or on ``bind_address``: pods in network namespaces
reach the host only at the pod bridge's address, netns.HOST_IP). Everything (config, monitor
store, logs, sockets, pid files) lives in one temporary directory, so two clusters never collide and nothing touches
/etc/ceph, /var/lib/ceph or /var/log/ceph. Authentication inside the cluster is off (loopback
only); S3 requests are signed with the keys of a user made by ``radosgw-admin``.

    with CephS3Gateway() as server:          # or: gw = CephS3Gateway(); server = gw.start(); ... gw.stop()
        server.create_bucket("videos")
        Storage(endpoint=server.endpoint)     # with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY set

The daemons are children of this process, killed by ``stop()``, at interpreter exit, and by the
kernel (PR_SET_PDEATHSIG) if this process dies without cleaning up. Needs the Debian packages
that scripts/install-ceph.sh installs.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from harness.processes import die_with_parent, free_port, log_tail

REQUIRED_COMMANDS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")


class S3ServerError(RuntimeError):
    """The cluster could not start; the message carries the tail of the daemon logs."""


@dataclass(frozen=True)
class S3Server:
    """Where the gateway answers and the keys of its one user."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self):  # noqa: ANN201 - boto3 is imported lazily
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                # RGW rejects the default CRC checksums of newer SDKs.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 3},
            ),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS clients at this server's user."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


class CephS3Gateway:
    """Starts and stops the cluster. ``start()`` returns the :class:`S3Server`; usable as a context manager."""

    MON = "mon.a"
    OSD = "osd.0"
    RGW = "client.rgw"

    def __init__(self, *, memstore_bytes: int = 512 << 20, start_timeout: float = 120.0,
                 parent_dir: str | None = None, bind_address: str = "127.0.0.1"):
        self.memstore_bytes = memstore_bytes
        self.start_timeout = start_timeout
        self.parent_dir = parent_dir
        self.bind_address = bind_address  # the gateway's; the monitor and OSD stay on loopback
        self.dir: Path | None = None
        self.server: S3Server | None = None
        self.start_seconds: float | None = None
        self._procs: dict[str, subprocess.Popen] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> S3Server:
        if self.server is not None:
            return self.server
        missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
        if missing:
            raise S3ServerError(
                f"Ceph is not installed (missing {', '.join(missing)}); run scripts/install-ceph.sh as root")
        began = time.monotonic()
        self._deadline = began + self.start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="clipforge-ceph-", dir=self.parent_dir))
        atexit.register(self.stop)
        try:
            self.server = self._start()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self.server

    def stop(self) -> None:
        """Kills the daemons and removes the directory. Idempotent; the data is thrown away anyway."""
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.server = None
        atexit.unregister(self.stop)

    def kill_gateway(self) -> None:
        """Kills the RADOS gateway (an outage); the monitor and OSD, and so the data, stay."""
        proc = self._procs.pop(self.RGW)
        proc.kill()
        proc.wait(timeout=10)

    def start_gateway(self) -> None:
        """Starts the gateway again on its port and waits until it answers HTTP."""
        assert self.server is not None
        self._deadline = time.monotonic() + self.start_timeout
        self._spawn(self.RGW, "radosgw", "-f", "-n", self.RGW)
        self._wait("the gateway to answer HTTP again", lambda: self._http_ok(self.server.endpoint), self.RGW)

    def add_key(self) -> tuple[str, str]:
        """A new S3 key pair of the gateway's user: (access key, secret)."""
        access_key = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(20))
        secret_key = secrets.token_urlsafe(30)
        self._deadline = time.monotonic() + self.start_timeout
        self._run("radosgw-admin", "-n", "client.admin", "key", "create", "--uid", "clipforge-test",
                  "--key-type", "s3", "--access-key", access_key, "--secret", secret_key, log=self.RGW)
        return access_key, secret_key

    def remove_key(self, access_key: str) -> None:
        self._deadline = time.monotonic() + self.start_timeout
        self._run("radosgw-admin", "-n", "client.admin", "key", "rm", "--uid", "clipforge-test",
                  "--key-type", "s3", "--access-key", access_key, log=self.RGW)

    # -- start-up --------------------------------------------------------------------------

    def _start(self) -> S3Server:
        d = self.dir
        assert d is not None
        for sub in ("mon/a", "osd/0", "rgw", "log", "run", "crash", "tmp"):
            (d / sub).mkdir(parents=True)
        fsid = str(uuid.uuid4())
        mon_port, rgw_port = free_port(), free_port(self.bind_address)
        self._conf = d / "ceph.conf"
        self._conf.write_text(self._config(fsid, mon_port, rgw_port))

        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
                  str(d / "monmap"), log=self.MON)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(d / "monmap"), log=self.MON)
        self._spawn(self.MON, "ceph-mon", "-f", "-i", "a")

        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", "osd", "new", osd_uuid, log=self.MON).strip()
        if osd_id != "0":
            raise self._error(f"`ceph osd new` returned {osd_id!r}, expected 0", self.MON)
        self._run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, log=self.OSD)
        self._spawn(self.OSD, "ceph-osd", "-f", "-i", "0")
        # The gateway creates its pools and waits for them to become active by itself.
        self._spawn(self.RGW, "radosgw", "-f", "-n", self.RGW)

        endpoint = f"http://{self.bind_address}:{rgw_port}"
        self._wait("the gateway to answer HTTP", lambda: self._http_ok(endpoint), self.RGW)

        access_key = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(20))
        secret_key = secrets.token_urlsafe(30)
        self._run("radosgw-admin", "-n", "client.admin", "user", "create", "--uid", "clipforge-test",
                  "--display-name", "ClipForge tests", "--access-key", access_key, "--secret", secret_key,
                  log=self.RGW)
        server = S3Server(endpoint=endpoint, access_key=access_key, secret_key=secret_key)
        client = server.client()

        def signed_request_ok() -> bool:
            try:
                client.list_buckets()
                return True
            except Exception:  # noqa: BLE001 - not ready yet; the deadline reports it
                return False

        self._wait("a signed S3 request to succeed", signed_request_ok, self.RGW)
        return server

    def _config(self, fsid: str, mon_port: int, rgw_port: int) -> str:
        d = self.dir
        return f"""\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
# without cephx only the crc connection mode works; radosgw otherwise asks the monitor for "secure"
ms mon client mode = crc
mon warn on insecure global id reclaim allowed = false

# everything under this directory
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
mon cluster log file = {d}/log/cluster.log
crash dir = {d}/crash
keyring = {d}/keyring
mon data = {d}/mon/$id
osd data = {d}/osd/$id
rgw data = {d}/rgw
tmp dir = {d}/tmp

# one OSD in memory, pools of size one
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
osd crush chooseleaf type = 0
osd crush initial weight = 1
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail crit = 0
# the monitor batches map changes for a second by default; the gateway makes a dozen at start
paxos propose interval = 0.05
mon data avail warn = 0

[client.rgw]
rgw frontends = beast endpoint={self.bind_address}:{rgw_port} tcp_nodelay=1
rgw thread pool size = 32
rgw dynamic resharding = false
"""

    # -- helpers ---------------------------------------------------------------------------

    def _log(self, name: str) -> Path:
        assert self.dir is not None
        return self.dir / "log" / f"{name}.log"

    def _argv(self, cmd: str, *args: str) -> list[str]:
        return [cmd, "-c", str(self._conf), *args]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CEPH_")}
        env["CEPH_CONF"] = str(self._conf)
        return env

    def _run(self, cmd: str, *args: str, log: str, timeout: float = 60) -> str:
        argv = self._argv(cmd, *args)
        if cmd == "ceph":
            argv += ["--connect-timeout", str(int(max(5, self._deadline - time.monotonic())))]
        try:
            done = subprocess.run(die_with_parent(argv), capture_output=True, text=True, env=self._env(),
                                  stdin=subprocess.DEVNULL, start_new_session=True,
                                  timeout=max(5.0, min(timeout, self._deadline - time.monotonic())))
        except subprocess.TimeoutExpired as exc:
            raise self._error(f"`{' '.join(argv)}` timed out after {exc.timeout:.0f}s", log) from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-4000:]
            raise self._error(f"`{' '.join(argv)}` failed ({done.returncode}):\n{output}", log)
        return done.stdout

    def _spawn(self, name: str, cmd: str, *args: str) -> None:
        assert self.dir is not None
        out = open(self.dir / "log" / f"{name}.out", "wb")  # noqa: SIM115 - the child holds it
        with out:
            # Own session: Ctrl-C in a terminal reaches pytest only, which then stops the daemons itself.
            self._procs[name] = subprocess.Popen(
                die_with_parent(self._argv(cmd, *args)), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=self._env(), start_new_session=True)

    def _wait(self, what: str, ready, log: str) -> None:  # noqa: ANN001
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise self._error(f"{name} exited with status {proc.returncode} while waiting for {what}", name)
            if ready():
                return
            if time.monotonic() > self._deadline:
                raise self._error(f"timed out after {self.start_timeout:.0f}s waiting for {what}", log)
            time.sleep(0.2)

    @staticmethod
    def _http_ok(endpoint: str) -> bool:
        try:
            with urllib.request.urlopen(endpoint + "/", timeout=2) as resp:
                return resp.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def _error(self, message: str, log: str) -> S3ServerError:
        """The error, with the relevant daemon's log tail first and the other logs' tails after it."""
        parts = [f"Ceph S3 test server failed to start: {message}", f"cluster directory: {self.dir}"]
        names = [log] + [n for n in (self.MON, self.OSD, self.RGW) if n != log]
        for name in names:
            for path in (self._log(name), self._log(name).with_suffix(".out")):
                if path.exists() and path.stat().st_size:
                    lines = 40 if name == log else 10
                    parts.append(f"--- last lines of {path.name} ---\n{log_tail(path, lines)}")
        return S3ServerError("\n".join(parts))


def main() -> None:
    """`PYTHONPATH=tests python3 -m support.s3_server`: start a cluster, print its start time and address, stop it."""
    gateway = CephS3Gateway()
    with gateway as server:
        print(f"started in {gateway.start_seconds:.1f}s: {server}")


if __name__ == "__main__":
    main()
