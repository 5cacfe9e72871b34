"""The docker backend on the real engine: images per version built without a network, within
their limits, containers that never linger, one cap for the workspace and /tmp, the offline
base image. (The shared abuse and runner suites cover the docker backend too; its network
egress is in test_docker_egress.py.)"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import textwrap
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import pytest

from core.sandbox_settings import sandbox_config
from sandbox.base import BuildError, Environment, ErrorType, Limits, SandboxUnavailable, Status
from sandbox.base_image import build_base_image
from sandbox.docker_backend import LABEL_OWNER, LABEL_RUN, DockerBackend
from sandbox.docker_images import LABEL_BUILD, LABEL_ENV
from sandbox.tests.helpers import OFFLINE, log_messages, wheel

pytestmark = [pytest.mark.docker, pytest.mark.slow]
# Keys of this test session's versions: another session's images and containers are its own.
SESSION = f"test-{os.getpid()}-"


@pytest.fixture(scope="module")
def docker_backend(engine: docker.DockerClient) -> DockerBackend:
    backend = DockerBackend.from_config(replace(sandbox_config(), build=OFFLINE))
    backend.check()
    return backend


@pytest.fixture
def make_env(docker_backend: DockerBackend, tmp_path: Path):
    """Build a version from files {relative path: text}; its image is removed afterwards."""
    made = []

    def make(files: dict[str, str | bytes], manifest: dict | None = None, log=None, backend=None):
        source = tmp_path / f"src-{len(made)}"
        for name, content in files.items():
            path = source / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(textwrap.dedent(content))
        key = f"{SESSION}{uuid.uuid4().hex[:12]}"
        made.append(key)
        return (backend or docker_backend).prepare(source, manifest or {}, key=key, log=log)

    yield make
    for key in made:
        try:
            docker_backend.client.images.remove(f"{docker_backend.agent_image}:{key}", force=True)
        except docker.errors.ImageNotFound:
            pass


def run_containers(engine: docker.DockerClient, env: Environment) -> list:
    """Run containers of `env` (its key is this test's own: other sessions' runs are left out)."""
    return engine.containers.list(all=True, filters={"label": f"{LABEL_ENV}={env.key}"})


def agent_tags(engine: docker.DockerClient, repository: str) -> list[str]:
    tags = [tag for image in engine.images.list() for tag in image.tags]
    return [tag for tag in tags if tag.startswith(f"{repository}:{SESSION}")]


def build_containers(engine: docker.DockerClient) -> list:
    """Build containers of this session's versions still known to the engine."""
    found = engine.containers.list(all=True, filters={"label": LABEL_BUILD})
    return [c for c in found if c.labels[LABEL_BUILD].startswith(SESSION)]


def wheel_with_data(name: str, size_mb: int) -> tuple[str, bytes]:
    """A wheel of the module `name` holding `size_mb` MiB of random (incompressible) data."""
    return wheel(name, "0.1", "", {f"{name}_data/blob.bin": os.urandom(size_mb << 20)})


def test_prepare_installs_the_versions_requirements_into_its_own_image(make_env, docker_backend):
    wheel_name, wheel_bytes = wheel("tinydep", "0.1", "VALUE = 42\n")
    lines: list[str] = []
    env = make_env(
        {
            "agent/__init__.py": "",
            "agent/main.py": """
                import tinydep
                def handle(payload):
                    return tinydep.VALUE + payload
            """,
            "requirements.txt": f"./wheels/{wheel_name}\n",
            f"wheels/{wheel_name}": wheel_bytes,
        },
        {"requirements": "requirements.txt"},
        log=lines.append,
    )

    outcome = docker_backend.start(env, "agent.main:handle", 1, limits=Limits()).wait(60)

    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.output == 43
    assert any("Successfully installed tinydep-0.1" in line for line in lines)


def test_versions_do_not_share_code_or_dependencies(make_env, docker_backend):
    wheel_name, wheel_bytes = wheel("tinydep", "0.1", "VALUE = 42\n")
    with_dep = make_env(
        {
            "agent/main.py": "import tinydep\ndef handle(p):\n    return 'one'\n",
            "requirements.txt": f"./{wheel_name}\n",
            wheel_name: wheel_bytes,
        }
    )
    without = make_env(
        {
            "agent/main.py": """
                def handle(p):
                    try:
                        import tinydep
                    except ImportError:
                        return 'two, without tinydep'
                    return 'two, with tinydep'
            """
        }
    )

    first = docker_backend.start(with_dep, "agent.main:handle", None, limits=Limits()).wait(60)
    second = docker_backend.start(without, "agent.main:handle", None, limits=Limits()).wait(60)

    assert (first.output, second.output) == ("one", "two, without tinydep")


def test_a_failing_install_is_a_build_error_with_pips_output(make_env, docker_backend, engine):
    with pytest.raises(BuildError) as caught:
        make_env(
            {
                "agent/main.py": "def handle(p):\n    return p\n",
                "requirements.txt": "./wheels/missing-1.0-py3-none-any.whl\n",
            }
        )

    assert "missing-1.0-py3-none-any.whl" in str(caught.value)
    assert agent_tags(engine, docker_backend.agent_image) == []
    assert build_containers(engine) == []


def test_a_version_image_runs_as_the_agent_with_the_bridge_and_tmp_in_the_workspace(
    make_env, engine
):
    wheel_name, wheel_bytes = wheel("tinydep", "0.1", "VALUE = 42\n")
    env = make_env(
        {
            "agent/main.py": "def handle(p):\n    return p\n",
            "requirements.txt": f"./{wheel_name}\n",
            wheel_name: wheel_bytes,
        }
    )

    config = engine.api.inspect_image(env.location)["Config"]
    listing = engine.containers.run(
        env.location,
        [
            "sh",
            "-c",
            "stat -c '%n %U %a' /opt/aimos/* /opt/aimos/agent/agent/main.py; readlink /tmp",
        ],
        network_mode="none",
        remove=True,
    )

    assert config["User"] == "10001:10001"
    assert config["WorkingDir"] == "/opt/aimos/agent"
    assert "HOME=/tmp" in config["Env"]
    assert not [v for v in config["Env"] if v.lower().startswith(("http_proxy", "https_proxy"))]
    assert "index.invalid" not in repr(engine.api.inspect_image(env.location))
    assert listing.decode().split("\n") == [
        "/opt/aimos/agent root 755",
        "/opt/aimos/netbridge.py root 644",
        "/opt/aimos/venv agent 755",
        "/opt/aimos/agent/agent/main.py root 644",
        "/workspace/.tmp",
        "",
    ]


def test_a_build_that_grows_past_max_mb_fails_clearly_and_tags_nothing(
    make_env, docker_backend, engine
):
    small = DockerBackend(
        base_image=docker_backend.base_image,
        agent_image=docker_backend.agent_image,
        build=replace(OFFLINE, max_mb=20),
        egress_root=docker_backend.egress_root,
    )
    wheel_name, wheel_bytes = wheel_with_data("bulky", 12)
    lines: list[str] = []

    with pytest.raises(BuildError) as caught:
        make_env(
            {
                "agent/main.py": "def handle(p):\n    return p\n",
                "requirements.txt": f"./{wheel_name}\n",
                wheel_name: wheel_bytes,
            },
            log=lines.append,
            backend=small,
        )

    clear = "the environment grew past AIMOS_BUILD_MAX_MB (20 MB)"
    assert clear in str(caught.value)
    assert any(line.startswith(clear) for line in lines)
    assert agent_tags(engine, docker_backend.agent_image) == []
    assert build_containers(engine) == []


def test_a_build_is_stopped_at_its_timeout(make_env, docker_backend, engine):
    quick = DockerBackend(
        base_image=docker_backend.base_image,
        agent_image=docker_backend.agent_image,
        build=replace(OFFLINE, allow_source=True, timeout_seconds=3),
        egress_root=docker_backend.egress_root,
    )
    lines: list[str] = []

    # Stopped by the build's watcher, not by the container's own deadline (3 + 10 s, which
    # would end pip with a kill and read as a failed install).
    with pytest.raises(BuildError, match="took longer than 3 s"):
        make_env(
            {
                "agent/main.py": "def handle(p):\n    return p\n",
                "requirements.txt": "./slow\n",
                "slow/pyproject.toml": """
                    [build-system]
                    requires = []
                    build-backend = "slow_backend"
                    backend-path = ["."]
                """,
                "slow/slow_backend.py": """
                    import time
                    def get_requires_for_build_wheel(config_settings=None):
                        time.sleep(600)
                """,
            },
            log=lines.append,
            backend=quick,
        )

    assert "installing the requirements took longer than 3 s" in lines
    assert agent_tags(engine, docker_backend.agent_image) == []
    assert build_containers(engine) == []


def test_remove_deletes_the_versions_image(make_env, docker_backend, engine):
    env = make_env({"agent/main.py": "def handle(p):\n    return p\n"})
    engine.images.get(env.location)

    docker_backend.remove(env)

    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(env.location)


def test_inspect_reports_an_entrypoint_that_does_not_import(make_env, docker_backend):
    env = make_env({"agent/main.py": "import not_installed_anywhere\n"})

    inspection = docker_backend.inspect(env, "agent.main:handle")

    assert not inspection.ok
    assert "not_installed_anywhere" in (inspection.error or "")


def test_the_container_exists_during_the_run_and_is_removed_after_it(
    make_env, docker_backend, engine
):
    env = make_env(
        {"agent/main.py": "import time\ndef handle(p):\n    time.sleep(p)\n    return 'ok'\n"}
    )
    run = docker_backend.start(env, "agent.main:handle", 1.5, limits=Limits())
    during = {c.id for c in run_containers(engine, env)}
    outcome = run.wait(60)

    assert outcome.status == Status.COMPLETED
    assert during == {run.container_id}
    assert run_containers(engine, env) == []


def test_kill_returns_once_the_container_is_gone(make_env, docker_backend, engine):
    env = make_env({"agent/main.py": "import time\ndef handle(p):\n    time.sleep(600)\n"})
    run = docker_backend.start(env, "agent.main:handle", None, limits=Limits())
    (container,) = [c for c in run_containers(engine, env) if c.labels[LABEL_RUN]]

    run.kill()

    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(container.id)
    assert run.wait(5).status == Status.CANCELLED


def test_a_paused_run_is_frozen_by_the_engine_and_finishes_after_resume(
    make_env, docker_backend, engine
):
    env = make_env(
        {
            "agent/main.py": """
                import time
                def handle(p, ctx):
                    for i in range(4):
                        ctx.delta(str(i))
                        time.sleep(0.3)
                    return 'done'
            """
        }
    )
    run = docker_backend.start(env, "agent.main:handle", None, limits=Limits(timeout_seconds=5))
    events = run.events()
    next(events)

    run.pause()
    (container,) = run_containers(engine, env)
    state = engine.api.inspect_container(container.id)["State"]
    time.sleep(6)  # longer than the timeout: paused time must not count
    run.resume()
    outcome = run.wait(30)

    assert state["Paused"] is True
    assert outcome.status == Status.COMPLETED
    assert outcome.output == "done"


def test_kill_of_a_paused_run_removes_its_container(make_env, docker_backend, engine):
    env = make_env({"agent/main.py": "import time\ndef handle(p):\n    time.sleep(600)\n"})
    run = docker_backend.start(env, "agent.main:handle", None, limits=Limits())
    run.pause()

    killer = threading.Thread(target=run.kill)
    killer.start()
    killer.join(30)

    assert not killer.is_alive()
    assert run.wait(5).status == Status.CANCELLED
    assert not [c for c in run_containers(engine, env) if c.status != "removing"]


def test_peak_memory_and_cpu_time_come_from_the_containers_cgroup(make_env, docker_backend):
    env = make_env(
        {
            "agent/main.py": """
                def handle(p):
                    block = bytearray(100 * 1024 * 1024)
                    for i in range(0, len(block), 4096):
                        block[i] = 1
                    total = 0
                    for i in range(3_000_000):
                        total += i
                    return len(block)
            """
        }
    )

    outcome = docker_backend.start(
        env, "agent.main:handle", None, limits=Limits(memory_mb=512)
    ).wait(60)

    assert outcome.status == Status.COMPLETED
    assert outcome.peak_memory_mb is not None and outcome.peak_memory_mb >= 100
    assert outcome.cpu_ms is not None and outcome.cpu_ms > 50


def test_writes_to_the_workspace_and_tmp_share_one_cap(make_env, docker_backend, engine):
    env = make_env(
        {
            "agent/main.py": """
                def handle(p):
                    written = {"/workspace": 0, "/tmp": 0}
                    try:
                        for i in range(1000):
                            for folder in written:
                                with open(f"{folder}/f{i}", "wb") as f:
                                    f.write(b"x" * (1 << 20))
                                written[folder] += 1
                    finally:
                        print("written", written["/workspace"], written["/tmp"], flush=True)

                def ok(p):
                    return "ok"
            """
        }
    )
    limits = Limits(workspace_mb=16, max_file_mb=8)

    run = docker_backend.start(env, "agent.main:handle", None, limits=limits)
    events = list(run.events())
    outcome = run.wait(60)
    after = docker_backend.start(env, "agent.main:ok", None, limits=limits).wait(60)

    assert (outcome.status, outcome.error_type) == (Status.FAILED, ErrorType.RESOURCE_LIMIT)
    (line,) = [m for m in log_messages(events) if m.startswith("written")]
    in_workspace, in_tmp = map(int, line.split()[1:])
    assert in_workspace >= 1 and in_tmp >= 1
    assert 12 <= in_workspace + in_tmp <= 16
    assert run.container_id not in {c.id for c in run_containers(engine, env)}
    assert (after.status, after.output) == (Status.COMPLETED, "ok")


def test_the_code_is_read_only_and_only_tmp_and_workspace_are_writable(make_env, docker_backend):
    env = make_env(
        {
            "agent/main.py": """
                import os
                def handle(p):
                    result = {"uid": os.getuid()}
                    for path in ("/opt/aimos/agent/x", "/x", "/tmp/x", "/workspace/x"):
                        try:
                            with open(path, "w") as f:
                                f.write("x")
                            result[path] = "written"
                        except OSError as exc:
                            result[path] = exc.strerror
                    return result
            """
        }
    )

    outcome = docker_backend.start(env, "agent.main:handle", None, limits=Limits()).wait(60)

    assert outcome.output == {
        "uid": 10001,
        "/opt/aimos/agent/x": "Read-only file system",
        "/x": "Read-only file system",
        "/tmp/x": "written",
        "/workspace/x": "written",
    }


def test_check_names_a_missing_base_image(engine):
    backend = DockerBackend(base_image=f"aimos-missing-{uuid.uuid4().hex[:8]}:none")

    with pytest.raises(SandboxUnavailable, match="build_base_image"):
        backend.check()


def test_check_names_an_unreachable_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    backend = DockerBackend()

    with pytest.raises(SandboxUnavailable, match="not reachable"):
        backend.check()


def test_build_base_image_reimports_the_cached_rootfs(settings, engine):
    tag = f"aimos-base-test:{uuid.uuid4().hex[:8]}"
    try:
        result = build_base_image(
            tag,
            var_dir=settings.VAR_DIR,
            mirror=settings.AIMOS_DOCKER_DEBIAN_MIRROR,
            say=lambda line: None,
            client=engine,
        )
        output = engine.containers.run(
            tag,
            ["python3", "-c", "import os, sys; print(os.getuid(), sys.version_info[:2])"],
            remove=True,
            network_mode="none",
        )
    finally:
        try:
            engine.images.remove(tag)
        except docker.errors.ImageNotFound:
            pass

    assert result.rootfs.exists()
    assert result.action in {"imported", "bootstrapped"}
    assert output.decode().strip() == "10001 (3, 11)"


def test_a_run_has_only_loopback_and_cannot_reach_the_bridge_gateway(
    make_env, docker_backend, engine
):
    config = engine.networks.get("bridge").attrs["IPAM"]["Config"][0]
    # The engine omits the gateway when it is the default: the subnet's first address.
    gateway = config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
    env = make_env(
        {
            "agent/main.py": """
                import os, socket
                def handle(gateway):
                    result = {"interfaces": sorted(os.listdir("/sys/class/net"))}
                    for port in (5432, 6379, 2375):
                        try:
                            socket.create_connection((gateway, port), timeout=2).close()
                            result[port] = "connected"
                        except OSError as exc:
                            result[port] = "failed"
                    return result
            """
        }
    )

    outcome = docker_backend.start(env, "agent.main:handle", gateway, limits=Limits()).wait(60)

    assert outcome.output == {
        "interfaces": ["lo"],
        "5432": "failed",
        "6379": "failed",
        "2375": "failed",
    }


def test_variables_reach_the_agent_but_not_the_containers_config(make_env, docker_backend, engine):
    env = make_env(
        {
            "agent/main.py": """
                import json, os, time
                def handle(p, ctx):
                    seen = [os.environ.get("LOG_LEVEL"), os.environ.get("API_TOKEN")]
                    ctx.delta(json.dumps(seen))
                    time.sleep(600)  # the container lives until the test has looked at it
            """
        },
        {"env": {"LOG_LEVEL": "debug"}},
    )
    run = docker_backend.start(
        env, "agent.main:handle", None, limits=Limits(), env_vars={"API_TOKEN": "tok-s3cret"}
    )
    seen = next(run.events())
    (container,) = run_containers(engine, env)
    config = engine.api.inspect_container(container.id)["Config"]
    run.kill()

    assert seen.type == "content_delta"
    assert json.loads(seen.data["content"]) == ["debug", "tok-s3cret"]
    assert "tok-s3cret" not in repr(config)
    assert not any(line.startswith(("API_TOKEN=", "LOG_LEVEL=")) for line in config["Env"])


def test_sweeps_racing_for_a_dead_owners_container_both_end_with_it_gone(docker_backend, engine):
    """Two upkeeps sweeping one engine at once: the second finds the removal in progress (the
    engine's 409); each waits until the container is gone, neither fails."""
    run_id = f"{SESSION}{uuid.uuid4().hex[:8]}"
    dead_owner = f"{socket.gethostname()}:999999999:0"  # no such pid
    container = engine.containers.run(
        docker_backend.base_image,
        ["sleep", "600"],
        detach=True,
        labels={LABEL_RUN: run_id, LABEL_OWNER: dead_owner},
        network_mode="none",
    )
    outcomes: list = []

    def sweep():
        try:
            outcomes.append(run_id in docker_backend.sweep())
        except Exception as exc:  # noqa: BLE001 — what the test reports
            outcomes.append(exc)

    sweeps = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in sweeps:
        thread.start()
    for thread in sweeps:
        thread.join(120)

    assert outcomes == [True, True]
    assert engine.containers.list(all=True, filters={"id": container.id}) == []
