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

A session's sandbox (`start_session`, `DockerSession`) is a container with a run's limits and
labels plus `aimos.session=<id>` (`aimos-session-<id>-<suffix>`), of the version's image or
the base image, whose command is the session daemon (`sandbox.session`), its stdin attached
and kept open (closed when the attaching process goes away: the daemon then ends). It has
the session's workspace bound read-write at /workspace, the control directory at
/aimos/session, the daemon (and, with the network, the bridge) bound read-only from this
host, and /tmp a capped tmpfs. A task run of a session (`start(..., workspace=)`) is a run
container with the same workspace and control directory (read-only) binds. In a version's
image /tmp is a link to /workspace/.tmp, so the tmpfs is mounted there: the workspace holds
an empty, root-owned `.tmp` as its mount point, emptied before each container starts.
`stop()` removes the container; `sweep()` removes the session containers of dead processes
as it does runs'.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
import socket
import stat
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
    SessionMount,
    SessionSandbox,
    SessionSpec,
    WarmSandbox,
)
from sandbox.docker_images import (
    AGENT_DIR,
    AGENT_UID,
    EGRESS_DIR,
    LABEL_BUILD,
    LABEL_ENV,
    NETBRIDGE_PATH,
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
from sandbox.egress import PROXY_PORT, SOCKET_NAME, EgressPolicy, EgressProxy, proxy_environment
from sandbox.limits import INSPECT_LIMITS
from sandbox.protocol import StreamRun, WarmStream, inspection_from, run_request, warm_request
from sandbox.requirements import BuildRules
from sandbox.session import (
    AGENT_IN_SANDBOX,
    AGENT_PATH,
    CONTROL_IN_SANDBOX,
    READY_SECONDS,
    STOP_GRACE_SECONDS,
    DaemonOutput,
    check_mount,
    daemon_argv,
    give_control_dir,
    release_control_dir,
    remove_socket,
    seal_control_dir,
    seal_ready_control_dir,
)

if TYPE_CHECKING:
    from sandbox.config import SandboxConfig

__all__ = [
    "LABEL_BUILD",
    "LABEL_ENV",
    "LABEL_RUN",
    "LABEL_SESSION",
    "DockerBackend",
    "DockerRun",
    "DockerSession",
    "image_tag",
]

LABEL_RUN = "aimos.run"
LABEL_SESSION = "aimos.session"
LABEL_OWNER = "aimos.owner"
RUN_NAME = "aimos-run-"  # then the run's id, a dash and a suffix of the container's own
SESSION_NAME = "aimos-session-"  # then the session's id, a dash and a suffix
NETBRIDGE_IN_SESSION = "/aimos/netbridge.py"  # base images have no bridge of their own
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# An egress folder this young may still be getting its socket.
EGRESS_GRACE_S = 60.0
SHM_MB = 64
# Every container starts here: /tmp (a link in the image) needs its target in the new tmpfs.
_WITH_TMP = f'mkdir -p -m 1777 {TMP_LINK} && exec "$@"'
_MiB = 1024 * 1024
_TERMINAL_MARKERS = (b'"type": "result"', b'"type": "error"', b'"type": "inspection"')

logger = logging.getLogger("aimos.sandbox")
# How long a container's removal may take before it is said to be left.
REMOVE_WITHIN_S = 30.0


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
        workspace: SessionMount | None = None,
    ) -> Run:
        """Start a container for one run. The manifest's `env` and `env_vars` reach the agent
        through the runner's stdin (not the container's config, so `docker inspect` does not
        show them); nothing of this host's environment does. A run whose limits allow the
        network reaches public addresses only, through its own egress proxy. With
        `workspace`: a session's task run (see `Backend.start`)."""
        request = run_request(env, entrypoint, payload, state=state, env_vars=env_vars)
        if workspace is not None:
            workspace = check_mount(workspace)
        return self._launch(env, request, limits, run_id=run_id, workspace=workspace)

    def start_session(self, spec: SessionSpec) -> SessionSandbox:
        """The session's container (see the module docstring), its daemon listening. The
        control directory is the container user's only until the daemon has made its
        socket, then root's again, so nothing in the container can put files there."""
        mount = check_mount(spec.mount)
        spec = SessionSpec(spec.session_id, mount.workspace, mount.control_dir, spec.limits,
                           spec.env)  # fmt: skip
        proxy = None
        if spec.limits.network:
            proxy = open_egress(self.egress_root, EgressPolicy.for_run().with_host_addresses())
        try:
            container_id = self._create_session_container(spec, proxy)
        except BaseException:
            close_egress(proxy)
            seal_control_dir(spec.control_dir)
            release_control_dir(spec.control_dir)
            raise
        session = DockerSession(spec, self.client.api, container_id, proxy=proxy)
        try:
            session._start()
            session.wait_ready()
            seal_ready_control_dir(mount.control_dir)
        except BaseException:
            session.stop()
            raise
        return session

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
            remove_container(api, container_id, REMOVE_WITHIN_S)

    def sweep(self) -> list[str]:
        """Remove the run and session containers whose owner (a worker or session host of this
        host) is dead, and the egress folders under `egress_root` whose proxy no longer
        listens. Returns the ids of the runs and sessions swept. Containers of other hosts,
        and of live processes, are left alone."""
        api = self.client.api
        swept: list[str] = []
        for label in (LABEL_RUN, LABEL_SESSION):
            for container in api.containers(all=True, filters={"label": label}):
                labels = container.get("Labels") or {}
                if owner_alive(labels.get(LABEL_OWNER, "")):
                    continue
                # Another sweep (another upkeep on this engine) may be removing it too: it is
                # swept once the engine no longer knows it, whoever removed it.
                try:
                    remove_container(api, container["Id"], REMOVE_WITHIN_S)
                except SandboxError:
                    logger.warning("sweep: a container of a dead owner is left", exc_info=True)
                    continue
                swept.append(labels.get(label, container["Id"][:12]))
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
        workspace: SessionMount | None = None,
    ) -> DockerRun:
        api = self.client.api
        run_id = run_id or uuid.uuid4().hex
        proxy = None
        if limits.network:
            proxy = open_egress(self.egress_root, EgressPolicy.for_run().with_host_addresses())
        try:
            container_id = self._create_run_container(env, limits, run_id, proxy, workspace)
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
        self,
        env: Environment,
        limits: Limits,
        run_id: str,
        proxy: EgressProxy | None,
        workspace: SessionMount | None = None,
    ) -> str:
        """A stopped container for one run; with `proxy`, its bridge is the way out; with
        `workspace`, a session's task run (its workspace bound, /tmp a tmpfs of its own)."""
        api = self.client.api
        command = runner_command()
        if proxy is not None:
            command = bridged(command)
        binds = egress_bind(proxy) or {}
        if workspace is None:
            # One filesystem for the workspace and /tmp (a link into it): one cap for both.
            tmpfs = {WORKSPACE: f"size={limits.workspace_mb}m,mode=1777"}
        else:
            prepare_tmp_mount_point(workspace.workspace)
            tmpfs = {TMP_LINK: f"size={limits.workspace_mb}m,mode=1777"}
            binds[str(workspace.workspace)] = {"bind": WORKSPACE, "mode": "rw"}
            binds[str(workspace.control_dir)] = {"bind": CONTROL_IN_SANDBOX, "mode": "ro"}
        host_config = self._host_config(limits, tmpfs=tmpfs, binds=binds or None)
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

    def _host_config(
        self, limits: Limits, *, tmpfs: dict[str, str], binds: dict | None
    ) -> dict[str, Any]:
        """The limits every AIMOS container gets (runs and sessions alike)."""
        return self.client.api.create_host_config(
            network_mode="none",
            mem_limit=limits.memory_mb * _MiB,
            memswap_limit=limits.memory_mb * _MiB,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            read_only=True,
            tmpfs=tmpfs,
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
            binds=binds,
            log_config=LogConfig(type="none"),
            oom_score_adj=1000,
        )

    def _create_session_container(self, spec: SessionSpec, proxy: EgressProxy | None) -> str:
        """A stopped container running the session daemon (see the module docstring)."""
        api = self.client.api
        limits = spec.limits
        image = spec.env.location if spec.env is not None else self.base_image
        command = daemon_argv("python3", limits)
        if proxy is not None:
            command = ["python3", "-I", "-S", NETBRIDGE_IN_SESSION, f"{EGRESS_DIR}/{SOCKET_NAME}",
                       str(PROXY_PORT), "--", *command]  # fmt: skip
        binds = egress_bind(proxy) or {}
        binds[str(spec.workspace)] = {"bind": WORKSPACE, "mode": "rw"}
        binds[str(spec.control_dir)] = {"bind": CONTROL_IN_SANDBOX, "mode": "rw"}
        binds[str(AGENT_PATH)] = {"bind": AGENT_IN_SANDBOX, "mode": "ro"}
        if proxy is not None:
            binds[str(NETBRIDGE_PATH)] = {"bind": NETBRIDGE_IN_SESSION, "mode": "ro"}
        # A version's image has /tmp as a link into the workspace: the tmpfs goes there.
        tmp = "/tmp"
        if spec.env is not None:
            prepare_tmp_mount_point(spec.workspace)
            tmp = TMP_LINK
        host_config = self._host_config(
            limits, tmpfs={tmp: f"size={limits.workspace_mb}m,mode=1777"}, binds=binds
        )
        give_control_dir(spec.control_dir, AGENT_UID)
        labels = {LABEL_SESSION: spec.session_id, LABEL_OWNER: owner_label()}
        if spec.env is not None:
            labels[LABEL_ENV] = spec.env.key
        environment = {"HOME": WORKSPACE, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
        if proxy is not None:
            environment.update(proxy_environment())
        try:
            created = api.create_container(
                image,
                command=command,
                user=f"{AGENT_UID}:{AGENT_UID}",
                working_dir=WORKSPACE,
                hostname="sandbox",
                # With stdin open and not detached the engine sets StdinOnce: the daemon's
                # stdin ends when the attached process (its host) goes away.
                stdin_open=True,
                environment=environment,
                labels=labels,
                name=session_container_name(spec.session_id),
                host_config=host_config,
            )
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(f"the image {image} is gone; rebuild the version") from exc
        except (docker.errors.DockerException, OSError) as exc:
            raise SandboxError(f"could not create a container: {exc}") from exc
        return created["Id"]


def pause_container(api: docker.APIClient, container_id: str) -> None:
    """`docker pause`: every process of the container frozen. SandboxError when the engine
    refuses while the container still runs (one gone or ended needs nothing)."""
    try:
        api.pause(container_id)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if _running(api, container_id):
            raise SandboxError(f"could not pause the container: {exc}") from exc


def unpause_container(api: docker.APIClient, container_id: str) -> None:
    """`docker unpause`, as `pause_container`."""
    try:
        api.unpause(container_id)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if _running(api, container_id):
            raise SandboxError(f"could not resume the container: {exc}") from exc


def container_name(run_id: str) -> str:
    """A new name for a container of `run_id`."""
    return f"{RUN_NAME}{run_id}-{uuid.uuid4().hex[:8]}"


def session_container_name(session_id: str) -> str:
    """A new name for a container of the session `session_id`."""
    safe = _NAME_UNSAFE.sub("-", session_id)[:64]
    return f"{SESSION_NAME}{safe}-{uuid.uuid4().hex[:8]}"


def prepare_tmp_mount_point(workspace: Path) -> None:
    """`workspace/.tmp`: an empty directory of root's, mode 1777, where a version image's
    /tmp (a link to /workspace/.tmp) gets its tmpfs. Whatever else is there is deleted
    first, without following a link: the engine copies a mount point's files into the
    tmpfs, and takes its mode."""
    root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    name = os.path.basename(TMP_LINK)
    try:
        try:
            found = os.stat(name, dir_fd=root, follow_symlinks=False)
        except FileNotFoundError:
            found = None
        if found is not None and not (stat.S_ISDIR(found.st_mode) and found.st_uid == 0):
            if stat.S_ISDIR(found.st_mode):
                shutil.rmtree(name, dir_fd=root)
            else:
                os.unlink(name, dir_fd=root)
            found = None
        if found is None:
            try:
                os.mkdir(name, 0o700, dir_fd=root)
            except FileExistsError:
                pass  # another container of the session made it meanwhile
        point = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=root)  # fmt: skip
        try:
            with os.scandir(point) as entries:
                leftovers = [entry.name for entry in entries]
            for entry in leftovers:
                try:
                    mode = os.stat(entry, dir_fd=point, follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode):
                        shutil.rmtree(entry, dir_fd=point)
                    else:
                        os.unlink(entry, dir_fd=point)
                except FileNotFoundError:
                    pass
            os.fchown(point, 0, 0)
            os.fchmod(point, 0o1777)
        finally:
            os.close(point)
    finally:
        os.close(root)


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
        pause_container(self.api, self.container_id)

    def _thaw(self) -> None:
        unpause_container(self.api, self.container_id)

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
        """Force-remove the container (killing it, paused or not) and wait until it is gone
        (see `remove_container`)."""
        remove_container(self.api, self.container_id, REMOVE_WITHIN_S)
        self._gone.set()


class DockerSession(SessionSandbox):
    """A session's container (see the module docstring). Its daemon's stdin is the attach
    connection of the process that started it: when that process goes away the engine
    closes it, the daemon ends, and the container is left for `sweep()`."""

    def __init__(
        self,
        spec: SessionSpec,
        api: docker.APIClient,
        container_id: str,
        *,
        proxy: EgressProxy | None = None,
    ) -> None:
        super().__init__(spec)
        self.api = api
        self.container_id = container_id
        self.proxy = proxy
        self.output: DaemonOutput | None = None
        self._stdout: _DemuxedStdout | None = None
        self._cgroups: _Cgroups | None = None
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._paused = False
        self._usage: dict[str, Any] = {"peak_memory_mb": None, "cpu_ms": None}

    def _start(self) -> None:
        """Attach (stdin, stdout, stderr), start, read the daemon's stdout."""
        try:
            attached = self.api.attach_socket(
                self.container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            sock: socket.socket = getattr(attached, "_sock", attached)
            sock.settimeout(None)  # the daemon is quiet on stdout after `ready`
            self._stdout = _DemuxedStdout(sock, on_terminal=lambda: None)
            self.api.start(self.container_id)
            pid = self.api.inspect_container(self.container_id)["State"].get("Pid") or 0
        except (docker.errors.DockerException, OSError) as exc:
            raise SandboxError(f"could not start a container: {exc}") from exc
        self._cgroups = _Cgroups.of(pid, self.container_id)
        self.output = DaemonOutput(io.BufferedReader(self._stdout, buffer_size=65536))

    def diagnostics(self) -> str:
        said = self.output.printed() if self.output is not None else ""
        stderr = self._stdout.stderr_tail() if self._stdout is not None else ""
        return (said + stderr).strip()[-2000:]

    def wait_ready(self, timeout: float = READY_SECONDS) -> None:
        """Returns once the daemon listens; SandboxError (saying why) when it ended first or
        did not say `ready` within `timeout`."""
        assert self.output is not None
        if self.output.wait_ready(timeout):
            return
        if self.output.ended.is_set():
            raise SandboxError(f"the session's daemon ended as it started: {self.diagnostics()}")
        raise SandboxError(f"the session's daemon did not listen within {timeout:g} s")

    def alive(self) -> bool:
        """False once the container's output ended (the daemon, and so the container, ended)
        or it was stopped."""
        return self.output is not None and not self.output.ended.is_set() and not self._stopped

    def usage(self) -> dict[str, Any]:
        with self._stop_lock:
            self._sample()
            return dict(self._usage)

    def _sample(self) -> None:
        if self._cgroups is not None and self._cgroups.sample():
            self._usage = {
                "peak_memory_mb": self._cgroups.peak_memory_mb,
                "cpu_ms": self._cgroups.cpu_ms,
            }

    def pause(self) -> None:
        with self._stop_lock:
            if self._stopped or self._paused:
                return
            pause_container(self.api, self.container_id)
            self._paused = True

    def resume(self) -> None:
        with self._stop_lock:
            if self._stopped or not self._paused:
                return
            unpause_container(self.api, self.container_id)
            self._paused = False

    def stop(self) -> None:
        """Ends the daemon's stdin (it kills what it started and ends), then removes the
        container (whatever is left is killed) and closes the egress proxy; returns once the
        engine no longer knows the container. A paused container is resumed first, so its
        daemon can end what it started."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                if self._paused:
                    try:
                        unpause_container(self.api, self.container_id)
                    except SandboxError:
                        pass  # removed regardless below
                    self._paused = False
                if self._stdout is not None and self.output is not None:
                    try:
                        self._stdout.sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    self.output.ended.wait(STOP_GRACE_SECONDS)
                self._sample()
                remove_container(self.api, self.container_id, REMOVE_WITHIN_S)
            finally:
                try:
                    if self._stdout is not None:
                        self._stdout.close()
                finally:
                    close_egress(self.proxy)
                    remove_socket(self.spec.control_dir)
                    seal_control_dir(self.spec.control_dir)
                    release_control_dir(self.spec.control_dir)


def remove_container(api: docker.APIClient, container_id: str, within: float) -> None:
    """Force-remove the container (killing it, paused or not) and wait until it is gone.

    Retries for `within` seconds while the engine is busy or briefly unreachable, then
    raises SandboxError: a container that may still run is never reported as gone.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            api.remove_container(container_id, force=True)
            if not _exists(api, container_id):
                return
        except docker.errors.NotFound:
            return
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
            raise SandboxError(f"container {container_id[:12]} could not be removed: {problem}")
        time.sleep(0.1)


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
