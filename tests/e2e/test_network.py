"""End-to-end tests of the network VSP: Enlighten's synthetic NIC, which the unmodified Debian
guest's hv_netvsc drives, on its two host backends, through

    enlighten run ... --net backend=slirp|tap[,tap=NAME][,mac=MAC][,hostfwd=tcp:HOSTADDR:HOSTPORT-:GUESTPORT][,queues=N][,id=NAME]
    enlighten remote --api-socket S net-link ID up|down      (PUT /vm.net-link)
    enlighten remote --api-socket S info   ->  "nics": [{"id", "mac", "backend", "link_up", "queues", "per_queue": [...]}]

Three guest boots, each checked by several tests:

  session "network" (one test-host boot, 1-vCPU guests):
    net-slirp     hv_netvsc binds, the MAC given, DHCP from slirp (10.0.2.15), a TCP service and an
              HTTP server of the test host through the gateway 10.0.2.2, a host port forward
              to an HTTP server in the guest, 16 MiB each way intact (sha256 on both ends), link
              down and up through the API (the guest sees NO-CARRIER, then traffic again), the
              NIC in vm.info with growing per-queue counters
    net-tap       a tap of the test host (10.0.3.1/24), the guest at 10.0.3.2 (static): ping, TSO on,
              16 MiB guest -> host intact, iperf3 each way
  session "net-multiqueue" (a 4-vCPU test host of its own, as storage's "multichannel"):
    net-channels  4 vCPUs: ethtool -l shows 4 combined channels, 8 flows land on several receive
              queues, ethtool -L combined 2 and back to 4, MTU 9000 and back to 1500, traffic
              after each

The guest side is the default guest with the network tools (iperf3, ethtool; guest_image.py):
its /init configures eth0 before the job (DHCP, or enlighten.net=ADDR/LEN). The test host
has busybox (nc, httpd, tunctl, ip) and Debian's iperf3 (testhost.net_tools_layer()).
What is asserted is what the guest itself reports (sysfs, ethtool, ip, dmesg, data it
received) and what the test host received."""

from __future__ import annotations

import json
import re
import sys
import unittest

from harness import BG_VM_LIB, RunResult, Session, describe, kv, section, vm_info, vmm_log

NETWORK = Session("network", host_net_tools=True)
# A 4-vCPU guest in a 2-vCPU test host crashed the test host now and then (storage_runs.py,
# "channels"): this one gets a test host with 4 vCPUs.
NET_MULTIQUEUE = Session("net-multiqueue", host_cpus=4, host_net_tools=True, retry_guest_triple_fault=True)

NETVSC_CLASS = "{f8615163-df3e-46c5-913f-f2d2f965ed0e}"
MAC = "00:15:5d:12:34:56"
MiB = 1 << 20
BLOB_MIB = 16
HOSTFWD_PORT = 18080          # the test host's port, forwarded to the guest's 8080
TAP = "enltap0"

# Scenario helpers (busybox sh in the test host), after harness.SCENARIO_LIB ($ENL, $KERNEL,
# $INITRD, $CPUS, $WORK, $API, api).
NET_LIB = BG_VM_LIB + r"""
GUEST_MODULES="enlighten.modules=hv_vmbus,hv_netvsc"
WWW=$WORK/www
mkdir -p "$WWW"
echo "hello-from-testhost" > "$WWW/hello.txt"
BG_PIDS=
trap 'kill $BG_PIDS 2>/dev/null' EXIT
# bg COMMAND...: a helper process of the test host, killed when the run ends
bg() { "$@" & BG_PIDS="$BG_PIDS $!"; }
# the test host's web server (foreground mode: it stays in the run's process group). The
# guest polls it for "go-NAME" files: how the test host tells the guest to go on.
bg httpd -f -p 8000 -h "$WWW"
go() { : > "$WWW/go-$1"; }
# start_bg NAME "kernel args" ENLIGHTEN-ARGS...: the VM in the background with the API on
# $API; the guest stays up after its /job (enlighten.stay). Then wait_guest, info, stop_vm.
start_bg() {
    BG_NAME=$1; extra=$2; shift 2
    SERIAL=$WORK/$BG_NAME.serial
    "$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus "$CPUS" \
        --serial "file:$SERIAL" --api-socket "$API" --on-reboot exit --log-level info \
        --cmdline "console=ttyS0 quiet panic=-1 enlighten.stay $GUEST_MODULES $extra" "$@" >"$WORK/$BG_NAME.vmm.log" 2>&1 &
    VM_PID=$!
}
# vm_deadline SECONDS: kill the VM after that long, so that a slow or stuck guest fails the
# waits below at once and the run still prints its console (set it below the run's timeout,
# whose watchdog kills the whole run and everything it would have printed)
vm_deadline() { ( sleep "$1"; vm_alive && echo "SCENARIO-DEADLINE: the VM ran $1 s, killed" && kill -KILL "$VM_PID" ) & BG_PIDS="$BG_PIDS $!"; }
sha() { sha256sum < "$1" | cut -d' ' -f1; }
# fetch_g2h URL: the guest's 16 MiB, through its httpd (host.g2h_* results)
fetch_g2h() {
    t=$(now)
    timeout 200 wget -q -O "$WORK/g2h.recv" "$1"
    echo "RESULT host.g2h_rc=$?"
    echo "RESULT host.g2h_seconds=$(awk "BEGIN { printf \"%.1f\", $(now) - $t }")"
    echo "RESULT host.g2h_bytes=$(size "$WORK/g2h.recv")"
    echo "RESULT host.g2h_sha=$(sha "$WORK/g2h.recv")"
    rm -f "$WORK/g2h.recv"
}
size() { wc -c < "$1" | tr -d ' '; }
TMPDIR_NET=$WORK
# recv PORT FILE: take one TCP connection's bytes into FILE, in the background ($RECV_PID).
# busybox nc half-closes when its stdin ends and exits as soon as the peer closes: a
# receiver whose stdin is at EOF (/dev/null) would make the sender's nc exit mid-transfer.
# So the receiver's stdin is a FIFO that a `sleep` holds open ($RECV_HOLD).
recv() {
    f=$TMPDIR_NET/hold.$1; rm -f "$f"; mkfifo "$f"
    nc -l -p "$1" < "$f" > "$2" &
    RECV_PID=$!
    sleep 100000 > "$f" &
    RECV_HOLD=$!
    n=0; until listening "$1" || [ $n -ge 100 ]; do sleep 0.1; n=$((n + 1)); done
}
# listening PORT: a TCP socket listens on PORT (/proc/net/tcp and tcp6: state 0A)
listening() { cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -qE ":$(printf %04X "$1") 0+:0000 0A"; }
# alive PID / wait_gone PID SECONDS: a child that exited is a zombie until reaped
alive() { st=; read -r _ _ st _ < "/proc/$1/stat" 2>/dev/null; [ -n "$st" ] && [ "$st" != Z ]; }
wait_gone() { n=0; while alive "$1"; do n=$((n + 1)); [ $n -gt $(($2 * 10)) ] && return 1; sleep 0.1; done; }
"""

# Shell functions for the guest's /job (Debian's busybox sh, iperf3, ethtool).
GUEST_LIB = r"""
now() { read -r t _ </proc/uptime; echo "$t"; }
since() { awk "BEGIN { printf \"%.1f\", $(now) - $1 }"; }
# wait_until SECONDS COMMAND...: repeat COMMAND until it succeeds
wait_until() { s=$1; shift; n=0; while ! "$@"; do n=$((n + 1)); [ $n -ge $((s * 10)) ] && return 1; sleep 0.1; done; }
carrier_is() { [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = "$1" ]; }
TMPDIR_NET=/tmp
# recv PORT FILE: take one TCP connection's bytes into FILE, in the background ($RECV_PID).
# busybox nc half-closes when its stdin ends and exits as soon as the peer closes: a
# receiver whose stdin is at EOF (/dev/null) would make the sender's nc exit mid-transfer.
# So the receiver's stdin is a FIFO that a `sleep` holds open ($RECV_HOLD).
recv() {
    f=$TMPDIR_NET/hold.$1; rm -f "$f"; mkfifo "$f"
    nc -l -p "$1" < "$f" > "$2" &
    RECV_PID=$!
    sleep 100000 > "$f" &
    RECV_HOLD=$!
    n=0; until listening "$1" || [ $n -ge 100 ]; do sleep 0.1; n=$((n + 1)); done
}
# listening PORT: a TCP socket listens on PORT (/proc/net/tcp and tcp6: state 0A)
listening() { cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -qE ":$(printf %04X "$1") 0+:0000 0A"; }
# alive PID / wait_gone PID SECONDS: a child that exited is a zombie until reaped
alive() { st=; read -r _ _ st _ < "/proc/$1/stat" 2>/dev/null; [ -n "$st" ] && [ "$st" != Z ]; }
wait_gone() { n=0; while alive "$1"; do n=$((n + 1)); [ $n -gt $(($2 * 10)) ] && return 1; sleep 0.1; done; }
# go NAME [SECONDS]: wait until the test host says go (a file its web server has)
go() {
    n=0
    until wget -q -O /dev/null "http://$HOST:8000/go-$1" 2>/dev/null; do
        n=$((n + 1)); [ $n -ge $((${2:-300} * 2)) ] && { echo "GUEST-ERROR no go-$1 from the test host"; return 1; }
        sleep 0.5
    done
}
# g2h_file: /www/g2h, BLOB_MIB MiB of random data for the test host to fetch from the guest's
# httpd (which sends it in large TSO frames; busybox nc would write it 1 KiB at a time)
g2h_file() {
    dd if=/dev/urandom of=/www/g2h bs=1M count=""" + str(BLOB_MIB) + r""" 2>/dev/null
    echo "RESULT g2h_bytes=$(wc -c < /www/g2h)"
    echo "RESULT g2h_sha=$(sha256sum < /www/g2h | cut -d' ' -f1)"
}
# iperf TAG OPTIONS...: iperf3 against the test host, its JSON on IPERF-TAG lines
iperf() { tag=$1; shift; iperf3 -c "$HOST" -J "$@" > /tmp/iperf.json 2>&1; echo "RESULT iperf.$tag.rc=$?"; sed "s/^/IPERF-$tag /" /tmp/iperf.json; }
nic_facts() {
    drv=$(readlink /sys/class/net/eth0/device/driver)
    echo "RESULT driver=${drv##*/}"
    echo "RESULT class_id=$(cat /sys/class/net/eth0/device/class_id)"
    echo "RESULT mac=$(cat /sys/class/net/eth0/address)"
    echo "RESULT carrier=$(cat /sys/class/net/eth0/carrier)"
    echo "RESULT operstate=$(cat /sys/class/net/eth0/operstate)"
    echo "RESULT mtu=$(cat /sys/class/net/eth0/mtu)"
    echo "RESULT addr=$(ip -4 addr show dev eth0 | sed -n 's/.*inet \([0-9./]*\).*/\1/p' | head -n 1)"
    echo "RESULT gateway=$(ip route | sed -n 's/^default via \([0-9.]*\).*/\1/p' | head -n 1)"
    echo "RESULT nameserver=$(sed -n 's/^nameserver //p' /etc/resolv.conf 2>/dev/null | head -n 1)"
    ethtool -i eth0 | sed 's/^/ETHTOOL-I /'
    ethtool -k eth0 | sed 's/^/ETHTOOL-K /'
    ethtool -l eth0 | sed 's/^/ETHTOOL-L /'
}
# hv_netvsc's error messages (contract-network.md section 7) in the kernel log
netvsc_errors() {
    dmesg | grep -iE 'hv_netvsc|netvsc' | grep -iE 'unable|invalid|unknown|unexpected|fail|too big|not valid|overflow|expecting|error' \
        | sed 's/^/NETVSC-ERROR /'
}
"""


def tagged(text: str, tag: str) -> list[str]:
    return [(m.group(1) or "").rstrip() for m in re.finditer(rf"^{re.escape(tag)}(?: (.*))?$", text, re.M)]


def iperf_json(text: str, tag: str) -> dict:
    lines = tagged(text, f"IPERF-{tag}")
    try:
        return json.loads("\n".join(lines))
    except json.JSONDecodeError:
        return {"error": f"no JSON from iperf3 ({len(lines)} lines): {' '.join(lines)[:300]}"}


def nic(info: dict, nic_id: str = "net0") -> dict:
    for n in info.get("nics", []):
        if n.get("id") == nic_id:
            return n
    raise AssertionError(f"vm.info has no NIC {nic_id!r}: {json.dumps(info.get('nics'))[:800]}")


def queue_sum(n: dict, key: str) -> int:
    return sum(int(q.get(key, 0)) for q in n.get("per_queue", []))


def ethtool_stats(lines: list[str]) -> dict[str, int]:
    out = {}
    for line in lines:
        m = re.match(r"\s*(\S+):\s*(\d+)$", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


_parts_shown: set[str] = set()


def show_parts(res: RunResult, key: str) -> None:
    """The scenario's PART lines (seconds per part), once per run, on stderr."""
    if key not in _parts_shown:
        _parts_shown.add(key)
        parts = ", ".join(f"{p.split()[0]} {p.split()[1]} s" for p in tagged(res.output, "PART") if len(p.split()) == 2)
        print(f"[{key}: {res.duration:.1f} s: {parts or 'no parts'}] ", end="", file=sys.stderr, flush=True)


class NetCase(unittest.TestCase):
    SESSION = NETWORK
    KEY = ""

    def run_of(self) -> RunResult:
        res = self.SESSION.result(self, self.KEY)
        show_parts(res, self.KEY)
        return res

    def console(self) -> str:
        """The guest console; fails unless the VMM accepted its command line and /init ran."""
        res = self.run_of()
        text = section(res, self.KEY)
        self.assertIn("ENLIGHTEN-INIT", text, f"boot '{self.KEY}' never reached the guest's /init; "
                      f"enlighten said:\n{vmm_log(res, self.KEY)[-2000:]}" + describe(res))
        return text

    def guest(self) -> dict[str, str]:
        return kv(self.console())

    def host(self) -> dict[str, str]:
        return kv(self.run_of().output)

    def assertGuest(self, key: str, expected: str) -> None:
        res, g = self.run_of(), self.guest()
        self.assertEqual(g.get(key), expected, f"guest {key}" + describe(res, 6000))

    def assertIperf(self, tag: str, min_mbps: float = 1.0) -> dict:
        """iperf3 run TAG in the guest moved data (the receiver's rate, Mbit/s)."""
        res, text = self.run_of(), self.console()
        doc = iperf_json(text, tag)
        self.assertFalse(doc.get("error"), f"iperf3 {tag}: {doc.get('error')}" + describe(res, 6000))
        bps = doc.get("end", {}).get("sum_received", {}).get("bits_per_second", 0)
        self.assertGreaterEqual(bps / 1e6, min_mbps, f"iperf3 {tag}: {bps / 1e6:.2f} Mbit/s" + describe(res))
        return doc


# ----------------------------------------------------------------------------- slirp
# One 1-vCPU guest on the slirp backend, every step in order; the test host and the guest
# take turns through markers on the console (guest -> host) and go-NAME files on the test
# host's web server (host -> guest).
JOB_SLIRP = GUEST_LIB + r"""
HOST=10.0.2.2
nic_facts
# the gateway: a TCP service and an HTTP server of the test host
echo "hello-from-guest" | timeout 30 nc "$HOST" 5001
echo "RESULT gw_nc_rc=$?"
echo "RESULT gw_http=$(wget -q -O - "http://$HOST:8000/hello.txt")"
# a service in the guest, for the test host's port forward
mkdir -p /www
echo "guest-token-$(cat /proc/sys/kernel/random/uuid)" > /www/token.txt
echo "RESULT guest_token=$(cat /www/token.txt)"
# guest -> test host: 16 MiB the test host fetches through the forward
g2h_file
httpd -f -p 8080 -h /www &
hpid=$!
wait_until 10 listening 8080
echo "NET-READY fwd"
go fwd || exit 1
kill $hpid; wait $hpid 2>/dev/null
rm -f /www/g2h
# test host -> guest through the port forward, 16 MiB
recv 8080 /tmp/h2g
echo "NET-READY h2g"
t=$(now)
wait_gone $RECV_PID 200 || kill $RECV_PID
kill $RECV_HOLD
echo "RESULT h2g_seconds=$(since $t)"
echo "RESULT h2g_bytes=$(wc -c < /tmp/h2g)"
echo "RESULT h2g_sha=$(sha256sum < /tmp/h2g | cut -d' ' -f1)"
rm -f /tmp/h2g
ethtool -S eth0 | sed 's/^/ETHTOOL-S /'
# link down and up through the API: the guest rate-limits link events (about 2 s)
echo "NET-READY link"
t=$(now)
if wait_until 30 carrier_is 0; then echo "RESULT down_seen_after=$(since $t)"; fi
echo "RESULT carrier_down=$(cat /sys/class/net/eth0/carrier)"
ip link show eth0 | head -n 1 | sed 's/^/IPLINK-DOWN /'
echo "NET-SAW-DOWN"
t=$(now)
if wait_until 60 carrier_is 1; then echo "RESULT up_seen_after=$(since $t)"; fi
echo "RESULT carrier_up=$(cat /sys/class/net/eth0/carrier)"
ip link show eth0 | head -n 1 | sed 's/^/IPLINK-UP /'
# traffic again (the first try may race the link coming back)
i=0
until r=$(wget -q -O - "http://$HOST:8000/hello.txt") && [ -n "$r" ] || [ $i -ge 20 ]; do sleep 1; i=$((i + 1)); done
echo "RESULT after_up_http=$r"
dmesg | grep -i netvsc | sed 's/^/DMESG-NETVSC /'
netvsc_errors
echo "NET-DONE"
"""
NETWORK.scenario("net-slirp", NET_LIB + r"""
recv 5001 "$WORK/hello.recv"; BG_PIDS="$BG_PIDS $RECV_PID $RECV_HOLD"
# the host -> guest data, made while the guest boots
( dd if=/dev/urandom of="$WORK/h2g" bs=1M count=""" + str(BLOB_MIB) + r""" 2>/dev/null
  sha "$WORK/h2g" > "$WORK/h2g.sha" ) &
MAKE_PID=$!
start_bg net-slirp "" --net "backend=slirp,id=net0,mac=""" + MAC + r""",hostfwd=tcp::""" + str(HOSTFWD_PORT) + r"""-:8080"
vm_deadline 560
if wait_guest "NET-READY fwd" 120; then
    part boot
    echo "RESULT host.hello=$(cat "$WORK/hello.recv")"
    echo "RESULT host.fwd_get=$(wget -q -O - "http://127.0.0.1:""" + str(HOSTFWD_PORT) + r"""/token.txt")"
    info boot
    part fwd
    fetch_g2h "http://127.0.0.1:""" + str(HOSTFWD_PORT) + r"""/g2h"
    part g2h
    go fwd
fi
if wait_guest "NET-READY h2g" 400; then
    wait $MAKE_PID
    echo "RESULT host.h2g_sha=$(cat "$WORK/h2g.sha")"
    timeout 200 nc 127.0.0.1 """ + str(HOSTFWD_PORT) + r""" < "$WORK/h2g"
    echo "RESULT host.h2g_nc_rc=$?"
fi
if wait_guest "NET-READY link" 400; then
    part h2g
    info transfer
    api net-link net0 down; echo "RESULT host.link_down_rc=$?"
    info linkdown
    wait_guest NET-SAW-DOWN 60
    api net-link net0 up; echo "RESULT host.link_up_rc=$?"
fi
wait_guest NET-DONE 120 && info final
part link
stop_vm
""", job=JOB_SLIRP, timeout=640, net=True)


class SlirpTests(NetCase):
    """The slirp guest: binding, DHCP, gateway, port forward, transfers, link, vm.info."""
    KEY = "net-slirp"

    def test_hv_netvsc_binds(self) -> None:
        self.assertGuest("driver", "hv_netvsc")
        self.assertGuest("class_id", NETVSC_CLASS)
        res = self.run_of()
        self.assertIn("driver: hv_netvsc", tagged(self.console(), "ETHTOOL-I"), describe(res))

    def test_mac_is_the_configured_one(self) -> None:
        self.assertGuest("mac", MAC)

    def test_no_netvsc_errors_in_dmesg(self) -> None:
        res, text = self.run_of(), self.console()
        self.assertIn("NET-DONE", text, "the guest did not get to its dmesg check" + describe(res, 6000))
        self.assertEqual(tagged(text, "NETVSC-ERROR"), [], describe(res))

    def test_dhcp_through_slirp(self) -> None:
        self.assertGuest("addr", "10.0.2.15/24")
        self.assertGuest("gateway", "10.0.2.2")
        self.assertGuest("nameserver", "10.0.2.3")
        res = self.run_of()
        self.assertRegex(self.console(), r"ENLIGHTEN-NET eth0 10\.0\.2\.15/24 mac " + MAC + r" driver hv_netvsc \(dhcp",
                         describe(res))

    def test_link_up_at_boot(self) -> None:
        self.assertGuest("carrier", "1")
        self.assertGuest("operstate", "up")

    def test_guest_reaches_a_tcp_service_of_the_test_host(self) -> None:
        res, g, h = self.run_of(), self.guest(), self.host()
        self.assertEqual(g.get("gw_nc_rc"), "0", describe(res))
        self.assertEqual(h.get("host.hello"), "hello-from-guest", describe(res))

    def test_guest_reaches_an_http_server_of_the_test_host(self) -> None:
        self.assertGuest("gw_http", "hello-from-testhost")

    def test_host_port_forward_reaches_the_guest(self) -> None:
        res, g, h = self.run_of(), self.guest(), self.host()
        self.assertRegex(g.get("guest_token", ""), r"^guest-token-[0-9a-f-]{36}$", describe(res))
        self.assertEqual(h.get("host.fwd_get"), g.get("guest_token"), describe(res))

    def test_16mib_guest_to_host_intact(self) -> None:
        res, g, h = self.run_of(), self.guest(), self.host()
        self.assertEqual(g.get("g2h_bytes"), str(BLOB_MIB * MiB), describe(res))
        self.assertEqual(h.get("host.g2h_rc"), "0", describe(res))
        self.assertEqual(h.get("host.g2h_bytes"), str(BLOB_MIB * MiB), describe(res))
        self.assertEqual(h.get("host.g2h_sha"), g.get("g2h_sha"), describe(res))
        print(f"[guest->host {BLOB_MIB} MiB in {h.get('host.g2h_seconds')} s] ", end="", file=sys.stderr)

    def test_16mib_host_to_guest_through_the_forward_intact(self) -> None:
        res, g, h = self.run_of(), self.guest(), self.host()
        self.assertEqual(h.get("host.h2g_nc_rc"), "0", describe(res))
        self.assertEqual(g.get("h2g_bytes"), str(BLOB_MIB * MiB), describe(res))
        self.assertRegex(h.get("host.h2g_sha", ""), r"^[0-9a-f]{64}$", describe(res))
        self.assertEqual(g.get("h2g_sha"), h.get("host.h2g_sha"), describe(res))
        print(f"[host->guest {BLOB_MIB} MiB in {g.get('h2g_seconds')} s] ", end="", file=sys.stderr)

    def test_link_down_through_the_api_is_no_carrier_in_the_guest(self) -> None:
        res, g, h = self.run_of(), self.guest(), self.host()
        self.assertEqual(h.get("host.link_down_rc"), "0", describe(res))
        self.assertEqual(g.get("carrier_down"), "0", describe(res, 6000))
        down = tagged(self.console(), "IPLINK-DOWN")
        self.assertTrue(down and "NO-CARRIER" in down[0], f"ip link show eth0: {down}" + describe(res))
        self.assertFalse(nic(vm_info(res, "linkdown")).get("link_up"), describe(res))

    def test_link_up_again_and_traffic_works(self) -> None:
        res, g, h = self.run_of(), self.guest(), self.host()
        self.assertEqual(h.get("host.link_up_rc"), "0", describe(res))
        self.assertEqual(g.get("carrier_up"), "1", describe(res, 6000))
        up = tagged(self.console(), "IPLINK-UP")
        self.assertTrue(up and "LOWER_UP" in up[0] and "NO-CARRIER" not in up[0], f"ip link show eth0: {up}" + describe(res))
        self.assertEqual(g.get("after_up_http"), "hello-from-testhost", describe(res))
        self.assertTrue(nic(vm_info(res, "final")).get("link_up"), describe(res))

    def test_vm_info_lists_the_nic(self) -> None:
        res = self.run_of()
        n = nic(vm_info(res, "boot"))
        self.assertEqual(n.get("mac"), MAC, json.dumps(n))
        self.assertEqual(n.get("backend"), "slirp", json.dumps(n))
        self.assertIs(n.get("link_up"), True, json.dumps(n))
        self.assertGreaterEqual(int(n.get("queues", 0)), 1, json.dumps(n))
        self.assertEqual(len(n.get("per_queue", [])), int(n.get("queues", 0)), json.dumps(n))

    def test_vm_info_counters_grow_with_the_traffic(self) -> None:
        res = self.run_of()
        before, after = nic(vm_info(res, "boot")), nic(vm_info(res, "transfer"))
        # rx: toward the guest (the 16 MiB through the forward), tx: from it
        self.assertGreaterEqual(queue_sum(after, "rx_bytes") - queue_sum(before, "rx_bytes"), BLOB_MIB * MiB,
                                json.dumps([before, after])[:2000])
        self.assertGreaterEqual(queue_sum(after, "tx_bytes") - queue_sum(before, "tx_bytes"), BLOB_MIB * MiB,
                                json.dumps([before, after])[:2000])
        self.assertGreater(queue_sum(after, "rx_packets"), queue_sum(before, "rx_packets"))
        self.assertGreater(queue_sum(after, "tx_packets"), queue_sum(before, "tx_packets"))

    def test_vmm_exits_after_the_api_power_off(self) -> None:
        self.assertEqual(self.host().get("net-slirp.rc"), "5", describe(self.run_of()))


# ----------------------------------------------------------------------------- tap
# A persistent tap of the test host with 10.0.3.1/24 (busybox tunctl); the guest at 10.0.3.2.
JOB_TAP = GUEST_LIB + r"""
HOST=10.0.3.1
nic_facts
ping -c 3 -W 2 "$HOST" > /tmp/ping.out 2>&1
echo "RESULT ping_rc=$?"
sed 's/^/PING /' /tmp/ping.out
echo "RESULT tso=$(ethtool -k eth0 | sed -n 's/^tcp-segmentation-offload: *//p')"
mkdir -p /www
g2h_file
httpd -f -p 8080 -h /www &
hpid=$!
wait_until 10 listening 8080
echo "NET-READY g2h"
go g2h || exit 1
kill $hpid; wait $hpid 2>/dev/null
rm -f /www/g2h
iperf tx -t 3
iperf rx -t 3 -R
ethtool -S eth0 | sed 's/^/ETHTOOL-S /'
netvsc_errors
echo "NET-DONE"
"""
NETWORK.scenario("net-tap", NET_LIB + r"""
modprobe tun 2>/dev/null
tunctl -t """ + TAP + r""" >/dev/null
ip addr add 10.0.3.1/24 dev """ + TAP + r"""
ip link set """ + TAP + r""" up
echo "RESULT host.tap=$(ip -4 addr show dev """ + TAP + r""" | sed -n 's/.*inet \([0-9./]*\).*/\1/p')"
bg iperf3 -s -B 10.0.3.1
start_bg net-tap "enlighten.net=10.0.3.2/24" --net "backend=tap,tap=""" + TAP + r""",id=net0"
vm_deadline 400
if wait_guest "NET-READY g2h" 300; then
    part boot
    fetch_g2h "http://10.0.3.2:8080/g2h"
    part g2h
    go g2h
fi
wait_guest NET-DONE 120 && info final
part iperf
stop_vm
tunctl -d """ + TAP + r""" >/dev/null
""", job=JOB_TAP, timeout=480, net=True)


class TapTests(NetCase):
    """The tap guest: static address, ping, TSO, a transfer, iperf3 both ways."""
    KEY = "net-tap"

    def test_static_address_on_the_tap_network(self) -> None:
        self.assertEqual(self.host().get("host.tap"), "10.0.3.1/24", describe(self.run_of()))
        self.assertGuest("driver", "hv_netvsc")
        self.assertGuest("addr", "10.0.3.2/24")
        self.assertGuest("carrier", "1")

    def test_guest_pings_the_test_host(self) -> None:
        res = self.run_of()
        self.assertGuest("ping_rc", "0")
        self.assertIn("3 packets transmitted, 3 packets received", " ".join(tagged(self.console(), "PING")),
                      describe(res))

    def test_tso_is_on(self) -> None:
        self.assertGuest("tso", "on")

    def test_16mib_guest_to_host_intact(self) -> None:
        res, g, h = self.run_of(), self.guest(), self.host()
        self.assertEqual(g.get("g2h_bytes"), str(BLOB_MIB * MiB), describe(res))
        self.assertEqual(h.get("host.g2h_rc"), "0", describe(res))
        self.assertEqual(h.get("host.g2h_bytes"), str(BLOB_MIB * MiB), describe(res))
        self.assertEqual(h.get("host.g2h_sha"), g.get("g2h_sha"), describe(res))
        print(f"[guest->host {BLOB_MIB} MiB in {h.get('host.g2h_seconds')} s] ", end="", file=sys.stderr)

    def test_iperf3_both_ways(self) -> None:
        tx, rx = self.assertIperf("tx"), self.assertIperf("rx")
        print(f"[tap iperf3: guest->host {tx['end']['sum_received']['bits_per_second'] / 1e6:.0f} Mbit/s, "
              f"host->guest {rx['end']['sum_received']['bits_per_second'] / 1e6:.0f} Mbit/s] ", end="", file=sys.stderr)

    def test_no_netvsc_errors_in_dmesg(self) -> None:
        res, text = self.run_of(), self.console()
        self.assertIn("NET-DONE", text, "the guest did not get to its dmesg check" + describe(res, 6000))
        self.assertEqual(tagged(text, "NETVSC-ERROR"), [], describe(res))

    def test_vm_info_says_tap(self) -> None:
        res = self.run_of()
        n = nic(vm_info(res, "final"))
        self.assertEqual(n.get("backend"), "tap", json.dumps(n))
        self.assertGreater(queue_sum(n, "rx_bytes"), 0, json.dumps(n))
        self.assertGreaterEqual(queue_sum(n, "tx_bytes"), BLOB_MIB * MiB, json.dumps(n))


# ----------------------------------------------------------------------------- 4 vCPUs
# netvsc opens min(vCPUs, the host's receive queues) channels: with 4 vCPUs, 4 combined.
# Host -> guest flows (iperf3 -R -P 8) are what vRSS spreads over the receive queues.
JOB_CHANNELS = GUEST_LIB + r"""
HOST=10.0.2.2
echo "RESULT cpus=$(grep -c ^processor /proc/cpuinfo)"
nic_facts
combined() { ethtool -l eth0 | sed -n 's/^Combined:[[:space:]]*//p' | sed -n "${1}p"; }
echo "RESULT combined_max=$(combined 1)"
echo "RESULT combined_cur=$(combined 2)"
echo "RESULT rx_queues=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
sed 's/^/VPMAP /' /sys/class/net/eth0/device/channel_vp_mapping
ethtool -S eth0 | sed 's/^/STATS-BEFORE /'
iperf flows -t 5 -R -P 8
ethtool -S eth0 | sed 's/^/STATS-AFTER /'
grep -i hv_netvsc /proc/interrupts | sed 's/^/IRQ /'
# traffic after a change: the device re-initialises (the link comes back by itself)
settle() { wait_until 20 carrier_is 1; sleep 1; }
t=$(now)
ethtool -L eth0 combined 2; echo "RESULT set_combined_2_rc=$?"
settle; echo "RESULT combined_cur_2=$(combined 2)"; echo "RESULT settle_2=$(since $t)"
iperf after_2 -t 3
t=$(now)
ethtool -L eth0 combined 4; echo "RESULT set_combined_4_rc=$?"
settle; echo "RESULT combined_cur_4=$(combined 2)"; echo "RESULT settle_4=$(since $t)"
iperf after_4 -t 3
ip link set eth0 mtu 9000; echo "RESULT set_mtu_9000_rc=$?"
settle; echo "RESULT mtu_9000=$(cat /sys/class/net/eth0/mtu)"
iperf after_mtu_9000 -t 3
ip link set eth0 mtu 1500; echo "RESULT set_mtu_1500_rc=$?"
settle; echo "RESULT mtu_1500=$(cat /sys/class/net/eth0/mtu)"
iperf after_mtu_1500 -t 3
echo "RESULT addr_after=$(ip -4 addr show dev eth0 | sed -n 's/.*inet \([0-9./]*\).*/\1/p' | head -n 1)"
netvsc_errors
echo "NET-DONE"
"""
NET_MULTIQUEUE.scenario("net-channels", NET_LIB + r"""
bg iperf3 -s
start_bg net-channels "" --net "backend=slirp,id=net0"
vm_deadline 340
wait_guest NET-DONE 300 && info final
part all
stop_vm
""", job=JOB_CHANNELS, cpus=4, timeout=420, net=True)


class ChannelTests(NetCase):
    """The 4-vCPU guest: channels, receive queues, ethtool -L, MTU."""
    SESSION = NET_MULTIQUEUE
    KEY = "net-channels"

    def test_four_combined_channels(self) -> None:
        self.assertGuest("cpus", "4")
        self.assertGuest("driver", "hv_netvsc")
        self.assertGuest("combined_max", "4")
        self.assertGuest("combined_cur", "4")
        self.assertGuest("rx_queues", "4")

    def test_flows_land_on_several_receive_queues(self) -> None:
        res, text = self.run_of(), self.console()
        self.assertIperf("flows")
        before, after = ethtool_stats(tagged(text, "STATS-BEFORE")), ethtool_stats(tagged(text, "STATS-AFTER"))
        grown = {k: after[k] - before.get(k, 0) for k in after
                 if re.fullmatch(r"rx_queue_\d+_packets", k) and after[k] - before.get(k, 0) >= 100}
        self.assertGreaterEqual(len(grown), 2, f"receive queues with >= 100 new packets: {grown}; all: "
                                f"{ {k: v for k, v in after.items() if k.startswith('rx_queue')} }" + describe(res))

    def test_ethtool_set_channels_2_then_4_traffic_works(self) -> None:
        self.assertGuest("set_combined_2_rc", "0")
        self.assertGuest("combined_cur_2", "2")
        self.assertIperf("after_2")
        self.assertGuest("set_combined_4_rc", "0")
        self.assertGuest("combined_cur_4", "4")
        self.assertIperf("after_4")

    def test_mtu_9000_then_1500_traffic_works(self) -> None:
        self.assertGuest("set_mtu_9000_rc", "0")
        self.assertGuest("mtu_9000", "9000")
        self.assertIperf("after_mtu_9000")
        self.assertGuest("set_mtu_1500_rc", "0")
        self.assertGuest("mtu_1500", "1500")
        self.assertIperf("after_mtu_1500")
        self.assertGuest("addr_after", "10.0.2.15/24")

    def test_vm_info_has_four_queues_with_traffic(self) -> None:
        res = self.run_of()
        n = nic(vm_info(res, "final"))
        self.assertEqual(int(n.get("queues", 0)), 4, json.dumps(n))
        busy = [q for q in n.get("per_queue", []) if int(q.get("rx_packets", 0)) > 0]
        self.assertGreaterEqual(len(busy), 2, json.dumps(n))

    def test_no_netvsc_errors_in_dmesg(self) -> None:
        res, text = self.run_of(), self.console()
        self.assertIn("NET-DONE", text, "the guest did not finish its job" + describe(res, 6000))
        self.assertEqual(tagged(text, "NETVSC-ERROR"), [], describe(res))

    def test_vmm_exits_after_the_api_power_off(self) -> None:
        # The VMM's own log first: when the guest's console stops short, it says why (a
        # seccomp kill, a sanitizer report, an abort) before the output's tail.
        res = self.run_of()
        self.assertEqual(self.host().get("net-channels.rc"), "5",
                         f"enlighten said:\n{vmm_log(res, self.KEY)[-3000:]}" + describe(res, 2000))


if __name__ == "__main__":
    unittest.main()
