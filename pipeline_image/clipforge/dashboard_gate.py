"""The one door to a ClipForge Ray head's dashboard: Ray's token checks everything but KubeRay's status poll.

A job's Ray cluster runs with Ray's token authentication (RAY_AUTH_MODE=token): without the job's
token nothing is submitted, no GCS call is answered. KubeRay 1.5.0 submits through a pod that has
the token, but its operator polls `GET /api/jobs/<job id>` without any token, and a RayJob whose
status it cannot read fails after its submitter finishes. So the head's dashboard listens on the
pod's loopback only, and this gate listens on the dashboard's port in its place:

- a request that carries no credentials and is exactly `GET /api/jobs/<this RayJob's job id>`
  without a body is answered by the gate itself: it asks the dashboard with the token and returns
  only the fields KubeRay reads (status, message, times, ids), never the entrypoint, runtime
  environment or driver details, and the message without the driver's log text that Ray appends
  to it; and it closes the connection, so nothing else rides on it;
- every other connection is relayed byte for byte, untouched: the dashboard checks the token of
  each request on it (job submission, logs, the state API) as it would without the gate.

Whoever reaches the port (the job's own pods and KubeRay, as its NetworkPolicy admits) cannot hold
the gate: a connection quiet both ways for IDLE_TIMEOUT_S is closed, and past MAX_CONNECTIONS open
at once a new one is answered 503 and closed, so connections left open never pile up.

    python -m clipforge.dashboard_gate --listen 0.0.0.0:8265 --dashboard 127.0.0.1:8266 --job-id JOB

The token comes from $RAY_AUTH_TOKEN (a reference to the job's token Secret, never a literal).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import os
import signal
import sys

TOKEN_ENV = "RAY_AUTH_TOKEN"
# What KubeRay 1.5.0's RayJobInfo reads from a job's details (its dashboard client's types.go),
# minus the entrypoint, metadata and runtime environment: the gate is no place to read those.
STATUS_FIELDS = ("job_id", "submission_id", "status", "message", "error_type", "start_time", "end_time")
# Headers that make a request more than a bare status poll: credentials of its own (Ray checks
# those), or a body that a relay would have to forward.
NOT_A_POLL = (b"authorization", b"x-ray-authorization", b"cookie", b"content-length", b"transfer-encoding")
# Ray's message for a failed entrypoint carries the last 20,000 characters of the driver's log:
# "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n...".
LOG_TAIL_MARKER = ", last available logs"
MAX_MESSAGE = 1000
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT_S = 30.0
# A relayed connection with no byte either way for this long is closed (a `ray job logs --follow`
# of a driver silent for longer ends; the CLI says so and it can be run again).
IDLE_TIMEOUT_S = 300.0
MAX_CONNECTIONS = 64  # open at once; KubeRay polls with one, a user's CLI with a few
DASHBOARD_TIMEOUT_S = 10.0
CHUNK = 64 * 1024

log = logging.getLogger("clipforge.dashboard_gate")


def is_status_poll(head: bytes, job_id: str) -> bool:
    """True for a request head (request line and headers) that is KubeRay's status poll of `job_id`."""
    request_line, *header_lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[1] != f"/api/jobs/{job_id}".encode():
        return False
    if parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        return False
    names = {line.split(b":", 1)[0].strip().lower() for line in header_lines if line}
    return not names & set(NOT_A_POLL)


def message_without_logs(message: str) -> str:
    """A Ray job's status message without log text: Ray's own sentence, its first line, at most MAX_MESSAGE
    characters. (KubeRay copies the message into the RayJob's status, the operator into the job's.)"""
    lines = message.split(LOG_TAIL_MARKER, 1)[0].strip().splitlines()
    return lines[0][:MAX_MESSAGE] if lines else ""


def status_view(details: dict) -> dict:
    """The fields of a job's details that the gate gives out without a token; the message without log text."""
    view = {key: details[key] for key in STATUS_FIELDS if key in details}
    if isinstance(view.get("message"), str):
        view["message"] = message_without_logs(view["message"])
    return view


def _response(status: int, reason: str, body: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class Gate:
    def __init__(self, dashboard_host: str, dashboard_port: int, job_id: str, token: str,
                 idle_timeout: float = IDLE_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        self.dashboard_host, self.dashboard_port = dashboard_host, dashboard_port
        self.job_id, self.token = job_id, token
        self.idle_timeout, self.max_connections = idle_timeout, max_connections
        self.open_connections = 0

    def _ask_dashboard(self) -> bytes:
        """The dashboard's answer about the job, as a response to send back (runs in a thread)."""
        conn = http.client.HTTPConnection(self.dashboard_host, self.dashboard_port, timeout=DASHBOARD_TIMEOUT_S)
        try:
            conn.request("GET", f"/api/jobs/{self.job_id}", headers={"Authorization": f"Bearer {self.token}"})
            answer = conn.getresponse()
            body = answer.read()
        except OSError as exc:
            return _response(502, "Bad Gateway", f"the Ray dashboard did not answer: {exc}".encode(), "text/plain")
        finally:
            conn.close()
        if answer.status != 200:  # 404 (no such job yet) and the rest, as the dashboard said them
            return _response(answer.status, answer.reason, body, answer.getheader("Content-Type") or "text/plain")
        try:
            view = status_view(json.loads(body))
        except (ValueError, TypeError, AttributeError):
            return _response(502, "Bad Gateway", b"the Ray dashboard's answer was not a job's details", "text/plain")
        return _response(200, "OK", json.dumps(view).encode(), "application/json")

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self.max_connections:
            log.warning("%d connections open: one more refused", self.open_connections)
            client_writer.write(_response(503, "Service Unavailable", b"too many connections to the Ray dashboard",
                                          "text/plain"))
            client_writer.close()  # the 503 is flushed before the close, without waiting on the client
            return
        self.open_connections += 1
        try:
            try:
                head = await asyncio.wait_for(client_reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            except asyncio.IncompleteReadError as exc:  # the client closed mid-head: relay what it sent
                head = exc.partial
            except asyncio.LimitOverrunError:  # an oversized head stays buffered: relay it, Ray judges it
                head = b""
            if not head and client_reader.at_eof():
                return
            if is_status_poll(head, self.job_id):
                client_writer.write(await asyncio.to_thread(self._ask_dashboard))
                await client_writer.drain()
                return
            await self._relay(head, client_reader, client_writer)
        except (OSError, asyncio.TimeoutError) as exc:
            log.debug("connection ended: %s", exc)
        finally:
            self.open_connections -= 1
            client_writer.close()

    async def _relay(self, head: bytes, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        """Relays both ways until both end, or until neither side has sent a byte for idle_timeout."""
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(self.dashboard_host, self.dashboard_port), DASHBOARD_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        last_byte = [loop.time()]
        pipes = asyncio.gather(_pipe(client_reader, up_writer, last_byte), _pipe(up_reader, client_writer, last_byte))
        try:
            up_writer.write(head)
            while not pipes.done():
                quiet_left = last_byte[0] + self.idle_timeout - loop.time()
                if quiet_left <= 0:
                    log.info("a connection idle for %.0f s closed", self.idle_timeout)
                    break
                await asyncio.wait({pipes}, timeout=quiet_left)
        finally:
            pipes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pipes
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, last_byte: list[float]) -> None:
    """Copies until EOF, then half-closes the other side (a client may wait for the rest of a reply);
    `last_byte` gets the loop's time of each chunk."""
    loop = asyncio.get_running_loop()
    try:
        while chunk := await reader.read(CHUNK):
            last_byte[0] = loop.time()
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


async def serve(listen: tuple[str, int], gate: Gate) -> None:
    server = await asyncio.start_server(gate.handle, *listen, limit=MAX_HEAD)
    log.info("dashboard gate on %s:%d, dashboard at %s:%d, status poll of job %s",
             *listen, gate.dashboard_host, gate.dashboard_port, gate.job_id)
    # The gate is its container's PID 1, which ignores SIGTERM without a handler: the head pod
    # would wait out its grace period on every clean-up.
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    async with server:
        await stopped.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipforge.dashboard_gate", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT the gate listens on")
    parser.add_argument("--dashboard", type=_address, required=True, help="HOST:PORT of the Ray dashboard")
    parser.add_argument("--job-id", required=True, help="the RayJob's Ray job id (its spec.jobId)")
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV)
    if not token:
        parser.error(f"${TOKEN_ENV} is not set: the gate needs the job's Ray token to ask the dashboard")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.listen, Gate(*args.dashboard, args.job_id, token)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
