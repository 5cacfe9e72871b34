"""The build rules as plain functions: which requirement lines need a source build, pip's
arguments, the hosts an index needs."""

import pytest

from sandbox.base import BuildError
from sandbox.requirements import BuildRules, check_source_builds, index_hosts_of

SOURCE_ONLY = [
    ("-e ./pkg", "editable install"),
    ("./pkg", "local project"),
    ("pkg/", "local project"),
    ("./dist/thing-1.0.tar.gz", "source archive"),
    ("thing @ git+https://example.invalid/thing.git", "version-control checkout"),
    ("git+https://example.invalid/thing.git#egg=thing", "version-control checkout"),
    ("https://example.invalid/thing-1.0.zip", "not a wheel"),
    ("thing @ file:///srv/thing-1.0.tar.gz", "not a wheel"),
]
WHEELS_OR_NAMES = [
    "requests==2.32.3",
    "requests>=2; python_version >= '3.8'",
    "./wheels/thing-1.0-py3-none-any.whl",
    "thing @ https://example.invalid/thing-1.0-py3-none-any.whl",
    "--pre",
    "# a comment",
]


def package(tmp_path, text: str, included: str | None = None):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "requirements.txt").write_text(text)
    if included is not None:
        (tmp_path / "more.txt").write_text(included)
    return tmp_path


@pytest.mark.parametrize("line, why", SOURCE_ONLY)
def test_requirements_that_need_a_source_build_are_refused_with_their_line(tmp_path, line, why):
    code = package(tmp_path, f"requests\n{line}\n")
    with pytest.raises(BuildError, match=why) as refused:
        check_source_builds(code, "requirements.txt", BuildRules())
    assert f"requirements.txt, line 2: {line!r}" in str(refused.value)
    check_source_builds(code, "requirements.txt", BuildRules(allow_source=True))


def test_an_included_file_is_checked_too(tmp_path):
    code = package(tmp_path, "-r more.txt\n", included="./pkg\n")
    with pytest.raises(BuildError, match="more.txt, line 1: './pkg' is a local project"):
        check_source_builds(code, "requirements.txt", BuildRules())


def test_wheels_and_index_names_pass(tmp_path):
    code = package(tmp_path, "\n".join(WHEELS_OR_NAMES) + "\n")
    check_source_builds(code, "requirements.txt", BuildRules())


def test_pip_gets_the_index_and_wheels_only_unless_source_builds_are_allowed():
    rules = BuildRules(index_url="https://mirror.invalid/simple")
    args = rules.pip_install("requirements.txt")
    assert args[args.index("--index-url") + 1] == "https://mirror.invalid/simple"
    assert args[args.index("--only-binary") + 1] == ":all:"
    assert args[-2:] == ["-r", "requirements.txt"]
    assert "--only-binary" not in BuildRules(allow_source=True).pip_install("r.txt")


def test_an_index_needs_its_own_host_and_pypi_its_file_host():
    assert index_hosts_of("https://pypi.org/simple") == ("pypi.org", "files.pythonhosted.org")
    assert index_hosts_of("https://user:pw@Mirror.Example/simple") == ("mirror.example",)
