"""Safe unpacking of uploaded agent packages (`.tar.gz`), and packing of a folder into one.

`extract_archive` reads the archive twice. The first pass streams over it and checks every
member without writing anything; the second extracts into a fresh staging folder next to
`dest` (with the stdlib `data` filter as a second guard) and renames it into place. What is
guaranteed when it returns:

* every member is a regular file, a directory or a symlink whose target stays inside the
  package (not the package root itself, not through another symlink); no hardlinks, devices
  or FIFOs; no absolute names, no `..` components, no duplicates, nothing written through a
  symlink or under a file;
* the member count, nesting depth and unpacked size are within the caps, and a gzip bomb or
  a flood of tiny members is stopped as soon as a cap is reached, reading in bounded memory;
* no extended header (PAX `x`/`g`/`X`, GNU long name/link `L`/`K`) is over
  `MAX_EXTENDED_HEADER_BYTES`: its size field is checked before tarfile reads it (tarfile
  reads one whole into memory, so a small gzip could otherwise claim hundreds of MB);
* setuid, setgid and sticky bits (and group/other write) are gone; ownership is not restored;
* on any failure `dest` does not exist and no staging folder is left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

from core.errors import ServiceError

NOT_A_TARGZ = "File must be a .tar.gz archive"
CHUNK = 64 * 1024
# Longest member name accepted, in bytes: keeps every unpacked path well under PATH_MAX
# wherever the package lands, and bounds what is kept in memory per member.
MAX_NAME_BYTES = 1024
MAX_COMPONENT_BYTES = 255
# Room for tar headers, PAX records and padding on top of the file data when capping the
# decompressed stream: a generous 4 KiB per allowed member, plus the end-of-archive blocks.
HEADER_ALLOWANCE_PER_MEMBER = 4096
HEADER_ALLOWANCE_FIXED = 64 * 1024
# Largest extended header accepted (PAX records, GNU long names): a real one holds a name,
# a link target and a few numbers, well under this.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
EXTENDED_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
    | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


class ArchiveError(ServiceError):
    """The uploaded archive is refused; `detail` names the member and the rule it breaks."""

    code = "invalid_archive"

    def __init__(self, detail: str, **kwargs):
        kwargs.setdefault("errors", [{"field": "file", "message": detail}])
        super().__init__(detail, **kwargs)


@dataclass(frozen=True)
class ArchiveInfo:
    """What was extracted: the compressed artifact's digest and size, and what it held."""

    sha256: str
    size: int
    member_count: int
    unpacked_bytes: int


@dataclass(frozen=True)
class _Caps:
    archive_bytes: int
    unpacked_bytes: int
    members: int
    depth: int

    @property
    def stream_bytes(self) -> int:
        """Most decompressed bytes (data + headers) a valid archive can take."""
        allowance = self.members * HEADER_ALLOWANCE_PER_MEMBER + HEADER_ALLOWANCE_FIXED
        return self.unpacked_bytes + allowance


def extract_archive(
    source: BinaryIO | Path,
    dest: Path,
    *,
    max_unpacked_bytes: int | None = None,
    max_members: int | None = None,
    max_depth: int | None = None,
    max_archive_bytes: int | None = None,
) -> ArchiveInfo:
    """Check every member of the `.tar.gz` `source`, then unpack it into the new folder `dest`.

    `source` is a path or a seekable binary file (read from its current position, twice).
    Caps left as None are read from settings at call time: AIMOS_ARCHIVE_MAX_UNPACKED_BYTES,
    AIMOS_ARCHIVE_MAX_MEMBERS, AIMOS_ARCHIVE_MAX_DEPTH and AIMOS_UPLOAD_MAX_BYTES (the
    compressed size; the upload view should have refused a bigger file with a 413 already).

    Raises ArchiveError for a refused archive, FileExistsError if `dest` exists. On success
    `dest` holds the package (mode 0755); on any error `dest` and the staging folder are gone.
    """
    caps = _Caps(
        archive_bytes=_cap(max_archive_bytes, "AIMOS_UPLOAD_MAX_BYTES"),
        unpacked_bytes=_cap(max_unpacked_bytes, "AIMOS_ARCHIVE_MAX_UNPACKED_BYTES"),
        members=_cap(max_members, "AIMOS_ARCHIVE_MAX_MEMBERS"),
        depth=_cap(max_depth, "AIMOS_ARCHIVE_MAX_DEPTH"),
    )
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} already exists")
    start = None if isinstance(source, Path) else source.tell()

    # Pass 1: check everything, write nothing.
    checker = _MemberChecker(caps)
    real_bytes = 0
    with _open_tar(source, start, caps) as (tar, raw):
        for member in tar:
            checker.check(member)
            if member.isreg():
                # Count what is actually decompressed, not what the header claims.
                data = tar.extractfile(member)
                while chunk := data.read(CHUNK):
                    real_bytes += len(chunk)
                    if real_bytes > caps.unpacked_bytes:
                        raise _rejected(member.name, _too_big(caps))
        checker.finish()
        raw.drain()
    checked_digest = raw.sha256.hexdigest()

    # Pass 2: extract into a staging folder on the same filesystem, then rename into place.
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        checker = _MemberChecker(caps)
        with _open_tar(source, start, caps) as (tar, raw):
            tar.extractall(staging, filter=lambda member, path: _guard(checker, member, path))
            checker.finish()
            raw.drain()
        if raw.sha256.hexdigest() != checked_digest:
            raise ArchiveError("Archive changed while it was being extracted")
        staging.chmod(0o755)
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ArchiveInfo(
        sha256=checked_digest,
        size=raw.size,
        member_count=checker.members,
        unpacked_bytes=real_bytes,
    )


def pack_directory(src: Path, out: Path) -> Path:
    """Write the content of folder `src` as the `.tar.gz` `out`, byte-for-byte reproducible.

    Members are named relative to `src` (no `./` prefix), in sorted order, with mtime 0,
    owner 0/0 without names, mode 0755 for folders and executables, 0644 for other files.
    Symlinks are kept as symlinks; `__pycache__` folders are skipped (bytecode embeds source
    mtimes, which would break reproducibility). Other file types raise ValueError.
    """
    src = Path(src)
    out = Path(out)
    out_resolved = out.resolve()
    with (
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _walk_sorted(src):
            # Never pack the archive being written (a symlink to it is packed as a symlink).
            if path.parent.resolve() / path.name == out_resolved:
                continue
            info = tar.gettarinfo(str(path), arcname=path.relative_to(src).as_posix())
            if not (info.isreg() or info.isdir() or info.issym()):
                raise ValueError(f"{path} is not a file, folder or symlink")
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            executable = info.isdir() or (info.isreg() and info.mode & 0o100)
            info.mode = 0o755 if executable else 0o644
            if info.isreg():
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    return out


# --- reading ------------------------------------------------------------------------------


def _cap(value: int | None, setting: str) -> int:
    return int(getattr(settings, setting)) if value is None else int(value)


def _too_big(caps: _Caps) -> str:
    return f"the archive unpacks to more than {caps.unpacked_bytes} bytes"


def _rejected(name: str, rule: str) -> ArchiveError:
    if len(name) > 200:
        name = name[:200] + "..."
    return ArchiveError(f"Archive member {name!r} rejected: {rule}")


class _HashingReader:
    """The compressed bytes as they are read: hashed, counted, capped."""

    def __init__(self, fileobj: BinaryIO, limit: int):
        self.fileobj = fileobj
        self.limit = limit
        self.size = 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fileobj.read(size if size is not None and size >= 0 else CHUNK)
        self.size += len(data)
        if self.size > self.limit:
            raise ArchiveError(f"Archive is larger than {self.limit} bytes")
        self.sha256.update(data)
        return data

    def drain(self) -> None:
        """Read to the end, so the digest covers the whole file (tar stops at its end marker)."""
        while self.read(CHUNK):
            pass


class _DecompressedReader:
    """The decompressed tar stream, capped so a bomb stops early whatever its headers say.

    tarfile reads PAX headers and GNU long names whole into memory: `_CappedTarInfo` caps
    each, and this cap (data cap plus a header allowance per member) bounds their sum.
    """

    def __init__(self, raw: _HashingReader, limit: int):
        self.gzip = gzip.GzipFile(fileobj=raw, mode="rb")
        self.limit = limit
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.gzip.read(size if size is not None and size >= 0 else CHUNK)
        except gzip.BadGzipFile:
            raise ArchiveError(NOT_A_TARGZ) from None
        except (EOFError, zlib.error, OSError) as exc:
            raise ArchiveError(f"Archive is truncated or corrupt ({exc})") from None
        self.size += len(data)
        if self.size > self.limit:
            raise ArchiveError(
                f"Archive rejected: it unpacks to more than {self.limit} bytes with its headers"
            )
        return data


class _CappedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an extended header over `MAX_EXTENDED_HEADER_BYTES`.

    `_proc_member` is where tarfile, having parsed one 512-byte header, reads what follows
    it; an extended header's content is read there whole (`_proc_pax`, `_proc_gnulong`), so
    its size field is checked first. Every header of the archive, those that follow an
    extended header included, is made by this class (`fromtarfile` is called on it).
    """

    def _proc_member(self, tarfile):
        if self.type in EXTENDED_TYPES and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise ArchiveError(
                f"Archive rejected: an extended header (type {self.type.decode()!r}) of "
                f"{self.size} bytes, over {MAX_EXTENDED_HEADER_BYTES}"
            )
        return super()._proc_member(tarfile)


@contextmanager
def _open_tar(
    source: BinaryIO | Path, start: int | None, caps: _Caps
) -> Iterator[tuple[tarfile.TarFile, _HashingReader]]:
    """A streaming tar reader over `source` (from `start`), and the hashing reader under it."""
    fileobj = open(source, "rb") if start is None else source
    try:
        if start is not None:
            fileobj.seek(start)
        raw = _HashingReader(fileobj, caps.archive_bytes)
        stream = _DecompressedReader(raw, caps.stream_bytes)
        try:
            tar = tarfile.open(fileobj=stream, mode="r|", tarinfo=_CappedTarInfo)
        except tarfile.TarError:
            raise ArchiveError(NOT_A_TARGZ) from None
        try:
            with tar:
                yield tar, raw
        except tarfile.FilterError as exc:
            raise _rejected(exc.tarinfo.name, str(exc)) from None
        except tarfile.TarError as exc:
            raise ArchiveError(f"Archive is truncated or corrupt ({exc})") from None
    finally:
        if start is None:
            fileobj.close()


# --- checking -----------------------------------------------------------------------------


class _MemberChecker:
    """The rules every member must follow; `check` each one in order, then `finish`.

    `check` applies the rules about one member (name, type, caps, link target); `finish`
    the rules between members (duplicates, members under a file or symlink, symlinks
    through symlinks), once every name is known since tar order proves nothing.
    """

    def __init__(self, caps: _Caps):
        self.caps = caps
        self.members = 0
        self.declared_bytes = 0
        # (path parts, kind, original name, symlink target) of every member, for `finish`.
        self.entries: list[tuple[tuple[str, ...], str, str, str]] = []

    def check(self, member: tarfile.TarInfo) -> tuple[str, ...]:
        """Refuse `member` (ArchiveError) unless it is safe on its own; return its path parts.

        Empty parts mean the package root itself (a `.` folder entry), which is not extracted.
        """
        name = member.name
        self.members += 1
        if self.members > self.caps.members:
            raise ArchiveError(f"Archive rejected: it has more than {self.caps.members} members")
        parts = self._path_parts(name)

        if member.islnk():
            raise _rejected(name, "hardlinks are not allowed")
        if member.ischr() or member.isblk():
            raise _rejected(name, "device files are not allowed")
        if member.isfifo():
            raise _rejected(name, "FIFOs are not allowed")
        if member.issparse():
            raise _rejected(name, "sparse files are not allowed")
        if member.isreg():
            kind = "file"
        elif member.isdir():
            kind = "dir"
        elif member.issym():
            kind = "symlink"
        else:
            raise _rejected(name, f"unsupported member type {member.type!r}")

        if not parts:
            if kind != "dir":
                raise _rejected(name, "only a folder may stand for the package root")
            return parts
        if kind == "symlink":
            _resolve_link(name, parts, member.linkname)
        if kind == "file":
            # Refuse early on the header's word; the real bytes are counted while reading.
            self.declared_bytes += member.size
            if self.declared_bytes > self.caps.unpacked_bytes:
                raise _rejected(name, _too_big(self.caps))
        self.entries.append((parts, kind, name, member.linkname if kind == "symlink" else ""))
        return parts

    def finish(self) -> None:
        """Apply the rules between members; refuse an empty archive."""
        if self.members == 0:
            raise ArchiveError("Archive is empty")
        # Sorted by path parts, a path is directly followed by its duplicates, then by
        # everything under it: comparing neighbours finds every conflict.
        entries = sorted(self.entries, key=lambda entry: entry[0])
        for (parts, kind, name, _), (next_parts, next_kind, next_name, _) in zip(
            entries, entries[1:], strict=False
        ):
            if parts == next_parts:
                if kind != "dir" or next_kind != "dir":
                    raise _rejected(next_name, "the same path appears more than once")
            elif kind != "dir" and next_parts[: len(parts)] == parts:
                raise _rejected(next_name, f"it is inside {name!r}, which is a {kind}")
        symlinks = {parts for parts, kind, _, _ in entries if kind == "symlink"}
        for parts, kind, name, target in entries:
            if kind == "symlink":
                # A lexical check is only sound if no symlink is crossed on the way:
                # `a/L/..` is `a` on paper but wherever L points, minus one, on disk.
                _resolve_link(name, parts, target, symlinks)

    def _path_parts(self, name: str) -> tuple[str, ...]:
        if name.startswith("/"):
            raise _rejected(name, "absolute paths are not allowed")
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        if ".." in parts:
            raise _rejected(name, "'..' components are not allowed")
        if len(parts) > self.caps.depth:
            raise _rejected(name, f"it is nested deeper than {self.caps.depth} levels")
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError:
            raise _rejected(name, "the name is not valid UTF-8") from None
        if len(encoded) > MAX_NAME_BYTES:
            raise _rejected(name, f"the name is longer than {MAX_NAME_BYTES} bytes")
        if any(len(part.encode("utf-8")) > MAX_COMPONENT_BYTES for part in parts):
            raise _rejected(name, f"a name component is longer than {MAX_COMPONENT_BYTES} bytes")
        if any(ord(char) < 32 or ord(char) == 127 for char in name):
            raise _rejected(name, "the name contains control characters")
        return parts


def _resolve_link(
    name: str,
    parts: tuple[str, ...],
    target: str,
    symlinks: set[tuple[str, ...]] | None = None,
) -> tuple[str, ...]:
    """Where the symlink `name` (at `parts`) points, as path parts inside the package.

    Refuses targets that are empty, absolute, the package root or outside it, and, when the
    set of `symlinks` is given, targets that pass through one of them.
    """
    if not target:
        raise _rejected(name, "the symlink has an empty target")
    if any(ord(char) < 32 or ord(char) == 127 for char in target):
        raise _rejected(name, "the symlink target contains control characters")
    if target.startswith("/"):
        raise _rejected(name, f"the symlink points to the absolute path {target!r}")
    components = [part for part in target.split("/") if part not in ("", ".")]
    stack = list(parts[:-1])
    for index, component in enumerate(components):
        if component == "..":
            if not stack:
                raise _rejected(name, f"the symlink target {target!r} leaves the package")
            stack.pop()
            continue
        stack.append(component)
        last = index == len(components) - 1
        if symlinks is not None and not last and tuple(stack) in symlinks:
            raise _rejected(name, f"the symlink target {target!r} passes through another symlink")
    if not stack:
        raise _rejected(name, f"the symlink target {target!r} is the package root itself")
    return tuple(stack)


def _guard(checker: _MemberChecker, member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """Extraction filter of pass 2: the same checks again, then the stdlib `data` filter."""
    parts = checker.check(member)
    if not parts:
        return None
    mode = member.mode & 0o755 if member.mode is not None else None
    cleaned = member.replace(name="/".join(parts), mode=mode, deep=False)
    return tarfile.data_filter(cleaned, path)


def _walk_sorted(root: Path) -> Iterator[Path]:
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if entry.name == "__pycache__":
                continue
            yield path
            yield from _walk_sorted(path)
        else:
            yield path
