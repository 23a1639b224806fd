"""End-to-end tests of the device platform: what outlives a guest reboot (the VM's devices
and their host-side state), asserted from inside the unmodified Debian guest."""

from __future__ import annotations

import re
import unittest

from harness import GuestTestCase, describe, results, run_scenario


class PlatformTests(GuestTestCase):

    def test_a_reboot_keeps_the_hosts_kvp_entries(self) -> None:
        # Each boot's /job waits until the guest's KVP daemon holds the host's key and says
        # so with the boot's id. The key can only be there in the second boot (a fresh
        # initramfs, a fresh daemon) if the host kept it across the reset and pushed it again.
        job = r"""
while ! tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 2>/dev/null | grep -q '^persist-me$'; do sleep 0.2; done
# The record's key field can hold the daemon's leftovers after the key's NUL: look for the
# value as a whole line instead of "the line after the key".
value=missing
tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 | grep -qx 'kept across reboots' && value=kept
echo "KVP-HAS-KEY boot=$(cat /proc/sys/kernel/random/boot_id) value=$value"
"""
        res = run_scenario(self, r"""
"$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus "$CPUS" --serial "file:$SERIAL" \
    --api-socket "$API" --on-reboot restart --log-level info \
    --cmdline "console=ttyS0 quiet enlighten.services enlighten.stay" >"$WORK/vmm.log" 2>&1 &
VM_PID=$!
wait_serial ENLIGHTEN-SERVICES-READY 120 || { dump_logs; exit 1; }
api kvp-set external persist-me 'kept across reboots' && echo "RESULT set=ok"
wait_serial KVP-HAS-KEY 60 || { dump_logs; exit 1; }
api reboot --timeout 30 && echo "RESULT reboot=requested"
n=0
while [ "$(grep -c KVP-HAS-KEY "$SERIAL")" -lt 2 ]; do
    n=$((n + 1)); if [ $n -gt 1500 ]; then echo "SCENARIO-TIMEOUT waiting for the second boot's key"; break; fi
    sleep 0.1
done
echo "RESULT boots=$(grep -c ENLIGHTEN-INIT "$SERIAL")"
api kvp-get external persist-me
api info | grep -c '"state": "open"' | sed 's/^/RESULT open_channels=/'
api shutdown --timeout 10
wait $VM_PID
echo "RESULT rc=$?"
dump_logs
""", job=job, timeout=600)
        r = results(res)
        self.assertEqual(r.get("set"), "ok", describe(res))
        self.assertEqual(r.get("reboot"), "requested", describe(res))
        self.assertEqual(r.get("boots"), "2", "the guest should have booted twice" + describe(res))
        lines = re.findall(r"KVP-HAS-KEY boot=(\S+) value=(.*)", res.output)
        self.assertEqual(len(lines), 2, describe(res))
        self.assertNotEqual(lines[0][0], lines[1][0], "two different boots" + describe(res))
        self.assertEqual(lines[1][1].strip(), "kept", "the value came back too" + describe(res))
        # The integration services' channels are open again in the second boot.
        self.assertGreaterEqual(int(r.get("open_channels", "0")), 4, describe(res))
        self.assertEqual(r.get("rc"), "0", describe(res))


if __name__ == "__main__":
    unittest.main(verbosity=2)
