"""The docker backend's network: no build and no run shares this host's network, and what may
reach out goes through the egress proxy, which refuses this host, its loopback services, private
and link-local addresses before connecting anywhere.

Nothing here sends a packet beyond this machine: the containers have no route out, and every
destination given to the proxy is one its policy refuses. No test reaches a package index.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import pytest

from sandbox.backends import sandbox_config
from sandbox.base import BuildError, Limits, Status
from sandbox.docker_backend import LABEL_BUILD, DockerBackend
from sandbox.egress import PROXY_PORT, host_addresses
from sandbox.requirements import BuildRules
from sandbox.tests.helpers import wheel

pytestmark = [pytest.mark.docker, pytest.mark.slow]

OFFLINE = BuildRules(index_url="http://index.invalid/simple", index_hosts=())


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"the Docker engine is not available ({exc}); run scripts/setup-system")
    return client


@pytest.fixture(scope="module")
def egress_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("egress")


@pytest.fixture(scope="module")
def backend_for(engine, egress_root):
    """`backend_for(rules)`: the configured docker backend with these build rules."""
    config = sandbox_config()

    def make(rules: BuildRules = OFFLINE) -> DockerBackend:
        backend = DockerBackend.from_config(replace(config, build=rules))
        backend.egress_root = egress_root
        backend.check()
        return backend

    return make


def own_addresses() -> list[str]:
    """This host's own non-loopback IPv4 addresses (the docker0 gateway among them)."""
    found = sorted(str(a) for a in host_addresses() if a.version == 4 and not a.is_loopback)
    if not found:
        pytest.skip("this host has no non-loopback IPv4 address")
    return found[:3]


def write_package(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
    return root


def build_events(engine: docker.DockerClient, key: str, since: float) -> list[dict]:
    """What the engine did with containers of the build `key` since `since`."""
    return list(
        engine.events(
            since=int(since) - 1,
            until=int(time.time()) + 1,
            filters={"type": "container", "label": f"{LABEL_BUILD}={key}"},
            decode=True,
        )
    )


def assert_nothing_left(engine: docker.DockerClient, backend: DockerBackend, key: str) -> None:
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(f"{backend.agent_image}:{key}")
    assert engine.containers.list(all=True, filters={"label": f"{LABEL_BUILD}={key}"}) == []
    assert list(backend.egress_root.iterdir()) == []


# An in-tree PEP 517 backend: running it is running the uploader's code during the build.
PROBE_BACKEND = """
    import os
    import socket

    TARGETS = {targets!r}


    def direct(host, port):
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            return f"refused ({{exc}})"
        return "CONNECTED"


    def proxied(host, port):
        proxy_host, proxy_port = os.environ["http_proxy"].rsplit("/", 1)[-1].rsplit(":", 1)
        try:
            with socket.create_connection((proxy_host, int(proxy_port)), timeout=5) as sock:
                sock.sendall(f"CONNECT {{host}}:{{port}} HTTP/1.1\\r\\n\\r\\n".encode())
                status = sock.recv(4096).decode("latin-1").split("\\r\\n", 1)[0]
        except OSError as exc:
            return f"no proxy ({{exc}})"
        return status if " 403 " in status else f"CONNECTED {{status}}"


    def get_requires_for_build_wheel(config_settings=None):
        for how, host, port in TARGETS:
            result = (direct if how == "direct" else proxied)(host, port)
            print(f"probe {{how}} {{host}}:{{port}} -> {{result}}", flush=True)
        # pip shows a failed hook's output; the probe's lines are the point.
        raise RuntimeError("probe finished")


    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        raise RuntimeError("not reached")
"""


def probe_package(targets: list[tuple[str, str, int]]) -> dict[str, str]:
    return {
        "agent/main.py": "def handle(p):\n    return p\n",
        "requirements.txt": "./probe\n",
        "probe/pyproject.toml": """
            [build-system]
            requires = []
            build-backend = "probe_backend"
            backend-path = ["."]

            [project]
            name = "probe"
            version = "0.1"
        """,
        "probe/probe_backend.py": PROBE_BACKEND.format(targets=targets),
    }


def test_a_local_project_is_refused_before_anything_runs_when_only_wheels_are_allowed(
    backend_for, engine, tmp_path
):
    backend = backend_for(OFFLINE)
    source = write_package(tmp_path, probe_package([("proxy", "169.254.169.254", 80)]))
    key = f"test-{uuid.uuid4().hex[:12]}"
    lines: list[str] = []
    since = time.time()

    with pytest.raises(BuildError) as caught:
        backend.prepare(source, {}, key=key, log=lines.append)

    assert "requirements.txt, line 1: './probe' is a local project" in str(caught.value)
    assert lines == [str(caught.value)]
    assert build_events(engine, key, since) == []  # no container was even created
    assert_nothing_left(engine, backend, key)


def test_a_source_build_reaches_neither_this_host_nor_private_addresses(
    backend_for, engine, tmp_path
):
    backend = backend_for(replace(OFFLINE, allow_source=True))
    own = own_addresses()
    direct = [("direct", "127.0.0.1", 6379), ("direct", "127.0.0.1", 5432)]
    direct += [("direct", address, 6379) for address in own]
    proxied = [
        ("proxy", "127.0.0.1", 6379),
        ("proxy", "169.254.169.254", 80),
        ("proxy", own[0], 5432),
    ]
    source = write_package(tmp_path, probe_package(direct + proxied))
    key = f"test-{uuid.uuid4().hex[:12]}"
    lines: list[str] = []

    with pytest.raises(BuildError, match="pip install -r requirements.txt failed"):
        backend.prepare(source, {}, key=key, log=lines.append)

    results = {}
    for line in lines:
        if "probe " in line and " -> " in line:
            target, _, result = line.split("probe ", 1)[1].partition(" -> ")
            results[target] = result
    for how, host, port in direct:
        assert results[f"{how} {host}:{port}"].startswith("refused ("), (host, port, results)
    for how, host, port in proxied:
        assert results[f"{how} {host}:{port}"] == "HTTP/1.1 403 Forbidden", (host, port)
    refusals = [line for line in lines if line.startswith("network: CONNECT ")]
    assert any(line.startswith("network: CONNECT 127.0.0.1:6379 refused: ") for line in refusals)
    assert any(
        line.startswith("network: CONNECT 169.254.169.254:80 refused: ") for line in refusals
    )
    assert_nothing_left(engine, backend, key)


NETWORK_AGENT = """
    import os
    import socket
    import urllib.error
    import urllib.request


    def attempt(host, port):
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            return "failed"
        return "connected"


    def connect_through_proxy(host, port):
        try:
            with socket.create_connection(("127.0.0.1", {proxy_port}), timeout=5) as sock:
                sock.sendall(f"CONNECT {{host}}:{{port}} HTTP/1.1\\r\\n\\r\\n".encode())
                return sock.recv(4096).decode("latin-1").split("\\r\\n", 1)[0]
        except OSError:
            return "no proxy"


    def get_through_proxy(url):
        try:
            urllib.request.urlopen(url, timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return "no proxy"
        return "fetched"


    def handle(own):
        result = {{
            "proxy variables": sorted(k for k in os.environ if k.lower().endswith("_proxy")),
            "interfaces": sorted(os.listdir("/sys/class/net")),
            "proxy socket": os.path.exists("/run/aimos-egress/egress.sock"),
        }}
        for host, port in [("127.0.0.1", 6379), ("127.0.0.1", 5432), (own, 6379)]:
            result[f"{{host}}:{{port}}"] = attempt(host, port)
        for host, port in [("169.254.169.254", 80), ("10.0.0.1", 80), ("127.0.0.1", 6379)]:
            result[f"CONNECT {{host}}:{{port}}"] = connect_through_proxy(host, port)
        result["GET metadata"] = get_through_proxy("http://169.254.169.254/latest/meta-data/")
        return result
"""


@pytest.fixture(scope="module")
def network_env(backend_for, tmp_path_factory):
    """A version with a requirement (so its image was made by a builder with a proxy)."""
    backend = backend_for(OFFLINE)
    wheel_name, wheel_bytes = wheel("tinydep", "0.1", "VALUE = 42\n")
    source = write_package(
        tmp_path_factory.mktemp("network-agent"),
        {
            "agent/main.py": NETWORK_AGENT.format(proxy_port=PROXY_PORT),
            "requirements.txt": f"./{wheel_name}\n",
            wheel_name: wheel_bytes,
        },
    )
    env = backend.prepare(source, {}, key=f"test-{uuid.uuid4().hex[:12]}")
    yield backend, env
    backend.remove(env)


def test_a_networked_run_reaches_neither_this_host_nor_private_addresses(network_env, engine):
    backend, env = network_env
    own = own_addresses()[0]

    outcome = backend.start(
        env, "agent.main:handle", own, limits=Limits(network=True, timeout_seconds=60)
    ).wait(90)

    assert outcome.status == Status.COMPLETED, outcome
    result = outcome.output
    assert result["interfaces"] == ["lo"]
    assert result["proxy socket"] is True
    assert "http_proxy" in result["proxy variables"]
    assert result["127.0.0.1:6379"] == result["127.0.0.1:5432"] == "failed"
    assert result[f"{own}:6379"] == "failed"
    for target in ("169.254.169.254:80", "10.0.0.1:80", "127.0.0.1:6379"):
        assert result[f"CONNECT {target}"] == "HTTP/1.1 403 Forbidden", target
    assert result["GET metadata"] == 403
    assert list(backend.egress_root.iterdir()) == []  # its proxy closed with the run


def test_a_run_without_network_has_no_proxy_and_reaches_nothing(network_env):
    backend, env = network_env
    own = own_addresses()[0]

    outcome = backend.start(env, "agent.main:handle", own, limits=Limits()).wait(90)

    assert outcome.status == Status.COMPLETED, outcome
    result = outcome.output
    assert result["interfaces"] == ["lo"]
    assert result["proxy variables"] == []
    assert result["proxy socket"] is False
    assert result["127.0.0.1:6379"] == result["127.0.0.1:5432"] == "failed"
    assert result[f"{own}:6379"] == "failed"
    for target in ("169.254.169.254:80", "10.0.0.1:80", "127.0.0.1:6379"):
        assert result[f"CONNECT {target}"] == "no proxy", target
    assert result["GET metadata"] == "no proxy"
