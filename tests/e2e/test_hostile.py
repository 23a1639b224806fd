"""The hostile guest: attacks on Enlighten from inside the unmodified Debian guest kernel.

A kernel module of our own (tests/hostile/enl_hostile.c, built against Debian's headers of
the guest kernel: tools/enlighten_tools/hostile.py) is loaded once per attack by the guest's
job. It sends what a malicious guest kernel could: raw channel messages of every type and
size, GPADLs that lie, doorbell and message floods, every hypercall code with bad GPAs, and
packets that lie (lengths, offsets, ranges, PFNs outside RAM, ring indices) on the channels
of the disk, the NIC, the integration services and the balloon, both on the channel the
device's own driver has open ("live") and on a channel the module opens itself after taking
the device over ("own": ring index lies, raw OPENCHANNELs, the ring's GPADL torn down while
open, open/close in a loop while another vCPU rings the doorbell).

After each attack the guest checks its disk (1 MiB written, read back past the page cache)
and its network (a ping of slirp's gateway), and the device that was attacked: taken back by
its own driver after an "own" attack, it must work again. Then the host checks, through the
management API, that the VMM runs, the heartbeat is healthy, the guest's KVP data can be
read, and every integration service is OK, and acknowledges the step by writing a KVP key
that the guest must see (a KVP round trip host -> guest) before its next attack.

The same job runs here (session "hostile", build/enlighten: `release` the global and live
attacks, `release-own` the own attacks, `floods` the reply floods) and against the ASan build
(`asan-hostile`, `asan-own` and `asan-floods` in test_sanitized's session: build-asan/enlighten,
ASan+UBSan, where no sanitizer report may appear; that session waits for scripts/test's
sanitizer track). The
VHDX the guest's disk lives on must pass `enlighten image check` at the end."""

from __future__ import annotations

import json
import os
import re
import unittest

from pathlib import Path

from harness import REPO, RunResult, Session, describe, json_between, results, shutdown_trace, static_c_program

from enlighten_tools import hostile  # noqa: E402 - harness puts tools/ on the path

# A run whose guest triple-faults runs once more in a fresh test host (the session report
# says so; a second one fails): see Session's retry_guest_triple_fault and docs/hostile-guest.md.
HOSTILE = Session("hostile", retry_guest_triple_fault=True)

SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")

CLASSES = {
    "storvsc": "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f",
    "netvsc": "f8615163-df3e-46c5-913f-f2d2f965ed0e",
    "heartbeat": "57164f39-9115-4e78-ab55-382f3bd5422d",
    "shutdown": "0e0b6031-5213-4934-818b-38d90ced39db",
    "vss": "35fa2e29-ea23-4236-96ae-3a6ebacba440",
    "fcopy": "34d14be3-dee4-41c8-9ae7-6b174977c192",
    "balloon": "525074dc-8985-46e2-8057-a307dc18a502",
    "synthvid": "da0a7802-e377-4aac-8e77-0558eb1073f8",
    "keyboard": "f912ad6d-2b17-48ea-bd65-f927a61c7684",
    "mouse": "cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a",
}

# (step name, kind, target, shape): the attacks in the order the guest runs them.
# The three attacks that flood the guest with the VMM's answers (messages, gpadls, flood) were
# followed by a triple fault of the GUEST in 3 of 7 runs on 2026-12-06. On 2026-12-07 the
# floods themselves passed in 9 of 10 runs, but with them before it own-storvsc's open/close
# loop triple-faulted the guest in 2 of those runs, and one run faulted twice; the traces point
# at the nested test host (docs/hostile-guest.md, "Open"). With a 2-vCPU guest of their own
# 5 of 10 flood runs lost the guest or the test host once; with a 1-vCPU guest none of 8 did.
# So the floods run in a 1-vCPU guest of their own (`floods`; E2E_FLOODS_CPUS=2 for 2), and
# `release` makes the other attacks. ENLIGHTEN_E2E_HOSTILE_FLOODS=1 also puts them back at the
# head of `release` (the 2026-12-07 order).
FLOODS = os.environ.get("ENLIGHTEN_E2E_HOSTILE_FLOODS") == "1"
FLOOD_STEPS = {"messages", "gpadls", "flood"}

STEPS = [
    ("messages", "global", "", ""),
    ("gpadls", "global", "heartbeat", ""),
    ("doorbells", "global", "", ""),
    ("hypercalls", "global", "", ""),
    ("flood", "global", "", ""),
    ("live-storvsc", "live", "storvsc", "storvsc"),
    ("live-netvsc", "live", "netvsc", "netvsc"),
    ("live-heartbeat", "live", "heartbeat", "ic"),
    ("live-shutdown", "live", "shutdown", "ic"),
    ("live-vss", "live", "vss", "ic"),
    ("live-fcopy", "live", "fcopy", "ic"),
    ("live-balloon", "live", "balloon", "balloon"),
    ("live-synthvid", "live", "synthvid", "pipe"),
    ("live-keyboard", "live", "keyboard", "generic"),
    ("live-mouse", "live", "mouse", "pipe"),
    ("own-storvsc", "own", "storvsc", "storvsc"),
    ("own-netvsc", "own", "netvsc", "netvsc"),
    ("own-heartbeat", "own", "heartbeat", "ic"),
]


def _job(steps_run: list[tuple[str, str, str, str]]) -> str:
    steps = "\n".join(f"step {name} {kind} {CLASSES.get(target, '-')} {shape or '-'}"
                      for name, kind, target, shape in steps_run)
    return JOB_LIB + steps + "\necho HOSTILE-JOB-DONE\n"


JOB_LIB = r"""
KO=/enl_hostile.ko
# kernel messages (thousands of driver complaints) go to the log, not the serial console
dmesg -n 2
# a hypercall from user space (root, with ioperm): the host refuses it
/cpl3_hypercall > /tmp/cpl3 2>&1; echo "RESULT cpl3_rc=$?"; sed 's/^/CPL3 /' /tmp/cpl3
SEED=1; SCALE=100
for a in $(cat /proc/cmdline); do
    case "$a" in hostile.seed=*) SEED=${a#hostile.seed=} ;; hostile.scale=*) SCALE=${a#hostile.scale=} ;; esac
done
now() { read -r t _ </proc/uptime; echo "$t"; }
dev_of() {
    for d in /sys/bus/vmbus/devices/*; do
        read -r c < "$d/class_id"; [ "$c" = "{$1}" ] && { echo "${d##*/}"; return; }
    done
}
driver_of() { basename "$(readlink "/sys/bus/vmbus/devices/$1/driver" 2>/dev/null)" 2>/dev/null; }
first_disk() { for b in /sys/block/sd*; do [ -e "$b" ] && { echo "/dev/${b##*/}"; return; }; done; }
# disk_ok: 1 MiB of new data at 8 MiB, synced, read back past the page cache
disk_ok() {
    n=0; d=$(first_disk)
    while [ -z "$d" ] && [ $n -lt 100 ]; do sleep 0.2; n=$((n + 1)); d=$(first_disk); done
    [ -n "$d" ] || return 1
    dd if=/dev/urandom of=/tmp/pat bs=64k count=16 2>/dev/null
    dd if=/tmp/pat of="$d" bs=64k seek=128 count=16 oflag=direct conv=fsync 2>/dev/null || return 1
    dd if="$d" of=/tmp/back bs=64k skip=128 count=16 iflag=direct 2>/dev/null || return 1
    cmp -s /tmp/pat /tmp/back
}
net_ok() { ping -c 1 -W 3 10.0.2.2 >/dev/null 2>&1 || ping -c 2 -W 3 10.0.2.2 >/dev/null 2>&1; }
net_up() {  # eth0 again after hv_netvsc took the device back
    n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.2; n=$((n + 1)); done
    ip link set eth0 up 2>/dev/null
    ip addr add 10.0.2.15/24 dev eth0 2>/dev/null
    n=0; until net_ok || [ $n -ge 5 ]; do sleep 1; n=$((n + 1)); done
}
rebind() {  # DEV DRIVER: the device's own driver lets go of it and takes it again
    echo "$1" > "/sys/bus/vmbus/drivers/$2/unbind" 2>/dev/null
    echo "$1" > "/sys/bus/vmbus/drivers/$2/bind"
}
# device_ok SHAPE: does the attacked device work (for the integration services and the
# balloon the host judges, from the API)
device_ok() {
    case "$1" in
        storvsc) disk_ok ;;
        netvsc) net_ok ;;
        *) [ -n "$(driver_of "$DEV")" ] ;;
    esac
}
wait_ack() {
    n=0
    while ! tr '\0' '\n' < /var/lib/hyperv/.kvp_pool_0 2>/dev/null | grep -qx "hostile-ack-$1"; do
        n=$((n + 1)); [ $n -gt 600 ] && return 1
        sleep 0.2
    done
}
# report: what the module says about its attack (its `report` parameter: the kernel log may
# have lost lines to the attacked drivers' complaints)
report() { sed "s/^/HOSTILE-LOG $NUM /" /sys/module/enl_hostile/parameters/report 2>/dev/null; }
NUM=0
# step NAME KIND CLASS SHAPE
step() {
    name=$1; kind=$2; class=$3; shape=$4
    NUM=$((NUM + 1))
    t0=$(now)
    DEV=; DRV=; device=-
    [ "$class" != - ] && { DEV=$(dev_of "$class"); DRV=$(driver_of "$DEV"); }
    dmesg -c >/dev/null
    common="seed=$((SEED * 1000 + NUM)) scale=$SCALE"  # the module's parameters for every attack
    case "$kind" in
        global)
            args="attack=$name $common"
            [ -n "$DEV" ] && args="$args relid=$(cat /sys/bus/vmbus/devices/$DEV/id)"
            insmod $KO $args; rc=$?
            report; rmmod enl_hostile ;;
        live)
            insmod $KO attack=live device=$DEV shape=$shape $common; rc=$?
            report; rmmod enl_hostile
            if device_ok "$shape"; then device=kept
            else
                rebind "$DEV" "$DRV"; [ "$shape" = netvsc ] && net_up
                if device_ok "$shape"; then device=recovered; else device=failed; fi
            fi ;;
        own)
            insmod $KO attack=own shape=$shape $common; rc=$?
            echo enl_hostile > /sys/bus/vmbus/devices/$DEV/driver_override
            echo "$DEV" > /sys/bus/vmbus/drivers/$DRV/unbind
            echo "$DEV" > /sys/bus/vmbus/drivers/enl_hostile/bind || echo "HOSTILE-BIND-FAILED $name"
            echo "$DEV" > /sys/bus/vmbus/drivers/enl_hostile/unbind
            echo > /sys/bus/vmbus/devices/$DEV/driver_override
            report; rmmod enl_hostile
            echo "$DEV" > /sys/bus/vmbus/drivers/$DRV/bind || echo "HOSTILE-REBIND-FAILED $name"
            [ "$shape" = netvsc ] && net_up
            if device_ok "$shape"; then device=back; else device=failed; fi ;;
    esac
    dmesg | grep -v ENL-HOSTILE | grep -E "BUG|Oops|WARNING|general protection|Call Trace" | head -n 5 | sed "s/^/HOSTILE-GUEST-KERNEL $NUM /"
    disk=fail; disk_ok && disk=ok
    net=fail; net_ok && net=ok
    echo "HOSTILE-STEP $NUM $name insmod=$rc disk=$disk net=$net device=$device driver=$(driver_of "$DEV") secs=$(awk "BEGIN { print $(now) - $t0 }")"
    if wait_ack $NUM; then echo "HOSTILE-ACK $NUM ok"; else echo "HOSTILE-ACK $NUM timeout"; fi
}
"""

SCRIPT = r"""
"$ENL" image create "$WORK/disk.vhdx" --format vhdx --size 64M --block-size 1M >"$WORK/create.log" 2>&1 \
    || { echo "RESULT create=failed"; cat "$WORK/create.log"; }
start_vm "enlighten.modules=hv_storvsc,sd_mod,hv_netvsc,hv_balloon,hyperv_keyboard,hid_hyperv,hyperv_fb hostile.seed=$SEED hostile.scale=$SCALE" \
    --disk "path=$WORK/disk.vhdx,format=vhdx" --net "backend=slirp,id=net0"
if wait_serial ENLIGHTEN-SERVICES-READY 200; then
    # seccomp (on by default, log in the ASan build): every thread of the VMM has a filter
    echo "RESULT threads=$(ls /proc/$VM_PID/task | wc -l)"
    echo "RESULT filtered_threads=$(cat /proc/$VM_PID/task/*/status | grep -c '^Seccomp:[[:space:]]*2')"
    # (the library's wait_* helpers use $n: the step number is $k)
    k=1
    while [ $k -le $STEPS ]; do
        if ! wait_serial "HOSTILE-STEP $k " 400; then
            # A step that never ended: the VMM's view of every channel's rings says which side
            # stopped reading (vm.info "rings"), for the failure message.
            echo "HOSTILE-STALL $k"; echo "STALL-INFO-BEGIN"; api info; echo "STALL-INFO-END"
            break
        fi
        kill -0 $VM_PID 2>/dev/null && echo "RESULT step${k}_alive=yes"
        wait_api 30 '"state": "healthy"' heartbeat && echo "RESULT step${k}_heartbeat=healthy"
        api kvp-list auto >"$WORK/kvp.json" 2>&1 && grep -q FullyQualifiedDomainName "$WORK/kvp.json" \
            && echo "RESULT step${k}_kvp=ok"
        echo "ICS-BEGIN $k"; api integration-services; echo "ICS-END $k"
        api kvp-set external "hostile-ack-$k" 1 && echo "RESULT step${k}_ack=sent"
        kill -0 $VM_PID 2>/dev/null || break
        k=$((k + 1))
    done
    wait_serial HOSTILE-JOB-DONE 60 && echo "RESULT job=done"
    api shutdown --timeout 60; echo "RESULT shutdown_rc=$?"
fi
wait $VM_PID
echo "RESULT rc=$?"
"$ENL" image check "$WORK/disk.vhdx" >"$WORK/check.log" 2>&1; echo "RESULT check=$?"; cat "$WORK/check.log"
dump_logs
"""

# The attacks each run makes, by run key (check_hostile_run reads them).
RUN_STEPS: dict[str, list[tuple[str, str, str, str]]] = {}


def cpl3_hypercall() -> Path:
    """tests/hostile/cpl3_hypercall.c, statically linked, in build/e2e/ (for the guest)."""
    return static_c_program(REPO / "tests" / "hostile" / "cpl3_hypercall.c", "cpl3_hypercall")


def register(session: Session, key: str, *, seed: int, scale: int = 100, binary: Path | None = None,
             kinds: tuple[str, ...] = ("global", "live", "own"), floods: bool = False, cpus: int = 2) -> None:
    """The hostile guest as a run of `session` (seed: the module's random streams; scale: the
    percentage of each attack's default count; kinds: which kinds of attack it makes; floods:
    the flood attacks alone, or else every other attack)."""
    steps_run = [st for st in STEPS if st[1] in kinds and (st[0] in FLOOD_STEPS) == floods]
    if FLOODS and not floods and "global" in kinds:
        steps_run = [st for st in STEPS if st[0] in FLOOD_STEPS] + steps_run
    RUN_STEPS[key] = steps_run
    session.scenario(key, f"SEED={seed}\nSCALE={scale}\nSTEPS={len(steps_run)}\n" + SCRIPT, job=_job(steps_run),
                     cpus=cpus, net=True,
                     timeout=1200, binary=binary,
                     guest_files={"/enl_hostile.ko": hostile.build_module, "/cpl3_hypercall": cpl3_hypercall})


# The "own" attacks (the module takes the device over; its open/close loop runs while a
# kernel thread rings the doorbell in a tight loop) make the other runs' checks in a 1-vCPU
# guest of their own, `release-own`, as the floods do: in CI on 2026-12-07 a 2-vCPU guest
# triple-faulted twice in a row in own-heartbeat's loop (the retry faulted too), as own-storvsc's
# had in two runs on 2026-12-07, the nested test host failing to deliver an event to a vCPU in a
# tight loop of exits (docs/hostile-guest.md, "Open"). E2E_OWN_CPUS=2 gives it 2 vCPUs.
register(HOSTILE, "release", seed=1, kinds=("global", "live"))
register(HOSTILE, "release-own", seed=2, kinds=("own",), cpus=int(os.environ.get("E2E_OWN_CPUS", "1")))
register(HOSTILE, "floods", seed=3, floods=True, cpus=int(os.environ.get("E2E_FLOODS_CPUS", "1")))

# The guest shuts its own CPU down (the module's attack=triple): the VMM reports the triple
# fault and exits 3 (a reset, --on-reboot exit), and the test host's trace of KVM's shutdown
# exit (harness: E2E-KVM-SHUTDOWN) shows where the guest was, which is what a real fault's
# retry NOTE then shows too.
HOSTILE.scenario("triple", r"""
start_vm ""
wait_serial TRIPLE-INSMOD 200
n=0; while kill -0 $VM_PID 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
kill -0 $VM_PID 2>/dev/null && { echo "SCENARIO-TIMEOUT the guest still runs"; kill -KILL $VM_PID; }
wait $VM_PID
echo "RESULT rc=$?"
dump_logs
""", job="""
echo TRIPLE-INSMOD
dmesg -n 8
insmod /enl_hostile.ko attack=triple
echo TRIPLE-SURVIVED
""", guest_files={"/enl_hostile.ko": hostile.build_module}, timeout=300, expect_triple_fault=True)


def check_hostile_run(test: unittest.TestCase, session: Session, key: str) -> None:
    """Fails `test` with the list of attacks and what broke after which; prints the table."""
    res: RunResult = session.result(test, key)
    why = describe(res, 12000)
    out = res.output
    for report in SANITIZER_REPORTS:
        test.assertNotIn(report, out, f"a sanitizer report ({report!r})" + why)
    r = results(res)
    steps = {int(m.group(1)): m for m in re.finditer(
        r"^HOSTILE-STEP (\d+) (\S+) insmod=(\d+) disk=(\w+) net=(\w+) device=(\S+) driver=(\S*) secs=(\S+)$", out, re.M)}
    acks = dict(re.findall(r"^HOSTILE-ACK (\d+) (\w+)$", out, re.M))
    problems = []
    table = []
    for n, (name, kind, _target, _shape) in enumerate(RUN_STEPS[key], start=1):
        m = steps.get(n)
        if not m:
            stall = re.search(r"^STALL-INFO-BEGIN\n(.*?)^STALL-INFO-END$", out, re.S | re.M)
            rings = ""
            if stall:
                try:
                    rings = "; channels: " + ", ".join(
                        f"{c.get('name')}#{c.get('index')} {c.get('state')} {json.dumps(c.get('rings'))}"
                        for c in json.loads(stall.group(1)).get("channels", []) if c.get("rings"))
                except ValueError:
                    rings = "; vm.info unreadable: " + stall.group(1)[:500]
            problems.append(f"{name}: the guest never finished this attack{rings}")
            table.append(f"  {n:2} {name:15} NOT RUN")
            continue
        bad = []
        if m.group(2) != name:
            bad.append(f"ran {m.group(2)}")
        if m.group(3) != "0":
            bad.append(f"insmod={m.group(3)}")
        if m.group(4) != "ok":
            bad.append("disk I/O failed")
        if m.group(5) != "ok":
            bad.append("network failed")
        if kind == "own" and m.group(6) != "back":
            bad.append(f"device not back with its driver ({m.group(6)})")
        if kind == "live" and m.group(6) not in ("kept", "recovered"):
            bad.append(f"device {m.group(6)}")
        for check, want in (("alive", "yes"), ("heartbeat", "healthy"), ("kvp", "ok"), ("ack", "sent")):
            if r.get(f"step{n}_{check}") != want:
                bad.append(f"API {check}: {r.get(f'step{n}_{check}', 'missing')}")
        try:
            services = json_between(res, "ICS", str(n)).get("services", [])
            not_ok = [f"{s.get('name')}:{s.get('status')}" for s in services
                      if s.get("enabled") and s.get("status") != "OK"]
            if not_ok or not services:
                bad.append(f"integration services {not_ok or 'missing'}")
        except AssertionError:
            bad.append("no integration-services answer")
        if acks.get(str(n)) != "ok":
            bad.append("the host's KVP acknowledgement did not reach the guest")
        logs = re.findall(rf"^HOSTILE-LOG {n} ENL-HOSTILE \S+ (.*)$", out, re.M)
        if not any(line.startswith("end ret=0") for line in logs) and kind != "own":
            bad.append("the module did not report the attack's end")
        if kind == "own" and not any(line.startswith("mode=own done") for line in logs):
            bad.append("the module's probe did not finish")
        oops = re.findall(rf"^HOSTILE-GUEST-KERNEL {n} (.*)$", out, re.M)
        if oops:
            bad.append(f"guest kernel: {oops[0]}")
        table.append(f"  {n:2} {name:15} {kind:6} {m.group(8):>6} s  device={m.group(6):9} "
                     + ("ok" if not bad else "FAILED: " + "; ".join(bad)))
        if bad:
            problems.append(f"{name}: " + "; ".join(bad))
    print(f"\n[hostile {key}: {res.duration:.0f} s]\n" + "\n".join(table), flush=True)
    if not r.get("threads") or r.get("filtered_threads") != r.get("threads"):
        problems.append(f"seccomp: {r.get('filtered_threads')} of {r.get('threads')} threads of the VMM have a filter")
    cpl3 = re.search(r"^CPL3 CPL3-HYPERCALL status=(\d+)$", res.output, re.M)
    if r.get("cpl3_rc") != "0" or not cpl3 or cpl3.group(1) != "6":
        problems.append(f"a hypercall from guest user space (root, ioperm): "
                        f"{cpl3.group(0) if cpl3 else 'no answer'}, rc {r.get('cpl3_rc')} (expected status 6, "
                        "access denied)")
    for check, want in (("job", "done"), ("shutdown_rc", "0"), ("rc", "0"), ("check", "0")):
        if r.get(check) != want:
            problems.append(f"{check}={r.get(check, 'missing')} (expected {want})")
    test.assertFalse(problems, "attacks that broke something:\n  " + "\n  ".join(problems)
                     + "\n" + "\n".join(table) + why)


class HostileGuestTests(unittest.TestCase):
    """The release build (build/enlighten); test_sanitized runs the ASan build's."""

    def test_release_build_survives_the_hostile_guest(self) -> None:
        check_hostile_run(self, HOSTILE, "release")

    def test_release_build_survives_the_guest_taking_its_devices_over(self) -> None:
        check_hostile_run(self, HOSTILE, "release-own")

    def test_release_build_survives_the_guest_flooding_it_with_answers(self) -> None:
        check_hostile_run(self, HOSTILE, "floods")

    def test_a_guest_triple_fault_is_reported_with_where_it_was(self) -> None:
        res = HOSTILE.result(self, "triple")
        why = describe(res, 6000)
        self.assertNotIn("TRIPLE-SURVIVED", res.output, "the guest survived its empty IDT" + why)
        self.assertRegex(res.output, r"vCPU 0: triple fault", "the VMM did not report the triple fault" + why)
        self.assertEqual(results(res).get("rc"), "3", "a triple fault is a reset: exit 3 with --on-reboot exit" + why)
        m = re.search(r"triple-fault rip=([0-9a-f]+)", res.output)
        trace = shutdown_trace(res.output)
        self.assertRegex(trace, r"reason shutdown rip 0xffffffff[0-9a-f]+",
                         "the test host's trace of KVM's shutdown exit is missing" + why)
        if m:
            # KVM records the RIP of the instruction the CPU shut down at: the module's ud2,
            # a few bytes into triple_fault().
            rip = int(re.search(r"rip (0x[0-9a-f]+)", trace).group(1), 16)
            self.assertTrue(0 <= rip - int(m.group(1), 16) < 0x100,
                            f"KVM's RIP is not in triple_fault() at {m.group(1)}: {trace}" + why)


if __name__ == "__main__":
    unittest.main()
