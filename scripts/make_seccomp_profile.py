"""Write deploy/seccomp-sandbox.json: the seccomp profile of the student and teacher containers.

    python scripts/make_seccomp_profile.py [--unistd /usr/include/x86_64-linux-gnu/asm/unistd_64.h]

The services that run model code start each interpreter inside bubblewrap, which needs what Docker's default
profile refuses to a container without CAP_SYS_ADMIN: user namespaces (`clone`/`unshare` with namespace flags)
and, inside them, `mount`, `umount2` and `pivot_root`. The kernel confines all of these to namespaces the
process owns, so allowing them gives nothing over the container's own mounts (cap_drop ALL stays).

The profile is an allow-list with a default of ENOSYS (a syscall newer than the list makes libraries fall back,
as for clone3 under the default profile): every syscall of the kernel's table (read from the installed kernel
headers, so the list is the machine's, not a copy) except `DENY` below, which keeps out of reach what no service
needs and what has a history of kernel exploits or reaches beyond the container. Native x86_64 and aarch64
only: 32-bit and x32 syscalls are refused. Run it again after editing DENY; tests/deploy checks the result.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "deploy" / "seccomp-sandbox.json"
UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
EPERM, ENOSYS = 1, 38

# Refused, each for a reason; everything else in the kernel's table is allowed.
DENY = {
    # the kernel itself: modules, kexec, reboot, swap, accounting, quotas, clocks, raw I/O ports
    "init_module", "finit_module", "delete_module", "create_module", "get_kernel_syms", "query_module",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm", "syslog", "vhangup",
    "lookup_dcookie", "nfsservctl", "uselib", "_sysctl", "ustat", "sysfs",
    # keyrings are not namespaced; bpf and perf reach into the kernel; userfaultfd and io_uring are exploit
    # staples; modify_ldt (x86 descriptors)
    "add_key", "request_key", "keyctl", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "modify_ldt", "fanotify_init",
    # other processes: tracing, their memory, their fds (with cap_drop ALL, same-uid only; not needed)
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
    "process_mrelease",
    # file handles bypass path permissions (the "shocker" escape)
    "open_by_handle_at", "name_to_handle_at",
    # joining namespaces the process did not create, and the new mount API (bwrap uses mount(2))
    "setns", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # not implemented on Linux
    "afs_syscall", "getpmsg", "putpmsg", "security", "tuxcall", "vserver",
}
# What bubblewrap needs beyond Docker's default for a container without CAP_SYS_ADMIN.
BWRAP_NEEDS = ("clone", "clone3", "unshare", "mount", "umount2", "pivot_root", "chroot", "sethostname")
# personality(2): only the harmless personas (no ADDR_NO_RANDOMIZE, which turns ASLR off for children).
PERSONAS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def kernel_syscalls(unistd: str) -> list[str]:
    names = re.findall(r"#define __NR_(\w+)\s+\d+", Path(unistd).read_text())
    if len(names) < 300:
        raise SystemExit(f"{unistd} lists only {len(names)} syscalls: not a kernel syscall table")
    return sorted(set(names))


def profile(names: list[str]) -> dict:
    allowed = [n for n in names if n not in DENY and n != "personality"]
    missing = [n for n in BWRAP_NEEDS if n not in allowed]
    if missing:
        raise SystemExit(f"the syscall table lacks {missing}")
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": ENOSYS,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []},
        ],
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            *[{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]} for value in PERSONAS],
            {"names": sorted(DENY & set(names)), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unistd", default=UNISTD, help="the kernel's syscall table header")
    args = parser.parse_args()
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(profile(kernel_syscalls(args.unistd)), indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
