"""The process sandbox's uids come from a range no user, group or subordinate id range of
the host uses; a collision refuses to start, naming the file and the range."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.base import SandboxUnavailable
from sandbox.confinement import UID_SLOTS, uid_range_problem
from sandbox.process_backend import ProcessBackend

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
alice:x:1000:1000::/home/alice:/bin/bash
"""
GROUP = "root:x:0:\nalice:x:1000:\nnogroup:x:65534:\n"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    (tmp_path / "passwd").write_text(PASSWD)
    (tmp_path / "group").write_text(GROUP)
    return tmp_path


def test_a_range_nobody_uses_is_accepted(etc):
    (etc / "subuid").write_text("alice:100000:65536\n")
    (etc / "subgid").write_text("alice:100000:65536\n")
    assert uid_range_problem(200_000, etc=etc) is None


def test_missing_subordinate_id_files_are_no_collision(etc):
    assert uid_range_problem(200_000, etc=etc) is None


def test_a_user_inside_the_range_is_a_collision_naming_passwd(etc):
    (etc / "passwd").write_text(PASSWD + "svc:x:200500:1001::/srv:/usr/sbin/nologin\n")
    problem = uid_range_problem(200_000, etc=etc)
    assert problem is not None
    assert str(etc / "passwd") in problem
    assert "'svc'" in problem and "uid 200500" in problem
    assert "200000-200999" in problem
    assert "AIMOS_SANDBOX_UID_BASE" in problem


def test_a_primary_gid_inside_the_range_is_a_collision(etc):
    (etc / "passwd").write_text(PASSWD + "svc:x:1001:200999::/srv:/usr/sbin/nologin\n")
    problem = uid_range_problem(200_000, etc=etc)
    assert problem is not None and "gid 200999" in problem


def test_a_group_inside_the_range_is_a_collision_naming_group(etc):
    (etc / "group").write_text(GROUP + "builders:x:200001:\n")
    problem = uid_range_problem(200_000, etc=etc)
    assert problem is not None and str(etc / "group") in problem and "'builders'" in problem


def test_an_overlapping_subuid_range_is_a_collision_naming_subuid(etc):
    # Debian's useradd hands out 100000:65536, then 165536:65536 — the second reaches 231071.
    (etc / "subuid").write_text("alice:100000:65536\nbob:165536:65536\n")
    problem = uid_range_problem(200_000, etc=etc)
    assert problem is not None
    assert str(etc / "subuid") in problem
    assert "'bob'" in problem and "165536-231071" in problem
    assert "200000-200999" in problem


def test_an_overlapping_subgid_range_is_a_collision(etc):
    (etc / "subgid").write_text("bob:200999:1\n")
    problem = uid_range_problem(200_000, etc=etc)
    assert problem is not None and str(etc / "subgid") in problem


def test_ranges_that_only_touch_the_edges_do_not_collide(etc):
    (etc / "subuid").write_text(f"a:199000:1000\nb:{200_000 + UID_SLOTS}:10\n")
    assert uid_range_problem(200_000, etc=etc) is None


def test_another_base_avoids_the_collision(etc):
    (etc / "subuid").write_text("bob:165536:65536\n")
    assert uid_range_problem(300_000, etc=etc) is None


def test_a_range_past_the_largest_uid_is_refused(etc):
    assert "not a range of valid uids" in uid_range_problem(2**32 - 10, etc=etc)


@pytest.mark.skipif(os.geteuid() != 0, reason="the process sandbox runs as root")
def test_the_backend_refuses_a_base_taken_by_a_host_user(tmp_path):
    ids = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) > 0:
            ids.append(int(fields[2]))
    if not ids:
        pytest.skip("/etc/passwd has no user but root")
    backend = ProcessBackend(tmp_path, uid_base=min(ids))
    with pytest.raises(SandboxUnavailable) as refused:
        backend.check()
    assert "/etc/passwd" in str(refused.value)
    assert f"{min(ids)}-{min(ids) + UID_SLOTS - 1}" in str(refused.value)
