"""The walls between uploaded code and this host, climbed from inside real sandboxes.

From inside a build (a package whose build backend runs at build time) and from inside a
run (with the network allowed), code tries this host's Redis and PostgreSQL, its own
addresses, its abstract Unix sockets, cloud metadata and private ranges: directly (the
sandbox's own network namespace has no route) and through the egress proxy (which refuses
before it connects). It tries to fill the host's disk past its workspace cap. Nothing here
sends a packet outside this machine: the only connections made are refused on loopback or
never attempted. Runs are started both ways: cold, and from a warm sandbox.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from core.sandbox_settings import sandbox_config
from sandbox.backends import get_backend
from sandbox.base import BuildError, Status
from sandbox.egress import host_addresses
from sandbox.requirements import BuildRules
from sandbox.tests.helpers import OFFLINE, TEST_LIMITS, run_agent, token, wheel

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandboxes run as root"),
]

# Used by both the run and the build: stdlib only, prints nothing by itself.
PROBE = """
import errno
import os
import socket
import urllib.error
import urllib.request


def tcp(host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__)


def via_proxy(target):
    proxy = os.environ.get("HTTPS_PROXY")
    if not proxy:
        return "no proxy"
    host, port = proxy.rsplit("/", 1)[-1].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
            return sock.recv(4096).decode("latin-1").split("\\r\\n")[0]
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__)


def abstract(name):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect("\\0" + name)
            return "connected"
        except OSError as exc:
            return errno.errorcode.get(exc.errno, type(exc).__name__)


def fetch(url):
    # A plain HTTP GET as the standard library makes it (it honours the proxy variables).
    if not os.environ.get("HTTP_PROXY"):
        return "no proxy"
    try:
        urllib.request.urlopen(url, timeout=10)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__
    return "fetched"


def attempts(direct, proxied, abstract_name):
    found = {f"direct {t}": tcp(*t.rsplit(":", 1)) for t in direct}
    found.update({f"proxy {t}": via_proxy(t) for t in proxied})
    if abstract_name:
        found["abstract"] = abstract(abstract_name)
    return found
"""


@pytest.fixture(params=[False, True], ids=["cold", "warm"])
def warm(request) -> bool:
    """How the run starts: cold, or taken from a warm sandbox (its agent already imported)."""
    return request.param


def own_address() -> str:
    """A non-loopback IPv4 address of this host (the sandbox must not reach it)."""
    for address in sorted(host_addresses(), key=str):
        if address.version == 4 and not address.is_loopback:
            return str(address)
    pytest.skip("this host has no non-loopback IPv4 address")


@pytest.fixture
def abstract_listener():
    """An abstract Unix socket of this host's network namespace, listening."""
    name = token()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(1)
    server.setblocking(False)
    yield name, server
    server.close()


def nobody_connected(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


# --- runs ------------------------------------------------------------------------------


def run_probe(make_agent, backend, payload, *, network: bool, warm: bool):
    env = make_agent(
        {
            "agent/__init__.py": "",
            "agent/probe.py": PROBE,
            "agent/main.py": """
                import os
                import socket

                from agent.probe import attempts, fetch

                def handle(payload):
                    found = attempts(payload["direct"], payload["proxied"], payload["abstract"])
                    found["proxy variable"] = os.environ.get("HTTPS_PROXY")
                    found["interfaces"] = [name for _, name in socket.if_nameindex()]
                    found["metadata"] = fetch("http://169.254.169.254/latest/meta-data/")
                    return found
            """,
        }
    )
    limits = replace(TEST_LIMITS, network=network)
    return run_agent(backend, env, payload, limits=limits, warm=warm)


def test_a_networked_run_reaches_neither_this_host_nor_private_ranges(
    backend, make_agent, abstract_listener, warm
):
    name, server = abstract_listener
    host = own_address()
    direct = ["127.0.0.1:6379", "127.0.0.1:5432", f"{host}:6379", f"{host}:5432"]
    proxied = [
        "127.0.0.1:6379",
        "127.0.0.1:5432",
        f"{host}:5432",
        "localhost:6379",
        "169.254.169.254:80",
        "10.0.0.1:443",
        "192.168.1.1:443",
        "100.64.0.1:443",
        "[::1]:6379",
        "[2002:a9fe:a9fe::1]:80",
    ]
    payload = {"direct": direct, "proxied": proxied, "abstract": name}
    _, outcome = run_probe(make_agent, backend, payload, network=True, warm=warm)
    assert outcome.status == Status.COMPLETED, outcome
    found = outcome.output
    assert found["interfaces"] == ["lo"]
    assert found["proxy variable"], "a networked run is given the proxy"
    assert found["metadata"] == 403
    for target in direct:
        assert found[f"direct {target}"] in ("ECONNREFUSED", "ENETUNREACH"), (target, found)
    for target in proxied:
        assert found[f"proxy {target}"].startswith("HTTP/1.1 403 "), (target, found)
    assert found["abstract"] == "ECONNREFUSED"
    assert nobody_connected(server)


def test_a_run_without_network_has_no_way_out(backend, make_agent, abstract_listener, warm):
    name, server = abstract_listener
    payload = {
        "direct": ["127.0.0.1:6379", f"{own_address()}:5432", "127.0.0.1:3128"],
        "proxied": ["169.254.169.254:80"],
        "abstract": name,
    }
    _, outcome = run_probe(make_agent, backend, payload, network=False, warm=warm)
    found = outcome.output
    assert found["interfaces"] == ["lo"]
    assert found["proxy variable"] is None
    assert found["metadata"] == "no proxy"
    assert found["proxy 169.254.169.254:80"] == "no proxy"
    for target in payload["direct"]:
        assert found[f"direct {target}"] in ("ECONNREFUSED", "ENETUNREACH"), found
    assert found["abstract"] == "ECONNREFUSED"
    assert nobody_connected(server)


FILLER = """
    import errno
    import os


    def handle(payload):
        written, problem, chunk = 0, None, b"x" * (1 << 20)
        try:
            for i in range(10_000):
                folder = "/workspace" if i % 2 else "/tmp"
                with open(os.path.join(folder, f"fill-{i}"), "wb") as out:
                    out.write(chunk)
                written += len(chunk)
        except OSError as exc:
            problem = errno.errorcode.get(exc.errno)
        return {"written_mb": written >> 20, "problem": problem}


    def ok(payload):
        with open("/tmp/after", "w") as out:
            out.write("fine")
        return sorted(os.listdir("/workspace")) + sorted(os.listdir("/tmp"))
"""


def test_a_run_cannot_write_past_its_workspace_cap_across_workspace_and_tmp(
    backend, make_agent, warm
):
    env = make_agent({"agent/__init__.py": "", "agent/main.py": FILLER})
    limits = replace(TEST_LIMITS, workspace_mb=16)
    _, outcome = run_agent(backend, env, None, limits=limits, warm=warm)
    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.output["problem"] == "ENOSPC"
    assert outcome.output["written_mb"] <= 16
    _, after = run_agent(
        backend, env, None, entrypoint="agent.main:ok", limits=TEST_LIMITS, warm=warm
    )
    assert after.status == Status.COMPLETED
    assert [name for name in after.output if name.startswith("fill-")] == []


# --- builds ----------------------------------------------------------------------------

BUILD_BACKEND = """
from probe import attempts


def get_requires_for_build_wheel(config_settings=None):
    found = attempts({direct!r}, {proxied!r}, None)
    for target, result in found.items():
        print(f"attempt {{target}}: {{result}}", flush=True)
    raise SystemExit("the build backend ran")
"""


def source_with_local_project(folder: Path, host: str) -> Path:
    """A package whose requirement `./pkg` is a local project with an in-tree build backend
    that tries to reach this host's services (and says what happened), and a wheel."""
    pkg = folder / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        '[project]\nname = "sneaky"\nversion = "1.0"\n\n'
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    direct = ["127.0.0.1:6379", "127.0.0.1:5432", f"{host}:6379"]
    proxied = ["127.0.0.1:6379", f"{host}:5432", "169.254.169.254:80", "evil.example:443"]
    (pkg / "probe.py").write_text(PROBE)
    (pkg / "backend.py").write_text(BUILD_BACKEND.format(direct=direct, proxied=proxied))
    (folder / "agent").mkdir()
    (folder / "agent/__init__.py").write_text("")
    (folder / "agent/main.py").write_text("def handle(payload):\n    return 1\n")
    filename, data = wheel("tinydep", "0.1", "VALUE = 42\n")
    (folder / filename).write_bytes(data)
    (folder / "requirements.txt").write_text(f"./{filename}\n./pkg\n")
    return folder


@pytest.fixture
def backend_with(backend, tmp_path):
    """The same kind of backend, with other build rules."""

    def make(rules: BuildRules):
        root = tmp_path / "root"
        root.mkdir(exist_ok=True)
        root.chmod(0o755)
        config = replace(sandbox_config(), root=root, build=rules)
        return get_backend(backend.name, config=config)

    return make


def test_a_local_build_backend_is_refused_before_it_runs(backend_with, tmp_path):
    source = source_with_local_project(tmp_path / "src", own_address())
    lines: list[str] = []
    with pytest.raises(BuildError, match="is a local project") as refused:
        backend_with(OFFLINE).prepare(source, {}, key=f"t{token()}", log=lines.append)
    assert "requirements.txt, line 2: './pkg'" in str(refused.value)
    assert "AIMOS_BUILD_ALLOW_SOURCE" in str(refused.value)
    assert not any("attempt" in line or "Processing" in line for line in lines), lines


def test_code_run_by_a_source_build_reaches_nothing_of_this_host(backend_with, tmp_path):
    host = own_address()
    source = source_with_local_project(tmp_path / "src", host)
    lines: list[str] = []
    with pytest.raises(BuildError):
        backend_with(replace(OFFLINE, allow_source=True)).prepare(
            source, {}, key=f"t{token()}", log=lines.append
        )
    log = "\n".join(lines)
    assert "the build backend ran" in log, log
    for target in ("127.0.0.1:6379", "127.0.0.1:5432", f"{host}:6379"):
        assert f"attempt direct {target}: ECONN" in log or (
            f"attempt direct {target}: ENETUNREACH" in log
        ), log
    for target in ("127.0.0.1:6379", f"{host}:5432", "169.254.169.254:80", "evil.example:443"):
        assert f"attempt proxy {target}: HTTP/1.1 403 " in log, log
    assert "refused: evil.example is not a package index host" in log
    assert "refused: 169.254.169.254 is link-local" in log
    assert "connected" not in log


def test_a_wheel_requirement_installs_under_the_default_rules(backend_with, tmp_path, warm):
    source = tmp_path / "src"
    (source / "agent").mkdir(parents=True)
    (source / "agent/__init__.py").write_text("")
    (source / "agent/main.py").write_text(
        "import tinydep\n\ndef handle(payload):\n    return tinydep.VALUE\n"
    )
    filename, data = wheel("tinydep", "0.1", "VALUE = 42\n")
    (source / filename).write_bytes(data)
    (source / "requirements.txt").write_text(f"./{filename}\n")
    chosen = backend_with(OFFLINE)
    lines: list[str] = []
    env = chosen.prepare(source, {}, key=f"t{token()}", log=lines.append)
    try:
        assert any("Successfully installed tinydep" in line for line in lines), lines
        _, outcome = run_agent(chosen, env, None, warm=warm)
        assert (outcome.status, outcome.output) == (Status.COMPLETED, 42)
    finally:
        chosen.remove(env)


def test_a_build_cannot_grow_past_the_build_cap(backend_with, tmp_path):
    source = tmp_path / "src"
    (source / "agent").mkdir(parents=True)
    (source / "agent/__init__.py").write_text("")
    (source / "agent/main.py").write_text("def handle(payload):\n    return 1\n")
    # 24 MB of incompressible data, installed by pip into the environment.
    filename, data = wheel("bulky", "0.1", "", {"bulky_data/blob.bin": os.urandom(24 << 20)})
    (source / filename).write_bytes(data)
    (source / "requirements.txt").write_text(f"./{filename}\n")
    lines: list[str] = []
    key = f"t{token()}"
    chosen = backend_with(replace(OFFLINE, max_mb=20))
    with pytest.raises(BuildError, match=r"grew past AIMOS_BUILD_MAX_MB \(20 MB\)"):
        chosen.prepare(source, {}, key=key, log=lines.append)
    assert any("AIMOS_BUILD_MAX_MB" in line for line in lines), lines
