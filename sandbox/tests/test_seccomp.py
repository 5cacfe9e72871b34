"""The process sandbox's seccomp filter: dangerous system calls fail (EPERM; clone3 ENOSYS)
and the run goes on; threads, subprocesses, fork and multiprocessing still work; a system
call of another ABI kills the caller; the program is built once, the same every time."""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from sandbox import seccomp
from sandbox.base import SandboxUnavailable, Status
from sandbox.process_backend import ProcessBackend
from sandbox.tests.helpers import TEST_LIMITS, run_agent

pyseccomp = pytest.importorskip("pyseccomp")

AGENT = '''
    import ctypes
    import errno
    import multiprocessing
    import os
    import socket
    import subprocess
    import sys
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    CLONE_NEWUSER = 0x10000000


    def call(number, *args):
        """The errno name of a raw system call, or its result when it succeeded."""
        ctypes.set_errno(0)
        result = libc.syscall(number, *(ctypes.c_long(arg) for arg in args))
        if result == -1:
            return errno.errorcode[ctypes.get_errno()]
        if result == 0 and number == NUMBERS["clone"]:
            os._exit(0)  # a child made by a clone that should have failed
        return result


    def denied(numbers):
        global NUMBERS
        NUMBERS = numbers
        n = numbers
        return {
            "unshare": call(n["unshare"], CLONE_NEWUSER),
            "clone_newuser": call(n["clone"], CLONE_NEWUSER | 17, 0, 0, 0, 0),
            "clone3": call(n["clone3"], 0, 0),
            "keyctl": call(n["keyctl"], 0, -3, 0),  # KEYCTL_GET_KEYRING_ID of the session
            "bpf": call(n["bpf"], 0, 0, 0),
            "io_uring_setup": call(n["io_uring_setup"], 1, 0),
            "perf_event_open": call(n["perf_event_open"], 0, 0, -1, -1, 0),
            "userfaultfd": call(n["userfaultfd"], 0),
            "mount": call(n["mount"], 0, 0, 0, 0, 0),
            "ptrace": call(n["ptrace"], 0, 0, 0, 0),  # PTRACE_TRACEME
            "personality": call(n["personality"], 0x0400000),  # READ_IMPLIES_EXEC
            "af_alg": call(n["socket"], 38, 5, 0),
            "af_alg_high_bits": call(n["socket"], 38 | 1 << 32, 5, 0),
            "seccomp_mode": open("/proc/self/status").read().split("Seccomp:")[1].split()[0],
        }


    def square(x):
        return x * x


    def still_works(payload):
        results = []
        thread = threading.Thread(target=lambda: results.append("thread"))
        thread.start()
        thread.join()
        true = subprocess.run(["true"]).returncode
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            squares = pool.map(square, range(5))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.close()
        return {
            "thread": results,
            "true": true,
            "fork": os.waitstatus_to_exitcode(status),
            "multiprocessing": squares,
            "personality_query": call(NUMBERS["personality"], 0xFFFFFFFF) >= 0,
        }


    def with_numbers(numbers):
        global NUMBERS
        NUMBERS = numbers
        return still_works(None)


    def other_abi(code):
        """Run machine code making an i386 system call (int 0x80) in a child: its exit code."""
        return subprocess.run([sys.executable, "-c", code]).returncode
'''
# getpid through the i386 ABI: mov eax, 20; int 0x80; ret — run from executable memory.
INT80 = textwrap.dedent("""
    import ctypes, mmap
    code = b"\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3"
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    print(ctypes.CFUNCTYPE(ctypes.c_int)(address)())
""")
CALLS = ("unshare", "clone", "clone3", "keyctl", "bpf", "io_uring_setup", "perf_event_open",
         "userfaultfd", "mount", "ptrace", "personality", "socket")  # fmt: skip

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the process sandbox runs as root")


def numbers() -> dict[str, int]:
    """This machine's numbers of the calls the agent makes (per libseccomp)."""
    return {name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) for name in CALLS}


@pytest.fixture(scope="module")
def env(process_backend, tmp_path_factory):
    source = tmp_path_factory.mktemp("agent")
    (source / "agent").mkdir()
    (source / "agent/__init__.py").write_text("")
    (source / "agent/main.py").write_text(textwrap.dedent(AGENT))
    environment = process_backend.prepare(source, {}, key="seccomp")
    yield environment
    process_backend.remove(environment)


@root_only
def test_dangerous_system_calls_fail_and_the_run_completes(process_backend, env):
    _, outcome = run_agent(process_backend, env, numbers(), entrypoint="agent.main:denied")
    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.output == {
        "unshare": "EPERM",
        "clone_newuser": "EPERM",
        "clone3": "ENOSYS",
        "keyctl": "EPERM",
        "bpf": "EPERM",
        "io_uring_setup": "EPERM",
        "perf_event_open": "EPERM",
        "userfaultfd": "EPERM",
        "mount": "EPERM",
        "ptrace": "EPERM",
        "personality": "EPERM",
        "af_alg": "EPERM",
        "af_alg_high_bits": "EPERM",
        "seccomp_mode": "2",
    }


@root_only
def test_threads_subprocesses_fork_and_multiprocessing_work_under_the_filter(process_backend, env):
    limits = replace(TEST_LIMITS, timeout_seconds=60)
    _, outcome = run_agent(
        process_backend, env, numbers(), entrypoint="agent.main:with_numbers", limits=limits
    )
    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.output == {
        "thread": ["thread"],
        "true": 0,
        "fork": 7,
        "multiprocessing": [0, 1, 4, 9, 16],
        "personality_query": True,
    }


@root_only
@pytest.mark.skipif(platform.machine() != "x86_64", reason="int 0x80 is an x86 instruction")
def test_a_system_call_of_another_abi_kills_the_caller(process_backend, env):
    host = subprocess.run([sys.executable, "-c", INT80], capture_output=True)
    if host.returncode != 0:
        pytest.skip("this kernel runs no i386 system calls (no IA32 emulation)")
    _, outcome = run_agent(process_backend, env, INT80, entrypoint="agent.main:other_abi")
    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.output == -31  # SIGSYS


def test_the_program_is_built_once_and_deterministic():
    first = seccomp.program()
    assert seccomp.program() is first  # cached
    seccomp.program.cache_clear()
    second = seccomp.program()
    assert first == second
    assert len(first) > 0 and len(first) % 8 == 0  # whole BPF instructions


def test_each_sandbox_gets_a_fresh_sealed_copy():
    fd = seccomp.program_fd()
    try:
        assert os.pread(fd, len(seccomp.program()) + 1, 0) == seccomp.program()
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
        with pytest.raises(PermissionError):
            os.write(fd, b"\0" * 8)
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)


@root_only
def test_without_libseccomp_the_backend_refuses_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(seccomp, "UNAVAILABLE", "pyseccomp is not installed (pip install ...)")
    with pytest.raises(SandboxUnavailable) as refused:
        ProcessBackend(tmp_path).check()
    assert "seccomp filter" in str(refused.value)
    assert "pyseccomp is not installed" in str(refused.value)
    assert "AIMOS_SANDBOX_ALLOW_UNISOLATED" in str(refused.value)


def test_denied_calls_fail_with_eperm_in_the_program():
    """The BPF program's default is ERRNO(EPERM); clone3's rule is ERRNO(ENOSYS)."""
    filt = seccomp.build_filter()
    assert filt.get_attr(pyseccomp.Attr.ACT_DEFAULT) == pyseccomp.ERRNO(errno.EPERM)
    assert filt.get_attr(pyseccomp.Attr.ACT_BADARCH) == pyseccomp.KILL_PROCESS
