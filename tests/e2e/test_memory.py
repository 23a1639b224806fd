"""End-to-end tests of Dynamic Memory: Enlighten's hv_balloon VSP, which the unmodified Debian
guest's hv_balloon drives, through

    enlighten run ... --memory size=1G[,min=SIZE][,max=SIZE][,dynamic=on][,buffer=PERCENT]
    enlighten remote --api-socket S memory                      (GET /vm.memory)
    enlighten remote --api-socket S memory-set --target SIZE    (PUT /vm.memory)

Two guest boots in one test-host boot (session "memory", 1-vCPU guests, a 4 GiB test host):

  balloon   startup 1 GiB, max 2 GiB, dynamic off: hv_balloon binds and reports every second;
            the guest touches 700 MiB (so the host backs it) and frees it; target 512 MiB:
            MemTotal falls by about 512 MiB and the VMM's RSS by at least 400 MiB; target
            1 GiB: MemTotal comes back; target 2 GiB: 1 GiB is hot-added at 4 GiB, its
            memory blocks (memory32..) come online, MemTotal passes 1.5 GiB, and a process
            (awk) allocates and touches 1 GiB without the OOM killer; target 1 GiB again
            (1 GiB ballooned), then an API reset (--on-reboot restart): the guest boots again
            at 1 GiB, nothing hot-added or ballooned, and the VMM's RSS is back to the first
            boot's
  policy    startup 1 GiB, min 512 MiB, max 2 GiB, dynamic=on, buffer=20: the idle guest is
            ballooned down toward committed x 1.2 but not below min; then a process commits
            1.1 GiB step by step and the policy gives the guest memory back and hot-adds, up
            to max

The guest is the default guest: `enlighten.modules=hv_vmbus,hv_balloon
hv_balloon.pressure_report_delay=0`, and its /init onlines hot-added memory
(auto_online_blocks). What is asserted is what the guest reports (/proc/meminfo, sysfs
memory blocks, dmesg, its own allocation), the API's figures and the VMM's RSS that the
test host reads from /proc."""

from __future__ import annotations

import json
import re
import sys
import unittest

from harness import BG_VM_LIB, RunResult, Session, describe, kv, section, vmm_log

MEMORY = Session("memory", host_memory_mib=4096)
MiB = 1 << 20
KiB = 1 << 10

# Scenario helpers (busybox sh in the test host), after harness.SCENARIO_LIB ($ENL, $KERNEL,
# $INITRD, $CPUS, $WORK, $API, api).
MEM_LIB = BG_VM_LIB + r"""
GUEST_ARGS="enlighten.modules=hv_vmbus,hv_balloon hv_balloon.pressure_report_delay=0"
# start_mem NAME MEMORY-SPEC [ON-REBOOT]: the VM in the background with the API on $API
# (a guest reset ends the VM unless ON-REBOOT is restart).
start_mem() {
    BG_NAME=$1; spec=$2; on_reboot=${3:-exit}
    SERIAL=$WORK/$BG_NAME.serial
    rm -f "$API"
    "$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory "$spec" --cpus "$CPUS" \
        --serial "file:$SERIAL" --api-socket "$API" --on-reboot "$on_reboot" --log-level info \
        --cmdline "console=ttyS0 quiet panic=-1 enlighten.stay $GUEST_ARGS" >"$WORK/$BG_NAME.vmm.log" 2>&1 &
    VM_PID=$!
}
# memory TAG: vm.memory as JSON between markers
memory() { echo "MEMORY-BEGIN $1"; api memory; echo "MEMORY-END $1"; }
# the VMM's resident memory (KiB), guest RAM included
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$VM_PID/status" 2>/dev/null; }
"""

# Shell functions for the guest's /job (Debian's busybox sh).
GUEST_LIB = r"""
now() { read -r t _ </proc/uptime; echo "$t"; }
since() { awk "BEGIN { printf \"%.1f\", $(now) - $1 }"; }
wait_until() { s=$1; shift; n=0; while ! "$@"; do n=$((n + 1)); [ $n -ge $((s * 10)) ] && return 1; sleep 0.1; done; }
memtotal() { awk '/^MemTotal/ { print $2 }' /proc/meminfo; }
below() { [ "$(memtotal)" -lt "$1" ]; }
above() { [ "$(memtotal)" -gt "$1" ]; }
meminfo() { echo "RESULT $1.memtotal=$(memtotal)"; grep -E '^(MemFree|MemAvailable|Committed_AS):' /proc/meminfo | sed "s/^/MEMINFO-$1 /"; }
# the memory blocks at and above 4 GiB (hot-added: memory32 and up, 128 MiB each)
hot_blocks() {
    online=0; total=0
    for d in /sys/devices/system/memory/memory*; do
        n=${d##*memory}; [ "$n" -ge 32 ] 2>/dev/null || continue
        total=$((total + 1)); [ "$(cat "$d/state")" = online ] && online=$((online + 1))
    done
    echo "RESULT $1.hot_blocks=$total"; echo "RESULT $1.hot_blocks_online=$online"
}
# hog MIB STEP SLEEP: one process (awk) allocates and writes MIB MiB, STEP MiB at a time
hog() {
    awk -v n="$1" -v step="$2" -v pause="$3" 'BEGIN {
        s = sprintf("%1048576s", "")
        for (i = 0; i < n; i++) { a[i] = s i; if (pause && i % step == step - 1) system("sleep " pause) }
        print "HOG-HELD " n; fflush(); system("sleep 5") }'
}
balloon_log() { dmesg | grep -iE 'hv_balloon|balloon|hot.add|out of memory|oom' | sed 's/^/DMESG-DM /'; }
"""

# ----------------------------------------------------------------------------- balloon
JOB_BALLOON = GUEST_LIB + r"""
echo "RESULT driver=$(basename "$(readlink /sys/bus/vmbus/drivers/hv_balloon/*-*/driver 2>/dev/null)" 2>/dev/null)"
ls /sys/bus/vmbus/drivers/hv_balloon/ | sed 's/^/DM-DRIVER-DIR /'
echo "RESULT block_size=$(cat /sys/devices/system/memory/block_size_bytes)"
echo "RESULT auto_online=$(cat /sys/devices/system/memory/auto_online_blocks)"
meminfo start
# the host backs 700 MiB of guest memory, which the guest then frees again
mkdir -p /fill && mount -t tmpfs -o size=1800M tmpfs /fill
dd if=/dev/zero of=/fill/a bs=1M count=700 2>/dev/null; rm -f /fill/a
meminfo touched
echo "MEM-READY"
t=$(now)
if wait_until 180 below 700000; then echo "RESULT down_after=$(since $t)"; fi
sleep 2
meminfo down
echo "MEM-SAW-DOWN"
t=$(now)
if wait_until 180 above 950000; then echo "RESULT back_after=$(since $t)"; fi
meminfo back
echo "MEM-SAW-BACK"
t=$(now)
if wait_until 400 above 1600000; then echo "RESULT hot_after=$(since $t)"; fi
sleep 2
meminfo hot
hot_blocks hot
# one process allocates and touches 1 GiB
hog 1024 0 0 > /tmp/hog.out 2>&1
echo "RESULT hog_rc=$?"
echo "RESULT hog=$(cat /tmp/hog.out | head -n 1)"
echo "RESULT oom=$(dmesg | grep -ciE 'out of memory|oom-kill')"
meminfo final
[ -r /sys/kernel/debug/hv-balloon ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null
sed 's/^/DEBUGFS-DM /' /sys/kernel/debug/hv-balloon 2>/dev/null
balloon_log
echo "MEM-DONE"
"""
MEMORY.scenario("balloon", MEM_LIB + r"""
start_mem balloon "size=1G,max=2G" restart
if wait_guest MEM-READY 180; then
    part boot
    r1=$(api memory | sed -n 's/.*"status_reports": \([0-9]*\).*/\1/p'); sleep 5
    r2=$(api memory | sed -n 's/.*"status_reports": \([0-9]*\).*/\1/p')
    echo "RESULT host.reports_in_5s=$((r2 - r1))"
    memory ready
    echo "RESULT host.rss_before=$(rss)"
    api memory-set --target 512M; echo "RESULT host.set512_rc=$?"
    wait_guest MEM-SAW-DOWN 200
    sleep 1
    echo "RESULT host.rss_down=$(rss)"
    memory down
    part down
    api memory-set --target 1G; echo "RESULT host.set1g_rc=$?"
    wait_guest MEM-SAW-BACK 200
    memory back
    part back
    api memory-set --target 2G; echo "RESULT host.set2g_rc=$?"
    wait_guest MEM-DONE 600
    memory final
    info final
    part hot
    # balloon 1 GiB of the 2 GiB again, then reset: the VM restarts at its startup size,
    # and the old RAM and the hot-added range are gone from the VMM's RSS
    api memory-set --target 1G; echo "RESULT host.set1g_again_rc=$?"
    n=0; until api memory | grep -q '"ballooned": [1-9]' || [ $n -ge 60 ]; do sleep 1; n=$((n + 1)); done
    memory reballooned
    api reset; echo "RESULT host.reset_rc=$?"
    n=0; until [ "$(grep -c MEM-READY "$SERIAL")" -ge 2 ] || [ $n -ge 1800 ] || ! vm_alive; do sleep 0.1; n=$((n + 1)); done
    echo "RESULT host.boots_ready=$(grep -c MEM-READY "$SERIAL")"
    sleep 1
    echo "RESULT host.rss_rebooted=$(rss)"
    memory rebooted
    part reboot
fi
stop_vm
""", job=JOB_BALLOON, timeout=1200)

# ----------------------------------------------------------------------------- policy
JOB_POLICY = GUEST_LIB + r"""
meminfo start
echo "MEM-READY"
# the idle guest is ballooned toward committed x 1.2, not below min (512 MiB)
t=$(now)
if wait_until 240 below 700000; then echo "RESULT shrunk_after=$(since $t)"; fi
sleep 15
meminfo idle
echo "MEM-SAW-IDLE"
# load grows: 1.1 GiB committed, up to 32 MiB a second (touching the pages in the nested test
# host is slower than that: about 10 MiB/s), past the 1 GiB the guest started with
hog 1100 32 1 > /tmp/hog.out 2>&1 &
hpid=$!
t=$(now)
if wait_until 400 above 1100000; then echo "RESULT grew_after=$(since $t)"; fi
wait $hpid
echo "RESULT hog_rc=$?"
echo "RESULT hog=$(head -n 1 /tmp/hog.out)"
echo "RESULT oom=$(dmesg | grep -ciE 'out of memory|oom-kill')"
meminfo grown
hot_blocks grown
balloon_log
echo "MEM-DONE"
"""
MEMORY.scenario("policy", MEM_LIB + r"""
start_mem policy "size=1G,min=512M,max=2G,dynamic=on,buffer=20"
if wait_guest MEM-READY 180; then
    part boot
    memory ready
    wait_guest MEM-SAW-IDLE 300
    memory idle
    part idle
    wait_guest MEM-DONE 600
    memory grown
    part grow
fi
stop_vm
""", job=JOB_POLICY, timeout=1200)


def tagged(res_text: str, tag: str) -> dict:
    m = re.search(rf"^MEMORY-BEGIN {re.escape(tag)}\n(.*?)^MEMORY-END {re.escape(tag)}$", res_text, re.S | re.M)
    if not m:
        raise AssertionError(f"no vm.memory '{tag}' in the output")
    return json.loads(m.group(1))


def num(d: dict[str, str], key: str) -> int:
    try:
        return int(d.get(key, ""))
    except ValueError:
        raise AssertionError(f"{key} is not a number: {d.get(key)!r}") from None


_parts_shown: set[str] = set()


class MemCase(unittest.TestCase):
    SESSION = MEMORY
    KEY = ""

    def run_of(self) -> RunResult:
        res = self.SESSION.result(self, self.KEY)
        if self.KEY not in _parts_shown:
            _parts_shown.add(self.KEY)
            parts = re.findall(r"^PART (\S+) (\S+)$", res.output, re.M)
            # the figures worth seeing next to the times (KiB for memtotal and rss)
            figures = {k: v for k, v in kv(res.output).items()
                       if k.endswith((".memtotal", "_after", "rss_before", "rss_down", "rss_rebooted", "hot_blocks_online",
                                      "reports_in_5s", "hog"))}
            print(f"[{self.KEY}: {res.duration:.1f} s: {', '.join(f'{a} {b} s' for a, b in parts)}; "
                  f"{' '.join(f'{k}={v}' for k, v in figures.items())}] ", end="", file=sys.stderr, flush=True)
        return res

    def console(self) -> str:
        res = self.run_of()
        text = section(res, self.KEY)
        self.assertIn("ENLIGHTEN-INIT", text, f"boot '{self.KEY}' never reached the guest's /init; "
                      f"enlighten said:\n{vmm_log(res, self.KEY)[-2000:]}" + describe(res))
        return text

    def guest(self) -> dict[str, str]:
        return kv(self.console())

    def host(self) -> dict[str, str]:
        return kv(self.run_of().output)

    def memory(self, tag: str) -> dict:
        res = self.run_of()
        try:
            return tagged(res.output, tag)
        except (AssertionError, json.JSONDecodeError) as e:
            raise AssertionError(f"vm.memory '{tag}': {e}" + describe(res)) from e


class BalloonTests(MemCase):
    """Explicit targets: balloon down, back up, hot-add past the startup size."""
    KEY = "balloon"

    def test_hv_balloon_binds_and_negotiates(self) -> None:
        res, text = self.run_of(), self.console()
        self.assertIn("hv_balloon: Using Dynamic Memory protocol version 2.0", text, describe(res, 6000))
        m = self.memory("ready")
        self.assertEqual(m["state"], "ready", describe(res))
        self.assertEqual(m["protocol_version"], "2.0", describe(res))
        self.assertTrue(m["can_balloon"], describe(res))

    def test_status_reports_arrive_every_second(self) -> None:
        res, h = self.run_of(), self.host()
        self.assertGreaterEqual(num(h, "host.reports_in_5s"), 3, describe(res))
        m = self.memory("ready")
        self.assertIsNotNone(m["last_report"], describe(res))
        self.assertLess(m["last_report"]["age_ms"], 3000, describe(res))
        self.assertGreater(m["last_report"]["committed"], 0, describe(res))

    def test_balloon_down_shrinks_memtotal(self) -> None:
        res, g = self.run_of(), self.guest()
        start, down = num(g, "start.memtotal"), num(g, "down.memtotal")
        # 512 MiB ballooned: MemTotal falls by that much (a few MiB of slack for the floor).
        self.assertGreaterEqual((start - down) * KiB, 500 * MiB, describe(res, 6000))
        m = self.memory("down")
        self.assertEqual(m["current"], 512 * MiB, describe(res))
        self.assertEqual(m["ballooned"], 512 * MiB, describe(res))
        self.assertEqual(m["guest_errors"]["outside_ram_pages"], 0, describe(res))

    def test_balloon_down_gives_the_host_its_memory(self) -> None:
        res, h = self.run_of(), self.host()
        before, down = num(h, "host.rss_before"), num(h, "host.rss_down")
        self.assertGreaterEqual((before - down) * KiB, 400 * MiB,
                                f"VMM RSS {before} KiB -> {down} KiB" + describe(res, 6000))

    def test_back_to_startup_returns_the_memory(self) -> None:
        res, g = self.run_of(), self.guest()
        self.assertLess(abs(num(g, "back.memtotal") - num(g, "start.memtotal")) * KiB, 8 * MiB, describe(res, 6000))
        self.assertEqual(self.memory("back")["ballooned"], 0, describe(res))

    def test_hot_add_grows_the_guest_with_blocks_online(self) -> None:
        res, g = self.run_of(), self.guest()
        self.assertGreater(num(g, "hot.memtotal") * KiB, 1536 * MiB, describe(res, 8000))
        self.assertEqual(g.get("block_size"), "8000000", describe(res))
        self.assertGreaterEqual(num(g, "hot.hot_blocks_online"), 8, describe(res, 8000))
        self.assertEqual(num(g, "hot.hot_blocks_online"), num(g, "hot.hot_blocks"), describe(res))
        m = self.memory("final")
        self.assertEqual(m["hot_added"], 1024 * MiB, describe(res))
        self.assertEqual(m["current"], 2048 * MiB, describe(res))
        self.assertIsNone(m["hot_add_disabled"], describe(res))

    def test_a_process_touches_1_gib_without_the_oom_killer(self) -> None:
        res, g = self.run_of(), self.guest()
        self.assertEqual(g.get("hog_rc"), "0", describe(res, 8000))
        self.assertEqual(g.get("hog"), "HOG-HELD 1024", describe(res, 8000))
        self.assertEqual(g.get("oom"), "0", describe(res, 8000))

    def test_vm_info_has_the_same_figures(self) -> None:
        res = self.run_of()
        m = re.search(r"^INFO-BEGIN final\n(.*?)^INFO-END final$", res.output, re.S | re.M)
        self.assertIsNotNone(m, describe(res))
        info = json.loads(m.group(1))
        self.assertEqual(info["memory"]["current"], self.memory("final")["current"], describe(res))
        self.assertEqual(info["memory"]["hot_added"], 1024 * MiB, describe(res))


    def test_reset_after_hot_add_and_ballooning_restarts_at_the_startup_size(self) -> None:
        res, h = self.run_of(), self.host()
        self.assertEqual(h.get("host.reset_rc"), "0", describe(res))
        self.assertGreater(self.memory("reballooned")["ballooned"], 0, describe(res))
        self.assertEqual(h.get("host.boots_ready"), "2", describe(res, 8000))
        m = self.memory("rebooted")
        self.assertEqual((m["current"], m["hot_added"], m["ballooned"]), (1024 * MiB, 0, 0), describe(res))
        # the guest's MemTotal at each boot's start: the same
        starts = re.findall(r"^RESULT start\.memtotal=(\d+)$", self.console(), re.M)
        self.assertEqual(len(starts), 2, describe(res, 8000))
        self.assertEqual(starts[0], starts[1], describe(res, 8000))
        # all host memory accounted for: at the same point of each boot (700 MiB touched and
        # freed), the RSS is what it was at the first, not that plus the old machine's memory
        before, rebooted = num(h, "host.rss_before"), num(h, "host.rss_rebooted")
        self.assertLess(rebooted * KiB, before * KiB + 128 * MiB, f"VMM RSS {before} KiB at the first boot, "
                        f"{rebooted} KiB after the reset" + describe(res, 6000))


class PolicyTests(MemCase):
    """dynamic=on, buffer=20, min 512 MiB, max 2 GiB."""
    KEY = "policy"

    def test_idle_guest_is_ballooned_toward_committed_but_not_below_min(self) -> None:
        res, g = self.run_of(), self.guest()
        m = self.memory("idle")
        self.assertGreater(m["ballooned"], 256 * MiB, describe(res, 6000))
        self.assertGreaterEqual(m["current"], 512 * MiB, describe(res))
        # target = clamp(need x 1.2, min, max), need = committed - ballooned (policy.hpp), from
        # the same report the API shows
        need = max(0, m["last_report"]["committed"] - m["ballooned"])
        self.assertEqual(m["target"], min(max(need + need // 100 * 20, 512 * MiB), 2048 * MiB), describe(res))
        # and the guest is there (within the policy's 64 MiB band)
        self.assertLessEqual(abs(m["current"] - m["target"]), 64 * MiB, describe(res))
        self.assertLess(num(g, "idle.memtotal") * KiB, 800 * MiB, describe(res, 6000))

    def test_growing_load_gets_memory_up_to_max(self) -> None:
        res, g = self.run_of(), self.guest()
        self.assertEqual(g.get("hog_rc"), "0", describe(res, 8000))
        self.assertEqual(g.get("oom"), "0", describe(res, 8000))
        self.assertGreater(num(g, "grown.memtotal") * KiB, 1024 * MiB, describe(res, 8000))
        m = self.memory("grown")
        self.assertGreater(m["hot_added"], 0, describe(res))
        self.assertLessEqual(m["current"], 2048 * MiB, describe(res))


if __name__ == "__main__":
    unittest.main()
