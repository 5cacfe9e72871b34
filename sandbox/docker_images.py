"""Images of the `docker` backend: one per version, made without `docker build`.

`ImageBuilder.build_image` makes `aimos-agent:<key>`: a container of the base image
(AIMOS_DOCKER_BASE_IMAGE, see `sandbox.base_image`) receives the code at /opt/aimos/agent
and the bridge (the build context tar: root-owned, read-only for the agent); when
the version has requirements it runs, as the unprivileged agent user and without a network
interface, `pip install` into /opt/aimos/venv (wheels only unless AIMOS_BUILD_ALLOW_SOURCE;
the package index hosts, through the egress proxy, its only destination) with memory, CPU,
pids and time limits, while its writable layer is watched against AIMOS_BUILD_MAX_MB; then
/tmp becomes a link into the workspace and the container is committed and removed. Leftover
build containers are swept and dangling images pruned. The image layout (paths, labels), the
runner's bootstrap and the egress helpers here are shared with the runs
(`sandbox.docker_backend`).

The runner is not part of an image: a container's command is a small bootstrap that reads the
runner's source from stdin before the requests (`runner_input`). Every run, warm or cold, so
speaks the protocol of this server's runner, whenever its image was built.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import LogConfig, Ulimit
from docker.utils import parse_repository_tag

from sandbox.base import BuildError, LogSink, SandboxError
from sandbox.egress import (
    PROXY_PORT,
    SOCKET_NAME,
    EgressPolicy,
    EgressProxy,
    close_socket,
    proxy_environment,
)
from sandbox.protocol import RUNNER_PATH
from sandbox.requirements import MB, BuildRules, check_source_builds, requirements_file

AGENT_UID = 10001
AGENT_DIR = "/opt/aimos/agent"
RUNNER = "/opt/aimos/runner.py"  # the name the runner's code runs under (not a file)
NETBRIDGE = "/opt/aimos/netbridge.py"
NETBRIDGE_PATH = Path(__file__).with_name("netbridge.py")
VENV = "/opt/aimos/venv"
WORKSPACE = "/workspace"
TMP_LINK = f"{WORKSPACE}/.tmp"  # /tmp in every version image points here
EGRESS_DIR = "/run/aimos-egress"  # the proxy's socket directory, inside a sandbox with network
# What a builder runs: in /tmp, which the image does not keep (see `_build_script`).
BUILD_SCRIPT = "/tmp/aimos-build.sh"
LABEL_ENV = "aimos.env"
LABEL_BUILD = "aimos.build"
BUILD_MEMORY_BYTES = 2 * 1024**3
BUILD_CPUS = 1.0
BUILD_PIDS = 256
BUILD_OPEN_FILES = 1024
BUILD_SIZE_EVERY_S = 1.0
BUILD_LEFTOVER_S = 3600  # a stopped build container this much past its timeout is a leftover
BUILD_LINE_LIMIT = 8192
IMAGE_ENV = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}
TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# Reads the runner from stdin (ten digits of length, then the source) with unbuffered reads,
# so the requests that follow stay on fd 0 for it, and runs it as `__main__` with
# `sys.argv[1:]` (the code directory); linecache gets the source for readable tracebacks.
RUNNER_BOOTSTRAP = f"""\
import linecache, os, sys
def _take(size):
    data = b""
    while len(data) < size:
        chunk = os.read(0, size - len(data))
        if not chunk:
            sys.exit("the runner did not arrive on stdin")
        data += chunk
    return data
_source = _take(int(_take(10))).decode()
linecache.cache[{RUNNER!r}] = (len(_source), None, _source.splitlines(True), {RUNNER!r})
sys.argv[0] = {RUNNER!r}
_code = compile(_source, {RUNNER!r}, "exec")
del _take, _source
exec(_code)
"""


def image_tag(repository: str, key: str) -> str:
    """The tag of a version's image: `<repository>:<key>` with the key made tag-safe."""
    safe = TAG_UNSAFE.sub("-", key).lstrip(".-")[:128]
    if not safe:
        raise ValueError(f"environment key {key!r} gives an empty image tag")
    return f"{repository}:{safe}"


@dataclass
class ImageBuilder:
    """Builds and removes version images on one engine, under the server's build rules.
    `egress_root`: where the builds' egress proxies put their sockets (the engine bind-mounts
    them, so it must see this host's filesystem)."""

    client: docker.DockerClient
    base_image: str
    build: BuildRules
    egress_root: Path

    def build_image(
        self,
        source_dir: Path,
        manifest: dict[str, Any],
        *,
        key: str,
        tag: str,
        log: LogSink | None = None,
    ) -> None:
        """Make the image `tag` of the version `key` from `source_dir`; the build's output
        goes to `log` line by line.

        Guarantees: on success the image holds the code read-only at /opt/aimos/agent and the
        requirements in /opt/aimos/venv, installed by a container without a network interface
        (the package index, through the egress proxy, is all it reaches), within the build's
        memory, CPU, pids and time limits, and its layer is no larger than AIMOS_BUILD_MAX_MB.
        On failure BuildError carries the end of the build output, this build tags no image,
        and its container is gone.
        """
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
                proxy = open_egress(
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
                close_egress(proxy)
        self._prune_dangling(key)
        output(f"image {tag} ready")

    def _create_builder(self, key: str, requirements: str | None, proxy: EgressProxy | None) -> str:
        """A stopped container of the base image that will install `requirements` (if any)
        as the agent user: no network interface but loopback, the proxy's socket directory
        its only host mount, killed by itself past the build timeout."""
        api = self.client.api
        command = ["true"]
        if requirements is not None:
            # The container ends itself at the deadline even if this worker dies first.
            deadline = str(int(self.build.timeout_seconds) + 10)
            command = ["timeout", "-s", "KILL", deadline, *bridged(["sh", BUILD_SCRIPT])]
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
            binds=egress_bind(proxy),
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
            name=f"aimos-build-{TAG_UNSAFE.sub('-', key)[:64]}-{uuid.uuid4().hex[:8]}",
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
            "Cmd": runner_command(),
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

    def remove_image(self, tag: str, key: str) -> None:
        """Delete the image `tag` of the version `key` (no-op when it is already gone)."""
        try:
            self.client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise SandboxError(f"could not remove image {tag}: {exc}") from exc
        self._prune_dangling(key)


def runner_command() -> list[str]:
    """The command of a container that runs the runner it reads first on stdin."""
    return ["python3", "-I", "-c", RUNNER_BOOTSTRAP, AGENT_DIR]


def runner_input(request: bytes) -> bytes:
    """What a container of `runner_command` reads first: the runner, then `request`."""
    source = RUNNER_PATH.read_bytes()
    return b"%010d" % len(source) + source + request


def bridged(command: list[str]) -> list[str]:
    """`command` started by the bridge to the egress proxy (the sandbox's only way out)."""
    socket_path = f"{EGRESS_DIR}/{SOCKET_NAME}"
    return ["python3", "-I", NETBRIDGE, socket_path, str(PROXY_PORT), "--", *command]


def open_egress(
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


def close_egress(proxy: EgressProxy | None) -> None:
    """Stop the proxy (ending its connections) and delete its directory."""
    if proxy is None:
        return
    try:
        proxy.close()
    finally:
        shutil.rmtree(proxy.path.parent, ignore_errors=True)


def egress_bind(proxy: EgressProxy | None) -> dict[str, dict[str, str]] | None:
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


def recv_exactly(sock: socket.socket, size: int) -> bytes | None:
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
            header = recv_exactly(sock, 8)
            if header is None:
                return
            kind, size = struct.unpack(">BxxxL", header)
            payload = recv_exactly(sock, size) if size else b""
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
    """What a builder receives at /: /opt/aimos with the code under agent/ and netbridge.py
    (normalised, see `_normalised`); with a build `script`, the script and the
    venv's directory owned by the agent (pip installs into it)."""
    with tarfile.open(fileobj=target, mode="w") as tar:
        tar.addfile(_directory("opt/aimos"))
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
