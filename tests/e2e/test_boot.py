"""End-to-end tests: boot the default Linux guest with build/enlighten.

Run:   python3 -m unittest discover -s tests/e2e -v      (scripts/test does this)

Enlighten runs directly on this machine when it has hardware KVM, or else inside the
QEMU-TCG "test host" (tools/enlighten_tools/testhost.py); ENLIGHTEN_RUNNER=direct|testhost
overrides. ENLIGHTEN_BINARY overrides the binary (default <repo>/build/enlighten).
The guest runs are defined in guests.py and run in one test-host session (harness.Session).
The bad-input tests run directly by default (they must fail before any guest runs);
they follow ENLIGHTEN_RUNNER when it is set.

CLI under test:
  enlighten run --kernel PATH --initrd PATH --cmdline STRING --memory SIZE --cpus N
                [--serial stdio|file:PATH] [--on-reboot exit|restart]
  exit 0: guest powered off; 3: guest reset with --on-reboot=exit;
  1: bad input, with exactly one stderr line "enlighten: error: ..." that names the bad
     option or file.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from pathlib import Path

from harness import BINARY, INIT_RE, QUIET_CMDLINE, describe, image, require_binary  # noqa: F401
from guests import GUESTS
from enlighten_tools import testhost  # noqa: E402
from enlighten_tools.testhost import Carry, RunResult, run_enlighten  # noqa: E402


class GuestBootTests(unittest.TestCase):
    """Each test checks one run of the "guests" session (guests.py); the session boots the
    test host once for all of them. "facts" and "poweroff" are shared with test_hyperv."""

    def run_of(self, key: str) -> RunResult:
        return GUESTS.result(self, key)

    def assertMarkers(self, res: RunResult, count: int = 1) -> None:
        found = len(INIT_RE.findall(res.output))
        self.assertEqual(found, count, f"expected {count} ENLIGHTEN-INIT marker(s), "
                                       f"found {found}" + describe(res))

    def test_boot_1cpu_to_init(self) -> None:
        """Unmodified kernel, full boot log on the serial console, default /init job."""
        res = self.run_of("full-log")
        self.assertMarkers(res)
        self.assertIn("Hello from the Enlighten default guest.", res.output, describe(res))
        self.assertEqual(res.returncode, 0, describe(res))

    def test_boot_2cpus_sees_2_processors(self) -> None:
        res = self.run_of("facts")
        self.assertMarkers(res)
        self.assertIn("CPUS=2", res.output, describe(res))
        # the job ran to its end (its last command is `exit 7`)
        self.assertIn("ENLIGHTEN-JOB-EXIT 7", res.output, describe(res))
        self.assertEqual(res.returncode, 0, describe(res))

    def test_guest_poweroff_exits_0(self) -> None:
        res = self.run_of("poweroff")
        self.assertMarkers(res)
        self.assertIn("job-before-poweroff", res.output, describe(res))
        self.assertNotIn("job-after-poweroff", res.output, describe(res))
        self.assertNotIn("ENLIGHTEN-JOB-EXIT", res.output, describe(res))
        self.assertEqual(res.returncode, 0, describe(res))

    def test_guest_reboot_with_on_reboot_exit_exits_3(self) -> None:
        res = self.run_of("reboot-exit")
        self.assertMarkers(res)
        self.assertIn("job-before-reboot", res.output, describe(res))
        self.assertNotIn("job-after-reboot", res.output, describe(res))
        self.assertNotIn("Kernel panic", res.output, describe(res))
        self.assertEqual(res.returncode, 3, describe(res))

    def test_guest_reboot_with_on_reboot_restart_boots_again(self) -> None:
        # The guest reboots at every boot. Once the init marker has been printed twice,
        # Enlighten gets SIGTERM (like `timeout -s TERM`), so it should die of it (143).
        res = self.run_of("restart")
        found = len(INIT_RE.findall(res.output))
        self.assertGreaterEqual(found, 2, "guest did not boot a second time" + describe(res))
        self.assertIn(testhost.STOP_SENT_MARKER, res.output,
                      "Enlighten exited by itself before it got SIGTERM" + describe(res))
        self.assertNotIn("Kernel panic", res.output, describe(res))
        self.assertIn(res.returncode, (124, 143),
                      "after SIGTERM Enlighten should die of it (or exit 143)" + describe(res))

    def test_kernel_decompressed_on_the_host_runs_at_its_link_address(self) -> None:
        """The default, --kernel-decompress host: Enlighten decompresses the bzImage's kernel
        and the guest enters the kernel proper directly, so it runs where it was linked
        (16 MiB), which the guest's own /proc/iomem shows."""
        res = self.run_of("facts")
        self.assertMarkers(res)
        self.assertRegex(res.output, r"decompressed and loaded, entry 0x1000000", describe(res))
        self.assertRegex(res.output, r"(?m)^\s*01000000-[0-9a-f]+ : Kernel code", describe(res))
        self.assertIn("ENLIGHTEN-JOB-EXIT 7", res.output, describe(res))
        self.assertEqual(res.returncode, 0, describe(res))

    def test_kernel_decompressed_by_the_guest(self) -> None:
        """--kernel-decompress guest: the bzImage's own decompressor runs in the guest (and
        may place the kernel anywhere: KASLR)."""
        res = self.run_of("decompress-guest")
        self.assertMarkers(res)
        self.assertIn("loaded for the guest's decompressor", res.output, describe(res))
        self.assertRegex(res.output, r"(?m)^\s*[0-9a-f]+-[0-9a-f]+ : Kernel code", describe(res))
        self.assertIn("ENLIGHTEN-JOB-EXIT 0", res.output, describe(res))
        self.assertEqual(res.returncode, 0, describe(res))

    def test_job_exit_status_is_reported(self) -> None:
        res = self.run_of("facts")
        self.assertMarkers(res)
        self.assertIn("job-working", res.output, describe(res))
        self.assertIn("ENLIGHTEN-JOB-EXIT 7", res.output, describe(res))
        self.assertEqual(res.returncode, 0, describe(res))

    def test_seccomp_kills_the_vmm_on_a_forbidden_system_call(self) -> None:
        """--seccomp on (the default): a system call outside the vCPU filter (the test hook's
        personality()) ends the VMM with SIGSYS, and it says which call and which thread."""
        res = self.run_of("seccomp-forbidden")
        self.assertIn(res.returncode, (128 + 31, -31), "exit status of a death by SIGSYS" + describe(res))
        self.assertIn("seccomp: forbidden system call 135 (personality) on a thread of kind vcpu", res.output,
                      describe(res))
        self.assertNotIn("SECCOMP-JOB-RAN", res.output, describe(res))

    def test_seccomp_log_mode_lets_the_forbidden_call_through(self) -> None:
        res = self.run_of("seccomp-log")
        self.assertMarkers(res)
        self.assertIn("SECCOMP-JOB-RAN", res.output, describe(res))
        self.assertEqual(res.returncode, 0, describe(res))


class BadInputTests(unittest.TestCase):
    """Enlighten must reject bad input before running a guest: exit 1 and exactly one
    stderr line starting with "enlighten: error:" that names the bad option or file."""

    tmp: tempfile.TemporaryDirectory

    @classmethod
    def setUpClass(cls) -> None:
        cls.runner = os.environ.get("ENLIGHTEN_RUNNER") or "direct"
        cls.tmp = tempfile.TemporaryDirectory(prefix="enlighten-e2e-")
        d = Path(cls.tmp.name)
        cls.not_a_kernel = d / "not-a-bzImage"
        cls.not_a_kernel.write_text("this is a text file, not a Linux bzImage\n")
        cls.huge_initrd = d / "huge-initrd.img"
        with open(cls.huge_initrd, "wb") as f:  # sparse: no disk space used
            f.truncate(100 << 20)
        # A directory path exists in both runners; as root, chmod 000 would not stop reads.
        cls.directory = "/tmp"

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def setUp(self) -> None:
        require_binary(self)

    def run_bad(self, *, kernel=None, initrd=None, memory: str = "512M") -> RunResult:
        kernel = kernel if kernel is not None else Carry(image().kernel)
        initrd = initrd if initrd is not None else Carry(image().initrd)
        args = ["run", "--kernel", kernel, "--initrd", initrd, "--cmdline", QUIET_CMDLINE,
                "--memory", memory, "--cpus", "1", "--serial", "stdio", "--on-reboot", "exit"]
        try:
            return run_enlighten(args, enlighten_binary=BINARY, runner=self.runner,
                                 separate_stderr=True, timeout=60)
        except (testhost.TestHostTimeout, testhost.CommandTimeout) as e:
            self.fail(f"Enlighten did not reject the input (timed out): {e}")

    def assertRejected(self, res: RunResult, *names: str) -> None:
        """Exit 1, one stderr line "enlighten: error: ..." that contains each of `names`
        (the option, and the file as the command saw it), and no guest output."""
        detail = (f"\n--- ran: {res.command}\n--- exit {res.returncode}; stderr ---\n{res.stderr}"
                  f"--- stdout ---\n{res.stdout[-2000:]}--- end ---")
        self.assertEqual(res.returncode, 1, "expected exit code 1" + detail)
        lines = res.stderr.splitlines()
        self.assertEqual(len(lines), 1, "expected exactly one line on stderr" + detail)
        self.assertTrue(lines[0].startswith("enlighten: error:"),
                        'stderr line must start with "enlighten: error:"' + detail)
        for name in names:
            self.assertIn(name, lines[0], f"the error message should name {name!r}" + detail)
        self.assertNotRegex(res.stdout, INIT_RE, "a guest ran" + detail)

    # A carried file keeps its name in the test host (/enlighten/files/<n>-<name>), so the
    # messages are checked for the file's name; paths given as they are, in full.
    def test_missing_kernel(self) -> None:
        self.assertRejected(self.run_bad(kernel="/nonexistent/enlighten-e2e/bzImage"),
                            "kernel", "/nonexistent/enlighten-e2e/bzImage")

    def test_kernel_not_a_bzimage(self) -> None:
        self.assertRejected(self.run_bad(kernel=Carry(self.not_a_kernel)), "kernel", self.not_a_kernel.name)

    def test_kernel_is_a_directory(self) -> None:
        self.assertRejected(self.run_bad(kernel=self.directory), "kernel", f"'{self.directory}'")

    def test_initrd_is_a_directory(self) -> None:
        self.assertRejected(self.run_bad(initrd=self.directory), "initrd", f"'{self.directory}'")

    def test_initrd_larger_than_memory(self) -> None:
        self.assertRejected(self.run_bad(initrd=Carry(self.huge_initrd), memory="64M"),
                            "initrd", self.huge_initrd.name)

    def test_memory_zero(self) -> None:
        self.assertRejected(self.run_bad(memory="0"), "--memory")

    def test_memory_100T(self) -> None:
        self.assertRejected(self.run_bad(memory="100T"), "--memory")


if __name__ == "__main__":
    unittest.main(verbosity=2)
