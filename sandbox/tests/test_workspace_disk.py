"""Workspace disks (sandbox/workspace_disk.py) on this host's loop devices: a filesystem of
its own per session, capped, shared by every uid of the session's sandboxes, kept across
mounts and gone without a trace once removed; the cap as a sandbox and its daemon meet it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandbox.base import Limits, SessionSpec
from sandbox.session_client import SessionClient, SessionOpError
from sandbox.workspace_disk import DEFAULT_ACL, WorkspaceDisk

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a disk needs root"),
]

MiB = 1024 * 1024
SESSION_LIMITS = Limits(
    memory_mb=256, cpus=1.0, pids=64, max_file_mb=16, max_open_files=128, workspace_mb=8
)


@pytest.fixture
def disk(tmp_path: Path):
    """A workspace disk of 8 MB (not made yet); removed at the end whatever happened."""
    made = WorkspaceDisk(tmp_path / "session", 8)
    yield made
    made.remove()


def mounts_of(path: Path) -> int:
    """How many mounts this host has at `path`."""
    target = str(path)
    with open("/proc/self/mountinfo") as mountinfo:
        return sum(1 for line in mountinfo if line.split(" ")[4] == target)


def as_uid(uid: int, script: str, cwd: Path) -> subprocess.CompletedProcess:
    """`sh -c script` in `cwd` as the unprivileged `uid` (outside the sandboxes' range), with
    a umask that would keep others out."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         "sh", "-c", f"umask 077; {script}"],
        capture_output=True, text=True, timeout=30, cwd=cwd,
    )  # fmt: skip


def test_a_new_disk_is_mounted_empty_open_to_every_uid_and_of_its_size(disk):
    workspace = disk.ensure()

    assert workspace == disk.workspace and disk.mounted()
    assert os.listdir(workspace) == []
    assert os.stat(workspace).st_mode & 0o7777 == 0o777
    assert os.getxattr(workspace, "system.posix_acl_default") == DEFAULT_ACL
    assert disk.image.stat().st_size == 8 * MiB
    assert 0 < disk.usage_bytes() < 1 * MiB
    assert disk.ensure() == workspace and mounts_of(workspace) == 1


def test_files_one_uid_makes_stay_readable_and_writable_by_another(disk):
    workspace = disk.ensure()

    made = as_uid(199_990, "mkdir -p a/b && echo first > a/b/f", workspace)
    changed = as_uid(199_991, "echo second >> a/b/f && mkdir a/b/c && rm -r a/b/c", workspace)

    assert made.returncode == 0, made.stderr
    assert changed.returncode == 0, changed.stderr
    assert (workspace / "a/b/f").read_text() == "first\nsecond\n"


def test_files_survive_unmount_and_mount(disk):
    workspace = disk.ensure()
    (workspace / "kept.txt").write_text("still here")

    disk.unmount()
    assert not disk.mounted() and not (workspace / "kept.txt").exists()
    disk.ensure()

    assert (workspace / "kept.txt").read_text() == "still here"


def test_remove_leaves_no_mount_no_image_and_no_loop_device(disk):
    disk.ensure()
    (disk.workspace / "file").write_bytes(b"x" * MiB)
    image = disk.image

    disk.remove()

    assert mounts_of(disk.workspace) == 0
    assert not image.exists() and not disk.directory.exists()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(image) not in loops
    disk.remove()  # again: nothing to do


def test_a_disk_smaller_than_the_filesystem_needs_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least"):
        WorkspaceDisk(tmp_path / "tiny", 1).ensure()
    assert not (tmp_path / "tiny" / "workspace.img").exists()


FILL = """
import errno, os
written, problem = 0, None
try:
    for i in range(1000):
        with open(f"/workspace/fill-{i}", "wb") as out:
            out.write(b"x" * (1 << 20))
        written += 1
except OSError as exc:
    problem = errno.errorcode.get(exc.errno)
print(written, problem)
"""


def test_a_write_past_the_cap_fails_inside_the_sandbox_and_through_the_daemon(
    backend, disk, tmp_path
):
    workspace = disk.ensure()
    control = tmp_path / "control"
    control.mkdir()
    spec = SessionSpec("cap", workspace, control, SESSION_LIMITS)
    session = backend.start_session(spec)
    try:
        client = SessionClient(str(session.socket_path))
        filled = client.exec(f"python3 -c '{FILL}'", timeout=60)
        written, problem = filled["stdout"].split()
        assert problem == "ENOSPC", filled
        assert int(written) < 8
        assert disk.usage_bytes() > 6 * MiB

        with pytest.raises(SessionOpError) as refused:
            client.write("one-more", b"y" * (2 * MiB))
        assert refused.value.code == "too_large"
        assert not any(name.startswith(".aimos-write") for name in os.listdir(workspace))

        client.exec("rm -f /workspace/fill-*")
        assert client.write("fits-again", b"y" * (2 * MiB))["size"] == 2 * MiB
    finally:
        session.stop()
