"""The Docker backend's base image, built without any registry.

`build_base_image()` bootstraps a minimal Debian bookworm root filesystem with
`debootstrap` from the Debian mirror (Python 3.11, a venv at /opt/aimos/venv owned by the
unprivileged `agent` user, CA certificates), packs it into a tarball cached under
`var/docker/` and imports it with the Docker engine. A second call finds the image and does
nothing; after `docker rmi` it re-imports the cached tarball in seconds.

Any image with `python3` (3.11) on its PATH works as the base too, e.g. `python:3.11-slim`
pulled from a registry: set `AIMOS_DOCKER_BASE_IMAGE` and skip this module.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from docker.utils import parse_repository_tag

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
AGENT_UID = 10001
AGENT_USER = "agent"
VENV = "/opt/aimos/venv"
# Files a run never needs; dropping them keeps the image (and every run's start) small.
_PRUNE = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/log",
)
_ENV = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_CACHE_DIR": "1",
    "HOME": "/tmp",
}

Say = Callable[[str], None]


class BaseImageError(Exception):
    """The base image could not be built; the message says which step failed and why."""


@dataclass(frozen=True)
class BuildResult:
    """What `build_base_image` did: `action` is "present", "imported" or "bootstrapped"."""

    tag: str
    image_id: str
    action: str
    rootfs: Path


# CA certificates the host's administrator added (a TLS-inspecting proxy's, a private PyPI's):
# trusted inside the image too, so `pip install` during a version's build works where the host's
# does.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


def _local_cas() -> list[Path]:
    return sorted(LOCAL_CA_DIR.glob("**/*.crt")) if LOCAL_CA_DIR.is_dir() else []


def recipe_digest(mirror: str) -> str:
    """A short digest of everything that shapes the root filesystem (names the cached tarball)."""
    recipe = {
        "cas": [hashlib.sha256(ca.read_bytes()).hexdigest() for ca in _local_cas()],
        "suite": SUITE,
        "packages": PACKAGES,
        "uid": AGENT_UID,
        "venv": VENV,
        "prune": _PRUNE,
        "mirror": mirror,
        "v": 1,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _run(cmd: list[str], say: Say, what: str) -> None:
    """Run a host command, relaying its output; BaseImageError with its tail when it fails."""
    say(f"$ {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        say(line)
        tail = (tail + [line])[-30:]
    if proc.wait() != 0:
        raise BaseImageError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def _bootstrap_rootfs(target: Path, mirror: str, say: Say) -> None:
    """Debootstrap bookworm into `target` and shape it into the AIMOS base filesystem."""
    if shutil.which("debootstrap") is None:
        raise BaseImageError("debootstrap is not installed (run scripts/setup-system as root)")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(target),
            mirror,
        ],
        say,
        "debootstrap",
    )
    cas = _local_cas()
    if cas:
        ca_dir = target / LOCAL_CA_DIR.relative_to("/")
        ca_dir.mkdir(parents=True, exist_ok=True)
        for ca in cas:
            shutil.copyfile(ca, ca_dir / ca.name)
        _run(["chroot", str(target), "update-ca-certificates"], say, "adding the host's CAs")
    # The venv gives a pip that may install into it (Debian's system Python refuses, PEP 668).
    _run(["chroot", str(target), "python3", "-m", "venv", VENV], say, "creating the venv")
    with open(target / "etc/passwd", "a") as passwd:
        passwd.write(f"{AGENT_USER}:x:{AGENT_UID}:{AGENT_UID}:AIMOS agent:/tmp:/usr/sbin/nologin\n")
    with open(target / "etc/group", "a") as group:
        group.write(f"{AGENT_USER}:x:{AGENT_UID}:\n")
    # Owned by the agent so a version's `pip install` runs unprivileged; at run time the root
    # filesystem is read-only, so ownership gives the agent no write access.
    _run(["chown", "-R", f"{AGENT_UID}:{AGENT_UID}", str(target / VENV.lstrip("/"))], say, "chown")
    for rel in _PRUNE:
        path = target / rel
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def _pack(source: Path, tarball: Path, say: Say) -> None:
    """Write `source` into `tarball` atomically (a half-written cache is never used)."""
    partial = tarball.with_suffix(".partial")
    _run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "--exclude=./dev/*",
            "-C",
            str(source),
            "-cf",
            str(partial),
            ".",
        ],
        say,
        "packing the root filesystem",
    )
    partial.rename(tarball)


def _import(client: docker.DockerClient, tarball: Path, tag: str, digest: str) -> str:
    """Import the tarball as `tag` with the runtime settings of the base image; its id."""
    repository, version = parse_repository_tag(tag)
    changes = [f"ENV {name}={value}" for name, value in _ENV.items()]
    changes += [
        f"USER {AGENT_UID}:{AGENT_UID}",
        "WORKDIR /tmp",
        'CMD ["python3"]',
        f"LABEL aimos.base=1 aimos.base.recipe={digest}",
    ]
    client.api.import_image_from_file(
        str(tarball), repository=repository, tag=version or "latest", changes=changes
    )
    return client.images.get(tag).id


def build_base_image(
    tag: str,
    *,
    var_dir: Path,
    mirror: str,
    force: bool = False,
    say: Say = print,
    client: docker.DockerClient | None = None,
) -> BuildResult:
    """Make sure the Docker image `tag` exists; when this returns, it does.

    Present and not `force`: nothing is done. Otherwise the rootfs tarball cached under
    `var_dir/docker/` is imported (bootstrapped first when it is missing, or when `force`).
    Concurrent callers are serialised by a lock file; BaseImageError says what failed.
    """
    client = client or docker.from_env()
    cache_dir = var_dir / "docker"
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = recipe_digest(mirror)
    tarball = cache_dir / f"rootfs-{SUITE}-{digest}.tar"
    with open(cache_dir / "base-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force:
            try:
                image = client.images.get(tag)
            except docker.errors.ImageNotFound:
                pass
            else:
                say(f"{tag} is present ({image.short_id})")
                return BuildResult(tag, image.id, "present", tarball)
        action = "imported"
        if force or not tarball.exists():
            action = "bootstrapped"
            with tempfile.TemporaryDirectory(prefix="rootfs-", dir=cache_dir) as work:
                target = Path(work) / "root"
                target.mkdir()
                _bootstrap_rootfs(target, mirror, say)
                _pack(target, tarball, say)
            for stale in cache_dir.glob(f"rootfs-{SUITE}-*.tar"):
                if stale != tarball:
                    stale.unlink()
        say(f"importing {tarball.name} ({tarball.stat().st_size // 2**20} MiB) as {tag}")
        image_id = _import(client, tarball, tag, digest)
        say(f"{tag} is ready ({image_id[:19]})")
        return BuildResult(tag, image_id, action, tarball)
