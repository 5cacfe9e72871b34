"""Uploaded archives: hostile ones are refused before anything is written, valid ones unpack.

Each refusal also checks that nothing is left on disk: neither `dest` nor a staging folder
in its parent.
"""

import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from agents.archive import ArchiveError, ArchiveInfo, extract_archive, pack_directory

GiB = 1024**3
MiB = 1024**2


# --- building archives --------------------------------------------------------------------


def entry(name, data=b"", *, type=tarfile.REGTYPE, linkname="", mode=0o644, size=None):
    """A tar member: its TarInfo and, for files, its data."""
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    info.mode = mode
    info.mtime = 1_700_000_000
    if type == tarfile.REGTYPE:
        info.size = len(data) if size is None else size
        return info, data
    return info, None


def directory(name):
    return entry(name, type=tarfile.DIRTYPE, mode=0o755)


def symlink(name, target):
    return entry(name, type=tarfile.SYMTYPE, linkname=target)


def write_targz(path: Path, *members) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def write_zero_bomb(path: Path, size: int) -> Path:
    """A .tar.gz holding one file of `size` zero bytes, written in a few MB and milliseconds.

    A gzip file may be a series of gzip members; the compressed form of 1 MiB of zeros is
    computed once and repeated, instead of compressing `size` bytes.
    """
    header = tarfile.TarInfo("bomb.bin")
    header.size = size
    chunk = gzip.compress(b"\0" * MiB, mtime=0)
    with open(path, "wb") as file:
        file.write(gzip.compress(header.tobuf(format=tarfile.USTAR_FORMAT), mtime=0))
        for _ in range(size // MiB):
            file.write(chunk)
    return path


def write_many_empty_files(path: Path, count: int) -> Path:
    """A .tar.gz of `count` empty files f0000000, f0000001…, from one patched header."""
    template = bytearray(tarfile.TarInfo("f0000000").tobuf(format=tarfile.USTAR_FORMAT))
    # tar's checksum is the byte sum of the header with the checksum field as spaces.
    base = sum(template) - sum(template[148:156]) + 8 * ord(" ") - sum(b"f0000000")
    with gzip.open(path, "wb", compresslevel=1) as file:
        batch = []
        for index in range(count):
            name = b"f%07d" % index
            header = bytearray(template)
            header[0:8] = name
            header[148:155] = b"%06o\0" % (base + sum(name))
            batch.append(bytes(header))
            if len(batch) == 1000:
                file.write(b"".join(batch))
                batch = []
        file.write(b"".join(batch) + b"\0" * 1024)
    return path


def write_valid_package(folder: Path) -> Path:
    (folder / "agent").mkdir(parents=True)
    (folder / "aimos.yaml").write_text("name: demo\nentrypoint: agent.main:handle\n")
    (folder / "agent" / "main.py").write_text("def handle(payload):\n    return payload\n")
    (folder / "requirements.txt").write_text("")
    return folder


@pytest.fixture
def parent(tmp_path):
    """The folder the package is unpacked into; empty, so leftovers are easy to see."""
    folder = tmp_path / "versions"
    folder.mkdir()
    return folder


@pytest.fixture
def dest(parent):
    return parent / "v1"


def assert_rejected(archive, dest: Path, message: str, **caps) -> ArchiveError:
    before = sorted(os.listdir(dest.parent))
    with pytest.raises(ArchiveError, match=re.escape(message)) as caught:
        extract_archive(archive, dest, **caps)
    assert not dest.exists() and not dest.is_symlink()
    assert sorted(os.listdir(dest.parent)) == before
    return caught.value


# --- valid archives -----------------------------------------------------------------------


def test_valid_archive_is_extracted_with_its_sha256_and_sizes(tmp_path, dest):
    archive = pack_directory(write_valid_package(tmp_path / "src"), tmp_path / "pkg.tar.gz")

    info = extract_archive(archive, dest)

    content = archive.read_bytes()
    assert info == ArchiveInfo(
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        member_count=4,
        unpacked_bytes=len("name: demo\nentrypoint: agent.main:handle\n")
        + len("def handle(payload):\n    return payload\n"),
    )
    assert (dest / "agent" / "main.py").read_text().startswith("def handle")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "agent",
        "agent/main.py",
        "aimos.yaml",
        "requirements.txt",
    ]
    assert sorted(os.listdir(dest.parent)) == ["v1"]


def test_archive_is_read_from_an_open_file_from_its_position(tmp_path, dest):
    archive = pack_directory(write_valid_package(tmp_path / "src"), tmp_path / "pkg.tar.gz")
    upload = io.BytesIO(b"ignored prefix" + archive.read_bytes())
    upload.seek(len(b"ignored prefix"))

    info = extract_archive(upload, dest)

    assert info.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (dest / "aimos.yaml").is_file()


def test_archive_made_from_dot_with_a_root_entry_is_accepted(tmp_path, dest):
    archive = write_targz(
        tmp_path / "a.tar.gz",
        directory("."),
        directory("./agent"),
        entry("./agent/main.py", b"x = 1\n"),
        entry("./aimos.yaml", b"name: x\n"),
    )

    info = extract_archive(archive, dest)

    assert info.member_count == 4
    assert (dest / "agent" / "main.py").read_bytes() == b"x = 1\n"


def test_symlink_inside_the_package_is_kept(tmp_path, dest):
    archive = write_targz(
        tmp_path / "a.tar.gz",
        entry("agent/v2.py", b"v = 2\n"),
        symlink("agent/main.py", "v2.py"),
        symlink("latest", "agent"),
    )

    extract_archive(archive, dest)

    assert os.readlink(dest / "agent" / "main.py") == "v2.py"
    assert (dest / "latest" / "main.py").read_bytes() == b"v = 2\n"


def test_setuid_setgid_and_sticky_bits_are_stripped(tmp_path, dest):
    archive = write_targz(
        tmp_path / "a.tar.gz",
        entry("run.sh", b"#!/bin/sh\n", mode=0o7777),
        entry("data.txt", b"x", mode=0o4644),
    )

    extract_archive(archive, dest)

    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "data.txt").stat().st_mode) == 0o644


def test_pack_directory_is_reproducible_and_skips_bytecode(tmp_path):
    src = write_valid_package(tmp_path / "src")
    (src / "agent" / "__pycache__").mkdir()
    (src / "agent" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    first = pack_directory(src, tmp_path / "one.tar.gz").read_bytes()
    os.utime(src / "agent" / "main.py", (0, 1_000_000))

    second = pack_directory(src, tmp_path / "two.tar.gz").read_bytes()

    assert first == second
    with tarfile.open(tmp_path / "one.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "agent",
        "agent/main.py",
        "aimos.yaml",
        "requirements.txt",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


def test_caps_default_to_the_settings_at_call_time(tmp_path, dest, settings):
    archive = write_targz(tmp_path / "a.tar.gz", entry("a"), entry("b"), entry("c"))
    settings.AIMOS_ARCHIVE_MAX_MEMBERS = 2

    assert_rejected(archive, dest, "Archive rejected: it has more than 2 members")


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/../../x", "a/../b", ".."])
def test_traversal_name_is_rejected_and_writes_nothing(tmp_path, dest, name):
    archive = write_targz(tmp_path / "a.tar.gz", entry("ok.txt", b"ok"), entry(name, b"pwned"))

    error = assert_rejected(
        archive, dest, f"Archive member {name!r} rejected: '..' components are not allowed"
    )

    assert error.code == "invalid_archive" and error.status_code == 400
    assert error.errors == [{"field": "file", "message": error.detail}]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["/etc/cron.d/x", "//x"])
def test_absolute_path_is_rejected(tmp_path, dest, name):
    archive = write_targz(tmp_path / "a.tar.gz", entry(name, b"pwned"))

    assert_rejected(archive, dest, f"Archive member {name!r} rejected: absolute paths")


def test_name_with_control_characters_is_rejected(tmp_path, dest):
    archive = write_targz(tmp_path / "a.tar.gz", entry("evil\nname", b""))

    assert_rejected(archive, dest, "rejected: the name contains control characters")


def test_same_path_twice_is_rejected(tmp_path, dest):
    archive = write_targz(
        tmp_path / "a.tar.gz", entry("a.py", b"1"), directory("b"), entry("./a.py", b"2")
    )

    assert_rejected(
        archive, dest, "Archive member './a.py' rejected: the same path appears more than once"
    )


# --- links and special files --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "target", "rule"),
    [
        ("out", "../outside", "the symlink target '../outside' leaves the package"),
        ("a/out", "../../x", "the symlink target '../../x' leaves the package"),
        ("out", "a/../../x", "the symlink target 'a/../../x' leaves the package"),
        ("out", "/etc/passwd", "the symlink points to the absolute path '/etc/passwd'"),
    ],
)
def test_symlink_out_of_the_package_is_rejected(tmp_path, dest, name, target, rule):
    archive = write_targz(tmp_path / "a.tar.gz", symlink(name, target))

    assert_rejected(archive, dest, f"Archive member {name!r} rejected: {rule}")


@pytest.mark.parametrize(("name", "target"), [("here", "."), ("sub/up", ".."), ("x", "a/..")])
def test_symlink_to_the_package_root_is_rejected(tmp_path, dest, name, target):
    archive = write_targz(tmp_path / "a.tar.gz", symlink(name, target))

    assert_rejected(archive, dest, f"the symlink target {target!r} is the package root itself")


def test_symlink_to_above_the_package_is_rejected(tmp_path, dest):
    archive = write_targz(tmp_path / "a.tar.gz", symlink("up", ".."))

    assert_rejected(archive, dest, "Archive member 'up' rejected: the symlink target '..' leaves")


def test_write_through_a_symlink_leaving_the_package_is_rejected(tmp_path, dest):
    victim = dest.parent.parent / "victim"
    victim.mkdir()
    archive = write_targz(
        tmp_path / "a.tar.gz", symlink("link", "../../victim"), entry("link/pwned", b"x")
    )

    assert_rejected(archive, dest, "Archive member 'link' rejected")

    assert list(victim.iterdir()) == []


@pytest.mark.parametrize("symlink_first", [True, False])
def test_file_through_a_symlink_inside_the_package_is_rejected(tmp_path, dest, symlink_first):
    members = [symlink("link", "real"), entry("link/x.py", b"x")]
    if not symlink_first:
        members.reverse()
    archive = write_targz(tmp_path / "a.tar.gz", directory("real"), *members)

    assert_rejected(
        archive,
        dest,
        "Archive member 'link/x.py' rejected: it is inside 'link', which is a symlink",
    )


def test_file_under_a_file_is_rejected(tmp_path, dest):
    archive = write_targz(tmp_path / "a.tar.gz", entry("a", b"x"), entry("a/b", b"y"))

    assert_rejected(
        archive, dest, "Archive member 'a/b' rejected: it is inside 'a', which is a file"
    )


def test_symlink_chain_leaving_through_another_symlink_is_rejected(tmp_path, dest):
    # On paper a/b/L/../.. is `a`; on disk L is `c`, so it is c/../.. – above the package.
    archive = write_targz(
        tmp_path / "a.tar.gz",
        symlink("m", "a/b/L/../.."),
        directory("a/b"),
        symlink("a/b/L", "../../c"),
        directory("c"),
    )

    assert_rejected(
        archive,
        dest,
        "Archive member 'm' rejected: the symlink target 'a/b/L/../..' passes through another",
    )


def test_hardlink_is_rejected_even_inside_the_package(tmp_path, dest):
    archive = write_targz(
        tmp_path / "a.tar.gz",
        entry("a.py", b"x"),
        entry("b.py", type=tarfile.LNKTYPE, linkname="a.py"),
    )

    assert_rejected(archive, dest, "Archive member 'b.py' rejected: hardlinks are not allowed")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_device_file_is_rejected(tmp_path, dest, kind):
    info, _ = entry("dev/sda", type=kind)
    info.devmajor, info.devminor = 8, 0
    archive = write_targz(tmp_path / "a.tar.gz", (info, None))

    assert_rejected(
        archive, dest, "Archive member 'dev/sda' rejected: device files are not allowed"
    )


def test_fifo_is_rejected(tmp_path, dest):
    archive = write_targz(tmp_path / "a.tar.gz", entry("pipe", type=tarfile.FIFOTYPE))

    assert_rejected(archive, dest, "Archive member 'pipe' rejected: FIFOs are not allowed")


# --- caps ----------------------------------------------------------------------------------


def test_gzip_bomb_is_stopped_at_the_unpacked_size_cap(tmp_path, dest):
    archive = write_zero_bomb(tmp_path / "bomb.tar.gz", 2 * GiB)
    assert archive.stat().st_size < 5 * MiB

    assert_rejected(
        archive,
        dest,
        "Archive member 'bomb.bin' rejected: the archive unpacks to more than 1048576 bytes",
        max_unpacked_bytes=MiB,
    )


def test_files_adding_up_past_the_size_cap_are_rejected(tmp_path, dest):
    archive = write_targz(
        tmp_path / "a.tar.gz", *(entry(f"f{i}", os.urandom(300_000)) for i in range(4))
    )

    assert_rejected(
        archive,
        dest,
        "Archive member 'f3' rejected: the archive unpacks to more than 1048576 bytes",
        max_unpacked_bytes=MiB,
    )


def test_huge_pax_header_is_refused_before_it_is_read(tmp_path, dest):
    # tarfile reads a PAX header whole into memory: its size field is checked first.
    header = tarfile.TarInfo("pax")
    header.type = tarfile.XHDTYPE
    header.size = 2 * GiB
    chunk = gzip.compress(b"1" * MiB, mtime=0)
    archive = tmp_path / "pax.tar.gz"
    with open(archive, "wb") as file:
        file.write(gzip.compress(header.tobuf(format=tarfile.USTAR_FORMAT), mtime=0))
        for _ in range(64):
            file.write(chunk)

    assert_rejected(
        archive,
        dest,
        "Archive rejected: an extended header (type 'x') of 2147483648 bytes",
        max_unpacked_bytes=MiB,
        max_members=10,
    )


def test_hundred_thousand_files_are_stopped_at_the_member_cap(tmp_path, dest):
    archive = write_many_empty_files(tmp_path / "many.tar.gz", 100_000)

    assert_rejected(archive, dest, "Archive rejected: it has more than 10000 members")


def test_thousand_levels_of_folders_are_rejected(tmp_path, dest):
    folders = [directory("/".join(["d"] * depth)) for depth in range(1, 1001)]
    archive = write_targz(
        tmp_path / "a.tar.gz", *folders, entry("/".join(["d"] * 1000) + "/f", b"")
    )

    error = assert_rejected(archive, dest, "rejected: it is nested deeper than 32 levels")

    assert error.detail.startswith(f"Archive member {'/'.join(['d'] * 33)!r}")


def test_compressed_size_over_the_cap_is_rejected(tmp_path, dest):
    archive = write_targz(tmp_path / "a.tar.gz", entry("noise", os.urandom(64 * 1024)))

    assert_rejected(archive, dest, "Archive is larger than 10000 bytes", max_archive_bytes=10_000)


# --- not a tar.gz -------------------------------------------------------------------------


def _plain_tar(path):
    with tarfile.open(path, "w") as tar:
        info, data = entry("aimos.yaml", b"name: x\n")
        tar.addfile(info, io.BytesIO(data))


def _zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("aimos.yaml", "name: x\n")


@pytest.mark.parametrize(
    "make",
    [
        _plain_tar,
        _zip,
        lambda path: path.write_bytes(os.urandom(4096)),
        lambda path: path.write_bytes(b""),
        lambda path: path.write_bytes(gzip.compress(b"name: not a tar\n" * 100)),
    ],
    ids=["plain-tar", "zip", "random-bytes", "empty", "gzip-of-text"],
)
def test_file_that_is_not_a_targz_is_rejected(tmp_path, dest, make):
    archive = tmp_path / "upload.tar.gz"
    make(archive)

    assert_rejected(archive, dest, "File must be a .tar.gz archive")


def test_truncated_archive_is_rejected(tmp_path, dest):
    archive = write_targz(tmp_path / "a.tar.gz", entry("noise", os.urandom(200_000)))
    archive.write_bytes(archive.read_bytes()[:100_000])

    assert_rejected(archive, dest, "Archive is truncated or corrupt")


def test_archive_without_members_is_rejected(tmp_path, dest):
    archive = write_targz(tmp_path / "a.tar.gz")

    assert_rejected(archive, dest, "Archive is empty")


class SwappedUpload(io.BytesIO):
    """An upload whose bytes are replaced after the first read, as a racing writer would."""

    def __init__(self, first: bytes, second: bytes):
        super().__init__(first)
        self.second = second

    def seek(self, offset, whence=0):
        if self.second is not None and self.tell() > 0:
            self.second, content = None, self.second
            self.__init__(content, None)
        return super().seek(offset, whence)


def test_archive_changed_between_check_and_extraction_leaves_nothing(tmp_path, dest):
    checked = pack_directory(write_valid_package(tmp_path / "a"), tmp_path / "a.tar.gz")
    swapped = write_targz(tmp_path / "b.tar.gz", entry("aimos.yaml", b"name: other\n"))
    upload = SwappedUpload(checked.read_bytes(), swapped.read_bytes())

    assert_rejected(upload, dest, "Archive changed while it was being extracted")


def test_hostile_archive_swapped_in_after_the_check_is_still_refused(tmp_path, dest):
    checked = pack_directory(write_valid_package(tmp_path / "a"), tmp_path / "a.tar.gz")
    hostile = write_targz(tmp_path / "b.tar.gz", entry("ok", b"1"), entry("../../x", b"pwned"))
    upload = SwappedUpload(checked.read_bytes(), hostile.read_bytes())

    assert_rejected(upload, dest, "Archive member '../../x' rejected: '..' components")

    assert not (tmp_path / "x").exists()


def test_existing_dest_is_never_overwritten(tmp_path, dest):
    archive = pack_directory(write_valid_package(tmp_path / "src"), tmp_path / "pkg.tar.gz")
    dest.mkdir()
    (dest / "keep").write_text("mine")

    with pytest.raises(FileExistsError):
        extract_archive(archive, dest)

    assert (dest / "keep").read_text() == "mine"
