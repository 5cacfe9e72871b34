"""What a version's build installs, and under which rules (both backends).

- The requirements file is the manifest's `requirements`, else `requirements.txt`, inside
  the package (`requirements_file`).
- pip installs wheels only (`--only-binary :all:`) unless the server allows source builds
  (AIMOS_BUILD_ALLOW_SOURCE): building an sdist or a local project runs the uploader's code
  (its build backend, `setup.py`) during the build. Requirements that can only be built from
  source (a local folder or sdist, a VCS or archive URL, `-e`) are refused before pip starts,
  with a line that says why (`check_source_builds`); pip's own `--only-binary` refuses the
  rest (an index package with no wheel).
- pip reaches only the package index, through the egress proxy (`sandbox/egress.py`); the
  index is AIMOS_BUILD_INDEX_URL, the hosts it may reach AIMOS_BUILD_INDEX_HOSTS.
- An environment may not grow past AIMOS_BUILD_MAX_MB (`tree_size`, checked while pip runs
  and at the end).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sandbox.base import BuildError

MB = 1024 * 1024
SOURCE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
_VCS = re.compile(r"^(git|hg|svn|bzr)\+", re.IGNORECASE)
_OPTION_WITH_VALUE = re.compile(
    r"^(-r|--requirement|-c|--constraint|-i|--index-url|--extra-index-url|-f|--find-links)"
    r"(\s+|=)(\S+)"
)


@dataclass(frozen=True)
class BuildRules:
    """The server's rules for builds, as plain data (see the settings AIMOS_BUILD_*)."""

    index_url: str = "https://pypi.org/simple"
    index_hosts: tuple[str, ...] = ("pypi.org", "files.pythonhosted.org")
    allow_source: bool = False
    max_mb: int = 2048
    timeout_seconds: float = 900.0

    def pip_install(self, requirements: str) -> list[str]:
        """pip's arguments after `pip` to install `requirements` (a path inside the code)."""
        args = [
            "install",
            "--no-input",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--no-warn-script-location",
            "--index-url",
            self.index_url,
        ]
        if not self.allow_source:
            args += ["--only-binary", ":all:"]
        return [*args, "-r", requirements]


def index_hosts_of(index_url: str) -> tuple[str, ...]:
    """The hosts a build needs for `index_url`: its own, and PyPI's file host for PyPI."""
    host = (urlsplit(index_url).hostname or "").lower()
    hosts = [host] if host else []
    if host == "pypi.org":
        hosts.append("files.pythonhosted.org")
    return tuple(hosts)


def requirements_file(code: Path, manifest: dict[str, Any]) -> str | None:
    """The requirements file named by the manifest (or requirements.txt), relative to the
    code, as a POSIX path; None when there is none. BuildError when the manifest names a file
    that is missing or outside the package."""
    code = Path(code).resolve()
    name = manifest.get("requirements")
    if not name:
        return "requirements.txt" if (code / "requirements.txt").is_file() else None
    path = (code / str(name)).resolve()
    if not path.is_relative_to(code):
        raise BuildError(f"requirements file {name!r} is outside the package")
    if not path.is_file():
        raise BuildError(f"requirements file {name!r} not found in the package")
    return path.relative_to(code).as_posix()


def check_source_builds(code: Path, requirements: str, rules: BuildRules) -> None:
    """Refuse, before pip runs, a requirement that could only be built from source (which
    runs the uploader's code), unless the server allows source builds."""
    if rules.allow_source:
        return
    code = Path(code).resolve()
    for file, number, line in _requirement_lines(code, code / requirements, set()):
        why = _source_only(file.parent, line)
        if why is not None:
            where = f"{file.relative_to(code).as_posix()}, line {number}"
            raise BuildError(
                f"{where}: {line!r} {why}; this server installs wheels only "
                "(source builds run the package's own code; AIMOS_BUILD_ALLOW_SOURCE=1 "
                "allows them)"
            )


def _requirement_lines(code: Path, file: Path, seen: set[Path]):
    """(file, line number, requirement) of a requirements file and the files it includes."""
    file = file.resolve()
    if file in seen or not file.is_relative_to(code) or not file.is_file():
        return
    seen.add(file)
    for number, raw in enumerate(file.read_text(errors="replace").splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        option = _OPTION_WITH_VALUE.match(line)
        if option is not None:
            if option.group(1) in ("-r", "--requirement", "-c", "--constraint"):
                yield from _requirement_lines(code, file.parent / option.group(3), seen)
            continue
        yield file, number, line


def _source_only(folder: Path, line: str) -> str | None:
    """Why this requirement line can only be built from source, or None."""
    if line.startswith(("-e", "--editable")):
        return "is an editable install"
    if line.startswith("-"):
        return None  # other options (--hash, --pre, …) install nothing by themselves
    target = line.split(";", 1)[0].strip()
    if " @ " in target:
        target = target.split(" @ ", 1)[1].strip()
    if _VCS.match(target):
        return "is a version-control checkout"
    lowered = target.lower().split("#", 1)[0]
    if lowered.startswith(("http://", "https://", "file:")):
        if lowered.endswith(".whl"):
            return None
        return "is an archive or URL that is not a wheel"
    looks_like_path = target.startswith((".", "/")) or os.sep in target or "/" in target
    if looks_like_path or lowered.endswith(SOURCE_SUFFIXES):
        path = (folder / target).resolve()
        if lowered.endswith(".whl"):
            return None
        if path.is_dir():
            return "is a local project"
        return "is a source archive"
    return None


def tree_size(path: Path) -> int:
    """Bytes on disk under `path` (hard links counted once; links not followed)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
    return total
