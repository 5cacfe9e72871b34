"""Sessions' things on this machine, the one place for where they are:
`<AIMOS_SESSION_ROOT>/<id>/`, a disk image of the session's own size mounted at `workspace/`
while its sandbox runs (`sandbox.workspace_disk.WorkspaceDisk`), and `control/`, where the
daemon in the sandbox makes its socket (a small tmpfs while the sandbox runs)."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings

from sandbox.session import release_control_dir
from sandbox.workspace_disk import WorkspaceDisk


def directory_of(session_id) -> Path:
    return Path(settings.AIMOS_SESSION_ROOT) / str(session_id)


def control_dir_of(session_id) -> Path:
    """Where the daemon of the session's sandbox makes its socket (`agent.sock`)."""
    return directory_of(session_id) / "control"


def disk_of(session_id, workspace_mb: int = 0) -> WorkspaceDisk:
    """The session's disk (`workspace_mb`: its size, needed only to make it)."""
    return WorkspaceDisk(directory_of(session_id), workspace_mb)


def unmount(session_id) -> None:
    """The session's workspace (and control directory) unmounted, its files kept."""
    release_control_dir(control_dir_of(session_id))
    disk = disk_of(session_id)
    if disk.mounted():
        disk.unmount()


def remove_workspace(session_id) -> None:
    """Nothing of the session's workspace is left: unmounted (its control directory too, left
    mounted by a host that died), its image and folder deleted."""
    release_control_dir(control_dir_of(session_id))
    disk_of(session_id).remove()
    shutil.rmtree(directory_of(session_id), ignore_errors=True)
