"""The `docker` backend: one image per version, one throw-away container per run.

No AIMOS container uses a bridge network: builds and runs alike get `network_mode=none`
(a loopback interface only), so none of them can reach this host, its loopback services,
the LAN or cloud metadata by routing. A sandbox that may reach the network gets the egress
proxy instead (`sandbox/egress.py`): the proxy listens on a Unix socket in the worker
process, the socket's directory is bind-mounted read-only into the container (the only host
mount, and only for such a sandbox) and `netbridge.py` relays the container's own
127.0.0.1:PROXY_PORT to it; the proxy decides every destination before it connects.
(`scripts/setup-system`'s iptables rules for Docker's bridge protect nothing of AIMOS now.)
The engine must see this host's filesystem (a local engine): the proxy's socket directory is
made under AIMOS_SANDBOX_ROOT/egress and bind-mounted from there.

`prepare` makes `aimos-agent:<key>` without `docker build`: a container of the base image
(AIMOS_DOCKER_BASE_IMAGE, see `sandbox.base_image`) receives the code at /opt/aimos/agent,
the runner and the bridge (root-owned, read-only for the agent); when the version has
requirements it runs, as the unprivileged agent user, `pip install` into /opt/aimos/venv
(wheels only unless AIMOS_BUILD_ALLOW_SOURCE; the package index hosts its only destination)
with memory, CPU, pids and time limits, while its writable layer (pip's temporary files in
/tmp included while it runs) is watched against AIMOS_BUILD_MAX_MB; then /tmp becomes a
link into the workspace and the container is committed with the image's configuration and
removed.

`start` creates a container with a read-only root, one tmpfs at /workspace (noexec, nosuid,
nodev) that also holds /tmp (so the two share AIMOS_SANDBOX_WORKSPACE_MB), every capability
dropped, no-new-privileges, a non-root user, an init process, memory+swap, CPU, pids,
open-file and file-size limits and no log driver; the runner reads its request on stdin
(attached, then half-closed) and speaks the protocol on stdout (demultiplexed from stderr).
Pause and resume are `docker pause` and `docker unpause`; every way a run ends removes its
container (and closes its proxy), and `kill()` returns only once it is gone. Containers carry
the labels `aimos.run` and `aimos.env` (runs) or `aimos.build` (builds).
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import socket
import struct
import tarfile
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
from docker.types import LogConfig, Ulimit
from docker.utils import parse_repository_tag

from sandbox.base import (
    Backend,
    BuildError,
    Environment,
    Inspection,
    Limits,
    LogSink,
    Run,
    SandboxError,
    SandboxUnavailable,
)
from sandbox.egress import (
    PROXY_PORT,
    SOCKET_NAME,
    EgressPolicy,
    EgressProxy,
    close_socket,
    proxy_environment,
)
from sandbox.protocol import RUNNER_PATH, StreamRun, inspection_from, run_request
from sandbox.requirements import MB, BuildRules, check_source_builds, requirements_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox.backends import SandboxConfig

AGENT_UID = 10001
AGENT_DIR = "/opt/aimos/agent"
RUNNER = "/opt/aimos/runner.py"
NETBRIDGE = "/opt/aimos/netbridge.py"
NETBRIDGE_PATH = Path(__file__).with_name("netbridge.py")
VENV = "/opt/aimos/venv"
WORKSPACE = "/workspace"
TMP_LINK = f"{WORKSPACE}/.tmp"  # /tmp in every version image points here
EGRESS_DIR = "/run/aimos-egress"  # the proxy's socket directory, inside a sandbox with network
# What a builder runs: in /tmp, which the image does not keep (see `_build_script`).
BUILD_SCRIPT = "/tmp/aimos-build.sh"
LABEL_RUN = "aimos.run"
LABEL_ENV = "aimos.env"
LABEL_BUILD = "aimos.build"
INSPECT_LIMITS = Limits(timeout_seconds=60, memory_mb=512, pids=64)
BUILD_MEMORY_BYTES = 2 * 1024**3
BUILD_CPUS = 1.0
BUILD_PIDS = 256
BUILD_OPEN_FILES = 1024
BUILD_SIZE_EVERY_S = 1.0
BUILD_LEFTOVER_S = 3600  # a stopped build container this much past its timeout is a leftover
BUILD_LINE_LIMIT = 8192
SHM_MB = 64
IMAGE_ENV = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}
# Every container starts here: /tmp (a link in the image) needs its target in the new tmpfs.
_WITH_TMP = f'mkdir -p -m 1777 {TMP_LINK} && exec "$@"'
_MiB = 1024 * 1024
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_TERMINAL_MARKERS = (b'"type": "result"', b'"type": "error"', b'"type": "inspection"')


def image_tag(repository: str, key: str) -> str:
    """The tag of a version's image: `<repository>:<key>` with the key made tag-safe."""
    safe = _TAG_UNSAFE.sub("-", key).lstrip(".-")[:128]
    if not safe:
        raise ValueError(f"environment key {key!r} gives an empty image tag")
    return f"{repository}:{safe}"


class DockerBackend(Backend):
    """Runs agents in Docker containers; see the module docstring for what a run may do."""

    name = "docker"

    def __init__(
        self,
        *,
        base_image: str = "aimos-python:3.11",
        agent_image: str = "aimos-agent",
        build: BuildRules | None = None,
        egress_root: Path | None = None,
        client: docker.DockerClient | None = None,
    ) -> None:
        self.base_image = base_image
        self.agent_image = agent_image
        self.build = build or BuildRules()
        # Where the egress proxies' socket directories are made; the engine bind-mounts them,
        # so it must see this host's filesystem (a local engine).
        self.egress_root = Path(egress_root or tempfile.gettempdir())
        self._client = client
        self._client_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: SandboxConfig) -> DockerBackend:
        """The backend configured by the server's settings."""
        return cls(
            base_image=config.docker_base_image,
            agent_image=config.docker_agent_image,
            build=config.build,
            egress_root=Path(config.root) / "egress",
        )

    # --- engine -------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        """A client of the engine named by DOCKER_HOST (default: the local socket)."""
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = docker.from_env(timeout=120)
                except docker.errors.DockerException as exc:
                    raise SandboxUnavailable(self._unreachable(exc)) from exc
            return self._client

    @staticmethod
    def _unreachable(exc: Exception) -> str:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return (
            f"the Docker engine at {where} is not reachable ({exc}); "
            "start it with scripts/setup-system"
        )

    def check(self) -> None:
        """SandboxUnavailable unless the engine answers and the base image exists."""
        try:
            self.client.ping()
        except (docker.errors.DockerException, OSError) as exc:
            raise SandboxUnavailable(self._unreachable(exc)) from exc
        try:
            self.client.images.get(self.base_image)
        except docker.errors.ImageNotFound:
            raise SandboxUnavailable(
                f"the Docker base image {self.base_image} is missing; build it with "
                "`python manage.py build_base_image` (or scripts/setup-system), or set "
                "AIMOS_DOCKER_BASE_IMAGE to an image with python3.11 such as python:3.11-slim"
            ) from None
        except (docker.errors.DockerException, OSError) as exc:
            raise SandboxUnavailable(self._unreachable(exc)) from exc

    def availability(self) -> str | None:
        """None when the engine answers and the base image exists, else why not (reads only)."""
        try:
            self.check()
        except SandboxUnavailable as exc:
            return str(exc)
        return None

    # --- versions -----------------------------------------------------------------------

    def prepare(
        self, source_dir: Path, manifest: dict[str, Any], *, key: str, log: LogSink | None = None
    ) -> Environment:
        """Make the version's image; the build's output goes to `log` line by line.

        Guarantees: on success the image `aimos-agent:<key>` holds the code read-only at
        /opt/aimos/agent and the requirements in /opt/aimos/venv, installed by a container
        without a network interface (the package index, through the egress proxy, is all it
        reaches), within the build's memory, CPU, pids and time limits, and its layer is no
        larger than AIMOS_BUILD_MAX_MB. On failure BuildError carries the end of the build
        output, this build tags no image, and its container is gone.
        """
        self.check()
        source_dir = Path(source_dir).resolve()
        tag = image_tag(self.agent_image, key)
        output = _BuildOutput(log)
        requirements = requirements_file(source_dir, manifest)
        if requirements is not None:
            try:
                check_source_builds(source_dir, requirements, self.build)
            except BuildError as exc:
                output(str(exc))
                raise
        self._sweep_builds(key)
        proxy: EgressProxy | None = None
        container_id: str | None = None
        try:
            if requirements is not None:
                proxy = _open_egress(
                    self.egress_root,
                    EgressPolicy.for_build(self.build.index_hosts).with_host_addresses(),
                    on_refusal=lambda text: output(f"network: {text}"),
                )
            container_id = self._create_builder(key, requirements, proxy)
            with tempfile.TemporaryFile() as archive:
                script = None
                if requirements is not None:
                    script = _build_script(self.build.pip_install(requirements))
                _write_code_archive(archive, source_dir, script=script)
                archive.seek(0)
                self.client.api.put_archive(container_id, "/", archive)
            self._check_size(container_id, output)
            if requirements is not None:
                wheels = "" if self.build.allow_source else " (wheels only)"
                output(f"installing {requirements}{wheels}")
                self._install(container_id, requirements, output)
            # The daemon replaces /tmp (and what pip left in it) with the link into the
            # workspace; a run's tmpfs then holds both.
            self.client.api.put_archive(container_id, "/", _tmp_link_archive())
            self._check_size(container_id, output)
            repository, version = parse_repository_tag(tag)
            self.client.api.commit(
                container_id, repository=repository, tag=version, conf=self._image_config(key)
            )
        except (docker.errors.DockerException, OSError) as exc:
            error = f"the Docker engine failed during the build: {exc}"
            raise BuildError(_build_failure(error, output.tail)) from exc
        finally:
            if container_id is not None:
                _remove_container(self.client.api, container_id)
            if proxy is not None:
                _close_egress(proxy)
        self._prune_dangling(key)
        output(f"image {tag} ready")
        return Environment(
            backend=self.name,
            key=key,
            source_dir=source_dir,
            location=tag,
            manifest=dict(manifest),
        )

    def _create_builder(self, key: str, requirements: str | None, proxy: EgressProxy | None) -> str:
        """A stopped container of the base image that will install `requirements` (if any)
        as the agent user: no network interface but loopback, the proxy's socket directory
        its only host mount, killed by itself past the build timeout."""
        api = self.client.api
        command = ["true"]
        if requirements is not None:
            # The container ends itself at the deadline even if this worker dies first.
            deadline = str(int(self.build.timeout_seconds) + 10)
            command = ["timeout", "-s", "KILL", deadline, *_bridged(["sh", BUILD_SCRIPT])]
        host_config = api.create_host_config(
            network_mode="none",
            mem_limit=BUILD_MEMORY_BYTES,
            memswap_limit=BUILD_MEMORY_BYTES,
            nano_cpus=int(BUILD_CPUS * 1e9),
            pids_limit=BUILD_PIDS,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            ulimits=[
                Ulimit(name="nofile", soft=BUILD_OPEN_FILES, hard=BUILD_OPEN_FILES),
                Ulimit(name="core", soft=0, hard=0),
            ],
            binds=_egress_bind(proxy),
            log_config=LogConfig(type="none"),
            oom_score_adj=1000,
        )
        created = api.create_container(
            self.base_image,
            command=command,
            user=f"{AGENT_UID}:{AGENT_UID}",
            working_dir=AGENT_DIR,
            hostname="sandbox",
            environment={"HOME": "/tmp"},
            labels={LABEL_BUILD: key},
            name=f"aimos-build-{_TAG_UNSAFE.sub('-', key)[:64]}-{uuid.uuid4().hex[:8]}",
            host_config=host_config,
        )
        return created["Id"]

    def _install(self, container_id: str, requirements: str, output: _BuildOutput) -> None:
        """Run the builder to its end, its output to the build log; BuildError when pip fails,
        the build outlives its timeout or the layer grows past `max_mb` (killed then)."""
        api = self.client.api
        rules = self.build
        attached = api.attach_socket(container_id, params={"stdout": 1, "stderr": 1, "stream": 1})
        sock: socket.socket = getattr(attached, "_sock", attached)
        sock.settimeout(None)  # pip may be quiet for long; the watcher keeps the clock
        stop = threading.Event()
        why: list[str] = []

        def too_large() -> bool:
            try:
                return _layer_size(api, container_id) > rules.max_mb * MB
            except (docker.errors.DockerException, OSError):
                return False  # the engine is busy; the next look (or the last check) decides

        def watch() -> None:
            seconds = rules.timeout_seconds
            deadline = time.monotonic() + seconds
            while not stop.wait(BUILD_SIZE_EVERY_S):
                if time.monotonic() > deadline:
                    why.append(f"installing the requirements took longer than {seconds:g} s")
                elif too_large():
                    why.append(_too_large(rules))
                else:
                    continue
                try:
                    api.kill(container_id)
                except (docker.errors.DockerException, OSError):
                    pass  # it ended by itself meanwhile
                return

        watcher = threading.Thread(target=watch, name="build-watch", daemon=True)
        try:
            api.start(container_id)
            watcher.start()
            for line in _lines(sock):
                output(line)
            code = api.wait(container_id, timeout=None).get("StatusCode")
        finally:
            stop.set()
            if watcher.is_alive():
                watcher.join()
            close_socket(sock)
        if why:
            output(why[0])
            raise BuildError(_build_failure(why[0], output.tail))
        if code != 0:
            hint = "" if rules.allow_source else " (this server installs wheels only)"
            error = f"pip install -r {requirements} failed (exit code {code}){hint}"
            raise BuildError(_build_failure(error, output.tail))

    def _check_size(self, container_id: str, output: _BuildOutput) -> None:
        if _layer_size(self.client.api, container_id) > self.build.max_mb * MB:
            why = _too_large(self.build)
            output(why)
            raise BuildError(_build_failure(why, output.tail))

    def _image_config(self, key: str) -> dict[str, Any]:
        """What `docker commit` sets in the version's image (the engine merges the builder's
        configuration into it: HOME, the base image's variables and labels)."""
        return {
            "User": f"{AGENT_UID}:{AGENT_UID}",
            "WorkingDir": AGENT_DIR,
            "Env": [f"{name}={value}" for name, value in IMAGE_ENV.items()],
            "Cmd": ["python3", "-I", RUNNER, AGENT_DIR],
            "Labels": {LABEL_BUILD: key, LABEL_ENV: key},
        }

    def _sweep_builds(self, key: str) -> None:
        """Remove what earlier builds left: any container of this key (its worker died), and
        any other build container that has stopped and is older than a build may last (a
        running one ends by itself at its deadline)."""
        api = self.client.api
        too_old = time.time() - self.build.timeout_seconds - BUILD_LEFTOVER_S
        try:
            leftovers = api.containers(all=True, filters={"label": LABEL_BUILD})
        except (docker.errors.DockerException, OSError):
            return
        for container in leftovers:
            mine = (container.get("Labels") or {}).get(LABEL_BUILD) == key
            stale = container.get("State") != "running" and container.get("Created", 0) < too_old
            if mine or stale:
                _remove_container(api, container["Id"])

    def _prune_dangling(self, key: str) -> None:
        """Drop the untagged image a rebuild of `key` left behind."""
        try:
            self.client.api.prune_images(
                filters={"dangling": True, "label": [f"{LABEL_BUILD}={key}"]}
            )
        except (docker.errors.DockerException, OSError):
            pass  # a concurrent prune or build; the layers go with the next one

    def remove(self, env: Environment) -> None:
        """Delete the version's image (no-op when it is already gone)."""
        try:
            self.client.images.remove(env.location, force=True)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise SandboxError(f"could not remove image {env.location}: {exc}") from exc
        self._prune_dangling(env.key)

    # --- runs ---------------------------------------------------------------------------

    def inspect(self, env: Environment, entrypoint: str) -> Inspection:
        """Import the entrypoint in a container restricted exactly like a run."""
        run = self._launch(env, run_request(env, entrypoint, mode="inspect"), INSPECT_LIMITS)
        return inspection_from(run.wait())

    def start(
        self,
        env: Environment,
        entrypoint: str,
        payload: Any,
        *,
        state: Any = None,
        limits: Limits,
        env_vars: dict[str, str] | None = None,
        run_id: str | None = None,
    ) -> Run:
        """Start a container for one run. The manifest's `env` and `env_vars` reach the agent
        through the runner's stdin (not the container's config, so `docker inspect` does not
        show them); nothing of this host's environment does. A run whose limits allow the
        network reaches public addresses only, through its own egress proxy."""
        request = run_request(env, entrypoint, payload, state=state, env_vars=env_vars)
        return self._launch(env, request, limits, run_id=run_id)

    def kill_run(self, run_id: str) -> None:
        """Remove the containers of `run_id` (a run whose worker died keeps its container)."""
        api = self.client.api
        for container in api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}):
            try:
                api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                pass

    def _launch(
        self, env: Environment, request: bytes, limits: Limits, *, run_id: str | None = None
    ) -> DockerRun:
        api = self.client.api
        run_id = run_id or uuid.uuid4().hex
        proxy = None
        if limits.network:
            proxy = _open_egress(self.egress_root, EgressPolicy.for_run().with_host_addresses())
        try:
            container_id = self._create_run_container(env, limits, run_id, proxy)
        except BaseException:
            _close_egress(proxy)
            raise
        run = DockerRun(api, container_id, limits, proxy=proxy)
        try:
            run._launch(request)
        except BaseException:
            try:
                run._remove()
            finally:
                _close_egress(proxy)
            raise
        return run

    def _create_run_container(
        self, env: Environment, limits: Limits, run_id: str, proxy: EgressProxy | None
    ) -> str:
        """A stopped container for one run; with `proxy`, its bridge is the way out."""
        api = self.client.api
        command = ["python3", "-I", RUNNER, AGENT_DIR]
        if proxy is not None:
            command = _bridged(command)
        host_config = api.create_host_config(
            network_mode="none",
            mem_limit=limits.memory_mb * _MiB,
            memswap_limit=limits.memory_mb * _MiB,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            read_only=True,
            # One filesystem for the workspace and /tmp (a link into it): one cap for both.
            tmpfs={WORKSPACE: f"size={limits.workspace_mb}m,mode=1777"},
            shm_size=f"{min(SHM_MB, limits.workspace_mb)}m",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            ulimits=[
                Ulimit(name="nofile", soft=limits.max_open_files, hard=limits.max_open_files),
                Ulimit(
                    name="fsize", soft=limits.max_file_mb * _MiB, hard=limits.max_file_mb * _MiB
                ),
                Ulimit(name="core", soft=0, hard=0),
            ],
            binds=_egress_bind(proxy),
            log_config=LogConfig(type="none"),
            oom_score_adj=1000,
        )
        try:
            created = api.create_container(
                env.location,
                command=["sh", "-c", _WITH_TMP, "sh", *command],
                user=f"{AGENT_UID}:{AGENT_UID}",
                working_dir=AGENT_DIR,
                hostname="sandbox",
                stdin_open=True,
                environment=proxy_environment() if proxy is not None else None,
                labels={LABEL_RUN: run_id, LABEL_ENV: env.key},
                name=f"aimos-run-{run_id}-{uuid.uuid4().hex[:8]}",
                host_config=host_config,
            )
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(f"the image {env.location} is gone; rebuild the version") from exc
        except (docker.errors.DockerException, OSError) as exc:
            raise SandboxError(f"could not create a container: {exc}") from exc
        return created["Id"]


class DockerRun(StreamRun):
    """One container (and its egress proxy, if it has one); both gone whichever way the run
    ends (before `wait()` returns)."""

    SAMPLE_EVERY_S = 0.1
    REMOVE_WITHIN_S = 30.0

    def __init__(
        self,
        api: docker.APIClient,
        container_id: str,
        limits: Limits,
        *,
        proxy: EgressProxy | None = None,
    ) -> None:
        super().__init__(limits)
        self.api = api
        self.container_id = container_id
        self.proxy = proxy
        self._cgroups: _Cgroups | None = None
        self._oom = False
        self._stdout: _DemuxedStdout | None = None
        self._gone = threading.Event()

    def _launch(self, request: bytes) -> None:
        """Attach, start, hand the request over on stdin (then EOF), start reading."""
        try:
            attached = self.api.attach_socket(
                self.container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            sock: socket.socket = getattr(attached, "_sock", attached)
            sock.settimeout(None)  # a quiet agent is not a dead one; the clock is ours
            self.api.start(self.container_id)
            pid = self.api.inspect_container(self.container_id)["State"].get("Pid") or 0
        except (docker.errors.DockerException, OSError) as exc:
            raise SandboxError(f"could not start a container: {exc}") from exc
        self._cgroups = _Cgroups.of(pid, self.container_id)
        self._stdout = _DemuxedStdout(sock, on_terminal=self._cgroups.sample)
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the runner died before reading; its exit status tells the rest
        self._begin(io.BufferedReader(self._stdout, buffer_size=65536))
        threading.Thread(target=self._sample, name="run-cgroup-sampler", daemon=True).start()

    def _sample(self) -> None:
        # A container's cgroup disappears with its last process, so usage is read while it runs
        # (peak memory is the kernel's high-water mark; only the last ~0.1 s can be missed).
        assert self._cgroups is not None
        while not self._gone.wait(self.SAMPLE_EVERY_S):
            if not self._cgroups.sample():
                return

    # --- hooks --------------------------------------------------------------------------

    def _freeze(self) -> None:
        try:
            self.api.pause(self.container_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if _running(self.api, self.container_id):
                raise SandboxError(f"could not pause the container: {exc}") from exc

    def _thaw(self) -> None:
        try:
            self.api.unpause(self.container_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if _running(self.api, self.container_id):
                raise SandboxError(f"could not resume the container: {exc}") from exc

    def _kill_all(self) -> None:
        """Kill and remove the container; returns once the engine no longer knows it."""
        self._remove()

    def _exit_status(self) -> int | None:
        try:
            status = self.api.wait(self.container_id, timeout=None)
        except docker.errors.NotFound:
            return None  # removed by a kill; that decided the outcome
        except (docker.errors.DockerException, OSError):
            return None
        try:
            state = self.api.inspect_container(self.container_id)["State"]
            self._oom = bool(state.get("OOMKilled"))
        except (docker.errors.DockerException, OSError):
            pass
        return status.get("StatusCode")

    def _usage(self) -> tuple[float | None, int | None]:
        if self._cgroups is None:
            return None, None
        return self._cgroups.peak_memory_mb, self._cgroups.cpu_ms

    def _oom_killed(self) -> bool:
        return self._oom or bool(self._cgroups and self._cgroups.oom_kills)

    def _diagnostics(self) -> str:
        return self._stdout.stderr_tail() if self._stdout else ""

    def _release(self) -> None:
        try:
            self._remove()
        finally:
            try:
                if self._stdout is not None:
                    self._stdout.close()  # the attach connection; a worker runs many runs
            finally:
                _close_egress(self.proxy)

    def _remove(self) -> None:
        """Force-remove the container (killing it, paused or not) and wait until it is gone.

        Retries for REMOVE_WITHIN_S while the engine is busy or briefly unreachable, then
        raises SandboxError: a container that may still run is never reported as gone.
        """
        deadline = time.monotonic() + self.REMOVE_WITHIN_S
        while True:
            try:
                self.api.remove_container(self.container_id, force=True)
                if not _exists(self.api, self.container_id):
                    break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as exc:
                # 409: a removal is already in progress (another thread's kill); wait it out.
                if exc.status_code != 409 and exc.status_code is not None and exc.status_code < 500:
                    raise SandboxError(f"could not remove the container: {exc}") from exc
                problem: Exception = exc
            except (docker.errors.DockerException, OSError) as exc:  # requests' errors are OSError
                problem = exc
            else:
                problem = SandboxError("still listed after removal")
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"container {self.container_id[:12]} could not be removed: {problem}"
                )
            time.sleep(0.1)
        self._gone.set()


def _running(api: docker.APIClient, container_id: str) -> bool:
    try:
        return bool(api.inspect_container(container_id)["State"].get("Running"))
    except docker.errors.NotFound:
        return False


def _exists(api: docker.APIClient, container_id: str) -> bool:
    try:
        api.inspect_container(container_id)
    except docker.errors.NotFound:
        return False
    return True


class _DemuxedStdout(io.RawIOBase):
    """The container's stdout from an attached socket (Docker's 8-byte framed stream).

    Stderr frames (only the runner's own crashes write there) are kept, the last 8 KiB, for
    diagnostics. `on_terminal` is called when a frame holds a terminal protocol message, so the
    cgroup is sampled while the container still exists.
    """

    STDERR_KEEP = 8192

    def __init__(self, sock: socket.socket, on_terminal: Any) -> None:
        super().__init__()
        self.sock = sock
        self.on_terminal = on_terminal
        self.pending = b""
        self.stderr = bytearray()
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending and not self.eof:
            header = _recv_exactly(self.sock, 8)
            if header is None:
                self.eof = True
                break
            kind, size = struct.unpack(">BxxxL", header)
            payload = _recv_exactly(self.sock, size) if size else b""
            if payload is None:
                self.eof = True
                break
            if kind == 2:
                self.stderr += payload
                del self.stderr[: -self.STDERR_KEEP]
            elif kind == 1:
                if any(marker in payload for marker in _TERMINAL_MARKERS):
                    self.on_terminal()
                self.pending = payload
        if not self.pending:
            return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def stderr_tail(self) -> str:
        return bytes(self.stderr).decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a reader still blocked in recv()
        except OSError:
            pass
        try:
            self.sock.close()
        finally:
            super().close()


class _Cgroups:
    """Usage counters of one container's cgroups (v1 or v2), sampled while it lives."""

    def __init__(self, memory: Path | None, cpu: Path | None, v2: bool) -> None:
        self.memory, self.cpu, self.v2 = memory, cpu, v2
        self.peak_memory_mb: float | None = None
        self.cpu_ms: int | None = None
        self.oom_kills = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, pid: int, container_id: str) -> _Cgroups:
        """Find the cgroups of the container's init process (falls back to cgroupfs paths)."""
        paths: dict[str, str] = {}
        try:
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                for controller in controllers.split(",") if controllers else [""]:
                    paths[controller] = path
        except (OSError, ValueError):
            pass
        root = Path("/sys/fs/cgroup")
        if "memory" in paths or (root / "memory").is_dir():
            memory = root / "memory" / paths.get("memory", f"/docker/{container_id}").lstrip("/")
            cpu = root / "cpuacct" / paths.get("cpuacct", f"/docker/{container_id}").lstrip("/")
            return cls(memory, cpu, v2=False)
        unified = root / paths.get("", f"/docker/{container_id}").lstrip("/")
        return cls(unified, unified, v2=True)

    def sample(self) -> bool:
        """Read the counters; False once the cgroup is gone."""
        with self._lock:
            try:
                if self.v2:
                    assert self.memory is not None
                    peak = int((self.memory / "memory.peak").read_text())
                    stat = _keyed((self.memory / "cpu.stat").read_text())
                    cpu_ms = stat.get("usage_usec", 0) // 1000
                    oom = _keyed((self.memory / "memory.events").read_text()).get("oom_kill", 0)
                else:
                    assert self.memory is not None and self.cpu is not None
                    peak = int((self.memory / "memory.max_usage_in_bytes").read_text())
                    cpu_ms = int((self.cpu / "cpuacct.usage").read_text()) // 1_000_000
                    control = (self.memory / "memory.oom_control").read_text()
                    oom = _keyed(control).get("oom_kill", 0)
            except (OSError, ValueError):
                return False
            self.peak_memory_mb = round(max(peak, 0) / _MiB, 1)
            self.cpu_ms = cpu_ms
            self.oom_kills = max(self.oom_kills, oom)
            return True


def _keyed(text: str) -> dict[str, int]:
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[name] = int(value)
    return values


def _bridged(command: list[str]) -> list[str]:
    """`command` started by the bridge to the egress proxy (the sandbox's only way out)."""
    socket_path = f"{EGRESS_DIR}/{SOCKET_NAME}"
    return ["python3", "-I", NETBRIDGE, socket_path, str(PROXY_PORT), "--", *command]


def _open_egress(
    root: Path, policy: EgressPolicy, *, on_refusal: Callable[[str], None] | None = None
) -> EgressProxy:
    """A started egress proxy whose socket sits alone in a fresh directory under `root`
    (mode 755 and a 0666 socket: the agent's uid connects through the read-only mount)."""
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="", dir=root))
    try:
        folder.chmod(0o755)
        path = folder / SOCKET_NAME
        if len(os.fsencode(path)) > 100:
            raise SandboxError(
                f"{path} is too long for a Unix socket; use a shorter AIMOS_SANDBOX_ROOT"
            )
        return EgressProxy(path, policy, on_refusal=on_refusal).start()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _close_egress(proxy: EgressProxy | None) -> None:
    """Stop the proxy (ending its connections) and delete its directory."""
    if proxy is None:
        return
    try:
        proxy.close()
    finally:
        shutil.rmtree(proxy.path.parent, ignore_errors=True)


def _egress_bind(proxy: EgressProxy | None) -> dict[str, dict[str, str]] | None:
    if proxy is None:
        return None
    return {str(proxy.path.parent): {"bind": EGRESS_DIR, "mode": "ro"}}


def _layer_size(api: docker.APIClient, container_id: str) -> int:
    """Bytes the container wrote to its own layer (what `docker commit` would keep)."""
    found = api.containers(all=True, size=True, filters={"id": container_id})
    return int((found[0].get("SizeRw") if found else 0) or 0)


def _too_large(rules: BuildRules) -> str:
    return (
        f"the environment grew past AIMOS_BUILD_MAX_MB ({rules.max_mb} MB); the build was stopped"
    )


def _remove_container(api: docker.APIClient, container_id: str) -> None:
    try:
        api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass
    except (docker.errors.DockerException, OSError):
        pass  # the next build of the key (or a later one) sweeps it


class _BuildOutput:
    """The build log: safe to call from the proxy's threads; keeps the last lines."""

    def __init__(self, log: LogSink | None) -> None:
        self.log = log
        self.tail: deque[str] = deque(maxlen=60)
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self.tail.append(line)
            if self.log is not None:
                self.log(line)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """(stream, payload) of an attached container's output (Docker's 8-byte framing)."""
    while True:
        try:
            header = _recv_exactly(sock, 8)
            if header is None:
                return
            kind, size = struct.unpack(">BxxxL", header)
            payload = _recv_exactly(sock, size) if size else b""
        except OSError:
            return
        if payload is None:
            return
        yield kind, payload


def _lines(sock: socket.socket) -> Iterator[str]:
    """Non-empty lines of stdout and stderr, each cut at BUILD_LINE_LIMIT characters."""
    pending: dict[int, bytes] = {}
    for kind, payload in _frames(sock):
        data = pending.get(kind, b"") + payload
        *complete, rest = re.split(rb"\r?\n|\r", data)
        if len(rest) > BUILD_LINE_LIMIT:
            complete.append(rest)
            rest = b""
        pending[kind] = rest
        for raw in complete:
            line = raw[:BUILD_LINE_LIMIT].decode("utf-8", "replace").rstrip()
            if line.strip():
                yield line
    for raw in pending.values():
        line = raw[:BUILD_LINE_LIMIT].decode("utf-8", "replace").rstrip()
        if line.strip():
            yield line


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Owner root, directories 755, files 644 (755 when executable); links and special files
    skipped: the agent reads the code but cannot change it."""
    if not (info.isfile() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def _directory(name: str, uid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.uid = info.gid = uid
    info.mtime = int(time.time())
    return info


def _build_script(pip_arguments: list[str]) -> str:
    """The builder's shell script: the venv (unless the base image has one), then pip with
    the proxy's variables. It lives in /tmp, not on the command line, so neither the proxy
    variables nor the index URL (it may carry credentials) end up in the committed image's
    configuration."""
    exports = "".join(
        f"export {name}={shlex.quote(value)}\n" for name, value in proxy_environment().items()
    )
    return (
        f"set -e\n{exports}"
        f"test -x {VENV}/bin/python || python3 -m venv {VENV}\n"
        f"exec {VENV}/bin/python -m pip {shlex.join(pip_arguments)}\n"
    )


def _write_code_archive(target: Any, source_dir: Path, *, script: str | None) -> None:
    """What a builder receives at /: /opt/aimos with the code under agent/, runner.py and
    netbridge.py (normalised, see `_normalised`); with a build `script`, the script and the
    venv's directory owned by the agent (pip installs into it)."""
    with tarfile.open(fileobj=target, mode="w") as tar:
        tar.addfile(_directory("opt/aimos"))
        tar.add(RUNNER_PATH, arcname=RUNNER.lstrip("/"), filter=_normalised)
        tar.add(NETBRIDGE_PATH, arcname=NETBRIDGE.lstrip("/"), filter=_normalised)
        tar.add(source_dir, arcname=AGENT_DIR.lstrip("/"), filter=_normalised)
        if script is not None:
            tar.addfile(_directory(VENV.lstrip("/"), uid=AGENT_UID))
            data = script.encode()
            info = tarfile.TarInfo(BUILD_SCRIPT.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))


def _tmp_link_archive() -> bytes:
    """/tmp as a link to TMP_LINK (the daemon removes the old /tmp). /workspace itself is
    left to the engine: a run's tmpfs would copy up an image directory's mode."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("tmp")
        link.type = tarfile.SYMTYPE
        link.linkname = TMP_LINK
        link.mtime = int(time.time())
        tar.addfile(link)
    return buffer.getvalue()


def _build_failure(error: str, tail: Any) -> str:
    output = "\n".join(list(tail)[-40:])
    return f"image build failed: {error}" + (f"\n--- build output ---\n{output}" if output else "")
