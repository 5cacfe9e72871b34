"""A session's workspace: a size-capped filesystem of its own, shared by the uids of its
sandboxes.

`WorkspaceDisk(directory, size_mb)` keeps `directory/workspace.img`, a sparse ext4 image of
`size_mb` MiB (no journal, no blocks reserved for root, so the whole size is the session's),
and mounts it (`mount -o loop,nosuid,nodev`) at `directory/workspace`. Being a filesystem of
its own:

- the cap holds for everything the session's sandboxes write there: past it a write fails
  with ENOSPC, inside the sandbox and through the daemon (`too_large`);
- a hard link to a file outside cannot be made, nor a file be reached by one;
- set-uid bits and device files on it mean nothing (nosuid, nodev).

Its root is mode 0777 with a default POSIX ACL of rwx for user, group and other, so
everything made below it by one uid (the session's sandbox) stays readable and writable by
the others (a task run's sandbox, a later session sandbox with another uid): the mode a
program asks for is kept, the umask is not applied. The workspace is only ever visible inside
its own session's sandboxes (and to root on this host).

Mounting needs root and loop devices: without them every method that would mount raises
SandboxUnavailable naming what is missing. `ensure`, `unmount` and `remove` hold a lock file
in `directory`, so two processes never mount or delete one disk at once.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import subprocess
from pathlib import Path

from sandbox.base import SandboxError, SandboxUnavailable
from sandbox.confinement import hold_lock

logger = logging.getLogger("aimos.sandbox")

MB = 1024 * 1024
MIN_SIZE_MB = 4  # ext4's own structures need room
IMAGE_NAME = "workspace.img"
MOUNT_NAME = "workspace"
LOCK_NAME = "disk.lock"
MOUNT_OPTIONS = "loop,nosuid,nodev"
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOL_SECONDS = 120

# The binary form of a POSIX ACL in the `system.posix_acl_*` attributes (the kernel's
# `posix_acl_xattr_header` and `_entry`): a version, then (tag, permissions, id) entries.
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_OTHER = 0x01, 0x04, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF
_RWX = 0o7
DEFAULT_ACL = struct.pack("<I", _ACL_VERSION) + b"".join(
    struct.pack("<HHI", tag, _RWX, _ACL_UNDEFINED_ID)
    for tag in (_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_OTHER)
)


class WorkspaceDisk:
    """The disk of one session's workspace, in `directory` (see the module docstring).
    `size_mb` is needed only to create it; an existing image keeps its size."""

    def __init__(self, directory: Path, size_mb: int = 0) -> None:
        self.directory = Path(os.path.abspath(directory))
        self.size_mb = int(size_mb)

    @property
    def image(self) -> Path:
        return self.directory / IMAGE_NAME

    @property
    def workspace(self) -> Path:
        """Where the disk is mounted: the session's workspace on this host."""
        return self.directory / MOUNT_NAME

    # --- what is there ------------------------------------------------------------------

    def exists(self) -> bool:
        return self.image.is_file()

    def mounted(self) -> bool:
        """True when a filesystem is mounted at `workspace` (read from /proc/self/mountinfo:
        a mount point that no longer answers is still one)."""
        target = os.fsencode(self.workspace)
        try:
            with open("/proc/self/mountinfo", "rb") as mountinfo:
                for line in mountinfo:
                    fields = line.split(b" ")
                    if len(fields) > 4 and _unescape(fields[4]) == target:
                        return True
        except OSError:
            return os.path.ismount(self.workspace)
        return False

    def usage_bytes(self) -> int:
        """Bytes in use on the mounted disk (files, directories and the filesystem's own
        structures). SandboxError when it is not mounted."""
        if not self.mounted():
            raise SandboxError(f"the workspace {self.workspace} is not mounted")
        info = os.statvfs(self.workspace)
        return (info.f_blocks - info.f_bfree) * info.f_frsize

    # --- changes ------------------------------------------------------------------------

    def ensure(self) -> Path:
        """Create the disk when it does not exist, mount it when it is not mounted; returns
        the mounted workspace. Idempotent. Raises SandboxUnavailable without root or loop
        devices, ValueError when the disk must be made and `size_mb` is too small, and
        SandboxError when a tool fails (its message included)."""
        self._check_host()
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = hold_lock(self.directory / LOCK_NAME)
        try:
            made = False
            if not self.exists():
                self._make()
                made = True
            if not self.mounted():
                self._mount()
            self._prepare_root(fresh=made)
        finally:
            os.close(lock)
        return self.workspace

    def unmount(self) -> None:
        """Unmount the disk (no-op when it is not mounted); its files stay in the image. A
        disk still in use (a process of a sandbox that is not gone yet) is detached lazily:
        it is unmounted here at once and freed when its last user ends."""
        if not self.directory.is_dir():
            return
        lock = hold_lock(self.directory / LOCK_NAME)
        try:
            self._unmount()
        finally:
            os.close(lock)

    def remove(self) -> None:
        """Unmount and delete the disk: no mount, image, mount point or lock file is left
        (the directory too, when nothing else is in it)."""
        if not self.directory.is_dir():
            return
        lock = hold_lock(self.directory / LOCK_NAME)
        try:
            self._unmount()
            self.image.unlink(missing_ok=True)
            if self.workspace.is_dir() and not self.workspace.is_symlink():
                shutil.rmtree(self.workspace)  # the empty mount point
            (self.directory / LOCK_NAME).unlink(missing_ok=True)
        finally:
            os.close(lock)
        try:
            self.directory.rmdir()
        except OSError:
            pass  # other things of the session live there

    # --- helpers ------------------------------------------------------------------------

    def _check_host(self) -> None:
        problem = host_problem()
        if problem is not None:
            raise SandboxUnavailable(f"session workspaces cannot be made here: {problem}")

    def _make(self) -> None:
        if self.size_mb < MIN_SIZE_MB:
            raise ValueError(
                f"a workspace disk needs at least {MIN_SIZE_MB} MB (asked: {self.size_mb})"
            )
        partial = self.directory / f".{IMAGE_NAME}.new"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, self.size_mb * MB)  # sparse: blocks are taken as files grow
            finally:
                os.close(fd)
            _tool(
                "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
                "-E", "root_owner=0:0", "-L", "aimos-workspace", str(partial),
            )  # fmt: skip
            os.rename(partial, self.image)
        finally:
            partial.unlink(missing_ok=True)

    def _mount(self) -> None:
        target = self.workspace
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()
        target.mkdir(mode=0o700, exist_ok=True)
        # Preen first: an image whose last user crashed (no journal) is made consistent.
        check = subprocess.run(
            ["e2fsck", "-p", str(self.image)],
            capture_output=True, text=True, env={"PATH": TOOL_PATH}, timeout=TOOL_SECONDS,
        )  # fmt: skip
        if check.returncode >= 4:
            raise SandboxError(
                f"the workspace disk {self.image} is damaged and e2fsck could not repair it: "
                f"{(check.stdout + check.stderr).strip()[-1000:]}"
            )
        _tool("mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(self.image), str(target))

    def _prepare_root(self, *, fresh: bool) -> None:
        """Root 0777 with the default ACL (again at each mount: cheap, and it repairs)."""
        root = os.open(self.workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(root, 0, 0)
            os.fchmod(root, 0o777)
            os.setxattr(root, "system.posix_acl_default", DEFAULT_ACL)
            if fresh:
                # mkfs's lost+found would be the only thing in a new workspace; e2fsck makes
                # it again when it needs one.
                try:
                    os.rmdir("lost+found", dir_fd=root)
                except FileNotFoundError:
                    pass
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise SandboxUnavailable(
                    f"the workspace disk {self.image} does not support POSIX ACLs"
                ) from exc
            raise
        finally:
            os.close(root)

    def _unmount(self) -> None:
        if not self.mounted():
            return
        result = subprocess.run(
            ["umount", str(self.workspace)],
            capture_output=True, text=True, env={"PATH": TOOL_PATH}, timeout=TOOL_SECONDS,
        )  # fmt: skip
        if result.returncode == 0 and not self.mounted():
            return
        logger.warning(
            "the workspace %s is busy (%s); detaching it lazily",
            self.workspace,
            result.stderr.strip(),
        )
        _tool("umount", "--lazy", str(self.workspace))


def host_problem() -> str | None:
    """Why workspace disks cannot be made on this host, or None."""
    if os.geteuid() != 0:
        return "mounting a workspace disk needs root"
    for tool in ("mkfs.ext4", "e2fsck", "mount", "umount"):
        if shutil.which(tool, path=TOOL_PATH) is None:
            return f"{tool} is not installed (apt-get install e2fsprogs mount)"
    if not Path("/dev/loop-control").exists():
        return "there are no loop devices (/dev/loop-control is missing; modprobe loop)"
    return None


def _tool(*argv: str) -> None:
    """Run a system tool; SandboxError with its output when it fails."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, env={"PATH": TOOL_PATH},
            timeout=TOOL_SECONDS,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"{argv[0]} failed: {exc}") from exc
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-1000:]
        raise SandboxError(f"{' '.join(argv[:1])} failed (exit {result.returncode}): {output}")


def _unescape(field: bytes) -> bytes:
    """A path of /proc/self/mountinfo (spaces, tabs, newlines and backslashes are octal)."""
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)
