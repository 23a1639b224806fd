"""End-to-end tests of the Hyper-V interface: the unmodified Debian guest detects Hyper-V,
hv_vmbus connects over the SynIC, UNLOAD is answered, and a guest panic is reported
through the Hyper-V crash MSRs. Everything asserted is what the guest itself reports
(dmesg, /sys), plus Enlighten's exit status."""

from __future__ import annotations

import re
import sys
import unittest

from harness import RunResult, describe
from guests import GUESTS

VMBUS_VERSION_RE = re.compile(r"hv_vmbus: Vmbus version:(\d+)\.(\d+)")


def check_load_and_unload(test: unittest.TestCase, res: RunResult, cpus: int) -> None:
    """What a guest running guests.LOAD_AND_UNLOAD must show: Hyper-V detected, hv_vmbus
    connected at VMBus 5.0 or later with `cpus` processors, and unloaded within 5 s."""
    out = res.output
    test.assertEqual(res.returncode, 0, describe(res))
    # Detection, as the guest logs it (arch/x86/kernel/cpu/mshyperv.c).
    test.assertIn("Hypervisor detected: Microsoft Hyper-V", out, describe(res))
    test.assertRegex(out, r"Hyper-V: privilege flags low 0x[0-9a-f]+", describe(res))
    test.assertIn("Hyper-V: LAPIC Timer Frequency", out, describe(res))
    test.assertIn("MODPROBE-OK", out, describe(res))
    m = VMBUS_VERSION_RE.search(out)
    test.assertIsNotNone(m, "no negotiated VMBus version in dmesg" + describe(res))
    test.assertGreaterEqual((int(m.group(1)), int(m.group(2))), (5, 0), describe(res))
    test.assertIn("VMBUS-SYSFS-PRESENT", out, describe(res))
    test.assertIn(f"CPUS={cpus}", out, describe(res))
    test.assertIn("RMMOD-OK", out, describe(res))
    m = re.search(r"UNLOAD-SECONDS ([0-9.e-]+)", out)
    test.assertIsNotNone(m, "the job did not report the UNLOAD time" + describe(res))
    seconds = float(m.group(1))
    test.assertLess(seconds, 5.0, "UNLOAD took too long" + describe(res))
    print(f"[unload {seconds:.2f} s] ", end="", file=sys.stderr, flush=True)


class HyperVTests(unittest.TestCase):
    """Each test checks one run of the "guests" session (guests.py): the 1- and 2-vCPU
    connect/unload checks read the "poweroff" and "facts" guests that test_boot checks too."""

    def run_of(self, key: str) -> RunResult:
        return GUESTS.result(self, key)

    def test_hv_vmbus_connects_and_unloads_1cpu(self) -> None:
        check_load_and_unload(self, self.run_of("poweroff"), 1)

    def test_hv_vmbus_connects_and_unloads_2cpus(self) -> None:
        check_load_and_unload(self, self.run_of("facts"), 2)

    def test_guest_panic_is_reported_through_the_crash_msrs(self) -> None:
        # The panic path sends UNLOAD and polls for the answer for up to 100 s before the
        # kmsg dump reaches the crash MSRs, so a fast exit also proves UNLOAD was answered.
        res = self.run_of("panic")
        out = res.output
        self.assertIn("MODPROBE-OK", out, describe(res))
        self.assertEqual(res.returncode, 4, "expected the guest-crash exit status" + describe(res))
        self.assertRegex(out, r"guest crashed: P0=0x[0-9a-f]+ P1=0x[0-9a-f]+ P2=0x[0-9a-f]+ P3=0x[0-9a-f]+ "
                              r"P4=0x[0-9a-f]+", describe(res))
        # The guest's own panic message, delivered through the crash MSRs' message page
        # (what Enlighten prints after "guest kernel log:").
        report = out[out.index("guest kernel log:"):] if "guest kernel log:" in out else ""
        self.assertIn("Kernel panic - not syncing: sysrq triggered crash", report, describe(res))
        self.assertIn("vmbus: guest unloaded", out, "UNLOAD was not seen" + describe(res))
        self.assertNotIn("Waiting for VMBus UNLOAD", out, describe(res))

    def test_reboot_with_hv_vmbus_loaded_reconnects_without_a_stall(self) -> None:
        # Each boot loads hv_vmbus and reboots; the VM restarts with a fresh VMBus. Stopped
        # after the second boot has connected.
        res = self.run_of("restart-vmbus")
        self.assertEqual(len(re.findall(r"^VMBUS-UP", res.output, re.M)), 2, describe(res))
        uptimes = [float(u) for u in re.findall(r"ENLIGHTEN-INIT uptime=([0-9.]+)", res.output)]
        self.assertEqual(len(uptimes), 2, describe(res))
        # The second boot is as quick as the first: no 100-second wait anywhere. (The run's
        # own time; it used to include the test host's boot.)
        self.assertLess(res.duration, 150, describe(res))
        self.assertNotIn("Waiting for VMBus UNLOAD", res.output, describe(res))

    def test_hyperv_off_gives_the_kvm_interface(self) -> None:
        res = self.run_of("hyperv-off")
        self.assertEqual(res.returncode, 0, describe(res))
        self.assertIn("Hypervisor detected: KVM", res.output, describe(res))
        self.assertNotIn("Microsoft Hyper-V", res.output, describe(res))


if __name__ == "__main__":
    unittest.main(verbosity=2)
