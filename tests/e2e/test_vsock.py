"""End-to-end tests of hv_sock: `enlighten run --vsock socket=PATH` with the unmodified Debian
guest's hv_sock driving it (docs/vsock.md).

One guest boot (session "vsock", run "vsock"), checked by several tests:

  host -> guest   16 host clients at once connect to PATH and write `CONNECT 5000` .. `5015`;
                  guest socat VSOCK-LISTEN:50NN listeners answer: the client reads `OK <n>`,
                  then both sides send 8 MiB and hash what they receive (sha256 on both ends)
  guest -> host   then 16 guest socat VSOCK-CONNECT:2:6000 at once reach the test host's
                  listener on PATH_6000; 2 MiB each way per connection, hashed
  EOF / close     the host client closes after writing: the guest's reader gets the data
                  and EOF (port 4000); a guest writer closes: the host's reader gets the
                  data and EOF (PATH_6001). Every bulk connection also ends with both FINs
                  and a rescind: its socat exits only after the peer's EOF.
  refusals        CONNECT to a port nobody listens on: the client's socket is closed without
                  OK; a guest connect to a port with no PATH_P: connect() fails (timeout)
  clean-up        once the sockets are closed, no hv_sock device is left in the guest and
                  no hv_sock channel in vm.info (every channel rescinded and released)

The guest is the default guest with the vsock layer (Debian's socat and its libraries:
tools/enlighten_tools/vsock_layer.py) and `enlighten.modules=hv_sock`. The test host side is
tests/e2e/helpers/hvsock_host.c (static; busybox nc has no Unix sockets), built with the
machine's gcc when the session runs."""

from __future__ import annotations

import re
import sys
import unittest
from pathlib import Path

from harness import BG_VM_LIB, REPO, RunResult, Session, describe, kv, section, static_c_program
from enlighten_tools import vsock_layer

VSOCK = Session("vsock")
CONNS = 16
MIB = 8      # each way on every host-initiated connection (the 16 x 8 MiB)
G_MIB = 2    # each way on every guest-initiated connection
SOCKET_CLASS_SUFFIX = "-facb-11e6-bd58-64006a7986d3"


def host_helper() -> Path:
    """tests/e2e/helpers/hvsock_host.c, statically linked, in build/e2e/."""
    return static_c_program(REPO / "tests" / "e2e" / "helpers" / "hvsock_host.c", "hvsock_host")


# The guest's /job (Debian's busybox sh and socat). Each connection's data is what the
# other side hashes; per-connection scripts run under socat EXEC with pipes, so that the
# sender's end closes (FIN) when `cat` is done while the hash waits for the peer's EOF.
JOB = r"""
MIB=""" + str(MIB) + r"""
G_MIB=""" + str(G_MIB) + r"""
CONNS=""" + str(CONNS) + r"""
now() { read -r t _ </proc/uptime; echo "$t"; }
dd if=/dev/urandom of=/tmp/g2h.bin bs=1M count=$MIB 2>/dev/null
echo "RESULT g2h_sha=$(sha256sum < /tmp/g2h.bin | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/g2hs.bin bs=1M count=$G_MIB 2>/dev/null
echo "RESULT g2hs_sha=$(sha256sum < /tmp/g2hs.bin | cut -d' ' -f1)"
echo "RESULT hv_sock_loaded=$(grep -c '^hv_sock ' /proc/modules)"
# Each connection: socat sends /tmp/g2h.bin (its EOF is our shutdown(SHUT_WR): a FIN) and
# writes what it receives to a file until the peer's EOF (socat's dual address: read!!write).
# host -> guest: one listener per connection, ports 5000.. ; on 4000 one reader to EOF
lpids=
for i in $(seq $CONNS); do
    ( socat -t 600 VSOCK-LISTEN:$((4999 + i)) "OPEN:/tmp/g2h.bin!!CREATE:/tmp/lin.$i" 2>/tmp/socatl.$i.err
      echo "RESULT listen_rc_$i=$?"
      echo "RESULT listen_h2g_sha_$i=$(sha256sum < /tmp/lin.$i | cut -d' ' -f1)"; rm -f /tmp/lin.$i ) &
    lpids="$lpids $!"
done
( socat -u VSOCK-LISTEN:4000 CREATE:/tmp/got4000 2>/tmp/socat4000.err; echo "RESULT eof_from_host_rc=$?"; \
  echo "RESULT eof_from_host=$(cat /tmp/got4000)" ) &
sleep 1
echo VSOCK-LISTENING
# guest -> host once the host's connections are done: a guest connect() gives up after 2 s
# without the host's offer, which a nested test host flooding 16 connections may not make
for p in $lpids; do wait $p; done
# guest -> host: CONNS connections at once to the test host's PATH_6000
t=$(now)
pids=
for i in $(seq $CONNS); do
    socat -t 600 VSOCK-CONNECT:2:6000 "OPEN:/tmp/g2hs.bin!!CREATE:/tmp/cin.$i" 2>/tmp/socat6000.$i.err &
    pids="$pids $!"
done
# if they hang: what the socats wait for (a failure's report)
( sleep 150; ps | grep -v grep | grep socat | sed 's/^/DIAG-PS /'
  for p in $pids; do echo "DIAG-WCHAN $p $(cat /proc/$p/wchan 2>/dev/null)"; done ) &
rc=0
for p in $pids; do wait $p || rc=$?; done
echo "RESULT connect_rc=$rc"
for i in $(seq $CONNS); do echo "RESULT connect_h2g_sha_$i=$(sha256sum < /tmp/cin.$i | cut -d' ' -f1)"; done
echo "RESULT connect_seconds=$(awk "BEGIN { printf \"%.1f\", $(now) - $t }")"
cat /tmp/socat6000.*.err 2>/dev/null | head -5 | sed 's/^/SOCAT-ERR /'
# the guest closes first: the host's reader on PATH_6001 sees the data, then EOF
echo bye-from-guest | socat -u - VSOCK-CONNECT:2:6001 2>/tmp/socat6001.err
echo "RESULT close_to_host_rc=$?"
# nobody listens on PATH_7001: connect() fails (Linux 6.1 times out after 2 s)
t=$(now)
socat -u /dev/null VSOCK-CONNECT:2:7001 2>/tmp/socat7001.err
echo "RESULT refused_rc=$?"
echo "RESULT refused_seconds=$(awk "BEGIN { printf \"%.1f\", $(now) - $t }")"
echo "RESULT refused_err=$(head -c 200 /tmp/socat7001.err | tr '\n' ' ')"
echo VSOCK-GUEST-DONE
"""

# After harness.SCENARIO_LIB ($ENL, $KERNEL, $INITRD, $WORK, $API, api); $HVSOCK_HOST and
# $VSOCK_INITRD are files of the session.
SCENARIO = BG_VM_LIB + r"""
MIB=""" + str(MIB) + r"""
G_MIB=""" + str(G_MIB) + r"""
CONNS=""" + str(CONNS) + r"""
V=$WORK/v.sock
SERIAL=$WORK/vsock.serial
BG_PIDS=
trap 'kill $BG_PIDS 2>/dev/null' EXIT
sha() { sha256sum < "$1" | cut -d' ' -f1; }
dd if=/dev/urandom of="$WORK/h2g.bin" bs=1M count=$MIB 2>/dev/null
echo "RESULT host.h2g_sha=$(sha "$WORK/h2g.bin")"
dd if=/dev/urandom of="$WORK/h2gs.bin" bs=1M count=$G_MIB 2>/dev/null
echo "RESULT host.h2gs_sha=$(sha "$WORK/h2gs.bin")"
cat > "$WORK/serve.sh" <<EOS
#!/bin/sh
cat "$WORK/h2gs.bin" &
exec >/dev/null
s=\$(sha256sum)
echo "RESULT host.serve_g2h_sha_\$CONN=\${s%% *}" >> "$WORK/serve.out"
EOS
chmod +x "$WORK/serve.sh"
# the test host's listeners: PATH_6000 for CONNS guest connections, PATH_6001 for one reader
"$HVSOCK_HOST" serve "${V}_6000" $CONNS "$WORK/serve.sh" 2>"$WORK/serve6000.err" &
SERVE_PID=$!; BG_PIDS="$BG_PIDS $!"
"$HVSOCK_HOST" serve "${V}_6001" 1 "cat > $WORK/got6001" 2>"$WORK/serve6001.err" &
SERVE1_PID=$!; BG_PIDS="$BG_PIDS $!"
n=0; until [ -S "${V}_6000" ] && [ -S "${V}_6001" ] || [ $n -ge 50 ]; do sleep 0.1; n=$((n + 1)); done
"$ENL" run --kernel "$KERNEL" --initrd "$VSOCK_INITRD" --memory 1G --cpus "$CPUS" \
    --serial "file:$SERIAL" --api-socket "$API" --on-reboot exit --log-level debug \
    --cmdline "console=ttyS0 quiet panic=-1 enlighten.stay enlighten.modules=hv_sock" \
    --vsock "socket=$V" >"$WORK/vsock.vmm.log" 2>&1 &
VM_PID=$!
( sleep 400; vm_alive && echo "SCENARIO-DEADLINE: the VM ran 400 s, killed" && kill -KILL "$VM_PID" ) & BG_PIDS="$BG_PIDS $!"
wait_guest VSOCK-LISTENING 180
part boot
# host -> guest: CONNS clients at once
t=$(now)
pids=
for i in $(seq $CONNS); do
    ( timeout 200 "$HVSOCK_HOST" connect "$V" $((4999 + i)) < "$WORK/h2g.bin" 2>"$WORK/c$i.err" > "$WORK/c$i.recv"; echo $? > "$WORK/c$i.rc" ) &
    pids="$pids $!"
done
for p in $pids; do wait $p; done
echo "RESULT host.connect_seconds=$(awk "BEGIN { printf \"%.1f\", $(now) - $t }")"
for i in $(seq $CONNS); do
    echo "RESULT host.client_rc_$i=$(cat "$WORK/c$i.rc")"
    echo "RESULT host.client_ok_$i=$(head -n 1 "$WORK/c$i.err")"
    echo "RESULT host.client_g2h_sha_$i=$(sha "$WORK/c$i.recv")"
    echo "RESULT host.client_bytes_$i=$(wc -c < "$WORK/c$i.recv" | tr -d ' ')"
done
# what the VMM's channels looked like then (for a failure's report)
api info 2>&1 | grep -B2 -A4 '"hvsock' | sed 's/^/INFO-CONNECTED /' | head -80
part host-to-guest
# the host closes first: write, then close without reading
printf 'bye-from-host' | "$HVSOCK_HOST" connect "$V" 4000 2>"$WORK/c5001.err" >/dev/null
echo "RESULT host.close_rc=$?"
# nobody listens on 7000 in the guest: no OK, the socket closed after the open timeout
t=$(now)
"$HVSOCK_HOST" connect "$V" 7000 </dev/null >/dev/null 2>"$WORK/c7000.err"
echo "RESULT host.nolistener_rc=$?"
echo "RESULT host.nolistener_seconds=$(awk "BEGIN { printf \"%.1f\", $(now) - $t }")"
# a line that is not CONNECT: closed at once
"$HVSOCK_HOST" connect "$V" bogus </dev/null >/dev/null 2>"$WORK/cbogus.err"
echo "RESULT host.bogus_rc=$?"
wait_guest VSOCK-GUEST-DONE 240
part guest-to-host
# the listeners end when their connections have (bounded: a stuck one is killed)
( sleep 60; kill "$SERVE_PID" "$SERVE1_PID" 2>/dev/null ) & BG_PIDS="$BG_PIDS $!"
wait "$SERVE_PID"; echo "RESULT host.serve_rc=$?"
wait "$SERVE1_PID"
echo "RESULT host.eof_from_guest=$(cat "$WORK/got6001" 2>/dev/null)"
cat "$WORK/serve.out" 2>/dev/null
cat "$WORK/serve6000.err" | head -5 | sed 's/^/SERVE-ERR /'
# every hv_sock device gone from the guest once its sockets closed (the rescinds arrived)
wait_guest hvsock_devices_left 60
# ... and on the VMM's side: no hv_sock channel left in vm.info (all released by the guest;
# its RELID_RELEASED may follow the device's removal by a moment)
n=0
while :; do
    api info > "$WORK/info.json" 2>&1; rc=$?
    left=$(grep -o '"hvsock[0-9]*"' "$WORK/info.json" | wc -l)
    [ "$left" -eq 0 ] || [ $n -ge 20 ] && break
    n=$((n + 1)); sleep 0.5
done
echo "RESULT host.info_rc=$rc"
echo "RESULT host.hvsock_channels_left=$left"
grep -A4 '"hvsock' "$WORK/info.json" | grep -E '"name"|"state"|"relid"' | sed 's/^/INFO-LEFT /'
vm_alive && api power-off >/dev/null
wait "$VM_PID"
echo "RESULT host.vm_rc=$?"
part shutdown
echo "--- vsock: guest console ---"; tr -d '\r' < "$SERIAL"; echo
echo "--- vsock: enlighten log ---"; cat "$WORK/vsock.vmm.log"
echo "--- vsock: end ---"
"""

# The leftover check runs in the guest at shutdown: /init's summary lists vmbus devices;
# the job prints its own count just before it finishes (below, appended to JOB).
JOB += r"""
sleep 3
echo "RESULT hvsock_devices_left=$(grep -l '""" + SOCKET_CLASS_SUFFIX + r"""' /sys/bus/vmbus/devices/*/class_id 2>/dev/null | wc -l)"
"""

VSOCK.scenario("vsock", SCENARIO, cpus=1, timeout=600,
               files={"HVSOCK_HOST": host_helper, "VSOCK_INITRD": lambda: vsock_layer.make_vsock_initrd(JOB)})


_shown = False


class VsockTests(unittest.TestCase):
    def run_of(self) -> RunResult:
        global _shown
        res = VSOCK.result(self, "vsock")
        if not _shown:
            _shown = True
            parts = ", ".join(f"{p[0]} {p[1]} s" for p in re.findall(r"^PART (\S+) (\S+)$", res.output, re.M))
            print(f"[vsock: {res.duration:.1f} s: {parts or 'no parts'}] ", end="", file=sys.stderr, flush=True)
        return res

    def guest(self) -> dict[str, str]:
        res = self.run_of()
        text = section(res, "vsock")
        self.assertIn("ENLIGHTEN-INIT", text, "the guest never reached /init" + describe(res, 6000))
        return kv(text)

    def host(self) -> dict[str, str]:
        return kv(self.run_of().output)

    def test_hv_sock_is_loaded(self) -> None:
        self.assertEqual(self.guest().get("hv_sock_loaded"), "1", describe(self.run_of(), 6000))

    def test_host_clients_get_ok_from_a_guest_listener(self) -> None:
        h, res = self.host(), self.run_of()
        for i in range(1, CONNS + 1):
            self.assertRegex(h.get(f"host.client_ok_{i}", ""), r"^OK \d+$", f"client {i}" + describe(res, 8000))
            self.assertEqual(h.get(f"host.client_rc_{i}"), "0", f"client {i}" + describe(res, 8000))

    def test_host_to_guest_data_intact_on_every_connection(self) -> None:
        g, h, res = self.guest(), self.host(), self.run_of()
        got = [v for k, v in g.items() if k.startswith("listen_h2g_sha_")]
        self.assertEqual(len(got), CONNS, describe(res, 8000))
        self.assertEqual(set(got), {h["host.h2g_sha"]}, describe(res, 8000))

    def test_guest_to_host_data_intact_on_every_host_connection(self) -> None:
        g, h, res = self.guest(), self.host(), self.run_of()
        for i in range(1, CONNS + 1):
            self.assertEqual(h.get(f"host.client_g2h_sha_{i}"), g.get("g2h_sha"), f"client {i}" + describe(res, 8000))

    def test_guest_connects_reach_the_host_listener_on_path_6000(self) -> None:
        g, h, res = self.guest(), self.host(), self.run_of()
        self.assertEqual(g.get("connect_rc"), "0", describe(res, 8000))
        self.assertEqual(h.get("host.serve_rc"), "0", describe(res, 8000))

    def test_guest_to_host_data_intact_on_every_guest_connection(self) -> None:
        g, h, res = self.guest(), self.host(), self.run_of()
        got = [v for k, v in h.items() if k.startswith("host.serve_g2h_sha_")]
        self.assertEqual(len(got), CONNS, describe(res, 8000))
        self.assertEqual(set(got), {g.get("g2hs_sha")}, describe(res, 8000))

    def test_host_to_guest_data_intact_on_every_guest_connection(self) -> None:
        g, h, res = self.guest(), self.host(), self.run_of()
        got = [v for k, v in g.items() if k.startswith("connect_h2g_sha_")]
        self.assertEqual(len(got), CONNS, describe(res, 8000))
        self.assertEqual(set(got), {h["host.h2gs_sha"]}, describe(res, 8000))

    def test_host_close_gives_the_guest_data_then_eof(self) -> None:
        g, h, res = self.guest(), self.host(), self.run_of()
        self.assertEqual(h.get("host.close_rc"), "0", describe(res, 8000))
        self.assertEqual(g.get("eof_from_host"), "bye-from-host", describe(res, 8000))
        self.assertEqual(g.get("eof_from_host_rc"), "0", describe(res, 8000))

    def test_guest_close_gives_the_host_data_then_eof(self) -> None:
        g, h, res = self.guest(), self.host(), self.run_of()
        self.assertEqual(g.get("close_to_host_rc"), "0", describe(res, 8000))
        self.assertEqual(h.get("host.eof_from_guest"), "bye-from-guest", describe(res, 8000))

    def test_connect_to_a_port_nobody_listens_on_is_closed_without_ok(self) -> None:
        h, res = self.host(), self.run_of()
        self.assertEqual(h.get("host.nolistener_rc"), "4", describe(res, 8000))
        self.assertEqual(h.get("host.bogus_rc"), "4", describe(res, 8000))

    def test_guest_connect_without_a_host_listener_fails(self) -> None:
        g, res = self.guest(), self.run_of()
        self.assertNotEqual(g.get("refused_rc"), "0", describe(res, 8000))
        self.assertIsNotNone(g.get("refused_rc"), describe(res, 8000))

    def test_no_hv_sock_device_is_left_in_the_guest(self) -> None:
        g, res = self.guest(), self.run_of()
        self.assertEqual(g.get("hvsock_devices_left"), "0", describe(res, 8000))

    def test_no_hv_sock_channel_is_left_in_the_vmm(self) -> None:
        h, res = self.host(), self.run_of()
        self.assertEqual(h.get("host.info_rc"), "0", describe(res, 8000))
        self.assertEqual(h.get("host.hvsock_channels_left"), "0", describe(res, 8000))

    def test_vmm_exits_after_the_api_power_off(self) -> None:
        # 5: powered off through the API (src/vmm/exit_codes.hpp kForcedOff)
        h, res = self.host(), self.run_of()
        self.assertEqual(h.get("host.vm_rc"), "5", describe(res, 8000))


if __name__ == "__main__":
    unittest.main()
