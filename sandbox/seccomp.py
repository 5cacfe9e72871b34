"""The seccomp filter of the process sandbox: which system calls agent code may make.

bubblewrap loads it (`--seccomp FD`) just before it runs the sandboxed command, so it holds
for every process of a run, builds included, and cannot be lifted: a filter only ever adds
restrictions, and the filter allows no way around itself (no ptrace, no new namespaces).

It is Docker's default profile (moby `profiles/seccomp/default.json`) for a container
without capabilities, which is what a run is: an allowlist, and every other call fails with
EPERM. Among the calls that fail, and why:

- new namespaces: `unshare`, `setns`, `clone` with any CLONE_NEW* flag (user namespaces
  above all: they hand out capabilities and a large kernel surface), and `clone3`, whose
  flags sit in memory a filter cannot read; `clone3` fails with ENOSYS so that the C
  library falls back to `clone`, as under Docker;
- the kernel's riskiest interfaces for unprivileged code: `bpf`, `perf_event_open`,
  `userfaultfd` (a tool for kernel exploits), `io_uring_setup/enter/register` (its work
  happens outside the filter), `keyctl`/`add_key`/`request_key` (keyrings are not
  namespaced);
- mounts and filesystems: `mount`, `umount2`, `pivot_root`, `chroot`, `move_mount`,
  `open_tree`, `mount_setattr`, `fsopen`, `fsmount`, `fsconfig`, `fspick`, `quotactl`,
  `open_by_handle_at` (reads files by handle, past the mount namespace), `lookup_dcookie`;
- the machine itself: `reboot`, `kexec_load`, `kexec_file_load`, `init_module`,
  `finit_module`, `delete_module`, `swapon`, `swapoff`, `acct`, `settimeofday`,
  `clock_settime`, `syslog`, `vhangup`, `iopl`, `ioperm`, `sethostname`, `setdomainname`;
- other processes: `ptrace`, `process_vm_readv`, `process_vm_writev`, `kcmp`,
  `pidfd_getfd`, `process_madvise`;
- NUMA placement without CAP_SYS_NICE: `mbind`, `set_mempolicy`, `get_mempolicy`,
  `move_pages`, `migrate_pages`;
- obsolete calls: `uselib`, `ustat`, `sysfs`, `_sysctl`, `nfsservctl`;
- `personality` except the values Docker allows (0, PER_LINUX32, UNAME26, both, query);
- `socket` of the families AF_ALG (kernel crypto) and AF_VSOCK (the hypervisor's sockets).

Where it differs from Docker's profile, it is stricter:

- `ptrace`, `process_vm_readv` and `process_vm_writev` are denied (Docker allows them on
  kernels >= 4.8). The PID namespace already hides other runs; denying them also keeps
  an agent from tampering with its own runner.
- `name_to_handle_at` is denied (its partner `open_by_handle_at` is denied by both), and so
  are `adjtimex`, `clock_adjtime` and `clock_adjtime64` (the kernel refuses changes to the
  clock without CAP_SYS_TIME; only reading the clock's tuning is lost).
- Only this machine's own ABI is allowed: a system call from another one (`int 0x80` or
  x32 calls on x86_64) kills the process (libseccomp's bad-architecture action), where
  Docker allows 32-bit programs.
- `socket` compares the family on its low 32 bits, as the kernel reads it (Docker's 64-bit
  comparison lets `AF_ALG | 1 << 32` through), and allows only families below 64 (the
  kernel has none above 45; others would fail with EAFNOSUPPORT).
- A call the system's libseccomp cannot name is left out of the allowlist (denied);
  Docker's own libseccomp may know more of the newest ones.

Calls numbered past the newest this libseccomp knows fail with ENOSYS rather than EPERM (as
runc does for Docker), so a C library newer than the filter falls back to the older call.

The program is built once per process by libseccomp (through `pyseccomp`); each sandbox
gets it on a fresh sealed memfd (`program_fd`).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import tempfile

UNAVAILABLE: str | None = None  # why libseccomp cannot be used here
try:
    import pyseccomp
except ImportError:
    pyseccomp = None
    UNAVAILABLE = "pyseccomp is not installed (pip install -r requirements.txt)"
except (OSError, RuntimeError) as exc:  # it loads libseccomp when imported
    pyseccomp = None
    UNAVAILABLE = f"libseccomp cannot be loaded ({exc}; apt-get install libseccomp2)"

# Docker's default allowlist, less what the module docstring says we deny on top.
ALLOWED = frozenset(
    """
accept accept4 access alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday
getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount listxattr
listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise
map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock
mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget
msgrcv msgsnd msync munlock munlockall munmap nanosleep newfstatat _newselect open openat
openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll
ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename
renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler
sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile
sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt
set_thread_area set_tid_address setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget
shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat
stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo
tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write
writev
""".split()
)
# Docker allows these on the architectures that have them (a name missing here is skipped).
ALLOWED_ARCH_SPECIFIC = frozenset(
    """
arch_prctl modify_ldt sync_file_range2 swapcontext arm_fadvise64_64 arm_sync_file_range
breakpoint cacheflush set_tls s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr
riscv_flush_icache
""".split()
)
# clone(2) flags that make a namespace: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
# NEWPID, NEWNET (Docker's mask).
CLONE_NAMESPACE_FLAGS = 0x7E020000
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
AF_ALG, AF_VSOCK = 38, 40
SOCKET_FAMILIES = range(64)  # every AF_* the kernel has is below 46
# Calls numbered from the newest libseccomp knows up to this fail with ENOSYS (see above).
NEWER_CALLS_UP_TO = 1024


def problem() -> str | None:
    """Why the filter cannot be made on this host (pyseccomp or libseccomp missing), or None."""
    if UNAVAILABLE is not None:
        return UNAVAILABLE
    try:
        program()
    except OSError as exc:
        return f"libseccomp cannot build the sandbox's seccomp filter: {exc}"
    return None


@functools.cache
def program() -> bytes:
    """The filter as a classic BPF program for this machine's architecture (what bwrap's
    --seccomp reads). Built once per process; the same bytes every time."""
    if UNAVAILABLE is not None:
        raise OSError(errno.ENOSYS, UNAVAILABLE)
    with tempfile.TemporaryFile() as out:
        build_filter().export_bpf(out)
        out.seek(0)
        return out.read()


def build_filter() -> pyseccomp.SyscallFilter:
    """The filter (see the module docstring), as libseccomp's own object."""
    seccomp = pyseccomp
    filt = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
    filt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    try:
        filt.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)  # a binary tree: fewer checks per call
    except OSError:
        pass  # libseccomp < 2.5: a linear list, as correct
    for number in sorted(_native_numbers(ALLOWED | ALLOWED_ARCH_SPECIFIC)):
        filt.add_rule(seccomp.ALLOW, number)
    for value in PERSONALITIES:
        filt.add_rule(seccomp.ALLOW, "personality", seccomp.Arg(0, seccomp.EQ, value))
    # The kernel reads the family as a 32-bit int: compare only those bits.
    for family in SOCKET_FAMILIES:
        if family not in (AF_ALG, AF_VSOCK):
            low = seccomp.Arg(0, seccomp.MASKED_EQ, 0xFFFFFFFF, family)
            filt.add_rule(seccomp.ALLOW, "socket", low)
    # s390 has clone's flags in its second argument.
    flags = 1 if seccomp.system_arch() in (seccomp.Arch.S390, seccomp.Arch.S390X) else 0
    filt.add_rule(
        seccomp.ALLOW, "clone", seccomp.Arg(flags, seccomp.MASKED_EQ, CLONE_NAMESPACE_FLAGS, 0)
    )
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    newest = max(number for number in range(NEWER_CALLS_UP_TO) if _named(number))
    for number in range(newest + 1, NEWER_CALLS_UP_TO):
        filt.add_rule(seccomp.ERRNO(errno.ENOSYS), number)
    return filt


def program_fd() -> int:
    """A new memfd holding `program()` at offset 0, sealed against writes and close-on-exec:
    hand it to one sandbox with `pass_fds` and `--seccomp FD`, then close it."""
    data = program()
    fd = os.memfd_create("aimos-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _native_numbers(names: frozenset[str]) -> set[int]:
    """The numbers of those of `names` this machine's architecture has (per libseccomp)."""
    numbers = set()
    for name in names:
        number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        if number >= 0:  # -1: unknown to libseccomp; other negatives: not on this arch
            numbers.add(number)
    return numbers


def _named(number: int) -> bool:
    """Whether libseccomp knows a system call of this number on this architecture."""
    try:
        pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, number)
    except ValueError:
        return False
    return True
