"""One writer per output: a run claims its output before it writes there and holds the claim
while it runs.

Two runs writing one output destroy each other's work (a clip that other thresholds move is
removed from its other place; a chunk redone under other settings is deleted first). A run
writes its claim, `<output>/leases/<run id>.json`, then lists the claims: with any other live
claim there it withdraws its own and refuses to start, naming the holder. Storage lists what was
written before the listing (S3 has been strongly consistent since 2020), so of two runs one
after the other the second always sees the first; two that start in the same moment may both
see each other and both refuse, which is safe (start one again).

A claim is live while its run renews it, rewriting it every RENEW_S. One not rewritten for
EXPIRE_S is stale (its run died without releasing it) and the next run removes it, as it
removes at once the claim of a process of this host that no longer exists (a run killed here). Ages are
compared between modification times the storage lists, never against this machine's clock. A
retry of the same VideoCurationJob (the same metadata.uid, which the operator's manifests
carry) takes over its earlier attempt's claim: the operator runs one attempt at a time.
`clipforge run --force-unlock` removes every claim first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime

from clipforge import layout
from clipforge.spec import VideoCurationJob
from clipforge.storage import Listed, Storage, StorageError

log = logging.getLogger(__name__)

RENEW_S = 30.0
# Long enough to ride out a storage outage (each call retries for up to 120 s) between renewals.
EXPIRE_S = 600.0


class OutputLocked(Exception):
    """Another live run holds the output; the message names it."""


@dataclass
class OutputLease:
    storage: Storage
    root: str
    run_id: str
    holder: dict
    lost: bool = False

    @property
    def uri(self) -> str:
        return layout.lease_file(self.root, self.run_id)

    @classmethod
    def acquire(cls, storage: Storage, job: VideoCurationJob, run_id: str, force: bool = False) -> OutputLease:
        """Claims job's output for this run; raises OutputLocked when another live run holds it."""
        root = job.spec.output.uri
        if force:
            for claim in cls._claims(storage, root):
                storage.delete(claim.uri)
        meta = job.metadata
        holder = {"run_id": run_id, "job": meta.key, "uid": getattr(meta, "uid", None),
                  "host": socket.gethostname(), "pid": os.getpid()}
        lease = cls(storage, root, run_id, holder)
        storage.write_json(lease.uri, holder)
        others = lease._live_others()
        if holder["uid"] and all(other.get("uid") == holder["uid"] for _, other in others):
            for uri, other in others:  # an earlier attempt of this same job: it has ended
                log.info("taking over the output from run %s, an earlier attempt of this job", other["run_id"])
                storage.delete(uri)
            others = []
        if others:
            lease.release()
            other = others[0][1]
            raise OutputLocked(
                f"output {root} is being written by run {other['run_id']} (job {other['job']}, host {other['host']},"
                f" pid {other['pid']}); two runs on one output destroy each other's clips. Wait for it to end,"
                f" or, if it is gone, run again in {EXPIRE_S / 60:g} minutes or with --force-unlock")
        return lease

    @staticmethod
    def _claims(storage: Storage, root: str) -> list[Listed]:
        return storage.list_files(layout.join(root, layout.LEASES), ["*.json"], missing_ok=True)

    def _live_others(self) -> list[tuple[str, dict]]:
        """Other runs' live claims (uri, document); stale ones are removed on the way."""
        claims = self._claims(self.storage, self.root)
        # By name: a local listing gives absolute paths where the output may be relative (./out).
        own = f"{self.run_id}.json"
        mine = next((c for c in claims if c.relative == own), None)
        if mine is None:
            raise StorageError(f"cannot see this run's own claim {self.uri} in a listing of {self.root}")
        now = datetime.fromisoformat(mine.mtime)
        live = []
        for claim in claims:
            if claim.relative == own:
                continue
            if (now - datetime.fromisoformat(claim.mtime)).total_seconds() > EXPIRE_S:
                log.warning("removing the stale claim %s (not renewed for %g s)", claim.uri, EXPIRE_S)
                self.storage.delete(claim.uri)
                continue
            try:
                other = json.loads(self.storage.read_bytes(claim.uri))
            except StorageError as exc:
                if not exc.missing:  # withdrawn since the listing: not a holder
                    raise
                continue
            if other.get("host") == self.holder["host"] and not _running(other.get("pid")):
                log.warning("removing the claim %s of run %s: its process %s is gone", claim.uri, other.get("run_id"),
                            other.get("pid"))
                self.storage.delete(claim.uri)
                continue
            live.append((claim.uri, other))
        return live

    def renew(self) -> None:
        """Rewrites the claim; marks the lease lost when it is gone (taken over as stale, or unlocked)."""
        if self.lost:
            return
        if not self.storage.exists(self.uri):
            self.lost = True
            log.error("this run lost its claim on %s (not renewed for %g s, or unlocked): stopping", self.root,
                      EXPIRE_S)
            return
        self.storage.write_json(self.uri, self.holder)

    def release(self) -> None:
        self.storage.delete(self.uri)


def _running(pid: object) -> bool:
    if not isinstance(pid, int):
        return True  # not ours to judge: leave it to expire
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
