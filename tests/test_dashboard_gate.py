"""Which requests the dashboard gate answers itself, and what it gives out without a token.

The gate against a real Ray head (token auth on, KubeRay polling through it, a pod without the
token refused) is tests/operator/test_operator_kube.py and tests/e2e/test_operator_e2e.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from clipforge.dashboard_gate import MAX_HEAD, STATUS_FIELDS, Gate, is_status_poll, status_view
from support.pid1 import sigterm_as_pid1

JOB = "curate-retry-1"
# What KubeRay 1.5.0's dashboard client sends (Go's net/http, no body, no credentials).
KUBERAY_POLL = (b"GET /api/jobs/curate-retry-1 HTTP/1.1\r\nHost: curate-head-svc.ns.svc.cluster.local:8265\r\n"
                b"User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n")


def test_kuberays_status_poll_of_this_job_is_answered_by_the_gate():
    assert is_status_poll(KUBERAY_POLL, JOB)
    assert is_status_poll(b"GET /api/jobs/curate-retry-1 HTTP/1.0\r\n\r\n", JOB)


@pytest.mark.parametrize("head", [
    b"GET /api/jobs/curate HTTP/1.1\r\n\r\n",  # another job (an earlier attempt's name)
    b"GET /api/jobs/curate-retry-10 HTTP/1.1\r\n\r\n",
    b"GET /api/jobs/ HTTP/1.1\r\n\r\n",  # the list
    b"GET /api/jobs/curate-retry-1/logs HTTP/1.1\r\n\r\n",
    b"GET /api/jobs/curate-retry-1?x=1 HTTP/1.1\r\n\r\n",
    b"GET http://head:8265/api/jobs/curate-retry-1 HTTP/1.1\r\n\r\n",  # absolute form
    b"POST /api/jobs/curate-retry-1 HTTP/1.1\r\n\r\n",
    b"POST /api/jobs/ HTTP/1.1\r\nContent-Length: 30\r\n\r\n",  # a submission
    b"GET /api/jobs/curate-retry-1 HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n",  # Ray judges credentials
    b"GET /api/jobs/curate-retry-1 HTTP/1.1\r\nX-Ray-Authorization: Bearer abc\r\n\r\n",
    b"GET /api/jobs/curate-retry-1 HTTP/1.1\r\nCookie: ray-authentication-token=abc\r\n\r\n",
    b"GET /api/jobs/curate-retry-1 HTTP/1.1\r\ncontent-length: 5\r\n\r\n",  # a body to smuggle
    b"GET /api/jobs/curate-retry-1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET  /api/jobs/curate-retry-1 HTTP/1.1\r\n\r\n",
    b"GET /api/jobs/curate-retry-1 HTTP/2\r\n\r\n",
    b"",
], ids=lambda h: h[:60].decode(errors="replace"))
def test_everything_else_goes_to_ray_untouched(head: bytes):
    assert not is_status_poll(head, JOB)


def test_the_status_view_keeps_what_kuberay_reads_and_nothing_else():
    # A job's details as Ray 2.60's GET /api/jobs/<id> answers them.
    details = {"type": "SUBMISSION", "job_id": "02000000", "submission_id": JOB, "driver_info": {"id": "02000000",
               "node_ip_address": "10.200.0.5", "pid": "4242"}, "status": "RUNNING", "entrypoint":
               "clipforge run /etc/clipforge/job.yaml", "message": "Job is currently running.", "error_type": None,
               "start_time": 1764600000000, "end_time": None, "metadata": {"owner": "x"},
               "runtime_env": {"env_vars": {"A": "b"}}, "driver_agent_http_address": "http://10.200.0.5:52365",
               "driver_node_id": "abc", "driver_exit_code": None}
    view = status_view(details)
    assert set(view) == set(STATUS_FIELDS)
    assert view["status"] == "RUNNING" and view["submission_id"] == JOB and view["start_time"] == 1764600000000
    assert not {"entrypoint", "runtime_env", "metadata", "driver_info", "driver_agent_http_address"} & set(view)


def test_the_gate_as_its_containers_pid_1_stops_at_sigterm(tmp_path):
    # The head pod's clean-up waited 30 s for the gate before it had a SIGTERM handler.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def listening() -> bool:
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", port)) == 0

    status = sigterm_as_pid1(
        [sys.executable, "-m", "clipforge.dashboard_gate", f"--listen=127.0.0.1:{port}",
         "--dashboard=127.0.0.1:1", f"--job-id={JOB}"],
        listening, {**os.environ, "RAY_AUTH_TOKEN": "x" * 32}, log=tmp_path / "gate.log")
    assert status == 0, (tmp_path / "gate.log").read_text()


def test_the_status_view_carries_no_log_text():
    # Ray 2.60's message for a failed entrypoint: its sentence, then the driver's last 20,000 characters of log.
    details = {"job_id": "02000000", "submission_id": JOB, "status": "FAILED", "error_type": "JOB_ENTRYPOINT_COMMAND_ERROR",
               "message": "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000"
                          " chars):\nTraceback (most recent call last):\n  File \"run.py\", line 1\nValueError: s3://x?k=v"}
    view = status_view(details)
    assert view["message"] == "Job entrypoint command failed with exit code 1"
    assert view["status"] == "FAILED" and view["error_type"] == "JOB_ENTRYPOINT_COMMAND_ERROR"
    multi_line = status_view({"message": "Failed to start the supervisor:\nTraceback ...\nRuntimeError: secret"})
    assert multi_line["message"] == "Failed to start the supervisor:"
    assert status_view({"message": "x" * 5000})["message"] == "x" * 1000


# ------------------------------------------------------------------------------ holding the gate

IDLE_S = 0.5
RELAYED = b"GET /api/jobs/ HTTP/1.1\r\n\r\n"  # not the status poll: relayed to the dashboard


@pytest.fixture
def gate_port() -> Iterator[int]:
    """A gate (idle timeout IDLE_S, at most two connections) on a real port, in front of a stand-in dashboard
    on another that echoes every byte back."""
    loop = asyncio.new_event_loop()
    ports: list[int] = []
    servers: list[asyncio.Server] = []
    started = threading.Event()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def start() -> None:
        dashboard = await asyncio.start_server(echo, "127.0.0.1", 0)
        dashboard_port = dashboard.sockets[0].getsockname()[1]
        gate = Gate("127.0.0.1", dashboard_port, JOB, "t" * 32, idle_timeout=IDLE_S, max_connections=2)
        server = await asyncio.start_server(gate.handle, "127.0.0.1", 0, limit=MAX_HEAD)
        ports.append(server.sockets[0].getsockname()[1])
        servers.extend((dashboard, server))
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield ports[0]

    async def shutdown() -> None:  # the servers and their connection handlers end before the loop does
        for server in servers:
            server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def relayed_connection(port: int) -> socket.socket:
    """A connection the gate relays, its first bytes echoed back by the dashboard."""
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(RELAYED)
    assert client.recv(1024) == RELAYED
    return client


def test_a_connection_quiet_both_ways_is_closed_and_a_busy_one_is_not(gate_port: int):
    busy, quiet = relayed_connection(gate_port), relayed_connection(gate_port)
    started = time.monotonic()
    for _ in range(6):  # 1.2 s of traffic, beyond the idle timeout
        time.sleep(IDLE_S * 0.4)
        busy.sendall(b"x")
        assert busy.recv(1024) == b"x"
    assert quiet.recv(1024) == b""  # the gate closed it ...
    assert time.monotonic() - started < IDLE_S * 4  # ... once it was idle, not at the end of the test
    busy.sendall(b"still")
    assert busy.recv(1024) == b"still"
    busy.close()
    quiet.close()


def test_past_the_cap_a_connection_is_refused_until_one_closes(gate_port: int):
    first, second = relayed_connection(gate_port), relayed_connection(gate_port)
    with socket.create_connection(("127.0.0.1", gate_port), timeout=5) as third:
        answer = b""
        while chunk := third.recv(1024):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and answer.endswith(b"too many connections to the Ray dashboard")
    first.close()
    deadline = time.monotonic() + 5
    while True:  # the gate notices the close at once; give its loop a moment
        with socket.create_connection(("127.0.0.1", gate_port), timeout=5) as again:
            again.sendall(RELAYED)
            if again.recv(1024) == RELAYED:
                break
        assert time.monotonic() < deadline, "a freed slot was never given to a new connection"
        time.sleep(0.05)
    second.close()
