"""End-to-end test of the bootable Debian 12 root disk (tools/enlighten_tools/debian_disk.py):
Debian's kernel and Debian's initramfs mount root=/dev/sda1 from a dynamic VHDX on the
synthetic SCSI controller, systemd reaches multi-user.target, udev starts hv-kvp-daemon
when hv_utils makes /dev/vmbus/hv_kvp, the daemon's data reaches the management API, and
`enlighten remote shutdown` makes systemd power the guest off (exit status 0).

One session ("debian"), one scenario. The image is built (or taken from the cache) when
the session runs; the guest writes to a differencing VHDX whose parent is the cached disk,
so the cache stays as built. In the test host the disk is carried in its initramfs
(about 300 MiB: see tools/README.md)."""

from __future__ import annotations

import json
import re
import sys
import unittest

from harness import RunResult, Session, describe, results

from enlighten_tools import debian_disk

DEBIAN = Session("debian")

_disk: debian_disk.DebianDisk | None = None


def _image() -> debian_disk.DebianDisk:
    global _disk
    if _disk is None:
        _disk = debian_disk.build()
    return _disk


SCRIPT = r"""
DISK=$WORK/debian.vhdx
"$ENL" image create "$DISK" --format vhdx --parent "$DEBIAN_VHDX" >"$WORK/create.log" 2>&1 \
    && echo "RESULT child=ok" || { echo "RESULT child=failed"; cat "$WORK/create.log"; exit 1; }
t0=$(now)
"$ENL" run --kernel "$KERNEL" --initrd "$DEBIAN_INITRD" --memory 512M --cpus "$CPUS" \
    --serial "file:$SERIAL" --api-socket "$API" --on-reboot exit --log-level info \
    --disk "path=$DISK,format=vhdx" \
    --cmdline "root=/dev/sda1 console=ttyS0 quiet panic=-1" >"$WORK/vmm.log" 2>&1 &
VM_PID=$!
wait_serial ENLIGHTEN-DEBIAN-READY 300 || { dump_logs; exit 1; }
echo "RESULT boot_seconds=$(awk "BEGIN { print $(now) - $t0 }")"
wait_api 60 FullyQualifiedDomainName kvp-list auto
echo "--- auto pool ---"
api kvp-list auto
echo "--- end auto pool ---"
api heartbeat
t1=$(now)
api shutdown --timeout 60 && echo "RESULT request=accepted"
wait $VM_PID
echo "RESULT rc=$?"
echo "RESULT shutdown_seconds=$(awk "BEGIN { print $(now) - $t1 }")"
"$ENL" image check "$DISK" >/dev/null 2>&1; echo "RESULT child_check=$?"
dump_logs
"""
DEBIAN.scenario("boot", SCRIPT, timeout=600,
                files={"DEBIAN_VHDX": lambda: _image().vhdx, "DEBIAN_INITRD": lambda: _image().initrd})


class DebianDiskTests(unittest.TestCase):
    res: RunResult
    r: dict[str, str]

    def setUp(self) -> None:
        self.res = DEBIAN.result(self, "boot")
        self.r = results(self.res)

    def why(self) -> str:
        return describe(self.res, 12000)

    def ready(self) -> dict[str, str]:
        # Not anchored: the root autologin shell shares ttyS0, so its prompt may come first on the line.
        m = re.search(r"ENLIGHTEN-DEBIAN-READY (uptime=.*)$", self.res.output, re.M)
        self.assertIsNotNone(m, "the guest never reported the end of its boot" + self.why())
        return dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)

    def auto_pool(self) -> dict[str, str]:
        out = self.res.output
        if "--- auto pool ---" not in out:
            self.fail("no auto pool listing" + self.why())
        text = out[out.index("--- auto pool ---") + 17:out.index("--- end auto pool ---")]
        return {e["key"]: e["value"] for e in json.loads(text)["entries"]}

    def test_systemd_reaches_multi_user_and_is_running(self) -> None:
        ready = self.ready()
        self.assertEqual(ready.get("state"), "running",
                         "systemctl is-system-running after the boot" + self.why())
        self.assertNotIn("ENLIGHTEN-FAILED-UNIT", self.res.output, self.why())
        print(f"[boot to multi-user: {self.r.get('boot_seconds')} s in the {self.res.runner}, guest uptime "
              f"{ready.get('uptime')} s] ", end="", file=sys.stderr, flush=True)

    def test_hv_kvp_daemon_runs_as_a_service(self) -> None:
        self.assertEqual(self.ready().get("kvp"), "active",
                         "systemctl is-active hv-kvp-daemon.service" + self.why())

    def test_kvp_daemon_data_reaches_the_api(self) -> None:
        pool = self.auto_pool()
        self.assertEqual(pool.get("FullyQualifiedDomainName"), debian_disk.HOSTNAME, self.why())
        self.assertIn("Debian", pool.get("OSName", ""), self.why())
        self.assertEqual(pool.get("OSMajorVersion"), "12", "VERSION_ID of /etc/os-release" + self.why())
        self.assertIn(_image().kernel_version, pool.values(), "the kernel release (OSBuildNumber)" + self.why())

    def test_shutdown_through_the_api_powers_off_cleanly(self) -> None:
        r = self.r
        self.assertEqual(r.get("request"), "accepted", self.why())
        self.assertEqual(r.get("rc"), "0", "the VMM should exit 0 after the guest powered off" + self.why())
        self.assertIn("reboot: Power down", self.res.output, self.why())
        self.assertEqual(r.get("child_check"), "0", "the differencing disk is clean after the shutdown" + self.why())
        print(f"[shutdown {r.get('shutdown_seconds')} s] ", end="", file=sys.stderr, flush=True)


if __name__ == "__main__":
    unittest.main()
