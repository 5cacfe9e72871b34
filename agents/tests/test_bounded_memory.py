"""Bounded memory under hostile input: a build that prints without end keeps the last MiB of
its output (with a marker saying what was dropped); an upload whose extended tar header claims
hundreds of MB is refused before tarfile reads it."""

from __future__ import annotations

import io
import tarfile
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from agents import services
from agents.archive import MAX_EXTENDED_HEADER_BYTES, ArchiveError, extract_archive
from agents.builds import BuildLog
from agents.choices import VersionStatus
from agents.models import AgentVersion
from agents.tests.packages import agent_files, pack_files

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024
HUGE = 200 * MiB


@pytest.fixture
def agent(owner):
    return services.create_agent(owner, name="probe")


def stored_files() -> set[Path]:
    root = Path(settings.AIMOS_ARTIFACT_ROOT)
    return set(root.rglob("*")) if root.exists() else set()


def extended_header_bomb(kind: bytes, size: int = HUGE) -> bytes:
    """A .tar.gz whose first header is an extended header (`kind`) claiming `size` bytes, the
    bytes following it; a few hundred KB of gzip."""
    header = tarfile.TarInfo("././@PaxHeader" if kind in b"xg" else "././@LongLink")
    header.type = kind
    header.size = size
    block = header.tobuf(format=tarfile.USTAR_FORMAT)
    assert len(block) == 512
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    parts = [compressor.compress(block)]
    chunk = (b"%d x=%s\n" % (MiB, b"x" * (MiB - 12)))[:MiB]
    for _ in range(size // MiB):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME])
def test_an_upload_with_a_huge_extended_header_is_refused_fast_in_bounded_memory(
    owner_api, agent, kind
):
    bomb = extended_header_bomb(kind)
    assert len(bomb) < 1 * MiB
    before = stored_files()
    file = SimpleUploadedFile("agent.tar.gz", bomb, content_type="application/gzip")

    tracemalloc.start()
    started = time.monotonic()
    try:
        response = owner_api.post(
            f"/api/v1/agents/{agent.pk}/versions", {"file": file}, format="multipart"
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_archive"
    assert "extended header" in body["detail"] and str(HUGE) in body["detail"]
    assert body["errors"][0]["field"] == "file"
    assert peak < 50 * MiB
    assert time.monotonic() - started < 10
    assert not AgentVersion.objects.exists()
    assert stored_files() == before


def test_extended_headers_under_the_cap_still_work(tmp_path):
    long_name = "agent/" + "n" * 200 + ".py"  # a PAX path record
    files = agent_files("def handle(p):\n    return p\n") | {long_name: "x = 1\n"}
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(pack_files_pax(files))
    info = extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / long_name).read_text() == "x = 1\n"
    assert info.member_count == len(files)


def test_an_extended_header_just_over_the_cap_is_refused(tmp_path):
    archive = tmp_path / "over.tar.gz"
    archive.write_bytes(extended_header_bomb(tarfile.XHDTYPE, MAX_EXTENDED_HEADER_BYTES + 512))
    with pytest.raises(ArchiveError, match="extended header"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def pack_files_pax(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def building(agent):
    upload = SimpleUploadedFile(
        "agent.tar.gz", pack_files(agent_files("def handle(p):\n    return p\n"))
    )
    version = services.create_version(agent, upload)
    assert AgentVersion.claim_build(version.pk)
    return version


def stored_log(version) -> str:
    return AgentVersion.objects.values_list("build_log", flat=True).get(pk=version.pk)


def test_a_build_log_keeps_the_last_mib_and_says_what_was_dropped(building):
    build_log = BuildLog(building.pk)
    line = "y" * 99  # 100 bytes with its newline
    for number in range(30_000):  # about 3 MB
        build_log(f"{number:07d} {line[8:]}")
    build_log("the last line")
    build_log.flush()

    text = stored_log(building)
    assert len(text.encode()) < MiB + 200
    marker, rest = text.split("\n", 1)
    assert marker.startswith("[") and "dropped" in marker and str(MiB) in marker
    kept = rest.splitlines()
    dropped_lines = 30_001 - len(kept)
    assert f"({dropped_lines} lines)" in marker
    assert f"[{dropped_lines * 100} bytes" in marker
    assert kept[0] == f"{dropped_lines:07d} {line[8:]}"
    assert kept[-1] == "the last line"


def test_a_build_log_keeps_the_end_of_one_enormous_line(building):
    build_log = BuildLog(building.pk)
    build_log("start")
    build_log("z" * (3 * MiB) + "END")
    build_log.flush()

    text = stored_log(building)
    assert len(text.encode()) <= MiB + 200
    assert text.endswith("zzzEND")
    assert "dropped" in text.splitlines()[0]
    assert "start" not in text


def test_a_build_log_stores_nul_as_a_replacement_character(building):
    build_log = BuildLog(building.pk)
    build_log("a\u0000b")
    build_log.flush()
    assert stored_log(building) == "a\ufffdb"
    assert AgentVersion.objects.get(pk=building.pk).status == VersionStatus.BUILDING
