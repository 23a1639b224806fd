"""The Enlighten runs behind test_boot.py and test_hyperv.py: one test-host session
("guests"), one Enlighten process per run, executed one after another when the first test
asks for its run. Several tests share a run when its guest can print everything they check
and its exit status is the one they expect (see the comment of each run).

Exit statuses: 0 guest powered off; 3 guest reset with --on-reboot exit; 4 guest crash
(Hyper-V crash MSRs); 128+N killed by signal N.
"""

from __future__ import annotations

from harness import BOOT_TIMEOUT, Session
from enlighten_tools.testhost import StopAfter

GUESTS = Session("guests")

# Loads hv_vmbus, shows what the guest saw, then unloads it (which sends UNLOAD and waits
# for UNLOAD_RESPONSE without a timeout) and reports how long that took.
LOAD_AND_UNLOAD = r"""
modprobe hv_vmbus && echo MODPROBE-OK
dmesg | grep -E 'Hypervisor detected|Hyper-V:|hv_vmbus'
[ -d /sys/bus/vmbus/devices ] && echo VMBUS-SYSFS-PRESENT
echo "CPUS=$(grep -c ^processor /proc/cpuinfo)"
read t0 _ < /proc/uptime
rmmod hv_vmbus && echo RMMOD-OK
read t1 _ < /proc/uptime
echo "UNLOAD-SECONDS $(awk "BEGIN { print $t1 - $t0 }")"
"""

# The two shared runs:
# "facts": one 2-vCPU guest, kernel decompressed on the host (the default), debug log (for
# the startup lines), whose job reads everything the read-only tests check and ends with
# `exit 7`. Used by test_boot (2 processors, kernel at its link address, job exit status)
# and test_hyperv (detection, hv_vmbus connect/unload with 2 vCPUs).
FACTS_JOB = 'grep "Kernel code" /proc/iomem\n' + LOAD_AND_UNLOAD + "echo job-working\nexit 7\n"
# "poweroff": 1 vCPU; hv_vmbus connect/unload, then `poweroff -f` from the job (exit 0, the
# rest of the job never runs). Used by test_boot (poweroff) and test_hyperv (1 vCPU).
POWEROFF_JOB = LOAD_AND_UNLOAD + "echo job-before-poweroff\npoweroff -f\nsleep 5\necho job-after-poweroff\n"

# Registered in the order they are started: the 2-vCPU guests first, then the 1-vCPU guests
# longest first (so that with ENLIGHTEN_E2E_LANES=2 the 2-vCPU guests have the test host to
# themselves and the lanes end together).

# test_hyperv: a guest panic, reported through the Hyper-V crash MSRs (exit 4). The pause
# lets the guest's serial driver send MODPROBE-OK first: bytes still in its transmit buffer
# when another vCPU panics are never sent (the panic stops the CPU that would send them), as
# on real hardware; it happened once in 15+ runs (stop 29).
GUESTS.boot("panic", cpus=2, job="modprobe hv_vmbus && echo MODPROBE-OK\nsleep 1\necho c > /proc/sysrq-trigger\n",
            timeout=90, extra_args=["--log-level", "info"])

# shared: test_boot and test_hyperv, see FACTS_JOB
GUESTS.boot("facts", cpus=2, job=FACTS_JOB, extra_args=["--log-level", "debug"])

# test_hyperv: reboot with hv_vmbus loaded and --on-reboot restart; stop after the second
# boot has connected.
GUESTS.boot("restart-vmbus", job="modprobe hv_vmbus && echo VMBUS-UP\nreboot -f\n", on_reboot="restart",
            stop_after=StopAfter("VMBUS-UP", count=2, max_seconds=120, signal="TERM"), timeout=180)

# test_boot: reboot with --on-reboot restart, without hv_vmbus. The guest reboots at every
# boot; once the init marker has been printed twice Enlighten gets SIGTERM (143).
GUESTS.boot("restart", job="echo job-rebooting\nreboot -f\n", on_reboot="restart",
            stop_after=StopAfter("ENLIGHTEN-INIT uptime=", count=2, max_seconds=90, signal="TERM"),
            timeout=BOOT_TIMEOUT + 30)

# test_boot: the default /init (no job) with the full kernel log on the console.
GUESTS.boot("full-log", cpus=1, cmdline="console=ttyS0 panic=-1")

# shared: test_boot (poweroff) and test_hyperv (1 vCPU), see POWEROFF_JOB
GUESTS.boot("poweroff", cpus=1, job=POWEROFF_JOB)

# test_boot: reboot with --on-reboot exit (exit 3).
GUESTS.boot("reboot-exit", job="echo job-before-reboot\nreboot -f\nsleep 5\necho job-after-reboot\n",
            on_reboot="exit")

# test_boot: --kernel-decompress guest (the bzImage's own decompressor, KASLR).
GUESTS.boot("decompress-guest", job='grep "Kernel code" /proc/iomem\n',
            extra_args=["--kernel-decompress", "guest", "--log-level", "debug"])

# test_boot: seccomp (docs/security.md). The test hook makes the first vCPU thread call
# personality(), which no filter allows: the VMM dies with SIGSYS (exit 159) and says why;
# with --seccomp log the same call is only logged by the kernel and the guest runs.
GUESTS.boot("seccomp-forbidden", job="echo SECCOMP-JOB-RAN\n", timeout=90,
            extra_args=["--seccomp-test-forbidden", "vcpu"])
GUESTS.boot("seccomp-log", job="echo SECCOMP-JOB-RAN\n",
            extra_args=["--seccomp", "log", "--seccomp-test-forbidden", "vcpu"])

# test_hyperv: --hyperv off gives the KVM interface.
GUESTS.boot("hyperv-off", job="dmesg | grep -E 'Hypervisor detected'\n", extra_args=["--hyperv", "off"])
