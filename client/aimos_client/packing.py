"""Packing an agent's folder into the `.tar.gz` the platform takes.

What is left out, in this order (a later rule wins, as in git):
1. `DEFAULT_IGNORES`: version-control folders, virtual environments, caches, bytecode;
2. each folder's `.gitignore`, then its `.aimosignore` (so `.aimosignore` can take back with
   `!name` what `.gitignore` leaves out); a file's patterns apply to its folder and below.
Git's rules hold: `#` comments, `!` negation, a trailing `/` for folders only, a leading or
inner `/` anchors to the ignore file's folder, `**` any depth; a file inside a left-out
folder cannot be taken back.

The archive holds regular files and symbolic links (a link must stay inside the folder),
sorted, with owner and group cleared.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pathspec

from aimos_client.errors import AimosError

IGNORE_FILES = (".gitignore", ".aimosignore")
DEFAULT_IGNORES = (
    ".git/",
    ".hg/",
    ".svn/",
    ".venv/",
    "venv/",
    "__pycache__/",
    "*.py[cod]",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".DS_Store",
)


class PackError(AimosError):
    """The folder cannot be packed (a link leaving it, an unreadable file, …)."""


@dataclass(frozen=True)
class Package:
    """A packed folder: the archive's bytes and the files in it."""

    data: bytes
    files: list[str]

    @property
    def size(self) -> int:
        return len(self.data)


class _Rules:
    """The ignore rules in force in one folder: (folder relative to the root, spec) pairs."""

    def __init__(self, specs: list[tuple[str, pathspec.PathSpec]]) -> None:
        self.specs = specs

    def below(self, folder: Path, relative: str) -> _Rules:
        specs = list(self.specs)
        for name in IGNORE_FILES:
            path = folder / name
            if path.is_file():
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
                specs.append((relative, pathspec.GitIgnoreSpec.from_lines(lines)))
        return _Rules(specs)

    def ignored(self, relative: str, is_dir: bool) -> bool:
        verdict = False
        for base, spec in self.specs:
            if base:
                if not relative.startswith(base + "/"):
                    continue
                path = relative[len(base) + 1 :]
            else:
                path = relative
            result = spec.check_file(path + "/" if is_dir else path)
            if result.include is not None:
                verdict = result.include
        return verdict


def iter_files(root: str | Path) -> Iterator[str]:
    """The paths (POSIX, relative to `root`) that packing `root` takes, sorted per folder."""
    top = Path(root).resolve()
    defaults = _Rules([("", pathspec.GitIgnoreSpec.from_lines(DEFAULT_IGNORES))])
    yield from _walk(top, top, "", defaults.below(top, ""))


def _walk(top: Path, folder: Path, relative: str, rules: _Rules) -> Iterator[str]:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise PackError(f"cannot read {folder}: {exc}") from exc
    for entry in entries:
        path = f"{relative}/{entry.name}" if relative else entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if rules.ignored(path, is_dir):
            continue
        if is_dir:
            child = Path(entry.path)
            yield from _walk(top, child, path, rules.below(child, path))
        elif entry.is_symlink():
            target = Path(entry.path).resolve()
            if not target.is_relative_to(top):
                raise PackError(f"{path} is a link to {target}, outside the folder")
            yield path
        elif entry.is_file(follow_symlinks=False):
            yield path
        # sockets, FIFOs and devices are never packed


def pack(root: str | Path, on_file: Callable[[str], None] | None = None) -> Package:
    """The `.tar.gz` of the agent in `root` (ignore files honoured)."""
    top = Path(root).resolve()
    if not top.is_dir():
        raise PackError(f"{root} is not a folder")
    buffer = io.BytesIO()
    files: list[str] = []
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for relative in iter_files(top):
            path = top / relative
            info = tar.gettarinfo(str(path), arcname=relative)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = stat.S_IMODE(info.mode) & 0o755 | 0o644
            if info.issym():
                info.linkname = os.path.relpath(path.resolve(), path.parent)
                tar.addfile(info)
            else:
                try:
                    with open(path, "rb") as file:
                        tar.addfile(info, file)
                except OSError as exc:
                    raise PackError(f"cannot read {relative}: {exc}") from exc
            files.append(relative)
            if on_file is not None:
                on_file(relative)
    return Package(buffer.getvalue(), files)
