"""Agent packages for tests: the examples, or any files given as a dict, packed as .tar.gz."""

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

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


def wheel(name: str, version: str, module_code: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel (file name, bytes) providing module `name`, built offline."""
    dist = f"{name}-{version}"
    files = {
        f"{name}.py": module_code.encode(),
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{dist}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: aimos-tests\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return f"{dist}-py3-none-any.whl", buffer.getvalue()
