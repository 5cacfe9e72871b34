"""The `docker` backend: one image per version, one throw-away container per run.

`prepare` builds `aimos-agent:<key>` on top of the base image (AIMOS_DOCKER_BASE_IMAGE, see
`sandbox.base_image`): the version's code and the runner are baked in (so a run mounts
nothing from the host) and its requirements are pip-installed into /opt/aimos/venv by the
unprivileged agent user; the build is the only step with network (AIMOS_DOCKER_BUILD_NETWORK:
Docker's default bridge, or "host" where this host's bridge networking does not work).

`start` creates a container with no network (unless the run's limits allow it), a read-only
root, tmpfs /tmp and /workspace (noexec, nosuid, nodev), every capability dropped,
no-new-privileges, a non-root user, an init process, memory+swap, CPU, pids, open-file and
file-size limits and no log driver; the runner reads its request on stdin (attached, then
half-closed) and speaks the protocol on stdout (demultiplexed from stderr). Pause and resume
are `docker pause` and `docker unpause`; every way a run ends removes its container, and
`kill()` returns only once it is gone. Containers carry the labels `aimos.run` and `aimos.env`.
"""

from __future__ import annotations

import io
import os
import re
import socket
import struct
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
from docker.types import LogConfig, Ulimit

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
from sandbox.protocol import RUNNER_PATH, StreamRun, inspection_from, run_request

if TYPE_CHECKING:
    from sandbox.backends import SandboxConfig

AGENT_UID = 10001
AGENT_DIR = "/opt/aimos/agent"
RUNNER = "/opt/aimos/runner.py"
VENV = "/opt/aimos/venv"
LABEL_RUN = "aimos.run"
LABEL_ENV = "aimos.env"
LABEL_BUILD = "aimos.build"
INSPECT_LIMITS = Limits(timeout_seconds=60, memory_mb=512, pids=64)
BUILD_MEMORY_BYTES = 2 * 1024**3
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
        build_network: str = "",
        client: docker.DockerClient | None = None,
    ) -> None:
        self.base_image = base_image
        self.agent_image = agent_image
        self.build_network = build_network
        self._client = client
        self._client_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: SandboxConfig) -> DockerBackend:
        """The backend configured by the server's settings."""
        return cls(
            base_image=config.docker_base_image,
            agent_image=config.docker_agent_image,
            build_network=config.docker_build_network,
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

    # --- versions -----------------------------------------------------------------------

    def prepare(
        self, source_dir: Path, manifest: dict[str, Any], *, key: str, log: LogSink | None = None
    ) -> Environment:
        """Build the version's image; its build output goes to `log` line by line.

        Guarantees: on success the image `aimos-agent:<key>` holds the code read-only at
        /opt/aimos/agent and the requirements in /opt/aimos/venv; on failure BuildError
        carries the end of the build output and no image is tagged for the key.
        """
        self.check()
        source_dir = Path(source_dir).resolve()
        tag = image_tag(self.agent_image, key)
        requirements = _requirements_file(source_dir, manifest)
        dockerfile = self._dockerfile(key, requirements)
        say = log or (lambda line: None)
        tail: list[str] = []

        def note(line: str) -> None:
            tail.append(line)
            del tail[:-60]
            say(line)

        with tempfile.TemporaryFile() as context:
            _write_context(context, source_dir, dockerfile)
            context.seek(0)
            try:
                stream = self.client.api.build(
                    fileobj=context,
                    custom_context=True,
                    tag=tag,
                    rm=True,
                    forcerm=True,
                    pull=False,
                    decode=True,
                    network_mode=self.build_network or None,
                    container_limits={"memory": BUILD_MEMORY_BYTES, "memswap": BUILD_MEMORY_BYTES},
                    labels={LABEL_ENV: key},
                    timeout=3600,
                )
                error = None
                for chunk in stream:
                    text = chunk.get("stream") or chunk.get("status") or ""
                    for line in text.splitlines():
                        if line.strip():
                            note(line.rstrip())
                    if "error" in chunk:
                        error = str(chunk.get("error") or "").strip()
            except (docker.errors.DockerException, OSError) as exc:
                error = f"the Docker engine failed during the build: {exc}"
        self._prune_dangling(key)
        if error is not None:
            raise BuildError(_build_failure(error, tail))
        return Environment(
            backend=self.name,
            key=key,
            source_dir=source_dir,
            location=tag,
            manifest=dict(manifest),
        )

    def _dockerfile(self, key: str, requirements: str | None) -> str:
        # The label comes first so every intermediate image of a failed build carries it and
        # can be pruned; COPY keeps the modes set in the context (code read-only, root-owned).
        lines = [
            f"FROM {self.base_image}",
            f'LABEL {LABEL_BUILD}="{key}"',
            f"COPY --chown=0:0 agent/ {AGENT_DIR}/",
            f"COPY --chown=0:0 runner.py {RUNNER}",
        ]
        if requirements is not None:
            lines += [
                "USER 0:0",
                f"RUN test -d {VENV} || (mkdir -p {VENV} && chown {AGENT_UID}:{AGENT_UID} {VENV})",
                # pip (and any setup.py it runs) works unprivileged; the venv is the agent's.
                f"USER {AGENT_UID}:{AGENT_UID}",
                f"WORKDIR {AGENT_DIR}",
                "ENV HOME=/tmp PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
                f"RUN test -x {VENV}/bin/python || python3 -m venv {VENV}",
                f"RUN {VENV}/bin/pip install --no-warn-script-location -r {_quote(requirements)}",
            ]
        lines += [
            f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
            "HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1",
            f"WORKDIR {AGENT_DIR}",
            f"USER {AGENT_UID}:{AGENT_UID}",
        ]
        return "\n".join(lines) + "\n"

    def _prune_dangling(self, key: str) -> None:
        """Drop the untagged layers a failed build (or a rebuild) of `key` left behind."""
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
        show them); nothing of this host's environment does."""
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
        host_config = api.create_host_config(
            network_mode="bridge" if limits.network else "none",
            mem_limit=limits.memory_mb * _MiB,
            memswap_limit=limits.memory_mb * _MiB,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            read_only=True,
            tmpfs={
                "/tmp": f"size={limits.tmp_mb}m,mode=1777",
                "/workspace": f"size={max(1, limits.tmp_mb // 4)}m,mode=1777",
            },
            shm_size=f"{limits.tmp_mb}m",
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
            log_config=LogConfig(type="none"),
            oom_score_adj=1000,
        )
        try:
            created = api.create_container(
                env.location,
                command=["python3", "-I", RUNNER, AGENT_DIR],
                user=f"{AGENT_UID}:{AGENT_UID}",
                working_dir=AGENT_DIR,
                hostname="sandbox",
                stdin_open=True,
                network_disabled=not limits.network,
                labels={LABEL_RUN: run_id, LABEL_ENV: env.key},
                name=f"aimos-run-{run_id}-{uuid.uuid4().hex[:8]}",
                host_config=host_config,
            )
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(f"the image {env.location} is gone; rebuild the version") from exc
        except (docker.errors.DockerException, OSError) as exc:
            raise SandboxError(f"could not create a container: {exc}") from exc
        run = DockerRun(api, created["Id"], limits)
        try:
            run._launch(request)
        except BaseException:
            run._remove()
            raise
        return run


class DockerRun(StreamRun):
    """One container; removed whichever way the run ends (before `wait()` returns)."""

    SAMPLE_EVERY_S = 0.1
    REMOVE_WITHIN_S = 30.0

    def __init__(self, api: docker.APIClient, container_id: str, limits: Limits) -> None:
        super().__init__(limits)
        self.api = api
        self.container_id = container_id
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
            if self._stdout is not None:
                self._stdout.close()  # the attach connection; a worker runs many runs

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

    def _exactly(self, size: int) -> bytes | None:
        chunks, left = [], size
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def readinto(self, buffer: Any) -> int:
        while not self.pending and not self.eof:
            header = self._exactly(8)
            if header is None:
                self.eof = True
                break
            kind, size = struct.unpack(">BxxxL", header)
            payload = self._exactly(size) if size else b""
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


def _requirements_file(source_dir: Path, manifest: dict[str, Any]) -> str | None:
    """The requirements file inside the source (the manifest's, else requirements.txt)."""
    name = manifest.get("requirements")
    if not name:
        return "requirements.txt" if (source_dir / "requirements.txt").is_file() else None
    path = (source_dir / str(name)).resolve()
    if not path.is_relative_to(source_dir):
        raise BuildError(f"requirements file {name!r} is outside the package")
    if not path.is_file():
        raise BuildError(f"requirements file {name!r} not found in the package")
    return path.relative_to(source_dir).as_posix()


def _quote(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


def _write_context(target: Any, source_dir: Path, dockerfile: str) -> None:
    """The build context: Dockerfile, runner.py and the code under agent/.

    Modes are normalised (directories 755, files 644 or 755 when executable, owner root) so
    the code is readable but not writable by the agent; links and special files are skipped.
    """

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if not (info.isfile() or info.isdir()):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
        return info

    with tarfile.open(fileobj=target, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(RUNNER_PATH, arcname="runner.py", filter=normalise)
        tar.add(source_dir, arcname="agent", filter=normalise)


def _build_failure(error: str, tail: list[str]) -> str:
    output = "\n".join(tail[-40:])
    return f"image build failed: {error}" + (f"\n--- build output ---\n{output}" if output else "")
