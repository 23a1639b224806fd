"""End-to-end tests of the VM console (docs/console.md): the synthetic video that the unmodified
Debian guest's hyperv_fb drives, found under direct boot through the PCI bus (1414:5353), the
synthetic keyboard (hyperv_keyboard) and mouse (hid_hyperv), through

    enlighten run ... --display on[,resolution=WxH]
    enlighten remote --api-socket S screenshot FILE      (GET /vm.screenshot)
    enlighten remote --api-socket S send-keys ...        (PUT /vm.send-keys)
    enlighten remote --api-socket S pointer X Y ...      (PUT /vm.pointer)

Four guest boots in one test-host boot (session "console", 1-vCPU guests):

  console  1024x768 (the default): hyperv_fb binds with the offered mode and its framebuffer
           in guest RAM; no "PCI: Fatal" line, 00:08.0 is 1414:5353; fbcon took the
           framebuffer; the guest writes a pattern into /dev/fb0 (after unbinding fbcon so
           that nothing else draws) and vm.screenshot returns it pixel for pixel; pointer
           moves, a click and the wheel arrive at the mouse's event device with the right
           absolute coordinates; typed keys (a letter and an E0 key) arrive at the keyboard's;
           then fbcon again with a getty on tty1, where the host logs in by typing "root"
  vnc      --vnc 127.0.0.1:5901: a VNC client (tests/tools/vnc_probe, carried into the test
           host with libvncserver) gets the pattern pixel for pixel, its key and click reach
           the guest's event devices, and a second client sees fbcon's redraw come as updates
  hires    1920x1080: 8 MiB of framebuffer, more than Linux 6.1 can allocate, so hyperv_fb
           takes the VMBus MMIO pool, which the VMM backs on demand; /dev/fb0, the screenshot
           and VNC on a Unix socket (mode 0600) have the mode
  web      --web 10.0.2.15:8080 (the test host's user-mode NIC, its port 8080 forwarded to this
           machine): a headless Chromium here (tools/enlighten_tools/browser.py), driven by the
           run's live hook while the VM runs, opens the dashboard with the token the VMM
           printed: without it the page and the API are 401; the VM shows as running, noVNC
           connects and shows the guest's pattern; a click and a key in the page reach the
           guest's event devices; the heartbeat service's row follows it being disabled and
           enabled through the API; the shutdown button, confirmed, shuts the guest down and
           the VMM exits 0

The guest is the default guest with `enlighten.modules=hyperv-keyboard,hid-hyperv,evdev,hyperv_fb`;
its /job reads the event devices with busybox (cat, then od) and prints what came."""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

from harness import REPO, BG_VM_LIB, Live, RunResult, Session, describe, kv, parts_line, section, vm_info, vmm_log

from enlighten_tools.browser import Browser, BrowserError

# libvncserver is loaded with dlopen() by --vnc: the test host gets it and what it needs.
VNC_LIBRARY = "/usr/lib/x86_64-linux-gnu/libvncserver.so.1"
# --web serves Debian's noVNC from here (package novnc): the test host gets the directory.
NOVNC_DIR = "/usr/share/novnc"
CONSOLE = Session("console", host_libraries=(VNC_LIBRARY,), host_dirs=(NOVNC_DIR,))
VNC_PROBE = REPO / "build" / "tests" / "vnc_probe"

WIDTH, HEIGHT = 1024, 768
MODULES = "enlighten.modules=hyperv-keyboard,hid-hyperv,evdev,hyperv_fb"


def pattern_pixel(x: int, y: int) -> tuple[int, int, int]:
    """The pattern's colour (R, G, B) at (x, y): gradients and an 8x8 checkerboard, different
    in every channel, so that a swapped channel, a shifted line or a wrong pitch shows."""
    r = ((x >> 8) << 6) | ((y >> 8) << 4) | (0x0F if ((x >> 3) ^ (y >> 3)) & 1 else 0)
    return r, y & 0xFF, x & 0xFF


_pattern_file: Path | None = None


def pattern_file() -> Path:
    """The pattern as the guest writes it to /dev/fb0: B, G, R, X (X is not the host's)."""
    global _pattern_file
    if _pattern_file is None:
        out = bytearray()
        for y in range(HEIGHT):
            for x in range(WIDTH):
                r, g, b = pattern_pixel(x, y)
                out += bytes((b, g, r, 0x5A))
        f = tempfile.NamedTemporaryFile(prefix="enlighten-fb-pattern-", suffix=".bgrx", delete=False)
        f.write(out)
        f.close()
        _pattern_file = Path(f.name)
    return _pattern_file


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of an 8-bit RGB PNG, non-interlaced (what the VMM writes)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError("not a PNG")
    pos, idat, width = 8, b"", 0
    height = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, colour, interlace) != (8, 2, 0):
                raise AssertionError(f"PNG depth {depth} colour type {colour} interlace {interlace}")
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * 3
    out = bytearray(stride * height)
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - 3] if i >= 3 else 0
            b = prev[i]
            c = prev[i - 3] if i >= 3 else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, bytes(out)


# Scenario helpers (busybox sh in the test host), after harness.SCENARIO_LIB.
CONSOLE_LIB = BG_VM_LIB + r"""
# start_console NAME DISPLAY [more enlighten args]: the VM in the background with the API on $API
# ($CONSOLE_CMDLINE: more guest kernel arguments)
start_console() {
    BG_NAME=$1; display=$2; shift 2
    SERIAL=$WORK/$BG_NAME.serial
    rm -f "$API"
    "$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus "$CPUS" \
        --serial "file:$SERIAL" --api-socket "$API" --on-reboot exit --log-level info --display "$display" \
        --cmdline "console=ttyS0 quiet panic=-1 enlighten.stay $MODULES ${CONSOLE_CMDLINE:-}" "$@" >"$WORK/$BG_NAME.vmm.log" 2>&1 &
    VM_PID=$!
}
# frame FILE TAG: a file as base64 between markers (decoded by the test)
frame() { echo "FRAME-BEGIN $2"; base64 "$1" 2>/dev/null; echo "FRAME-END $2"; }
# shot TAG: a screenshot through the API, as base64 between markers (decoded by the test)
shot() {
    api screenshot "$WORK/$1.png"; echo "RESULT host.$1_rc=$?"
    frame "$WORK/$1.png" "$1"
}
""".replace("$MODULES", MODULES)

# The guest's side (Debian's busybox sh): facts, then the event readers, then the pattern.
GUEST_LIB = r"""
wait_for() { n=0; while [ ! -e "$1" ]; do n=$((n + 1)); [ $n -ge $(($2 * 10)) ] && return 1; sleep 0.1; done; }
facts() {
    wait_for /dev/fb0 60
    fb=/sys/class/graphics/fb0
    echo "RESULT fb0=$([ -e /dev/fb0 ] && echo yes || echo no)"
    echo "RESULT fb.name=$(cat $fb/name 2>/dev/null)"
    echo "RESULT fb.virtual_size=$(cat $fb/virtual_size 2>/dev/null)"
    echo "RESULT fb.bits_per_pixel=$(cat $fb/bits_per_pixel 2>/dev/null)"
    echo "RESULT fb.stride=$(cat $fb/stride 2>/dev/null)"
    echo "RESULT proc_fb=$(head -n 1 /proc/fb)"
    p=/sys/bus/pci/devices/0000:00:08.0
    echo "RESULT pci.video=$(cat $p/vendor 2>/dev/null):$(cat $p/device 2>/dev/null):$(cat $p/class 2>/dev/null)"
    echo "RESULT pci.host_bridge=$(cat /sys/bus/pci/devices/0000:00:00.0/class 2>/dev/null)"
    echo "RESULT pci_fatal=$(dmesg | grep -c 'No config space access function found')"
    echo "RESULT fbcon=$(dmesg | grep -c 'switching to colour frame buffer device')"
    dmesg | grep -iE 'pci|hyperv_fb|synthvid|console|input:|hid|keyboard|serio|vmbus|frame buffer|fb0' | sed 's/^/DMESG /'
    for e in /sys/class/input/event*; do
        [ -e "$e" ] || continue
        n=$(cat "$e/device/name")
        echo "INPUT ${e##*/} $n"
        case "$n" in
        "AT Translated Set 2 keyboard") kbd=${e##*/} ;;
        "Microsoft Vmbus HID-compliant Mouse") mouse=${e##*/} ;;
        esac
    done
    echo "RESULT kbd=$kbd"
    echo "RESULT mouse=$mouse"
    sed 's/^/PROCINPUT /' /proc/bus/input/devices
}
# pattern_and_readers: the facts, the event devices read in the background, fbcon unbound (it
# draws the cursor and text) and the pattern in /dev/fb0
pattern_and_readers() {
    kbd=; mouse=
    # the input devices may come a little after the modules (atkbd binds through kseriod)
    n=0; while [ $n -lt 100 ]; do
        k=0; for e in /sys/class/input/event*; do [ -e "$e" ] && k=$((k + 1)); done
        [ $k -ge 2 ] && break; sleep 0.1; n=$((n + 1))
    done
    facts
    for v in /sys/class/vtconsole/vtcon*; do
        echo "VTCON ${v##*/} $(cat $v/name) bind=$(cat $v/bind)"
        grep -q "frame buffer" "$v/name" && echo 0 > "$v/bind"
    done
    cat "/dev/input/$kbd" > /tmp/kbd.bin & kpid=$!
    cat "/dev/input/$mouse" > /tmp/mouse.bin & mpid=$!
    dd if=/pattern.bgrx of=/dev/fb0 bs=4096 2>/dev/null; echo "RESULT dd_rc=$?"
    sync
}
# events_after BYTES: once the keyboard's reader has that much (or after 90 s), both
# devices' events as od prints them (KBD and MOUSE lines)
events_after() {
    n=0
    while [ "$(stat -c %s /tmp/kbd.bin)" -lt "$1" ] && [ $n -lt 900 ]; do sleep 0.1; n=$((n + 1)); done
    sleep 1
    kill $kpid $mpid
    od -A n -t d2 -v -w24 /tmp/kbd.bin | sed 's/^/KBD /'
    od -A n -t d2 -v -w24 /tmp/mouse.bin | sed 's/^/MOUSE /'
}
"""

JOB_CONSOLE = GUEST_LIB + r"""
pattern_and_readers
echo "CONSOLE-READY"
# The host: a screenshot, the pointer, then the keys; done when 12 key events came
# (a letter and an E0 key, each pressed and released: MSC_SCAN, EV_KEY, SYN_REPORT).
events_after 288
echo "CONSOLE-DONE"
# The text console again, with a getty on tty1 that the host logs in to by typing.
for v in /sys/class/vtconsole/vtcon*; do grep -q "frame buffer" "$v/name" && echo 1 > "$v/bind"; done
echo 'root::0:0:root:/root:/bin/sh' > /etc/passwd
echo 'root:x:0:' > /etc/group
mkdir -p /root
setsid getty 38400 tty1 &
sleep 1
echo "GETTY-STARTED"
"""

CONSOLE.scenario("console", CONSOLE_LIB + r"""
start_console console on
if wait_guest CONSOLE-READY 240; then
    part boot
    info ready
    shot screen
    part screenshot
    api pointer 512 384; echo "RESULT host.move_rc=$?"
    api pointer 1023 767 --click left; echo "RESULT host.click_rc=$?"
    api pointer 0 0 --wheel 2; echo "RESULT host.wheel_rc=$?"
    api pointer 5000 1; echo "RESULT host.outside_rc=$?"
    api send-keys --text a up; echo "RESULT host.keys_rc=$?"
    api send-keys nokey; echo "RESULT host.badkey_rc=$?"
    wait_guest CONSOLE-DONE 120
    part input
    info final
    # Log in on tty1 without a VNC client: the user name at getty's prompt, then a command
    # whose answer only a shell gives (6*7), to the serial console.
    if wait_guest GETTY-STARTED 60; then
        sleep 2
        api send-keys --text root Return; echo "RESULT host.login_rc=$?"
        sleep 3
        api send-keys --text 'echo LOGIN-$((6*7)) >/dev/ttyS0' Return; echo "RESULT host.command_rc=$?"
        wait_guest LOGIN-42 60
        shot login
        part login
    fi
fi
stop_vm
""", job=JOB_CONSOLE, guest_files={"/pattern.bgrx": pattern_file}, timeout=600)

JOB_HIRES = GUEST_LIB + r"""
kbd=; mouse=
facts
echo "CONSOLE-READY"
"""

CONSOLE.scenario("hires", CONSOLE_LIB + r"""
start_console hires on,resolution=1920x1080 --vnc "unix:$WORK/vnc.sock"
if wait_guest CONSOLE-READY 240; then
    part boot
    sleep 1
    info ready
    shot screen
    # VNC on a Unix socket, showing the mode the guest chose
    "$VNCPROBE" "unix:$WORK/vnc.sock" "$WORK/hires.ppm"; echo "RESULT host.probe_rc=$?"
    echo "RESULT host.socket_mode=$(stat -c %a "$WORK/vnc.sock")"
fi
stop_vm
""", job=JOB_HIRES, files={"VNCPROBE": VNC_PROBE}, timeout=400)


# The same pattern, shown through VNC: a client's arrival copies the whole screen; a key and a
# click from the client reach the guest; then fbcon draws again and only what it dirtied comes.
JOB_VNC = GUEST_LIB + r"""
pattern_and_readers
echo "VNC-READY"
# one key from the client: MSC_SCAN, EV_KEY, SYN_REPORT down and up
events_after 144
echo "VNC-DONE"
# While the host's second client watches: fbcon draws the text console again.
sleep 4
for v in /sys/class/vtconsole/vtcon*; do grep -q "frame buffer" "$v/name" && echo 1 > "$v/bind"; done
echo "hello from the guest" > /dev/tty1
echo "VNC-REDRAWN"
"""

CONSOLE.scenario("vnc", CONSOLE_LIB + r"""
start_console vnc on --vnc 127.0.0.1:5901
if wait_guest VNC-READY 240; then
    part boot
    "$VNCPROBE" 127.0.0.1:5901 "$WORK/vnc.ppm" --key 0x61 --pointer 100,200,1 --pointer 100,200,0
    echo "RESULT host.probe_rc=$?"
    frame "$WORK/vnc.ppm" vnc
    part probe
    wait_guest VNC-DONE 120
    # a second client: the whole frame, then what changes in 20 s (the guest redraws after 4)
    "$VNCPROBE" 127.0.0.1:5901 "$WORK/vnc2.ppm" --updates 20
    echo "RESULT host.watch_rc=$?"
    info final
    part watch
fi
stop_vm
""", job=JOB_VNC, guest_files={"/pattern.bgrx": pattern_file}, files={"VNCPROBE": VNC_PROBE}, timeout=500)


# --web: the dashboard and the console in a browser. The run's live hook (web_hook, on this
# machine, while the VM runs) drives a headless Chromium against the test host's forwarded
# port; the guest prints what its event devices got, and the VMM's exit status is the run's.
WEB_PORT = 8080
JOB_WEB = GUEST_LIB + r"""
pattern_and_readers
echo "WEB-GUEST-READY"
# the browser's click and one key (MSC_SCAN, EV_KEY, SYN_REPORT down and up)
events_after 144
echo "WEB-KEYS-DONE"
"""


def pattern_match(width: int, height: int, rgb: bytes, step: int = 6, tol: int = 10) -> tuple[int, int, list]:
    """How much of a screenshot of the scaled console (`width` x `height`, the canvas alone)
    shows the guest's pattern: at a grid of points, the colour there against the pattern's at
    the framebuffer pixel the point shows. The page scales the console and the browser
    smooths it, so: blue (x & 0xFF) and green (y & 0xFF) within `tol`, red's high bits (the
    256-pixel block, bits 4-7) within 6 and its checkerboard nibble anything; points within a few pixels of
    a 256-pixel block edge (where the gradients wrap) are skipped. (matched, sampled, the
    first mismatches)."""
    matched = sampled = 0
    bad = []
    sx, sy = WIDTH / width, HEIGHT / height
    for v in range(step // 2, height, step):
        y = int((v + 0.5) * sy)
        if not 6 <= (y & 0xFF) <= 249:
            continue
        for u in range(step // 2, width, step):
            x = int((u + 0.5) * sx)
            if not 6 <= (x & 0xFF) <= 249:
                continue
            i = (v * width + u) * 3
            r, g, b = rgb[i:i + 3]
            hi = ((x >> 8) << 6) | ((y >> 8) << 4)
            sampled += 1
            if abs(g - (y & 0xFF)) <= tol and abs(b - (x & 0xFF)) <= tol and hi - 6 <= r <= hi + 0x0F + 6:
                matched += 1
            elif len(bad) < 5:
                bad.append({"at": (u, v), "fb": (x, y), "got": (r, g, b), "pattern": pattern_pixel(x, y)})
    return matched, sampled, bad


class WebHook:
    """What web_hook does, one named check after another; each check's failure is kept
    (checks[name]: None when it passed) and the later ones that need it are skipped, so each
    test reports its own check. Anything it did not finish ends in a power-off through the
    API, so that the run does not wait out its timeouts."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.checks: dict[str, str | None] = {}
        self.info: dict[str, object] = {}
        self.browser: Browser | None = None
        self.base = ""
        self.token = ""

    def check(self, name: str, step: Callable[[], None], needs: tuple[str, ...] = ()) -> None:
        """Runs `step`; checks[name] is None if it passed, else why not (also when a check it
        needs did not pass)."""
        missing = [n for n in needs if self.checks.get(n, "not run") is not None]
        if missing:
            self.checks[name] = f"not run: it needs {', '.join(missing)}, which failed or did not run"
            return
        t0 = time.monotonic()
        self.live.note(f"check {name}")
        try:
            step()
        except Exception as e:  # noqa: BLE001 - kept for the test of this check
            self.checks[name] = f"{type(e).__name__}: {e}"
            self.live.note(f"check {name} FAILED after {time.monotonic() - t0:.1f} s: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}")
            self.save_page(name)
        else:
            self.checks[name] = None
            self.live.note(f"check {name} ok ({time.monotonic() - t0:.1f} s)")

    def aborted(self) -> str | None:
        """Why waiting on the page is pointless: the run has ended (the VMM is gone)."""
        return f"run {self.live.key!r} has ended" if self.live.ended else None

    def save_page(self, name: str) -> None:
        """A PNG of the page when a check failed: in $ENLIGHTEN_E2E_SAVE, else a temporary file."""
        if self.browser is None:
            return
        try:
            png = self.browser.screenshot_png()
            d = os.environ.get("ENLIGHTEN_E2E_SAVE")
            if d:
                Path(d).mkdir(parents=True, exist_ok=True)
                path = Path(d) / f"console-web-{name}.png"
            else:
                path = Path(tempfile.mkstemp(prefix=f"enlighten-web-{name}-", suffix=".png")[1])
            path.write_bytes(png)
            self.live.note(f"the page when {name} failed: {path}")
        except (BrowserError, OSError) as e:
            self.live.note(f"no picture of the page: {e}")

    # -- HTTP from Python (urllib), to the forwarded port
    def http(self, method: str, path: str, body: dict | None = None, token: str | None = None,
             timeout: float = 15) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        return self.http(method, "/api/v1/" + path, body, token=self.token)

    def wait_server(self, timeout: float) -> None:
        """Until the VMM answers HTTP on the forwarded port (QEMU's forward accepts at once and
        then resets the connection while nothing listens in the test host)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.http("GET", "/api/v1/vmm.ping", timeout=5)
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.base} did not answer in {timeout:.0f} s: {e}") from e
                time.sleep(0.3)

    def server_gone(self) -> bool:
        try:
            self.http("GET", "/api/v1/vmm.ping", timeout=5)
            return False
        except OSError:
            return True

    def text(self, selector: str) -> str | None:
        return self.browser.text(selector)

    def wait_text(self, selector: str, condition: str, timeout: float, what: str) -> str:
        """Until the JavaScript `condition` on t (the element's trimmed textContent) holds."""
        js = (f"(e => {{ const t = e ? e.textContent.trim() : null; return ({condition}) ? (t || '(empty)') : ''; }})"
              f"(document.querySelector({json.dumps(selector)}))")
        return self.browser.wait_for(js, timeout, what=f"{what} (the text of {selector})", abort=self.aborted)

    # -- the checks
    def run(self) -> dict:
        try:
            self.check("token", self.find_token)
            self.check("unauthorized", self.check_unauthorized, needs=("token",))
            self.check("browser", self.open_page, needs=("token",))
            self.check("vm_state", lambda: self.wait_text("#vm-state", "t === 'running'", 30, "the VM shown as running"),
                       needs=("browser",))
            self.check("console_connected",
                       lambda: self.wait_text("#console-status", "t === 'connected'", 60, "the console connected"),
                       needs=("browser",))
            self.check("pattern", self.check_pattern, needs=("console_connected",))
            self.check("input", self.type_into_console, needs=("console_connected",))
            self.check("heartbeat", self.heartbeat_row_follows_the_service, needs=("browser",))
            self.check("shutdown", self.shut_down_with_the_button, needs=("browser",))
        finally:
            try:
                self.power_off_if_running()
            finally:
                if self.browser is not None:
                    self.info["browser_log"] = self.browser.log_text(80)
                    self.info["browser_stderr"] = self.browser.stderr_text(2000)
                    self.browser.close()
        return {"checks": self.checks, "info": self.info}

    def find_token(self) -> None:
        live = self.live
        url = live.line.split("url=", 1)[1].strip() if "url=" in live.line else ""
        self.info["url"] = url
        m = re.fullmatch(rf"http://{re.escape(live.nic_addr)}:{WEB_PORT}/\?token=([0-9a-f]{{32}})", url)
        if not m:
            raise AssertionError(f"the VMM's log has no http://{live.nic_addr}:{WEB_PORT}/?token=<32 hex digits> "
                                 f"line, the run found {url!r}")
        self.token = m.group(1)
        self.base = live.local_url(f"http://{live.nic_addr}:{WEB_PORT}")
        self.wait_server(30)

    def check_unauthorized(self) -> None:
        got = {}
        for what, path, token in (("GET /", "/", None), ("GET /api/v1/vm.info", "/api/v1/vm.info", None),
                                  ("GET /?token=<wrong>", "/?token=" + "0" * 32, None),
                                  ("GET /api/v1/vm.info with a wrong Bearer token", "/api/v1/vm.info", "f" * 32)):
            got[what] = self.http("GET", path, token=token)[0]
        status, body = self.api("GET", "vm.info")
        got["GET /api/v1/vm.info with the Bearer token"] = status
        self.info["unauthorized"] = got
        wrong = {k: v for k, v in got.items() if v != (200 if k.endswith("the Bearer token") else 401)}
        if wrong:
            raise AssertionError(f"expected 401 without the token (and 200 with it): {got}")
        self.info["vm_info_state"] = json.loads(body).get("state")

    def open_page(self) -> None:
        self.browser = Browser(timeout=30)
        self.browser.start()
        self.browser.navigate(f"{self.base}/?token={self.token}")
        path = self.browser.evaluate("location.pathname + location.search")
        if path != "/":
            raise AssertionError(f"after /?token=... the page is at {path!r}, not / (the 303 redirect)")

    def check_pattern(self) -> None:
        """A screenshot of the console's canvas shows the pattern (retried while noVNC draws)."""
        b = self.browser
        deadline = time.monotonic() + 30
        while True:
            box = b.box("#console canvas")
            w, h, rgb = b.screenshot({**box, "x": box["x"], "y": box["y"]})
            matched, sampled, bad = pattern_match(w, h, rgb)
            self.info["pattern"] = {"canvas_box": box, "shot": (w, h), "matched": matched, "sampled": sampled,
                                    "mismatches": bad}
            if sampled >= 1000 and matched >= 0.95 * sampled:
                self.live.note(f"pattern: {matched}/{sampled} points in a {w}x{h} canvas")
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the console canvas ({w}x{h} at {box}) does not show the pattern: {matched} of "
                                     f"{sampled} points match; the first that do not: {bad}")
            time.sleep(1)

    def type_into_console(self) -> None:
        """A click at the framebuffer's pixel (100, 200), then the key 'a'; the run says when the
        guest got them."""
        b = self.browser
        box = b.box("#console canvas")
        fx, fy = 100, 200
        x = box["x"] + (fx + 0.5) * box["width"] / WIDTH
        y = box["y"] + (fy + 0.5) * box["height"] / HEIGHT
        self.info["click"] = {"css": (x, y), "fb": (fx, fy)}
        b.click_at(x, y)
        focused = b.evaluate("document.activeElement ? document.activeElement.tagName : null")
        self.live.note(f"clicked the console at {x:.1f},{y:.1f}; the focus is on {focused}")
        b.type_key("a")
        self.live.wait_line(r"^WEB-KEYS-DONE", 100)

    def heartbeat_row_follows_the_service(self) -> None:
        row = "#services tr[data-service='heartbeat'] .status"
        before = self.wait_text(row, "t === 'OK'", 60, "the heartbeat service's status OK")
        self.info["heartbeat"] = {"before": before}
        status, body = self.api("PUT", "vm.integration-services/heartbeat", {"enabled": False})
        if status != 200:
            raise AssertionError(f"PUT vm.integration-services/heartbeat {{enabled: false}}: {status} {body[:300]!r}")
        off = self.wait_text(row, "t !== 'OK'", 30, "the heartbeat service's status to change once it is disabled")
        self.info["heartbeat"]["disabled"] = off
        self.info["heartbeat"]["state_disabled"] = self.text("#heartbeat-state")
        self.live.note(f"heartbeat disabled: the row says {off!r}, #heartbeat-state {self.text('#heartbeat-state')!r}")
        deadline = time.monotonic() + 20
        while True:  # 409 until the guest has released the rescinded offer
            status, body = self.api("PUT", "vm.integration-services/heartbeat", {"enabled": True})
            if status == 200:
                break
            if status != 409 or time.monotonic() > deadline:
                raise AssertionError(f"PUT vm.integration-services/heartbeat {{enabled: true}}: {status} {body[:300]!r}")
            time.sleep(0.5)
        on = self.wait_text(row, "t === 'OK'", 60, "the heartbeat service's status OK again once it is enabled")
        self.info["heartbeat"]["enabled_again"] = on

    def shut_down_with_the_button(self) -> None:
        b = self.browser
        if self.server_gone():
            raise AssertionError("the VMM no longer answered before the shutdown button was clicked")
        b.click("#btn-shutdown")
        b.wait_for("document.getElementById('confirm-dialog').open", 10, what="the confirmation dialog")
        self.info["confirm_text"] = b.text("#confirm-dialog")
        b.click("#confirm-yes")
        t0 = time.monotonic()
        states = []
        while not self.server_gone():
            try:
                st = b.text("#vm-state")
                if not states or states[-1] != st:
                    states.append(st)
                err = b.text("#api-error")
            except BrowserError:
                err = None
            if time.monotonic() - t0 > 90:
                raise AssertionError(f"the VMM still answers 90 s after the shutdown was confirmed (#vm-state went "
                                     f"{states}, #api-error {err!r})")
            time.sleep(0.5)
        self.info["shutdown"] = {"seconds": round(time.monotonic() - t0, 1), "vm_states": states}
        self.live.note(f"the VMM stopped answering {time.monotonic() - t0:.1f} s after the confirmation; "
                       f"#vm-state went {states}")

    def power_off_if_running(self) -> None:
        if not self.base or not self.token or self.checks.get("shutdown", "not run") is None:
            return
        try:
            if not self.server_gone():
                status, _ = self.api("PUT", "vm.power-off")
                self.live.note(f"the hook powered the VM off through the API ({status}) after a failed check")
        except OSError as e:
            self.live.note(f"power-off through the API: {e}")


def web_hook(live: Live) -> dict:
    return WebHook(live).run()


CONSOLE.scenario("web", CONSOLE_LIB + r"""
CONSOLE_CMDLINE=enlighten.services  # the heartbeat and the shutdown service
start_console web on --web "$E2E_NIC_ADDR:8080"
if wait_guest WEB-GUEST-READY 240; then
    part boot
    n=0
    while ! grep -q 'token=' "$WORK/web.vmm.log" && vm_alive && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    url=$(grep -o 'http://[^ ]*token=[^ ]*' "$WORK/web.vmm.log" | head -n 1)
    # the browser on the machine that runs the tests: web_hook
    live WEB-READY "url=$url"
    # it clicks and types into the console: the guest prints what came
    wait_guest WEB-KEYS-DONE 120 && live WEB-KEYS-DONE
    part input
    # then the heartbeat service off and on through the API, then its shutdown button: the
    # guest shuts down and the VMM exits by itself
    n=0; while vm_alive && [ $n -lt 1500 ]; do sleep 0.1; n=$((n + 1)); done
    vm_alive && echo "SCENARIO-TIMEOUT the VM still ran 150 s after the keys"
    part shutdown
fi
stop_vm
""", job=JOB_WEB, guest_files={"/pattern.bgrx": pattern_file}, files={"NOVNC_RFB": Path(NOVNC_DIR) / "core" / "rfb.js"},
    forward_ports=[WEB_PORT], on_live=web_hook, timeout=420)


def events(text: str, tag: str) -> list[tuple[int, int, int]]:
    """(type, code, value) of the input_event lines `od -t d2 -w24` printed after TAG."""
    out = []
    for m in re.finditer(rf"^{tag} +(.*)$", text, re.M):
        cols = [int(v) for v in m.group(1).split()]
        if len(cols) != 12:
            continue
        out.append((cols[8] & 0xFFFF, cols[9] & 0xFFFF, (cols[10] & 0xFFFF) | (cols[11] << 16)))
    return out


def scale(p: int, size: int) -> int:
    """The mouse's 0..32767 for pixel p of `size` (MouseDevice::scale)."""
    return min(p, size - 1) * 32767 // (size - 1)


EV_SYN, EV_KEY, EV_REL, EV_ABS, EV_MSC = 0, 1, 2, 3, 4
KEY_A, KEY_UP, BTN_LEFT = 30, 103, 272
ABS_X, ABS_Y, REL_WHEEL = 0, 1, 8

_parts_shown: set[str] = set()


class ConsoleCase(unittest.TestCase):
    SESSION = CONSOLE
    KEY = ""
    READY = "CONSOLE-READY"  # what the run's /job prints once it is set up

    def run_of(self) -> RunResult:
        res = self.SESSION.result(self, self.KEY)
        if self.KEY not in _parts_shown:
            _parts_shown.add(self.KEY)
            m = re.search(r"^VNC-UPDATES (.*)$", res.output, re.M)
            print(parts_line(self.KEY, res, f"; vnc updates {m.group(1)}" if m else ""), end="", file=sys.stderr,
                  flush=True)
        return res

    def console(self) -> str:
        res = self.run_of()
        text = section(res, self.KEY)
        self.assertIn(self.READY, text, f"boot '{self.KEY}' never got ready; enlighten said:\n"
                      f"{vmm_log(res, self.KEY)[-3000:]}" + describe(res, 8000))
        return text

    def guest(self) -> dict[str, str]:
        return kv(self.console())

    def host(self) -> dict[str, str]:
        return kv(self.run_of().output)

    def framed(self, tag: str) -> bytes:
        res = self.run_of()
        m = re.search(rf"^FRAME-BEGIN {tag}\n(.*?)^FRAME-END {tag}$", res.output, re.S | re.M)
        self.assertIsNotNone(m, describe(res))
        return base64.b64decode("".join(m.group(1).split()))

    def screenshot(self, tag: str) -> tuple[int, int, bytes]:
        return decode_png(self.framed(tag))

    def assert_pattern(self, width: int, height: int, rgb: bytes) -> None:
        res = self.run_of()
        self.assertEqual((width, height), (WIDTH, HEIGHT), describe(res))
        bad = []
        for y in range(HEIGHT):
            for x in range(WIDTH):
                i = (y * WIDTH + x) * 3
                if tuple(rgb[i:i + 3]) != pattern_pixel(x, y):
                    bad.append((x, y, tuple(rgb[i:i + 3]), pattern_pixel(x, y)))
        self.assertEqual(len(bad), 0, f"{len(bad)} pixels differ, the first: {bad[:5]}" + describe(res))


class ConsoleTests(ConsoleCase):
    """1024x768: hyperv_fb, the screenshot, keyboard and mouse."""
    KEY = "console"

    def test_hyperv_fb_binds_with_the_offered_mode(self) -> None:
        res, g = self.run_of(), self.guest()
        self.assertEqual(g.get("fb0"), "yes", describe(res, 8000))
        self.assertEqual(g.get("fb.name"), "hyperv_fb", describe(res))
        self.assertEqual(g.get("fb.virtual_size"), f"{WIDTH},{HEIGHT}", describe(res))
        self.assertEqual(g.get("fb.bits_per_pixel"), "32", describe(res))
        self.assertEqual(g.get("fb.stride"), str(WIDTH * 4), describe(res))
        self.assertEqual(g.get("proc_fb"), "0 hyperv_fb", describe(res))
        text = self.console()
        self.assertIn("hyperv_fb: Synthvid Version major 3, minor 5", text, describe(res, 8000))
        self.assertIn(f"Screen resolution: {WIDTH}x{HEIGHT}, Color depth: 32", text, describe(res, 8000))
        for bad in ("Unable to find PCI Hyper-V video", "Unable to allocate enough contiguous physical memory",
                    "Time out on waiting", "Unable to set VRAM location"):
            self.assertNotIn(bad, text, describe(res, 8000))
        info = vm_info(res, "ready")["console"]
        self.assertEqual(info["video"], "ready", describe(res))
        self.assertEqual(info["video_version"], "3.5", describe(res))
        self.assertEqual(info["mode"], {"width": WIDTH, "height": HEIGHT, "pitch": WIDTH * 4}, describe(res))
        self.assertFalse(info["vram_in_mmio"], describe(res))  # 4 MiB: guest RAM
        self.assertEqual(info["vram_bytes"], 4 << 20, describe(res))

    def test_the_pci_bus_ends_the_fatal_line_and_holds_the_video(self) -> None:
        res, g = self.run_of(), self.guest()
        self.assertEqual(g.get("pci_fatal"), "0", describe(res, 8000))
        self.assertEqual(g.get("pci.video"), "0x1414:0x5353:0x030000", describe(res, 8000))
        self.assertEqual(g.get("pci.host_bridge"), "0x060000", describe(res, 8000))
        self.assertIn("PCI: Using configuration type 1 for base access", self.console(), describe(res, 8000))

    def test_fbcon_took_the_framebuffer(self) -> None:
        res, g = self.run_of(), self.guest()
        self.assertGreaterEqual(int(g.get("fbcon", "0")), 1, describe(res, 8000))

    def test_the_pattern_comes_back_in_the_screenshot_pixel_for_pixel(self) -> None:
        res, g, h = self.run_of(), self.guest(), self.host()
        self.assertEqual(g.get("dd_rc"), "0", describe(res))
        self.assertEqual(h.get("host.screen_rc"), "0", describe(res))
        self.assert_pattern(*self.screenshot("screen"))

    def test_pointer_events_arrive_with_absolute_coordinates(self) -> None:
        res, h = self.run_of(), self.host()
        self.console()
        for key in ("move", "click", "wheel"):
            self.assertEqual(h.get(f"host.{key}_rc"), "0", describe(res))
        self.assertEqual(h.get("host.outside_rc"), "1", describe(res))  # outside the screen: refused
        ev = events(self.console(), "MOUSE")
        self.assertTrue(ev, "no mouse events" + describe(res, 8000))
        abs_x = [v for t, c, v in ev if (t, c) == (EV_ABS, ABS_X)]
        abs_y = [v for t, c, v in ev if (t, c) == (EV_ABS, ABS_Y)]
        self.assertIn(scale(512, WIDTH), abs_x, f"{ev}" + describe(res))
        self.assertIn(scale(384, HEIGHT), abs_y, f"{ev}" + describe(res))
        self.assertIn(32767, abs_x, f"{ev}" + describe(res))
        self.assertIn(32767, abs_y, f"{ev}" + describe(res))
        self.assertIn(0, abs_x, f"{ev}" + describe(res))
        buttons = [v for t, c, v in ev if (t, c) == (EV_KEY, BTN_LEFT)]
        self.assertEqual(buttons, [1, 0], f"{ev}" + describe(res))
        self.assertIn(2, [v for t, c, v in ev if (t, c) == (EV_REL, REL_WHEEL)], f"{ev}" + describe(res))

    def test_keys_arrive_at_the_keyboards_event_device(self) -> None:
        res, h, g = self.run_of(), self.host(), self.guest()
        self.assertEqual(h.get("host.keys_rc"), "0", describe(res))
        self.assertEqual(h.get("host.badkey_rc"), "1", describe(res))  # an unknown key name: refused
        self.assertTrue(g.get("kbd"), describe(res, 8000))
        ev = events(self.console(), "KBD")
        keys = [(c, v) for t, c, v in ev if t == EV_KEY]
        self.assertEqual(keys, [(KEY_A, 1), (KEY_A, 0), (KEY_UP, 1), (KEY_UP, 0)], f"{ev}" + describe(res, 8000))
        self.assertIn((EV_MSC, 4, 0x1E), ev, f"{ev}" + describe(res))  # MSC_SCAN of set-1 'A'
        info = vm_info(res, "final")["console"]
        self.assertEqual((info["keyboard"], info["mouse"]), ("ready", "ready"), describe(res))
        self.assertEqual(info["key_events"], 4, describe(res))
        self.assertEqual(sum(info["guest_errors"].values()), 0, describe(res))

    def test_send_keys_logs_in_at_the_getty_on_the_framebuffer_console(self) -> None:
        res, h, text = self.run_of(), self.host(), self.console()
        self.assertEqual(h.get("host.login_rc"), "0", describe(res, 8000))
        self.assertEqual(h.get("host.command_rc"), "0", describe(res, 8000))
        # The shell the login started ran the typed command (6*7 is the shell's, not the keys').
        self.assertIn("LOGIN-42", text, describe(res, 8000))
        # And fbcon showed it: the screen has text on it (the login shown, not the pattern).
        width, height, rgb = self.screenshot("login")
        self.assertEqual((width, height), (WIDTH, HEIGHT), describe(res))
        lit = sum(1 for i in range(0, len(rgb), 3) if rgb[i] or rgb[i + 1] or rgb[i + 2])
        self.assertGreater(lit, 500, "the screen shows no text" + describe(res))
        pattern_like = sum(1 for y in range(0, HEIGHT, 16) for x in range(0, WIDTH, 16)
                           if tuple(rgb[(y * WIDTH + x) * 3:(y * WIDTH + x) * 3 + 3]) == pattern_pixel(x, y))
        self.assertLess(pattern_like, WIDTH * HEIGHT // 256 // 2, "the pattern is still there" + describe(res))

    def test_the_input_devices_are_the_hyper_v_ones(self) -> None:
        res, text = self.run_of(), self.console()
        self.assertIn('N: Name="AT Translated Set 2 keyboard"', text, describe(res, 8000))
        self.assertIn('N: Name="Microsoft Vmbus HID-compliant Mouse"', text, describe(res, 8000))
        self.assertRegex(text, r"I: Bus=0006 Vendor=045e Product=0621", describe(res, 8000))
        for bad in ("synth_kbd protocol request failed", "synthhid protocol request failed", "device has no listeners"):
            self.assertNotIn(bad, text, describe(res, 8000))


def decode_ppm(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of a binary PPM (P6, maxval 255), as vnc_probe writes it."""
    m = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", data)
    if not m:
        raise AssertionError("not a P6 PPM")
    w, h = int(m.group(1)), int(m.group(2))
    return w, h, data[m.end():m.end() + w * h * 3]


class VncTests(ConsoleCase):
    """--vnc: a VNC client sees the guest's screen and types and points into it."""
    KEY = "vnc"
    READY = "VNC-READY"

    def test_a_vnc_client_gets_the_screen_pixel_for_pixel(self) -> None:
        res, h = self.run_of(), self.host()
        self.console()
        self.assertEqual(h.get("host.probe_rc"), "0", describe(res, 8000))
        self.assertIn("VNC-NAME Enlighten", res.output, describe(res))
        self.assert_pattern(*decode_ppm(self.framed("vnc")))

    def test_vnc_input_reaches_the_guest(self) -> None:
        res, text = self.run_of(), self.console()
        keys = [(c, v) for t, c, v in events(text, "KBD") if t == EV_KEY]
        self.assertEqual(keys, [(KEY_A, 1), (KEY_A, 0)], describe(res, 8000))
        ev = events(text, "MOUSE")
        self.assertIn((EV_ABS, ABS_X, scale(100, WIDTH)), ev, f"{ev}" + describe(res))
        self.assertIn((EV_ABS, ABS_Y, scale(200, HEIGHT)), ev, f"{ev}" + describe(res))
        self.assertEqual([v for t, c, v in ev if (t, c) == (EV_KEY, BTN_LEFT)], [1, 0], f"{ev}" + describe(res))

    def test_only_what_the_guest_redraws_is_sent(self) -> None:
        res, h = self.run_of(), self.host()
        self.assertEqual(h.get("host.watch_rc"), "0", describe(res, 8000))
        m = re.search(r"^VNC-UPDATES rects=(\d+) bytes=(\d+)$", res.output, re.M)
        self.assertIsNotNone(m, describe(res, 8000))
        rects, sent = int(m.group(1)), int(m.group(2))
        # fbcon's redraw arrives as the guest's dirty rectangles (FEATURE_CHANGE asked for them).
        self.assertGreater(rects, 0, describe(res, 8000))
        self.assertGreater(sent, 0, describe(res, 8000))
        self.assertIn("VNC-REDRAWN", self.console(), describe(res))


class HiresTests(ConsoleCase):
    """1920x1080: the framebuffer in the VMBus MMIO pool."""
    KEY = "hires"

    def test_a_mode_above_4_mib_lives_in_the_mmio_pool(self) -> None:
        res, g, h = self.run_of(), self.guest(), self.host()
        self.assertEqual(g.get("fb.virtual_size"), "1920,1080", describe(res, 8000))
        text = self.console()
        self.assertIn("Using MMIO instead", text, describe(res, 8000))
        self.assertNotIn("Unable to allocate framebuffer memory", text, describe(res, 8000))
        info = vm_info(res, "ready")["console"]
        self.assertEqual(info["mode"], {"width": 1920, "height": 1080, "pitch": 7680}, describe(res))
        self.assertTrue(info["vram_in_mmio"], describe(res))
        self.assertEqual(info["vram_bytes"], 8 << 20, describe(res))
        self.assertEqual(h.get("host.screen_rc"), "0", describe(res))
        width, height, _ = self.screenshot("screen")
        self.assertEqual((width, height), (1920, 1080), describe(res))

    def test_vnc_on_a_unix_socket_shows_the_mode(self) -> None:
        res, h = self.run_of(), self.host()
        self.console()
        self.assertEqual(h.get("host.probe_rc"), "0", describe(res, 8000))
        self.assertEqual(h.get("host.socket_mode"), "600", describe(res))
        self.assertIn("VNC-SIZE 1920x1080", res.output, describe(res, 8000))


class WebTests(ConsoleCase):
    """--web: the dashboard and the console in a headless Chromium (the run's live hook)."""
    KEY = "web"
    READY = "WEB-GUEST-READY"

    def hook(self) -> dict:
        res = self.run_of()
        out = CONSOLE.live_result(self, self.KEY)
        if "web-hook" not in _parts_shown:
            _parts_shown.add("web-hook")
            self.report(out)
        if out.error or not isinstance(out.value, dict):
            self.fail(f"the browser hook did not run through: {out.error or out.value!r}" + out.describe()
                      + self.logs(res))
        return out.value

    @staticmethod
    def report(out) -> None:
        """Once: what the hook saw, in a line for the test report (and its whole record in
        $ENLIGHTEN_E2E_SAVE/console-web-hook.json)."""
        info = out.value.get("info", {}) if isinstance(out.value, dict) else {}
        p, hb, sd = info.get("pattern") or {}, info.get("heartbeat") or {}, info.get("shutdown") or {}
        print(f"[web hook {out.seconds:.1f} s: pattern {p.get('matched', '-')}/{p.get('sampled', '-')} points of a "
              f"{'x'.join(map(str, p.get('shot', ()))) or '-'} canvas; heartbeat row {hb.get('before', '-')!r} -> "
              f"{hb.get('disabled', '-')!r} -> {hb.get('enabled_again', '-')!r}; shutdown: the VMM gone "
              f"{sd.get('seconds', '-')} s after the confirmation] ", end="", file=sys.stderr, flush=True)
        if d := os.environ.get("ENLIGHTEN_E2E_SAVE"):
            Path(d).mkdir(parents=True, exist_ok=True)
            record = {"value": out.value, "error": out.error, "notes": out.notes, "seconds": out.seconds}
            (Path(d) / "console-web-hook.json").write_text(json.dumps(record, indent=1, default=str))

    def logs(self, res: RunResult, info: dict | None = None) -> str:
        info = info or {}
        browser = info.get("browser_log", "")
        return (f"\n--- browser console ---\n{browser or '(nothing)'}\n--- enlighten log (web) ---\n"
                f"{vmm_log(res, self.KEY)[-3000:]}\n--- end ---" + describe(res, 6000))

    def check(self, name: str) -> dict:
        """Fails with the check's reason, the hook's notes, the browser console and the VMM log."""
        value = self.hook()
        why = value["checks"].get(name, "not run")
        if why is not None:
            res = self.run_of()
            out = CONSOLE.live_result(self, self.KEY)
            info = {k: v for k, v in value["info"].items() if k not in ("browser_log", "browser_stderr")}
            self.fail(f"{name}: {why}\n--- what the hook saw ---\n{json.dumps(info, indent=1, default=str)[:3000]}"
                      + out.describe() + self.logs(res, value["info"]))
        return value["info"]

    def test_the_page_and_the_api_need_the_token(self) -> None:
        info = self.check("token")
        self.check("unauthorized")
        self.assertRegex(info["url"], r"\?token=[0-9a-f]{32}$")

    def test_the_token_address_leads_to_the_page(self) -> None:
        self.check("browser")

    def test_the_page_shows_the_vm_running(self) -> None:
        self.check("vm_state")

    def test_the_console_connects(self) -> None:
        self.check("console_connected")

    def test_the_console_shows_the_guests_pattern(self) -> None:
        self.console()
        self.check("pattern")

    def test_a_key_typed_in_the_page_reaches_the_guests_keyboard(self) -> None:
        res, text = self.run_of(), self.console()
        info = self.check("input")
        keys = [(c, v) for t, c, v in events(text, "KBD") if t == EV_KEY]
        self.assertEqual(keys, [(KEY_A, 1), (KEY_A, 0)], "the key 'a' typed in the page" + self.logs(res, info))

    def test_a_click_in_the_page_reaches_the_guests_mouse(self) -> None:
        res, text = self.run_of(), self.console()
        info = self.check("input")
        ev = events(text, "MOUSE")
        self.assertEqual([v for t, c, v in ev if (t, c) == (EV_KEY, BTN_LEFT)], [1, 0],
                         f"a left click: {ev}" + self.logs(res, info))
        # the page scales the console: the click lands on (100, 200) give or take a pixel
        xs = [v for t, c, v in ev if (t, c) == (EV_ABS, ABS_X)]
        ys = [v for t, c, v in ev if (t, c) == (EV_ABS, ABS_Y)]
        near = lambda vals, p, size: any(abs(v - scale(p, size)) <= 2 * 32767 // (size - 1) for v in vals)  # noqa: E731
        self.assertTrue(near(xs, 100, WIDTH) and near(ys, 200, HEIGHT),
                        f"the click at framebuffer (100, 200) ({info.get('click')}) came as x {xs}, y {ys} "
                        f"(expected about {scale(100, WIDTH)}, {scale(200, HEIGHT)})" + self.logs(res, info))

    def test_the_dashboard_follows_the_heartbeat_service(self) -> None:
        self.check("heartbeat")

    def test_the_page_keeps_to_its_content_security_policy(self) -> None:
        # The policy allows no inline script or style: Chromium refuses (and logs) any the
        # page or noVNC would use, which might break the page in ways the checks miss.
        res, value = self.run_of(), self.hook()
        log = value["info"].get("browser_log", "")
        refused = [line for line in log.splitlines() if "Content Security Policy" in line or "Refused to" in line]
        self.assertEqual(refused, [], "the browser refused some of the page" + self.logs(res, value["info"]))

    def test_the_shutdown_button_shuts_the_guest_down(self) -> None:
        res, h = self.run_of(), self.host()
        info = self.check("shutdown")
        self.assertIn("ENLIGHTEN-SHUTDOWN-REQUESTED poweroff", section(res, self.KEY),
                      "the guest was not asked to shut down" + self.logs(res, info))
        # exit status 0: the guest powered off (5 would be a power-off by the API)
        self.assertEqual(h.get("web.rc"), "0", "the VMM's exit status after the shutdown" + self.logs(res, info))


if __name__ == "__main__":
    unittest.main()
