"""End-to-end tests of the VMBus channels and the integration services, driven through the
management API (`enlighten remote`) while the unmodified Debian guest runs hv_utils and
hv_kvp_daemon. What is asserted is what the guest reports (sysfs, its own init, its KVP pool
files, its clock) and what the API returns."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unittest
from pathlib import Path
from urllib.parse import unquote

from harness import REPO, RunResult, Session, describe, json_between, results, vm_info

IC_CLASSES = {
    "heartbeat": "57164f39-9115-4e78-ab55-382f3bd5422d",
    "shutdown": "0e0b6031-5213-4934-818b-38d90ced39db",
    "timesync": "9527e630-d0ae-497b-adce-e80ab0175caf",
    "kvp": "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6",
    "fcopy": "34d14be3-dee4-41c8-9ae7-6b174977c192",
    "vss": "35fa2e29-ea23-4236-96ae-3a6ebacba440",
}

SERVICES = Session("services")


# ----------------------------------------------------------------------------- the API under load
# The default guest with the integration services; once they are up, tests/tools/api_load.c
# (C, static: the test host has no Python) runs 200 clients asking vm.info on fresh
# connections, 50 slow ones (slowloris and idle) and a probe timing vm.info every 100 ms, for
# 10 s. Then the VM must be as before: the heartbeat healthy, KVP answering, and a graceful
# shutdown through the API ending in exit status 0. --idle runs the tool's load threads at
# SCHED_IDLE, so that on the test host's 2 vCPUs (software emulation) 250 client threads do
# not crowd out the VMM: the probe then measures the server's own fairness, not the tool's
# CPU use. The run uses both vCPUs (the guest gets 2): it is registered first (harness: runs
# that need all the test host's vCPUs first), and with parallel lanes it runs alone.
def api_load_tool() -> Path:
    """tests/tools/api_load.c, statically linked, in build/e2e/."""
    src = REPO / "tests" / "tools" / "api_load.c"
    out = REPO / "build" / "e2e" / "api_load"
    if not out.is_file() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-std=c11", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(out),
                        str(src)], check=True)
    return out


API_LOAD_SCRIPT = r"""
start_vm ""
wait_serial ENLIGHTEN-SERVICES-READY 120 || { dump_logs; exit 1; }
wait_api 30 '"state": "healthy"' heartbeat && echo "RESULT healthy_before=yes"
t0=$(now)
"$APILOAD" "$API" --clients 200 --slow 50 --duration 10 --idle >"$WORK/load.out" 2>&1
echo "RESULT load_rc=$?"
echo "RESULT load_seconds=$(awk "BEGIN { print $(now) - $t0 }")"
echo "--- api_load ---"; cat "$WORK/load.out"; echo "--- end api_load ---"
echo "RESULT load_summary=$(grep -m1 '^api_load:' "$WORK/load.out")"
kill -0 "$VM_PID" 2>/dev/null && echo "RESULT vm_alive=yes"
wait_api 20 '"state": "healthy"' heartbeat && echo "RESULT healthy_after=yes"
api heartbeat
echo "KVP-BEGIN auto"; api kvp-list auto; rc=$?; echo "KVP-END auto"
echo "RESULT kvp_rc=$rc"
t1=$(now)
api shutdown --timeout 60 && echo "RESULT shutdown=accepted"
wait $VM_PID
echo "RESULT rc=$?"
echo "RESULT shutdown_seconds=$(awk "BEGIN { print $(now) - $t1 }")"
dump_logs
"""
SERVICES.scenario("api-load", API_LOAD_SCRIPT, cpus=2, timeout=400, files={"APILOAD": api_load_tool})

# ----------------------------------------------------------------------------- one shared VM
# One guest with the integration services up (enlighten.services) serves the offer/bind,
# KVP, time sync, rebind and API-shutdown checks, in that order. The host drives each phase
# through the API and tells the guest's job when to start its part by setting a key in the
# external KVP pool. The job ends after the last phase; then /init stays up
# (enlighten.stay) until the API shuts the guest down. Every wait is bounded, and a phase
# that fails does not stop the later ones: each test checks only its own RESULT lines.
SHARED_JOB = r"""
# wait_key KEY: wait (at most 300 s) until the host has set KEY in the external pool.
wait_key() {
    n=0
    while ! tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 2>/dev/null | grep -q "^$1\$"; do
        n=$((n + 1)); [ $n -gt 1500 ] && { echo "GUEST-WAIT-TIMEOUT $1"; return 1; }
        sleep 0.2
    done
}
# dev_of CLASS: the VMBus device (instance) with that class id
dev_of() {
    for d in /sys/bus/vmbus/devices/*; do
        read -r c < "$d/class_id"; [ "$c" = "{$1}" ] && echo "${d##*/}"
    done
}

# -- offers and drivers (test_ic_devices_are_offered_and_bound_by_hv_utils)
for d in /sys/bus/vmbus/devices/*; do
    echo "DEV $(basename "$d") class=$(cat "$d/class_id") driver=$(basename "$(readlink "$d/driver")")"
done
dmesg | grep -E 'IC version'

# -- KVP (test_kvp_host_to_guest_and_guest_intrinsics): an address the KVP daemon reports
# (it skips loopback), on a dummy interface; then show what the host wrote into pool 0.
modprobe dummy && ip link add guest0 type dummy && ip addr add 192.0.2.10/24 dev guest0 && ip link set guest0 up
if wait_key ProbeDone; then
    echo "GUEST-POOL-0:"
    tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 | grep -v '^$' | sed 's/^/  pool0 /'
fi

# -- time sync (test_time_sync_corrects_a_wrong_guest_clock): the clock goes to 2001, then
# the time sync device is bound again, so the service connects anew (and the host sets the
# clock, as at the first connect); wrong again, the API forces a sync.
if wait_key timesync-go; then
    ts=$(dev_of 9527e630-d0ae-497b-adce-e80ab0175caf)
    date -s '2001-01-01 00:00:00' >/dev/null
    echo "GUEST-CLOCK-BEFORE $(date +%s)"
    echo "$ts" > /sys/bus/vmbus/drivers/hv_utils/unbind && echo "$ts" > /sys/bus/vmbus/drivers/hv_utils/bind \
        && echo "TIMESYNC-REBOUND $ts"
    sleep 3
    echo "GUEST-CLOCK-AFTER $(date +%s)"
    date -s '2001-01-01 00:00:00' >/dev/null
    echo "GUEST-CLOCK-WRONG-AGAIN"
    n=0
    while [ $n -lt 300 ]; do
        sleep 0.2; n=$((n + 1))
        if [ "$(date +%Y)" != 2001 ]; then echo "GUEST-CLOCK-API $(date +%s)"; break; fi
    done
fi

# -- rebinding hv_utils' heartbeat device 50 times (test_rebinding_a_driver_50_times_leaks_nothing)
if wait_key rebind; then
    dev=$(dev_of 57164f39-9115-4e78-ab55-382f3bd5422d)
    i=0
    while [ $i -lt 50 ]; do
        echo $dev > /sys/bus/vmbus/drivers/hv_utils/unbind || echo "UNBIND-FAILED $i"
        echo $dev > /sys/bus/vmbus/drivers/hv_utils/bind || echo "BIND-FAILED $i"
        i=$((i + 1))
    done
    [ -e /sys/bus/vmbus/devices/$dev/driver ] && echo "REBOUND-OK"
    dmesg | grep -c 'Heartbeat IC version' | sed 's/^/HEARTBEAT-NEGOTIATIONS /'
fi
echo "REBIND-DONE"
"""

SHARED_SCRIPT = r"""
# --log-level debug: the API server logs each request's HTTP status ("api: GET ... -> 404").
"$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus "$CPUS" --serial "file:$SERIAL" \
    --api-socket "$API" --on-reboot exit --log-level debug \
    --cmdline "console=ttyS0 quiet enlighten.services enlighten.stay" >"$WORK/vmm.log" 2>&1 &
VM_PID=$!
wait_serial ENLIGHTEN-SERVICES-READY 120 || { dump_logs; exit 1; }

echo "=== KVP ==="
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
# refused NAME COMMAND...: an API call that must fail; its status, stdout size and stderr.
refused() {
    name=$1; shift
    api "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
    echo "RESULT ${name}_rc=$?"
    echo "RESULT ${name}_stdout_bytes=$(wc -c < "$WORK/$name.out")"
    echo "RESULT ${name}_stderr_lines=$(wc -l < "$WORK/$name.err")"
    echo "RESULT ${name}_stderr=$(head -n 1 "$WORK/$name.err")"
}
refused get_deleted kvp-get external 'Ünïcode key'
refused set_auto kvp-set auto Foo bar
api kvp-list auto > "$WORK/auto2.json" && echo "RESULT auto_listed_again=ok"
echo "RESULT auto_foo_entries=$(grep -c '"Foo"' "$WORK/auto2.json")"

echo "=== time sync ==="
api kvp-set external timesync-go 1 && echo "RESULT timesync_trigger=sent"
wait_serial GUEST-CLOCK-AFTER 60 && echo "RESULT host_after=$(date +%s)"
wait_serial GUEST-CLOCK-WRONG-AGAIN 30
sleep 1
api time-sync && echo "RESULT api=ok"
wait_serial GUEST-CLOCK-API 30 && echo "RESULT host_api=$(date +%s)"

echo "=== rebind ==="
wait_api 20 '"state": "healthy"' heartbeat
sleep 2
api info > "$WORK/before.json"; cat "$WORK/before.json"
echo "RESULT gpadls_before=$(grep '"gpadls"' "$WORK/before.json" | tr -dc 0-9)"
echo "RESULT rss_before=$(grep '"vmm_rss_bytes"' "$WORK/before.json" | tr -dc 0-9)"
api kvp-set external rebind 1
wait_serial REBIND-DONE 300
wait_api 20 '"state": "healthy"' heartbeat
sleep 2
api info > "$WORK/after.json"; cat "$WORK/after.json"
echo "RESULT gpadls_after=$(grep '"gpadls"' "$WORK/after.json" | tr -dc 0-9)"
echo "RESULT rss_after=$(grep '"vmm_rss_bytes"' "$WORK/after.json" | tr -dc 0-9)"

echo "=== shutdown ==="
wait_serial ENLIGHTEN-STAYING 60
wait_api 20 '"state": "healthy"' heartbeat || true
t0=$(now)
api shutdown --timeout 10 && echo "RESULT request=accepted"
wait $VM_PID
echo "RESULT rc=$?"
t1=$(now)
echo "RESULT seconds=$(awk "BEGIN { print $t1 - $t0 }")"
dump_logs
"""
SERVICES.scenario("shared", SHARED_SCRIPT, job=SHARED_JOB, timeout=600)

# ----------------------------------------------------------------------------- separate VMs
# Each of these ends its VM in its own way (exit status 0 through the power button, 5 after a
# forced stop, a crash kept up with --on-crash stay): one Enlighten process each, run one
# after another in the same test-host session.

# Boots a guest that stays up after its job, asks the API to shut it down with `timeout`
# per stage, and reports rc and seconds from the request to the VMM's exit.
SHUTDOWN_STAYING_GUEST = r"""
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
"""

# No hv_utils in this guest, so no shutdown service; acpid handles the power button.
SERVICES.scenario("acpi", SHUTDOWN_STAYING_GUEST % 20, job=r"""
modprobe button; modprobe evdev
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    ls /dev/input/event* >/dev/null 2>&1 && break
    sleep 0.1
done
acpid -f -c /etc/acpi -l /dev/null >/dev/null 2>&1 &
sleep 1  # acpid opens the input device after it starts; a press before that is lost
echo ACPID-STARTED
""")

# Neither hv_utils nor acpid: both graceful stages time out, then the VM is stopped.
SERVICES.scenario("hard-stop", SHUTDOWN_STAYING_GUEST % 3, job="echo no integration services here\n")

# The guest panics when the host sets a KVP key (so the test decides when); with
# --on-crash=stay the VM stays up, and the heartbeat must stop.
SERVICES.scenario("crash", r"""
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
""", job=r"""
while ! tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 2>/dev/null | grep -q '^crash-now$'; do sleep 0.2; done
echo "GUEST-CRASHING"
echo c > /proc/sysrq-trigger
""")


# The API socket's directory: missing at the start (refused before a guest runs, naming the
# path), then removed while the VM runs (the guest runs on, a client gets a clear refusal,
# SIGTERM still ends the VMM cleanly).
SERVICES.scenario("api-dir", r"""
"$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 256M --serial "file:$WORK/nodir.serial" \
    --api-socket "$WORK/no-such-dir/api.sock" >"$WORK/nodir.log" 2>&1
echo "RESULT nodir_rc=$?"
echo "RESULT nodir_console_bytes=$(wc -c < "$WORK/nodir.serial" 2>/dev/null || echo 0)"
sed 's/^/NODIR-LOG /' "$WORK/nodir.log"
mkdir -p "$WORK/apidir"
API=$WORK/apidir/api.sock
start_vm ""
wait_serial ENLIGHTEN-STAYING 120 || { dump_logs; exit 1; }
api info >/dev/null && echo "RESULT api_before=ok"
rm -rf "$WORK/apidir"
sleep 2
kill -0 "$VM_PID" 2>/dev/null && echo "RESULT alive_after_rm=yes"
api info >"$WORK/after.out" 2>&1; echo "RESULT api_after_rc=$?"
sed 's/^/API-AFTER /' "$WORK/after.out"
kill -TERM "$VM_PID"
wait $VM_PID
echo "RESULT rc=$?"
dump_logs
""", job="echo the API directory goes away\n")


# ----------------------------------------------------------------------------- checkpoints
# The default guest (its /init runs hv_vss_daemon and hv_fcopy_daemon beside hv_kvp_daemon)
# with a VHDX data disk and a read-only raw disk: an application-consistent checkpoint (the
# daemon answers; nothing of a tmpfs root is frozen), file copy, then the refusals (the VSS
# service switched off, a writable raw disk), a crash-consistent checkpoint, and the merges.
# The Debian guest's checkpoint of a mounted ext4 file system is in test_debian.py.
SERVICES.scenario("checkpoint", r"""
try() { name=$1; shift; out=$(api "$@" 2>&1); rc=$?; echo "RESULT $name=$(printf '%s' "$out" | tr '\n' ' ') rc=$rc"; }
"$ENL" image create "$WORK/a.vhdx" --format vhdx --size 32M >/dev/null
truncate -s 16M "$WORK/ro.img" "$WORK/rw.img"
start_vm "" --disk "path=$WORK/a.vhdx,format=vhdx,id=a" --disk "path=$WORK/ro.img,format=raw,readonly=on,id=ro"
wait_serial ENLIGHTEN-SERVICES-READY 120 || { dump_logs; exit 1; }
wait_api 30 '"name": "vss"' integration-services
echo small > "$WORK/small.txt"
try fcopy copy-file "$WORK/small.txt" /tmp/small.txt
try app checkpoint c1
try list checkpoints
"$ENL" image info "$WORK/a_c1.avhdx" >/dev/null 2>&1; echo "RESULT child_opens=$?"
api integration-services disable vss >/dev/null
try disabled checkpoint c2
try crash checkpoint c2 --crash
api add-disk "$WORK/rw.img" --id rw --format raw >/dev/null
try raw checkpoint c3 --crash
api remove-disk rw >/dev/null
try merge2 checkpoint-merge
try merge1 checkpoint-merge
try merge0 checkpoint-merge
echo "RESULT avhdx_left=$(ls "$WORK" | grep -c avhdx)"
api power-off; wait $VM_PID; echo "RESULT rc=$?"
"$ENL" image check "$WORK/a.vhdx" >/dev/null 2>&1; echo "RESULT check=$?"
dump_logs
""", timeout=300)


# ----------------------------------------------------------------------------- service switches
# One VM started with --integration-services heartbeat,shutdown,kvp (time sync off) and
# --on-reboot restart. Its job reports which integration-service devices the guest has
# (GUEST-HAS, at every change) and their instance GUIDs (GUEST-INSTANCES, at each boot), and
# unbinds the heartbeat's driver when the host sets the KVP key unbind-hb. The host switches
# services through the API (vm.integration-services) and waits for the guest to follow, then
# resets the VM and reads the GUIDs of the second boot. Two more VMs, one with --vm-id and
# one without, are started only for their vm.info (the instance GUIDs they would offer).
CONTROLS_JOB = r"""
has() {
    for d in /sys/bus/vmbus/devices/*; do
        read -r c < "$d/class_id" 2>/dev/null && [ "$c" = "{$1}" ] && { echo 1; return; }
    done
    echo 0
}
dev_of() {
    for d in /sys/bus/vmbus/devices/*; do
        read -r c < "$d/class_id"; [ "$c" = "{$1}" ] && echo "${d##*/}"
    done
}
state() {
    echo "heartbeat=$(has 57164f39-9115-4e78-ab55-382f3bd5422d) shutdown=$(has 0e0b6031-5213-4934-818b-38d90ced39db)" \
         "timesync=$(has 9527e630-d0ae-497b-adce-e80ab0175caf) kvp=$(has a9a0f4e7-5a45-4d96-b827-8a841e8c03e6)"
}
echo "GUEST-INSTANCES $(ls /sys/bus/vmbus/devices | sort | tr '\n' ' ')"
( last=; while :; do s=$(state); [ "$s" != "$last" ] && echo "GUEST-HAS $s" && last=$s; sleep 0.2; done ) &
( while ! tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 2>/dev/null | grep -q '^unbind-hb$'; do sleep 0.2; done
  dev=$(dev_of 57164f39-9115-4e78-ab55-382f3bd5422d)
  echo "$dev" > /sys/bus/vmbus/drivers/hv_utils/unbind && echo "GUEST-UNBOUND-HB $dev" ) &
"""

CONTROLS_SCRIPT = r"""
HB='"name": "heartbeat"'; TS='"name": "timesync"'
# ics TAG: vm.integration-services between markers
ics() { echo "ICS-BEGIN $1"; api integration-services; echo "ICS-END $1"; }
# status_is NAME-PATTERN STATUS SECONDS: until the service's status is STATUS
status_is() {
    n=0
    until api integration-services | grep -A3 "$1" | grep -m1 '"status"' | grep -q "\"$2\""; do
        n=$((n + 1)); [ $n -gt $(($3 * 5)) ] && { echo "SCENARIO-TIMEOUT waiting for $1 $2"; return 1; }
        sleep 0.2
    done
}
# switch ACTION NAME: the API call, its answer between markers
switch() { echo "SWITCH-BEGIN $1-$2"; api integration-services "$1" "$2"; echo "RESULT $1_$2_rc=$?"; echo "SWITCH-END $1-$2"; }
info() { echo "INFO-BEGIN $1"; api info; echo "INFO-END $1"; }

"$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus 1 --serial "file:$SERIAL" \
    --api-socket "$API" --on-reboot restart --log-level info --integration-services heartbeat,shutdown,kvp \
    --cmdline "console=ttyS0 quiet enlighten.services enlighten.stay" >"$WORK/vmm.log" 2>&1 &
VM_PID=$!
wait_serial ENLIGHTEN-SERVICES-READY 120 || { dump_logs; exit 1; }
wait_serial "GUEST-HAS heartbeat=1 shutdown=1 timesync=0 kvp=1" 30
status_is "$HB" OK 30
ics start
info boot1
switch disable heartbeat
wait_serial "GUEST-HAS heartbeat=0 shutdown=1 timesync=0 kvp=1" 30 && echo "RESULT guest_saw_heartbeat_go=yes"
ics heartbeat-off
wait_api 10 '"state": "unknown"' heartbeat && echo "RESULT heartbeat_unknown_while_off=yes"
switch enable timesync
wait_serial "GUEST-HAS heartbeat=0 shutdown=1 timesync=1 kvp=1" 30 && echo "RESULT guest_saw_timesync_come=yes"
status_is "$TS" OK 30 && echo "RESULT timesync_ok=yes"
switch enable heartbeat
wait_serial "GUEST-HAS heartbeat=1 shutdown=1 timesync=1 kvp=1" 30 && echo "RESULT guest_saw_heartbeat_back=yes"
status_is "$HB" OK 30 && echo "RESULT heartbeat_ok_again=yes"
wait_api 20 '"state": "healthy"' heartbeat && echo "RESULT heartbeat_healthy_again=yes"
ics all-on
# the guest lets go of the heartbeat (its driver unbound): Lost Communication
api kvp-set external unbind-hb 1
wait_serial GUEST-UNBOUND-HB 30
status_is "$HB" "Lost Communication" 30 && echo "RESULT heartbeat_lost=yes"
ics lost
# off before the reset: a switched-off service stays off across the reboot (and the key that
# made the guest unbind its heartbeat goes: the host's KVP pool outlives the reboot)
api kvp-delete external unbind-hb
switch disable timesync
wait_serial "GUEST-HAS heartbeat=1 shutdown=1 timesync=0 kvp=1" 30
api reset; echo "RESULT reset_rc=$?"
n=0; until [ "$(grep -c ENLIGHTEN-SERVICES-READY "$SERIAL")" -ge 2 ] || [ $n -ge 1200 ]; do sleep 0.1; n=$((n + 1)); done
echo "RESULT boots=$(grep -c ENLIGHTEN-SERVICES-READY "$SERIAL")"
sleep 1
status_is "$HB" OK 30 && echo "RESULT heartbeat_ok_after_reboot=yes"
ics boot2
info boot2
api power-off; wait $VM_PID; echo "RESULT rc=$?"
dump_logs

# two more VMs, for their ids and instance GUIDs only (powered off at once)
for vm in given random; do
    rm -f "$API"
    if [ $vm = given ]; then idarg="--vm-id 6ba7b810-9dad-41d1-80b4-00c04fd430c8"; else idarg=; fi
    "$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 256M --cpus 1 --serial off \
        --api-socket "$API" $idarg --cmdline "console=ttyS0 quiet enlighten.stay" >"$WORK/$vm.log" 2>&1 &
    VM_PID=$!
    wait_api 30 '"state": "running"' info >/dev/null
    info "vm-$vm"
    api power-off || kill -KILL $VM_PID; wait $VM_PID
done
"""
SERVICES.scenario("controls", CONTROLS_SCRIPT, job=CONTROLS_JOB, timeout=400)


def api_statuses(out: str, method: str) -> list[tuple[str, int]]:
    """(decoded path, HTTP status) of each request the API server logged at debug level."""
    return [(unquote(path), int(status))
            for path, status in re.findall(rf"api: {method} (/api/v1/\S+) -> (\d+)", out)]


class SharedVmServiceTests(unittest.TestCase):
    """One VM with the integration services (the "shared" run above) for every check that
    leaves it usable: offers bound, KVP both ways, time sync, 50 rebinds, API shutdown."""

    res: RunResult
    r: dict[str, str]

    def setUp(self) -> None:
        self.res = SERVICES.result(self, "shared")
        self.r = results(self.res)

    def why(self) -> str:
        return describe(self.res, 16000)

    def test_ic_devices_are_offered_and_bound_by_hv_utils(self) -> None:
        out = self.res.output
        devs = re.findall(r"^DEV (\S+) class=\{([0-9a-f-]+)\} driver=(\S+)", out, re.M)
        classes = {c: drv for _inst, c, drv in devs}
        for name, guid in IC_CLASSES.items():
            self.assertIn(guid, classes, f"{name} device missing" + self.why())
            self.assertEqual(classes[guid], "hv_utils", f"{name} not bound to hv_utils" + self.why())
        for ic in ("Shutdown", "TimeSync", "Heartbeat", "KVP", "VSS"):
            self.assertRegex(out, rf"{ic} IC version \d+\.\d+", self.why())
        self.assertEqual(self.r.get("rc"), "0", "the VMM should exit 0 after the guest powered off" + self.why())

    def test_shutdown_through_the_api(self) -> None:
        r = self.r
        self.assertEqual(r.get("request"), "accepted", self.why())
        self.assertEqual(r.get("rc"), "0", "the VMM should exit 0 after the guest powered off" + self.why())
        # The guest's own init saw an orderly shutdown request, and the kernel powered off.
        self.assertIn("ENLIGHTEN-SHUTDOWN-REQUESTED poweroff", self.res.output, self.why())
        self.assertIn("reboot: Power down", self.res.output, self.why())
        self.assertIn("seconds", r, self.why())
        self.assertLess(float(r["seconds"]), 10.0, self.why())
        print(f"[shutdown took {r['seconds']} s] ", end="", file=sys.stderr, flush=True)

    def test_kvp_host_to_guest_and_guest_intrinsics(self) -> None:
        r, out = self.r, self.res.output
        self.assertEqual(r.get("set1"), "ok", self.why())
        self.assertEqual(r.get("set2"), "ok", self.why())
        # What hv_kvp_daemon wrote into the guest's pool file.
        self.assertIn("pool0 VirtualMachineName", out, self.why())
        self.assertIn("pool0 enlighten-e2e", out, self.why())
        self.assertIn("pool0 Ünïcode key", out, self.why())
        self.assertIn("pool0 välue €", out, self.why())
        # The guest's intrinsic data, through the API.
        auto = out[out.index("--- auto pool ---"):out.index("--- end auto pool ---")] if "--- auto pool ---" in out else ""
        self.assertIn("FullyQualifiedDomainName", auto, self.why())
        self.assertIn("enlighten-guest", auto, self.why())
        self.assertIn("NetworkAddressIPv4", auto, self.why())
        self.assertIn("192.0.2.10", auto, self.why())
        self.assertEqual(r.get("get"), "ok", "kvp-get did not return the value set" + self.why())
        self.assertIn("OSName", auto, self.why())
        self.assertEqual(r.get("delete"), "ok", self.why())
        # The deleted key is gone: `remote` exits 1 with one error line naming the key, and
        # the server answered 404 (its debug log has each request's status).
        self.assertEqual(r.get("get_deleted_rc"), "1", "kvp-get of a deleted key must fail" + self.why())
        self.assertEqual(r.get("get_deleted_stdout_bytes"), "0", self.why())
        self.assertEqual(r.get("get_deleted_stderr_lines"), "1", self.why())
        self.assertTrue(r.get("get_deleted_stderr", "").startswith("enlighten: error: "), self.why())
        self.assertIn("'Ünïcode key'", r.get("get_deleted_stderr", ""), "the error should name the key" + self.why())
        gets = [st for path, st in api_statuses(out, "GET") if path == "/api/v1/vm.kvp/external/Ünïcode key"]
        self.assertEqual(gets, [404], "GET of the deleted key should be answered 404" + self.why())
        # The guest's pools are not the host's to write: exit 1, a message saying which pools
        # the host writes, HTTP 400, and the auto pool has no such key afterwards.
        self.assertEqual(r.get("set_auto_rc"), "1", "kvp-set in the auto pool must be refused" + self.why())
        self.assertEqual(r.get("set_auto_stdout_bytes"), "0", self.why())
        self.assertEqual(r.get("set_auto_stderr_lines"), "1", self.why())
        self.assertTrue(r.get("set_auto_stderr", "").startswith("enlighten: error: "), self.why())
        self.assertIn("external", r.get("set_auto_stderr", ""), "the error should say which pools the host writes"
                      + self.why())
        puts = [st for path, st in api_statuses(out, "PUT") if path == "/api/v1/vm.kvp/auto/Foo"]
        self.assertEqual(puts, [400], "PUT into the auto pool should be answered 400" + self.why())
        self.assertEqual(r.get("auto_listed_again"), "ok", self.why())
        self.assertEqual(r.get("auto_foo_entries"), "0", "the refused key is in the auto pool" + self.why())
        self.assertEqual(r.get("rc"), "0", self.why())

    def test_time_sync_corrects_a_wrong_guest_clock(self) -> None:
        r, out = self.r, self.res.output
        self.assertEqual(r.get("timesync_trigger"), "sent", self.why())
        m = re.search(r"GUEST-CLOCK-BEFORE (\d+)", out)
        self.assertIsNotNone(m, self.why())
        self.assertLess(int(m.group(1)), 1_000_000_000, "the guest clock was not set wrong" + self.why())
        self.assertIn("TIMESYNC-REBOUND", out, "the time sync device was not bound again" + self.why())
        m = re.search(r"GUEST-CLOCK-AFTER (\d+)", out)
        self.assertIsNotNone(m, self.why())
        self.assertIn("host_after", r, self.why())
        self.assertLess(abs(int(m.group(1)) - int(r["host_after"])), 10,
                        "guest clock not corrected on connect" + self.why())
        self.assertEqual(r.get("api"), "ok", self.why())
        m = re.search(r"GUEST-CLOCK-API (\d+)", out)
        self.assertIsNotNone(m, "the API time sync did not correct the clock" + self.why())
        self.assertIn("host_api", r, self.why())
        self.assertLess(abs(int(m.group(1)) - int(r["host_api"])), 10, self.why())

    def test_rebinding_a_driver_50_times_leaks_nothing(self) -> None:
        r, out = self.r, self.res.output
        self.assertIn("REBOUND-OK", out, self.why())
        self.assertNotIn("UNBIND-FAILED", out, self.why())
        self.assertNotIn("BIND-FAILED", out, self.why())
        m = re.search(r"HEARTBEAT-NEGOTIATIONS (\d+)", out)
        self.assertIsNotNone(m, self.why())
        self.assertEqual(int(m.group(1)), 51, "each bind should open the channel and negotiate again" + self.why())
        self.assertEqual(r.get("gpadls_before"), r.get("gpadls_after"), "GPADL count changed" + self.why())
        self.assertGreater(int(r.get("gpadls_before") or 0), 0, self.why())
        self.assertTrue(r.get("rss_before") and r.get("rss_after"), self.why())
        growth = int(r["rss_after"]) - int(r["rss_before"])
        print(f"[VMM RSS {int(r['rss_before']) // 1024} KiB -> {int(r['rss_after']) // 1024} KiB] ",
              end="", file=sys.stderr, flush=True)
        self.assertLess(growth, 512 * 1024, "the VMM's RSS grew by more than 512 KiB" + self.why())
        self.assertEqual(r.get("rc"), "0", self.why())


class SeparateVmServiceTests(unittest.TestCase):
    """Checks that end their VM in their own way: one Enlighten process each."""

    def test_shutdown_falls_back_to_the_acpi_power_button(self) -> None:
        res = SERVICES.result(self, "acpi")
        r = results(res)
        self.assertIn("ACPID-STARTED", res.output, describe(res))
        self.assertEqual(r.get("request"), "accepted", describe(res))
        self.assertEqual(r.get("rc"), "0", describe(res))
        self.assertIn("pressing the ACPI power button", res.output, describe(res))
        self.assertIn("ENLIGHTEN-SHUTDOWN-REQUESTED poweroff", res.output, describe(res))
        self.assertIn("seconds", r, describe(res))
        self.assertLess(float(r["seconds"]), 20, "the power button stage should not wait for its timeout" + describe(res))
        print(f"[shutdown took {r['seconds']} s] ", end="", file=sys.stderr, flush=True)

    def test_shutdown_ends_with_a_hard_stop_when_the_guest_ignores_it(self) -> None:
        res = SERVICES.result(self, "hard-stop")
        r = results(res)
        self.assertEqual(r.get("request"), "accepted", describe(res))
        self.assertEqual(r.get("rc"), "5", "a forced power-off exits 5" + describe(res))
        self.assertIn("seconds", r, describe(res))
        self.assertGreaterEqual(float(r["seconds"]), 3.0, describe(res))
        self.assertLess(float(r["seconds"]), 30.0, describe(res))
        self.assertNotIn("ENLIGHTEN-SHUTDOWN-REQUESTED", res.output, describe(res))
        print(f"[stopped after {r['seconds']} s] ", end="", file=sys.stderr, flush=True)

    def test_heartbeat_healthy_then_lost_after_a_guest_crash(self) -> None:
        res = SERVICES.result(self, "crash")
        r = results(res)
        self.assertIn("healthy_after", r, "the heartbeat never became healthy" + describe(res))
        self.assertLess(float(r["healthy_after"]), 20, describe(res))
        self.assertEqual(r.get("trigger"), "sent", describe(res))
        self.assertIn("GUEST-CRASHING", res.output, describe(res))
        self.assertIn("lost_after", r, "the heartbeat was not reported lost after the crash" + describe(res))
        self.assertEqual(r.get("rc"), "5", "power-off through the API exits 5" + describe(res))
        print(f"[healthy after {r['healthy_after']} s, lost {r['lost_after']} s after the panic] ",
              end="", file=sys.stderr, flush=True)


    def test_an_api_socket_in_a_missing_directory_is_refused_before_the_guest_runs(self) -> None:
        res = SERVICES.result(self, "api-dir")
        r = results(res)
        self.assertEqual(r.get("nodir_rc"), "1", describe(res))
        self.assertEqual(r.get("nodir_console_bytes"), "0", "no guest ran" + describe(res))
        lines = [m.group(1) for m in re.finditer(r"^NODIR-LOG (.*)$", res.output, re.M)]
        self.assertEqual(len(lines), 1, f"one line: {lines}" + describe(res))
        self.assertTrue(lines[0].startswith("enlighten: error:") and "no-such-dir/api.sock" in lines[0],
                        f"{lines[0]!r} should be an error naming the socket" + describe(res))

    def test_the_api_directory_removed_under_a_running_vm(self) -> None:
        res = SERVICES.result(self, "api-dir")
        r = results(res)
        self.assertEqual(r.get("api_before"), "ok", describe(res))
        self.assertEqual(r.get("alive_after_rm"), "yes", "the VMM outlives its socket's directory" + describe(res))
        self.assertNotEqual(r.get("api_after_rc"), "0", "a client finds no socket" + describe(res))
        self.assertEqual(r.get("rc"), "143", "SIGTERM ends the VMM with 128 + 15" + describe(res))
        log = res.output.split("--- enlighten log ---", 1)[-1]
        for bad in ("AddressSanitizer", "runtime error", "terminate called", "Assertion", "forbidden system call"):
            self.assertNotIn(bad, log, describe(res))



class CheckpointTests(unittest.TestCase):
    """The "checkpoint" run: production checkpoints with the default guest's VSS daemon, and
    what is refused."""

    res: RunResult
    r: dict[str, str]

    def setUp(self) -> None:
        self.res = SERVICES.result(self, "checkpoint")
        self.r = results(self.res)

    def why(self) -> str:
        return describe(self.res, 12000)

    def answer(self, name: str) -> tuple[str, str]:
        m = re.fullmatch(r"(.*) rc=(\d+)", self.r.get(name, ""))
        self.assertIsNotNone(m, f"no result {name}" + self.why())
        return m.group(1), m.group(2)

    def test_the_default_guest_runs_the_vss_and_file_copy_daemons(self) -> None:
        out, rc = self.answer("app")
        self.assertEqual(rc, "0", "HOT_BACKUP and FREEZE answered by hv_vss_daemon" + self.why())
        c = json.loads(out)
        self.assertEqual((c["name"], c["consistency"]), ("c1", "application"), self.why())
        self.assertEqual([d["id"] for d in c["disks"]], ["a"], "the read-only disk is left alone" + self.why())
        self.assertEqual(self.answer("fcopy")[1], "0", "hv_fcopy_daemon wrote the file" + self.why())
        self.assertEqual(self.r.get("child_opens"), "0", self.why())

    def test_refusals_say_why(self) -> None:
        out, rc = self.answer("disabled")
        self.assertEqual(rc, "1", self.why())
        self.assertIn("VSS is not available", out, self.why())
        out, rc = self.answer("crash")
        self.assertEqual((rc, json.loads(out)["consistency"]), ("0", "crash"), self.why())
        out, rc = self.answer("raw")
        self.assertEqual(rc, "1", self.why())
        self.assertIn("disk 'rw'", out, self.why())
        self.assertIn("checkpoints need VHDX disks", out, self.why())

    def test_merges_take_the_newest_first_and_leave_one_image(self) -> None:
        self.assertEqual(json.loads(self.answer("merge2")[0])["name"], "c2", self.why())
        self.assertEqual(json.loads(self.answer("merge1")[0])["name"], "c1", self.why())
        out, rc = self.answer("merge0")
        self.assertEqual(rc, "1", self.why())
        self.assertIn("there is no checkpoint to merge", out, self.why())
        self.assertEqual(self.r.get("avhdx_left"), "0", self.why())
        self.assertEqual(self.r.get("check"), "0", "enlighten image check after the power-off" + self.why())
        self.assertEqual(self.r.get("rc"), "5", "the VMM ran until the API powered it off (exit status 5)" + self.why())


class IntegrationServiceControlTests(unittest.TestCase):
    """The "controls" run: switching services on and off through the API, what the guest
    sees of it, Hyper-V's status words, and the VM id behind the services' GUIDs."""

    res: RunResult
    r: dict[str, str]

    def setUp(self) -> None:
        self.res = SERVICES.result(self, "controls")
        self.r = results(self.res)

    def why(self) -> str:
        return describe(self.res, 16000)

    def services(self, tag: str) -> dict[str, dict]:
        return {s["name"]: s for s in json_between(self.res, "ICS", tag).get("services", [])}

    def ic_instances(self, tag: str) -> dict[str, str]:
        info = vm_info(self.res, tag)
        return {d["id"]: d["instance_id"] for d in info.get("devices", []) if d.get("kind") in IC_CLASSES}

    def test_the_command_line_chooses_the_services_offered_at_start(self) -> None:
        s = self.services("start")
        self.assertEqual(set(s), set(IC_CLASSES), self.why())
        for name in ("timesync", "fcopy"):
            self.assertFalse(s[name]["enabled"], name + self.why())
            self.assertIsNone(s[name]["status"], name + self.why())
        for name in ("heartbeat", "shutdown", "kvp"):
            self.assertTrue(s[name]["enabled"], name + self.why())
            self.assertEqual(s[name]["status"], "OK", name + self.why())
            self.assertRegex(s[name]["version"] or "", r"^\d+\.\d+$", name + self.why())
        self.assertIn("GUEST-HAS heartbeat=1 shutdown=1 timesync=0 kvp=1", self.res.output, self.why())

    def test_disabling_heartbeat_removes_the_guests_device_and_enabling_brings_it_back(self) -> None:
        self.assertEqual(self.r.get("disable_heartbeat_rc"), "0", self.why())
        self.assertEqual(self.r.get("guest_saw_heartbeat_go"), "yes", self.why())
        off = self.services("heartbeat-off")
        self.assertFalse(off["heartbeat"]["enabled"], self.why())
        self.assertIsNone(off["heartbeat"]["status"], self.why())
        self.assertEqual(self.r.get("enable_heartbeat_rc"), "0", self.why())
        self.assertEqual(self.r.get("guest_saw_heartbeat_back"), "yes", self.why())
        self.assertEqual(self.r.get("heartbeat_ok_again"), "yes", self.why())
        self.assertEqual(self.r.get("heartbeat_unknown_while_off"), "yes",
                         "a switched-off heartbeat must not say healthy" + self.why())
        self.assertEqual(self.r.get("heartbeat_healthy_again"), "yes", self.why())

    def test_enabling_a_service_the_vm_started_without_offers_it(self) -> None:
        self.assertEqual(self.r.get("enable_timesync_rc"), "0", self.why())
        self.assertEqual(self.r.get("guest_saw_timesync_come"), "yes", self.why())
        self.assertEqual(self.r.get("timesync_ok"), "yes", self.why())
        on = self.services("all-on")
        # (file copy and VSS stay off: the VM started without them)
        self.assertTrue(all(s["enabled"] and s["status"] == "OK" for n, s in on.items() if n not in ("fcopy", "vss")),
                        self.why())

    def test_status_is_lost_communication_when_the_guest_lets_the_service_go(self) -> None:
        self.assertEqual(self.r.get("heartbeat_lost"), "yes", self.why())
        lost = self.services("lost")
        self.assertEqual(lost["heartbeat"]["status"], "Lost Communication", self.why())
        self.assertTrue(lost["heartbeat"]["enabled"], self.why())

    def test_switches_and_instance_guids_survive_a_reboot(self) -> None:
        self.assertEqual(self.r.get("boots"), "2", self.why())
        self.assertEqual(self.r.get("heartbeat_ok_after_reboot"), "yes", self.why())
        after = self.services("boot2")
        self.assertFalse(after["timesync"]["enabled"], self.why())
        self.assertTrue(after["heartbeat"]["enabled"], self.why())
        guest = re.findall(r"^GUEST-INSTANCES (.*)$", self.res.output, re.M)
        self.assertEqual(len(guest), 2, self.why())
        boot1, boot2 = self.ic_instances("boot1"), self.ic_instances("boot2")
        self.assertEqual(set(boot1), set(IC_CLASSES), self.why())
        self.assertEqual(boot1, boot2, self.why())
        # the guest names its devices by those GUIDs (time sync was off in both boots)
        for name in ("heartbeat", "shutdown", "kvp"):
            self.assertIn(boot1[name], guest[0].split(), name + self.why())
            self.assertIn(boot1[name], guest[1].split(), name + self.why())
        self.assertEqual(self.r.get("rc"), "5", "exit status after the API power-off" + self.why())

    def test_vm_ids_given_or_random_give_each_vm_its_own_service_guids(self) -> None:
        given, random = vm_info(self.res, "vm-given"), vm_info(self.res, "vm-random")
        first = vm_info(self.res, "boot1")
        self.assertEqual(given.get("vm_id"), "6ba7b810-9dad-41d1-80b4-00c04fd430c8", self.why())
        ids = [first.get("vm_id"), given.get("vm_id"), random.get("vm_id")]
        self.assertTrue(all(ids) and len(set(ids)) == 3, f"{ids}" + self.why())
        sets = [set(self.ic_instances(t).values()) for t in ("boot1", "vm-given", "vm-random")]
        for s in sets:
            self.assertEqual(len(s), len(IC_CLASSES), self.why())
        self.assertFalse(sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2], f"{sets}" + self.why())


class ApiLoadTests(unittest.TestCase):
    """The "api-load" run: the management API of a running VM under 200 clients and 50 slow
    connections (tests/tools/api_load.c), and the VM afterwards."""

    def test_the_api_under_load_keeps_answering_and_the_vm_is_unaffected(self) -> None:
        res = SERVICES.result(self, "api-load")
        r = results(res)
        self.assertEqual(r.get("healthy_before"), "yes", "the heartbeat was not healthy before the load"
                         + describe(res, 12000))
        summary = r.get("load_summary", "")
        print(f"[{summary}] ", end="", file=sys.stderr, flush=True)
        self.assertIn("load_rc", r, "api_load did not run" + describe(res, 12000))
        self.assertNotEqual(r.get("load_rc"), "2", "api_load could not start" + describe(res, 12000))
        self.assertTrue(summary.startswith("api_load: PASS "),
                        "a vm.info probe took over 1 s or failed, or a client got neither an answer nor a clean "
                        "refusal" + describe(res, 12000))
        self.assertEqual(r.get("load_rc"), "0", describe(res, 12000))
        m = re.search(r"\bok=(\d+)\b.*\bprobe n=(\d+)\b", summary)
        self.assertIsNotNone(m, describe(res, 12000))
        self.assertGreater(int(m.group(1)), 0, "no client request was answered" + describe(res, 12000))
        self.assertGreater(int(m.group(2)), 0, "the probe made no request" + describe(res, 12000))
        # The VM is unaffected: still running, its heartbeat healthy, KVP answering, and a
        # graceful shutdown through the API.
        self.assertEqual(r.get("vm_alive"), "yes", "the VMM exited under the load" + describe(res, 12000))
        self.assertEqual(r.get("healthy_after"), "yes", "the heartbeat was not healthy after the load"
                         + describe(res, 12000))
        self.assertEqual(r.get("kvp_rc"), "0", "kvp-list auto failed after the load" + describe(res, 12000))
        kvp = json_between(res, "KVP", "auto")
        self.assertIsInstance(kvp.get("entries"), list, describe(res, 12000))
        self.assertEqual(r.get("shutdown"), "accepted", describe(res, 12000))
        self.assertEqual(r.get("rc"), "0", "the VMM should exit 0 after the guest powered off" + describe(res, 12000))
        self.assertIn("ENLIGHTEN-SHUTDOWN-REQUESTED poweroff", res.output,
                      "the guest's shutdown service should have handled the request" + describe(res, 12000))


if __name__ == "__main__":
    unittest.main(verbosity=2)
