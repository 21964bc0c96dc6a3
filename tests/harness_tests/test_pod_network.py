"""Pod networks and names for the process kubelet, without an API server.

Real network namespaces and veth pairs on the real bridge: pods reach each other and the host,
the host forwards nothing off the bridge, an address is never handed out twice, and the hosts
file the pods resolve names with says what the EndpointSlices say.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import netns
from harness.process_kubelet import PodName, render_hosts, write_in_place

PY = sys.executable


@pytest.fixture
def networks():
    netns.ensure_bridge()
    made = []

    def make() -> netns.PodNetwork:
        made.append(netns.PodNetwork.create())
        return made[-1]

    yield make
    for n in made:
        n.delete()


def _in(network: netns.PodNetwork, code: str, timeout: float = 20) -> str:
    done = subprocess.run(network.enter([PY, "-c", code]), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_pods_have_their_own_addresses_and_reach_each_other_on_the_same_port(networks):
    a, b = networks(), networks()
    assert a.address != b.address
    assert _in(a, "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('8.8.8.8', 80)); "
                  "print(s.getsockname()[0])") == a.address  # what Ray takes for its node address
    serve = ("import socket, sys; s = socket.socket(); s.bind(('0.0.0.0', 6379)); s.listen(); "
             "print('up', flush=True); c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()")
    servers = [subprocess.Popen(n.enter([PY, "-c", serve, n.address]), stdout=subprocess.PIPE, text=True)
               for n in (a, b)]  # the same port in both: no conflict
    try:
        for s in servers:
            assert s.stdout.readline().strip() == "up"
        fetch = "import socket; print(socket.create_connection(('{}', 6379), 5).recv(100).decode())"
        assert _in(a, fetch.format(b.address)) == b.address
        assert _in(b, fetch.format(a.address)) == a.address
    finally:
        for s in servers:
            s.kill()
            s.wait()


def test_nothing_leaves_the_machine(networks):
    assert Path(f"/proc/sys/net/ipv4/conf/{netns.BRIDGE}/forwarding").read_text().strip() == "0"
    n = networks()
    # The host's bridge address answers (the API server listens there); an outside address does not.
    out = _in(n, "import socket\n"
                 "def probe(host):\n"
                 "    s = socket.socket(); s.settimeout(2)\n"
                 "    try: s.connect((host, 9)); return 'open'\n"
                 "    except ConnectionRefusedError: return 'refused'\n"
                 "    except OSError as e: return 'unreachable'\n"
                 f"print(probe('{netns.HOST_IP}'), probe('192.0.2.77'))")
    assert out == "refused unreachable"


def test_an_address_is_held_until_released_and_a_dead_holder_frees_it(networks):
    held = networks()
    code = ("import sys; sys.path.insert(0, %r); from harness import netns; "
            "n = netns.PodNetwork.create(); print(n.address, flush=True); sys.stdin.read()") % str(Path(__file__).parents[1])
    other = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    theirs = other.stdout.readline().strip()
    assert theirs and theirs != held.address
    other.kill()  # dies holding its address: the namespace is left behind, its lock is not
    other.wait()
    assert (netns.NETNS_DIR / f"cf-{theirs.replace('.', '-')}").exists()
    assert f"cf-{theirs.replace('.', '-')}" in netns.remove_stale_pod_networks()
    assert f"cf-{held.address.replace('.', '-')}" in os.listdir(netns.NETNS_DIR)  # ours is not stale
    held.delete()
    assert f"cf-{held.address.replace('.', '-')}" not in os.listdir(netns.NETNS_DIR)
    assert subprocess.run(["ip", "link", "show", held.veth], capture_output=True).returncode != 0


def _slice(ns, service, *endpoints):  # noqa: ANN001, ANN202
    return {"metadata": {"namespace": ns, "labels": {"kubernetes.io/service-name": service}}, "addressType": "IPv4",
            "endpoints": [dict(e) for e in endpoints]}


def _service(ns, name, cluster_ip="10.96.0.10", **spec):  # noqa: ANN001, ANN202
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": cluster_ip, **spec}}


def test_hosts_file_maps_pods_and_service_names_to_ready_endpoints():
    pods = [PodName("10.200.1.9", "head-0", "ray"), PodName("10.200.1.3", "w-1", "ray", subdomain="peers")]
    services = [_service("ray", "head-svc", cluster_ip="None"), _service("ray", "dash"),
                _service("default", "kubernetes"), _service("ray", "ext", type="ExternalName"),
                _service("ray", "empty", cluster_ip="None")]
    slices = [
        _slice("ray", "head-svc", {"addresses": ["10.200.1.10"], "conditions": {"ready": True}, "hostname": "h"},
               {"addresses": ["10.200.1.9"]},  # ready unset means ready
               {"addresses": ["10.200.1.11"], "conditions": {"ready": False}}),
        _slice("ray", "dash", {"addresses": ["10.200.1.12"], "conditions": {"ready": True}},
               {"addresses": ["10.200.1.2"], "conditions": {"ready": True}}),
    ]
    assert render_hosts(pods, services, slices).splitlines()[1:] == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "10.200.0.1\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default",
        "10.200.1.3\tw-1.peers.ray.svc.cluster.local w-1",
        "10.200.1.9\thead-0",
        # ClusterIP: one backing pod (no kube-proxy), the lowest address
        "10.200.1.2\tdash.ray.svc.cluster.local dash.ray.svc dash.ray",
        # headless: every ready address, numerically ordered, and endpoint hostnames
        "10.200.1.9\thead-svc.ray.svc.cluster.local head-svc.ray.svc head-svc.ray",
        "10.200.1.10\thead-svc.ray.svc.cluster.local head-svc.ray.svc head-svc.ray",
        "10.200.1.10\th.head-svc.ray.svc.cluster.local",
    ]


def test_hosts_file_is_rewritten_in_place_and_never_shrinks(tmp_path):
    hosts = tmp_path / "hosts"
    write_in_place(hosts, "10.200.1.1 a-long-name.ns.svc.cluster.local\n")
    inode, size = hosts.stat().st_ino, hosts.stat().st_size
    write_in_place(hosts, "10.200.1.2 b\n")
    assert hosts.stat().st_ino == inode  # a bind mount of it sees the new text
    assert hosts.stat().st_size == size  # padded: a reader never meets a torn tail
    text = hosts.read_text()
    assert text.startswith("10.200.1.2 b\n#") and text.endswith("#\n")
    done = subprocess.run(netns.with_hosts_file(["getent", "hosts", "b"], hosts), capture_output=True, text=True)
    assert done.stdout.split() == ["10.200.1.2", "b"]
