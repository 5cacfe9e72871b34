"""The `docker` backend: one image per version (`sandbox.docker_images`), one throw-away
container per run.

No AIMOS container uses a bridge network: builds and runs alike get `network_mode=none`
(a loopback interface only), so none of them can reach this host, its loopback services,
the LAN or cloud metadata by routing. A sandbox that may reach the network gets the egress
proxy instead (`sandbox/egress.py`): the proxy listens on a Unix socket in the worker
process, the socket's directory is bind-mounted read-only into the container (the only host
mount, and only for such a sandbox) and `netbridge.py` relays the container's own
127.0.0.1:PROXY_PORT to it; the proxy decides every destination before it connects.
The engine must see this host's filesystem (a local engine): the proxy's socket directory is
made under AIMOS_SANDBOX_ROOT/egress and bind-mounted from there.

`start` creates a container with a read-only root, one tmpfs at /workspace (noexec, nosuid,
nodev) that also holds /tmp (so the two share AIMOS_SANDBOX_WORKSPACE_MB), every capability
dropped, no-new-privileges, a non-root user, an init process, memory+swap, CPU, pids,
open-file and file-size limits and no log driver; the runner (`runner_input`: this server's,
not the image's) and its request arrive on stdin (attached, then half-closed), and it speaks
the protocol on stdout (demultiplexed from stderr). `warm` starts that same container ahead
of its run with the runner's warm request: the agent is imported and the runner waits on
stdin, which stays open until the run's request is sent at take time.
Pause and resume are `docker pause` and `docker unpause`; every way a run ends removes its
container (and closes its proxy), and `kill()` returns only once it is gone. Containers carry
the labels `aimos.run` and `aimos.env` (runs) or `aimos.build` (builds), and `aimos.owner`
(host, pid and start time of the process that made them), so `sweep()` can tell the
containers of a dead worker from those of a live one. A run container is named
`aimos-run-<run id>-<suffix>`; a warm one is made before its run is known (its `aimos.run`
label is an id of its own, and labels cannot change), so its take renames it after the run,
and `kill_run` finds a run's containers by label or by name, from any process.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import socket
import struct
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
    Environment,
    Inspection,
    Limits,
    LogSink,
    Run,
    SandboxError,
    SandboxUnavailable,
    WarmSandbox,
)
from sandbox.docker_images import (
    AGENT_DIR,
    AGENT_UID,
    LABEL_BUILD,
    LABEL_ENV,
    TMP_LINK,
    WORKSPACE,
    ImageBuilder,
    bridged,
    close_egress,
    egress_bind,
    image_tag,
    open_egress,
    recv_exactly,
    runner_command,
    runner_input,
)
from sandbox.egress import SOCKET_NAME, EgressPolicy, EgressProxy, proxy_environment
from sandbox.limits import INSPECT_LIMITS
from sandbox.protocol import StreamRun, WarmStream, inspection_from, run_request, warm_request
from sandbox.requirements import BuildRules

if TYPE_CHECKING:
    from sandbox.config import SandboxConfig

__all__ = ["LABEL_BUILD", "LABEL_ENV", "LABEL_RUN", "DockerBackend", "DockerRun", "image_tag"]

LABEL_RUN = "aimos.run"
LABEL_OWNER = "aimos.owner"
RUN_NAME = "aimos-run-"  # then the run's id, a dash and a suffix of the container's own
# An egress folder this young may still be getting its socket.
EGRESS_GRACE_S = 60.0
SHM_MB = 64
# Every container starts here: /tmp (a link in the image) needs its target in the new tmpfs.
_WITH_TMP = f'mkdir -p -m 1777 {TMP_LINK} && exec "$@"'
_MiB = 1024 * 1024
_TERMINAL_MARKERS = (b'"type": "result"', b'"type": "error"', b'"type": "inspection"')

logger = logging.getLogger("aimos.sandbox")


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
    ) -> None:
        self.base_image = base_image
        self.agent_image = agent_image
        self.build = build or BuildRules()
        # Where the egress proxies' socket directories are made; the engine bind-mounts them,
        # so it must see this host's filesystem (a local engine).
        self.egress_root = Path(egress_root or tempfile.gettempdir())
        self._client: docker.DockerClient | None = None
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

    def _images(self) -> ImageBuilder:
        return ImageBuilder(self.client, self.base_image, self.build, self.egress_root)

    def prepare(
        self, source_dir: Path, manifest: dict[str, Any], *, key: str, log: LogSink | None = None
    ) -> Environment:
        """Make the version's image `aimos-agent:<key>` (see `ImageBuilder.build_image` for
        what is guaranteed); the build's output goes to `log` line by line."""
        self.check()
        source_dir = Path(source_dir).resolve()
        tag = image_tag(self.agent_image, key)
        self._images().build_image(source_dir, manifest, key=key, tag=tag, log=log)
        return Environment(
            backend=self.name,
            key=key,
            source_dir=source_dir,
            location=tag,
            manifest=dict(manifest),
        )

    def remove(self, env: Environment) -> None:
        """Delete the version's image (no-op when it is already gone)."""
        self._images().remove_image(env.location, env.key)

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

    def warm(self, env: Environment, entrypoint: str, *, limits: Limits) -> WarmSandbox:
        """The container `start` would make, started now: its runner imports `entrypoint`
        with the manifest's `env` set, then waits for the run's request (see `WarmSandbox`).
        Its `aimos.run` label is its own id, as the run is not known yet; a take with a
        `run_id` renames it after that run."""
        run = self._launch(env, warm_request(env, entrypoint), limits, warm=True)
        return WarmContainer(run, env, entrypoint, limits)

    def kill_run(self, run_id: str) -> None:
        """Remove the containers of `run_id` (a run whose worker died keeps its container):
        those labelled with it, and warm ones renamed after it when taken."""
        api = self.client.api
        labelled = api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})
        # The engine's name filter matches a part of the name: the start is checked here.
        prefix = f"{RUN_NAME}{run_id}-"
        named = [
            container
            for container in api.containers(all=True, filters={"name": prefix})
            if any(name.lstrip("/").startswith(prefix) for name in container.get("Names") or ())
        ]
        for container_id in {container["Id"] for container in labelled + named}:
            try:
                api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass

    def sweep(self) -> list[str]:
        """Remove the run containers whose owner (a worker of this host) is dead, and the
        egress folders under `egress_root` whose proxy no longer listens. Returns the ids of
        the runs swept. Containers of other hosts, and of live processes, are left alone."""
        api = self.client.api
        swept: list[str] = []
        for container in api.containers(all=True, filters={"label": LABEL_RUN}):
            labels = container.get("Labels") or {}
            if owner_alive(labels.get(LABEL_OWNER, "")):
                continue
            try:
                api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                pass
            swept.append(labels.get(LABEL_RUN, container["Id"][:12]))
        sweep_egress_folders(self.egress_root)
        return swept

    def _launch(
        self,
        env: Environment,
        request: bytes,
        limits: Limits,
        *,
        run_id: str | None = None,
        warm: bool = False,
    ) -> DockerRun:
        api = self.client.api
        run_id = run_id or uuid.uuid4().hex
        proxy = None
        if limits.network:
            proxy = open_egress(self.egress_root, EgressPolicy.for_run().with_host_addresses())
        try:
            container_id = self._create_run_container(env, limits, run_id, proxy)
        except BaseException:
            close_egress(proxy)
            raise
        run = DockerRun(api, container_id, limits, proxy=proxy)
        try:
            run._launch(request, warm=warm)
        except BaseException:
            try:
                run._remove()
            finally:
                close_egress(proxy)
            raise
        return run

    def _create_run_container(
        self, env: Environment, limits: Limits, run_id: str, proxy: EgressProxy | None
    ) -> str:
        """A stopped container for one run; with `proxy`, its bridge is the way out."""
        api = self.client.api
        command = runner_command()
        if proxy is not None:
            command = bridged(command)
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
            binds=egress_bind(proxy),
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
                labels={LABEL_RUN: run_id, LABEL_ENV: env.key, LABEL_OWNER: owner_label()},
                name=container_name(run_id),
                host_config=host_config,
            )
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(f"the image {env.location} is gone; rebuild the version") from exc
        except (docker.errors.DockerException, OSError) as exc:
            raise SandboxError(f"could not create a container: {exc}") from exc
        return created["Id"]


def container_name(run_id: str) -> str:
    """A new name for a container of `run_id`."""
    return f"{RUN_NAME}{run_id}-{uuid.uuid4().hex[:8]}"


class WarmContainer(WarmStream):
    """A warm sandbox of the docker backend: taken, its container is renamed after the run,
    so `DockerBackend.kill_run(run_id)` finds it."""

    run: DockerRun

    def take(
        self,
        payload: Any,
        *,
        state: Any = None,
        env_vars: dict[str, str] | None = None,
        timeout_seconds: float | None = None,
        run_id: str | None = None,
    ) -> Run:
        run = super().take(payload, state=state, env_vars=env_vars, timeout_seconds=timeout_seconds)
        if run_id is not None:
            try:
                self.run.api.rename(self.run.container_id, container_name(run_id))
            except (docker.errors.DockerException, OSError):
                # Already gone (the run ended at once), or the engine is away: the run is
                # killed by its worker, or as a dead worker's by the sweep (its owner label).
                logger.warning("could not name the container of run %s", run_id, exc_info=True)
        return run


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

    def _launch(self, request: bytes, *, warm: bool = False) -> None:
        """Attach, start, hand the runner and the request over on stdin (then EOF, unless
        `warm`: the run's request follows, see `_send`), start reading."""
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
        if warm:
            self._write(runner_input(request))
        else:
            self._send(runner_input(request))
        self._begin(io.BufferedReader(self._stdout, buffer_size=65536), warm=warm)
        threading.Thread(target=self._sample, name="run-cgroup-sampler", daemon=True).start()

    def _send(self, request: bytes) -> None:
        """Write the last of the runner's stdin, then end it."""
        assert self._stdout is not None
        if self._write(request):
            try:
                self._stdout.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _write(self, data: bytes) -> bool:
        """Write on the runner's stdin; False when it is closed (the runner died, or the run
        was killed meanwhile: its exit status or its end tells the rest)."""
        assert self._stdout is not None
        try:
            self._stdout.sock.sendall(data)
        except OSError:
            return False
        return True

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
                close_egress(self.proxy)

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


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot): a pid and its start time
    name one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def owner_label(pid: int | None = None) -> str:
    """`host:pid:start time` of this process (or `pid`), the `aimos.owner` of its containers."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 0}"


def owner_alive(label: str) -> bool:
    """False when `label` names a process of this host that no longer exists. A container
    without an owner, or of another host, counts as alive (it is not ours to judge)."""
    host, _, rest = label.partition(":")
    pid, _, started = rest.partition(":")
    if not label or host != socket.gethostname() or not pid.isdigit():
        return True
    return _start_time(int(pid)) == started


def sweep_egress_folders(root: Path) -> list[Path]:
    """Delete the egress folders under `root` whose proxy is gone (nothing listens on the
    socket, or there never was one and the folder is old). Returns the folders deleted."""
    removed = []
    for folder in root.iterdir() if root.is_dir() else ():
        path = folder / SOCKET_NAME
        if not folder.is_dir() or len(os.fsencode(path)) > 100:
            continue
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(str(path))
                continue  # a live proxy
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    continue
            finally:
                probe.close()
        else:
            try:
                if time.time() - folder.stat().st_mtime < EGRESS_GRACE_S:
                    continue
            except OSError:
                continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


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
            header = recv_exactly(self.sock, 8)
            if header is None:
                self.eof = True
                break
            kind, size = struct.unpack(">BxxxL", header)
            payload = recv_exactly(self.sock, size) if size else b""
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
