"""End-to-end tests of the VMBus channels and the integration services, driven through the
management API (`enlighten remote`) while the unmodified Debian guest runs hv_utils and
hv_kvp_daemon. What is asserted is what the guest reports (sysfs, its own init, its KVP pool
files, its clock) and what the API returns."""

from __future__ import annotations

import json
import re
import time
import unittest

from harness import GuestTestCase, describe, results, run_scenario
from enlighten_tools.testhost import RunResult

IC_CLASSES = {
    "heartbeat": "57164f39-9115-4e78-ab55-382f3bd5422d",
    "shutdown": "0e0b6031-5213-4934-818b-38d90ced39db",
    "timesync": "9527e630-d0ae-497b-adce-e80ab0175caf",
    "kvp": "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6",
}


class IntegrationServiceTests(GuestTestCase):

    def test_ic_devices_are_offered_and_bound_by_hv_utils(self) -> None:
        job = r"""
for d in /sys/bus/vmbus/devices/*; do
    echo "DEV $(basename "$d") class=$(cat "$d/class_id") driver=$(basename "$(readlink "$d/driver")")"
done
dmesg | grep -E 'IC version'
"""
        res = self.boot(cpus=1, job=job, cmdline="console=ttyS0 quiet enlighten.services")
        self.assertEqual(res.returncode, 0, describe(res))
        devs = re.findall(r"^DEV (\S+) class=\{([0-9a-f-]+)\} driver=(\S+)", res.output, re.M)
        classes = {c: drv for _inst, c, drv in devs}
        for name, guid in IC_CLASSES.items():
            self.assertIn(guid, classes, f"{name} device missing" + describe(res))
            self.assertEqual(classes[guid], "hv_utils", f"{name} not bound to hv_utils" + describe(res))
        for ic in ("Shutdown", "TimeSync", "Heartbeat", "KVP"):
            self.assertRegex(res.output, rf"{ic} IC version \d+\.\d+", describe(res))

    def test_shutdown_through_the_api(self) -> None:
        res = run_scenario(self, r"""
start_vm ""
wait_serial ENLIGHTEN-SERVICES-READY 120 || { dump_logs; exit 1; }
wait_api 20 '"state": "healthy"' heartbeat || true
t0=$(now)
api shutdown --timeout 10 && echo "RESULT request=accepted"
wait $VM_PID
echo "RESULT rc=$?"
t1=$(now)
echo "RESULT seconds=$(awk "BEGIN { print $t1 - $t0 }")"
dump_logs
""")
        r = results(res)
        self.assertEqual(r.get("request"), "accepted", describe(res))
        self.assertEqual(r.get("rc"), "0", "the VMM should exit 0 after the guest powered off" + describe(res))
        # The guest's own init saw an orderly shutdown request, and the kernel powered off.
        self.assertIn("ENLIGHTEN-SHUTDOWN-REQUESTED poweroff", res.output, describe(res))
        self.assertIn("reboot: Power down", res.output, describe(res))
        self.assertLess(float(r["seconds"]), 10.0, describe(res))
        print(f"[shutdown took {r['seconds']} s] ", end="", flush=True)

    def shutdown_staying_guest(self, *, timeout: int, job: str) -> tuple[RunResult, dict[str, str]]:
        """Boots a guest that stays up after `job`, asks the API to shut it down with
        `timeout` per stage, and reports rc and seconds from the request to the VMM's exit."""
        res = run_scenario(self, r"""
"$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus 1 --serial "file:$SERIAL" \
    --api-socket "$API" --on-reboot exit --log-level info --cmdline "console=ttyS0 quiet enlighten.stay" >"$WORK/vmm.log" 2>&1 &
VM_PID=$!
wait_serial ENLIGHTEN-STAYING 120 || { dump_logs; exit 1; }
t0=$(now)
api shutdown --timeout %d && echo "RESULT request=accepted"
wait $VM_PID
echo "RESULT rc=$?"
echo "RESULT seconds=$(awk "BEGIN { print $(now) - $t0 }")"
dump_logs
""" % timeout, job=job)
        return res, results(res)

    def test_shutdown_falls_back_to_the_acpi_power_button(self) -> None:
        # No hv_utils in this guest, so no shutdown service; acpid handles the power button.
        job = r"""
modprobe button; modprobe evdev
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    ls /dev/input/event* >/dev/null 2>&1 && break
    sleep 0.1
done
acpid -f -c /etc/acpi -l /dev/null >/dev/null 2>&1 &
sleep 1  # acpid opens the input device after it starts; a press before that is lost
echo ACPID-STARTED
"""
        res, r = self.shutdown_staying_guest(timeout=20, job=job)
        self.assertIn("ACPID-STARTED", res.output, describe(res))
        self.assertEqual(r.get("rc"), "0", describe(res))
        self.assertIn("pressing the ACPI power button", res.output, describe(res))
        self.assertIn("ENLIGHTEN-SHUTDOWN-REQUESTED poweroff", res.output, describe(res))
        self.assertLess(float(r["seconds"]), 20, "the power button stage should not wait for its timeout" + describe(res))

    def test_shutdown_ends_with_a_hard_stop_when_the_guest_ignores_it(self) -> None:
        # Neither hv_utils nor acpid: both graceful stages time out, then the VM is stopped.
        res, r = self.shutdown_staying_guest(timeout=3, job="echo no integration services here\n")
        self.assertEqual(r.get("rc"), "5", "a forced power-off exits 5" + describe(res))
        self.assertGreaterEqual(float(r["seconds"]), 3.0, describe(res))
        self.assertLess(float(r["seconds"]), 30.0, describe(res))
        self.assertNotIn("ENLIGHTEN-SHUTDOWN-REQUESTED", res.output, describe(res))

    def test_heartbeat_healthy_then_lost_after_a_guest_crash(self) -> None:
        # The guest panics when the host sets a KVP key (so the test decides when); with
        # --on-crash=stay the VM stays up, and the heartbeat must stop.
        job = r"""
while ! tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 2>/dev/null | grep -q '^crash-now$'; do sleep 0.2; done
echo "GUEST-CRASHING"
echo c > /proc/sysrq-trigger
"""
        res = run_scenario(self, r"""
start_vm "" --on-crash stay
wait_serial ENLIGHTEN-SERVICES-READY 120 || { dump_logs; exit 1; }
t0=$(now)
wait_api 20 '"state": "healthy"' heartbeat && echo "RESULT healthy_after=$(awk "BEGIN { print $(now) - $t0 }")"
api heartbeat
api kvp-set external crash-now yes && echo "RESULT trigger=sent"
wait_serial 'Kernel panic' 60
t1=$(now)
wait_api 30 '"state": "lost"' heartbeat && echo "RESULT lost_after=$(awk "BEGIN { print $(now) - $t1 }")"
api heartbeat
api power-off
wait $VM_PID
echo "RESULT rc=$?"
dump_logs
""", job=job)
        r = results(res)
        self.assertIn("healthy_after", r, "the heartbeat never became healthy" + describe(res))
        self.assertLess(float(r["healthy_after"]), 20, describe(res))
        self.assertEqual(r.get("trigger"), "sent", describe(res))
        self.assertIn("GUEST-CRASHING", res.output, describe(res))
        self.assertIn("lost_after", r, "the heartbeat was not reported lost after the crash" + describe(res))
        self.assertEqual(r.get("rc"), "5", "power-off through the API exits 5" + describe(res))
        print(f"[healthy after {r['healthy_after']} s, lost {r['lost_after']} s after the panic] ", end="", flush=True)

    def test_kvp_host_to_guest_and_guest_intrinsics(self) -> None:
        job = r"""
# An address the KVP daemon reports (it skips loopback), on a dummy interface.
modprobe dummy && ip link add guest0 type dummy && ip addr add 192.0.2.10/24 dev guest0 && ip link set guest0 up
while ! tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 2>/dev/null | grep -q '^ProbeDone$'; do sleep 0.2; done
echo "GUEST-POOL-0:"
tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 | grep -v '^$' | sed 's/^/  pool0 /'
"""
        res = run_scenario(self, r"""
start_vm ""
wait_serial ENLIGHTEN-SERVICES-READY 120 || { dump_logs; exit 1; }
api kvp-set external VirtualMachineName 'enlighten-e2e' && echo "RESULT set1=ok"
api kvp-set external 'Ünïcode key' 'välue €' && echo "RESULT set2=ok"
api kvp-get external VirtualMachineName > "$WORK/get.json"; cat "$WORK/get.json"
grep -q '"value": "enlighten-e2e"' "$WORK/get.json" && echo "RESULT get=ok"
api kvp-set external ProbeDone 1
wait_serial 'pool0 ProbeDone' 30
echo "--- auto pool ---"
api kvp-list auto
echo "--- end auto pool ---"
api kvp-delete external 'Ünïcode key' && echo "RESULT delete=ok"
api kvp-get external 'Ünïcode key' || echo "RESULT get_deleted=missing"
api kvp-set auto Foo bar || echo "RESULT set_auto=refused"
api shutdown --timeout 10
wait $VM_PID
echo "RESULT rc=$?"
dump_logs
""", job=job)
        r = results(res)
        out = res.output
        self.assertEqual(r.get("set1"), "ok", describe(res))
        self.assertEqual(r.get("set2"), "ok", describe(res))
        # What hv_kvp_daemon wrote into the guest's pool file.
        self.assertIn("pool0 VirtualMachineName", out, describe(res))
        self.assertIn("pool0 enlighten-e2e", out, describe(res))
        self.assertIn("pool0 Ünïcode key", out, describe(res))
        self.assertIn("pool0 välue €", out, describe(res))
        # The guest's intrinsic data, through the API.
        auto = out[out.index("--- auto pool ---"):out.index("--- end auto pool ---")] if "--- auto pool ---" in out else ""
        self.assertIn("FullyQualifiedDomainName", auto, describe(res))
        self.assertIn("enlighten-guest", auto, describe(res))
        self.assertIn("NetworkAddressIPv4", auto, describe(res))
        self.assertIn("192.0.2.10", auto, describe(res))
        self.assertEqual(r.get("get"), "ok", "kvp-get did not return the value set" + describe(res))
        self.assertIn("OSName", auto, describe(res))
        self.assertEqual(r.get("delete"), "ok", describe(res))
        self.assertEqual(r.get("get_deleted"), "missing", describe(res))
        self.assertEqual(r.get("set_auto"), "refused", describe(res))
        self.assertEqual(r.get("rc"), "0", describe(res))

    def test_time_sync_corrects_a_wrong_guest_clock(self) -> None:
        # The guest sets its clock to 2001 before hv_utils loads; the time sync service
        # sets it again when it connects; later the API forces another sync.
        job = r"""
date -s '2001-01-01 00:00:00' >/dev/null
echo "GUEST-CLOCK-BEFORE $(date +%s)"
modprobe hv_vmbus; modprobe hv_utils
sleep 3
echo "GUEST-CLOCK-AFTER $(date +%s)"
date -s '2001-01-01 00:00:00' >/dev/null
echo "GUEST-CLOCK-WRONG-AGAIN"
while ! [ -e /tmp/never ]; do sleep 0.2; if [ "$(date +%Y)" != 2001 ]; then echo "GUEST-CLOCK-API $(date +%s)"; break; fi; done
"""
        res = run_scenario(self, r"""
"$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus 1 --serial "file:$SERIAL" \
    --api-socket "$API" --on-reboot exit --cmdline "console=ttyS0 quiet enlighten.stay" >"$WORK/vmm.log" 2>&1 &
VM_PID=$!
wait_serial GUEST-CLOCK-AFTER 120 || { dump_logs; exit 1; }
echo "RESULT host_after=$(date +%s)"
wait_serial GUEST-CLOCK-WRONG-AGAIN 30
sleep 1
api time-sync && echo "RESULT api=ok"
wait_serial GUEST-CLOCK-API 30
echo "RESULT host_api=$(date +%s)"
api shutdown --timeout 10
wait $VM_PID
dump_logs
""", job=job)
        r = results(res)
        before = int(re.search(r"GUEST-CLOCK-BEFORE (\d+)", res.output).group(1))
        m = re.search(r"GUEST-CLOCK-AFTER (\d+)", res.output)
        self.assertIsNotNone(m, describe(res))
        self.assertLess(before, 1_000_000_000, "the guest clock was not set wrong" + describe(res))
        after = int(m.group(1))
        self.assertLess(abs(after - int(r["host_after"])), 10, "guest clock not corrected on connect" + describe(res))
        self.assertEqual(r.get("api"), "ok", describe(res))
        m = re.search(r"GUEST-CLOCK-API (\d+)", res.output)
        self.assertIsNotNone(m, "the API time sync did not correct the clock" + describe(res))
        self.assertLess(abs(int(m.group(1)) - int(r["host_api"])), 10, describe(res))

    def test_rebinding_a_driver_50_times_leaks_nothing(self) -> None:
        job = r"""
dev=b5a0a5c7-1a2f-4d8e-9f61-0e5a1d2c3b01
while ! [ -e /tmp/go ] && ! grep -q . /tmp/go 2>/dev/null; do
    tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 2>/dev/null | grep -q '^rebind$' && break
    sleep 0.2
done
i=0
while [ $i -lt 50 ]; do
    echo $dev > /sys/bus/vmbus/drivers/hv_utils/unbind || echo "UNBIND-FAILED $i"
    echo $dev > /sys/bus/vmbus/drivers/hv_utils/bind || echo "BIND-FAILED $i"
    i=$((i + 1))
done
[ -e /sys/bus/vmbus/devices/$dev/driver ] && echo "REBOUND-OK"
dmesg | grep -c 'Heartbeat IC version' | sed 's/^/HEARTBEAT-NEGOTIATIONS /'
echo "REBIND-DONE"
"""
        res = run_scenario(self, r"""
start_vm ""
wait_serial ENLIGHTEN-SERVICES-READY 120 || { dump_logs; exit 1; }
wait_api 20 '"state": "healthy"' heartbeat
sleep 2
api info > "$WORK/before.json"; cat "$WORK/before.json"
echo "RESULT gpadls_before=$(grep '"gpadls"' "$WORK/before.json" | tr -dc 0-9)"
echo "RESULT rss_before=$(grep '"vmm_rss_bytes"' "$WORK/before.json" | tr -dc 0-9)"
api kvp-set external rebind 1
wait_serial REBIND-DONE 300 || { dump_logs; exit 1; }
wait_api 20 '"state": "healthy"' heartbeat
sleep 2
api info > "$WORK/after.json"; cat "$WORK/after.json"
echo "RESULT gpadls_after=$(grep '"gpadls"' "$WORK/after.json" | tr -dc 0-9)"
echo "RESULT rss_after=$(grep '"vmm_rss_bytes"' "$WORK/after.json" | tr -dc 0-9)"
api shutdown --timeout 10
wait $VM_PID
echo "RESULT rc=$?"
dump_logs
""", job=job, timeout=600)
        r = results(res)
        self.assertIn("REBOUND-OK", res.output, describe(res))
        self.assertNotIn("UNBIND-FAILED", res.output, describe(res))
        self.assertNotIn("BIND-FAILED", res.output, describe(res))
        m = re.search(r"HEARTBEAT-NEGOTIATIONS (\d+)", res.output)
        self.assertIsNotNone(m, describe(res))
        self.assertEqual(int(m.group(1)), 51, "each bind should open the channel and negotiate again" + describe(res))
        self.assertEqual(r.get("gpadls_before"), r.get("gpadls_after"), "GPADL count changed" + describe(res))
        self.assertGreater(int(r.get("gpadls_before") or 0), 0, describe(res))
        growth = int(r["rss_after"]) - int(r["rss_before"])
        print(f"[VMM RSS {int(r['rss_before']) // 1024} KiB -> {int(r['rss_after']) // 1024} KiB] ", end="", flush=True)
        self.assertLess(growth, 512 * 1024, "the VMM's RSS grew by more than 512 KiB" + describe(res))
        self.assertEqual(r.get("rc"), "0", describe(res))


if __name__ == "__main__":
    unittest.main(verbosity=2)
