"""What the client does without a server: the manifest checked by the server's rules,
packing that honours .gitignore / .aimosignore, `dev run` with the platform's runner."""

from __future__ import annotations

import io
import os
import select
import tarfile
from pathlib import Path

import pytest
from aimos_client.devrun import run_local
from aimos_client.manifest import ManifestError, load_manifest
from aimos_client.packing import iter_files, pack
from aimos_client.scaffold import InitError, agent_name, init

from agents.manifest import ManifestError as ServerManifestError
from agents.manifest import load_manifest as server_load_manifest

MAIN = "def handle(payload, ctx):\n    return payload\n"

# (manifest, extra files): each judged by the client and by the server.
MANIFESTS = {
    "minimal": ("name: a\nentrypoint: agent.main:handle\n", {}),
    "everything": (
        "name: full-1\nentrypoint: agent.main:handle\nruntime: python3\n"
        "requirements: reqs/dev.txt\ntimeout: 5\nresources: {memory_mb: 64, cpus: 1, pids: 8}\n"
        "network: true\nenv: {A: 1, B: true, C: x}\nreuse: true\n",
        {"reqs/dev.txt": ""},
    ),
    "package entrypoint": ("name: a\nentrypoint: agent:handle\n", {"agent/__init__.py": MAIN}),
    "nothing": ("{}\n", {}),
    "bad name": ("name: Has Spaces\nentrypoint: agent.main:handle\n", {}),
    "bad entrypoint": ("name: a\nentrypoint: agent.main.handle\n", {}),
    "keyword": ("name: a\nentrypoint: agent.class:handle\n", {}),
    "missing module": ("name: a\nentrypoint: agent.nope:handle\n", {}),
    "unknown key": ("name: a\nentrypoint: agent.main:handle\ncolour: blue\n", {}),
    "runtime": ("name: a\nentrypoint: agent.main:handle\nruntime: python2\n", {}),
    "timeout": ("name: a\nentrypoint: agent.main:handle\ntimeout: 0\n", {}),
    "resources": (
        "name: a\nentrypoint: agent.main:handle\n"
        "resources: {memory_mb: 1, cpus: -1, pids: 2, x: 1}\n",
        {},
    ),
    "env": (
        "name: a\nentrypoint: agent.main:handle\nenv: {PATH: x, AIMOS_X: y, 1A: z, D: [1]}\n",
        {},
    ),
    "requirements outside": (
        "name: a\nentrypoint: agent.main:handle\nrequirements: ../r.txt\n",
        {},
    ),
    "requirements missing": ("name: a\nentrypoint: agent.main:handle\nrequirements: r.txt\n", {}),
    "reuse": ("name: a\nentrypoint: agent.main:handle\nreuse: maybe\n", {}),
    "network": ("name: a\nentrypoint: agent.main:handle\nnetwork: 1\n", {}),
    "alias": ("name: &n a\nentrypoint: agent.main:handle\n", {}),
    "tag": ("name: !!str a\nentrypoint: agent.main:handle\n", {}),
    "duplicate": ("name: a\nname: b\nentrypoint: agent.main:handle\n", {}),
    "not a mapping": ("- a\n- b\n", {}),
    "not yaml": ("name: [a\n", {}),
}


def make_agent(root: Path, manifest: str, files: dict[str, str]) -> Path:
    (root / "agent").mkdir(parents=True)
    (root / "agent" / "main.py").write_text(MAIN)
    (root / "aimos.yaml").write_text(manifest)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def verdict(load, error_class, root: Path):
    try:
        return ("valid", load(root))
    except error_class as exc:
        errors = exc.errors
        fields = sorted(
            (e["field"], e["message"]) if isinstance(e, dict) else (e.field, e.message)
            for e in errors
        )
        # A file-level problem's message names the file's path; compare what it says.
        return ("invalid", [(f, m.split(" (line")[0][:40]) for f, m in fields])


@pytest.mark.parametrize("case", MANIFESTS)
def test_the_client_judges_a_manifest_as_the_server_does(tmp_path, case):
    manifest, files = MANIFESTS[case]
    root = make_agent(tmp_path / "agent-dir", manifest, files)
    ours = verdict(load_manifest, ManifestError, root)
    theirs = verdict(server_load_manifest, ServerManifestError, root)
    assert ours == theirs


def test_packing_leaves_out_what_ignore_files_say(tmp_path):
    root = make_agent(tmp_path / "a", "name: a\nentrypoint: agent.main:handle\n", {})
    files = {
        ".gitignore": "*.log\nbuild/\n/top-only.txt\n",
        ".aimosignore": "!keep.log\nsecrets/\n",
        "keep.log": "",
        "drop.log": "",
        "top-only.txt": "",
        "build/x.py": "",
        "secrets/key": "",
        "sub/top-only.txt": "",
        "sub/.gitignore": "local.txt\n",
        "sub/local.txt": "",
        "sub/deeper/local.txt": "",
        "local.txt": "",
        ".git/config": "",
        "agent/__pycache__/main.cpython-311.pyc": "",
        ".venv/bin/python": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "agent" / "link.py").symlink_to("main.py")
    assert sorted(iter_files(root)) == sorted(
        [
            ".aimosignore",
            ".gitignore",
            "agent/link.py",
            "agent/main.py",
            "aimos.yaml",
            "keep.log",
            "local.txt",
            "sub/.gitignore",
            "sub/top-only.txt",
        ]
    )
    package = pack(root)
    with tarfile.open(fileobj=io.BytesIO(package.data), mode="r:gz") as tar:
        members = {member.name: member for member in tar.getmembers()}
    assert sorted(members) == sorted(package.files)
    assert members["agent/link.py"].issym() and members["agent/link.py"].linkname == "main.py"
    assert members["aimos.yaml"].uid == 0 and members["aimos.yaml"].uname == ""


def test_a_link_leaving_the_folder_is_refused(tmp_path):
    from aimos_client.packing import PackError

    root = make_agent(tmp_path / "a", "name: a\nentrypoint: agent.main:handle\n", {})
    (root / "outside.txt").symlink_to(tmp_path)
    with pytest.raises(PackError, match="outside the folder"):
        pack(root)


AGENT_SDK = """
import asyncio, os, sys

async def handle(payload, ctx):
    print("to stdout")
    print("to stderr", file=sys.stderr)
    ctx.delta("a")
    ctx.checkpoint({"n": 1}, label="one")
    ctx.emit("progress", {"done": 0.5})
    await asyncio.sleep(0)
    return {"state": ctx.state, "env": os.environ.get("GREETING"), "payload": payload}
"""


def test_dev_run_gives_the_handler_the_platforms_ctx_and_events(tmp_path):
    root = make_agent(
        tmp_path / "a", "name: a\nentrypoint: agent.main:handle\nenv: {GREETING: hi}\n", {}
    )
    (root / "agent" / "main.py").write_text(AGENT_SDK)
    seen = []
    result = run_local(root, [1, 2], state={"s": 1}, on_event=seen.append)
    assert result.status == "completed"
    assert result.output == {"state": {"s": 1}, "env": "hi", "payload": [1, 2]}
    assert seen == result.events
    kinds = [(e.type, e.data.get("source")) for e in result.events]
    assert kinds[0] == ("run_started", None) and kinds[-1] == ("run_completed", None)
    assert ("log", "stdout") in kinds and ("log", "stderr") in kinds
    assert any(e.type == "progress" and e.data == {"done": 0.5} for e in result.events)
    checkpoint = next(e for e in result.events if e.type == "checkpoint")
    assert checkpoint.data == {"checkpoint_id": "local-1", "label": "one"}
    assert result.checkpoints == [{"id": "local-1", "label": "one", "state": {"n": 1}}]
    assert [e.seq for e in result.events] == list(range(1, len(result.events) + 1))


def test_dev_run_reports_a_failure_and_a_timeout(tmp_path):
    root = make_agent(tmp_path / "a", "name: a\nentrypoint: agent.main:handle\ntimeout: 1\n", {})
    (root / "agent" / "main.py").write_text("def handle(payload):\n    raise ValueError('no')\n")
    failed = run_local(root)
    assert (failed.status, failed.error, failed.error_type) == (
        "failed",
        "ValueError: no",
        "exception",
    )
    assert any("Traceback" in e.data.get("message", "") for e in failed.events if e.type == "log")

    (root / "agent" / "main.py").write_text(
        "import subprocess, sys\n\ndef handle(payload):\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "    open('child.pid', 'w').write(str(child.pid))\n"
        "    child.wait()\n"
    )
    slow = run_local(root, timeout=1)
    assert slow.status == "timed_out"
    assert slow.events[-1].type == "run_timed_out"
    assert_ended(int((root / "child.pid").read_text()))


def assert_ended(pid: int) -> None:
    """The process `pid` has exited (killed with the run), waited for without polling."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([handle], [], [], 10)
        assert ready, f"process {pid} outlived its run"
    finally:
        os.close(handle)


def test_init_writes_an_agent_the_server_accepts(tmp_path):
    for template in ("sync", "stream"):
        root = tmp_path / f"My Agent {template}"
        init(root, template=template)
        assert server_load_manifest(root)["name"] == agent_name(root.name)
        assert run_local(root, {"name": "x", "topic": "y", "delay": 0}).ok
    with pytest.raises(InitError, match="already has"):
        init(tmp_path / "My Agent sync")
