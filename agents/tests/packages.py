"""Agent packages for tests: the examples, or any files given as a dict, packed as .tar.gz."""

import io
import tarfile
from pathlib import Path

from sandbox.tests.helpers import wheel  # noqa: F401 (re-exported for the agents' tests)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MANIFEST = """\
name: {name}
entrypoint: agent.main:handle
runtime: python3.11
timeout: 20
{extra}
"""


def pack_files(files: dict[str, str | bytes]) -> bytes:
    """A .tar.gz holding `files` (path → content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in sorted(files.items()):
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def example_files(name: str) -> dict[str, bytes]:
    root = EXAMPLES / name
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def agent_files(code: str, *, name: str = "probe", extra: str = "", **more: str | bytes) -> dict:
    files = {
        "aimos.yaml": MANIFEST.format(name=name, extra=extra),
        "agent/__init__.py": "",
        "agent/main.py": code,
    }
    files.update(more)
    return files
