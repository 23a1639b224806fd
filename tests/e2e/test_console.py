"""End-to-end tests of the VM console (docs/console.md): the synthetic video that the unmodified
Debian guest's hyperv_fb drives, found under direct boot through the PCI bus (1414:5353), the
synthetic keyboard (hyperv_keyboard) and mouse (hid_hyperv), through

    enlighten run ... --display on[,resolution=WxH]
    enlighten remote --api-socket S screenshot FILE      (GET /vm.screenshot)
    enlighten remote --api-socket S send-keys ...        (PUT /vm.send-keys)
    enlighten remote --api-socket S pointer X Y ...      (PUT /vm.pointer)

Three guest boots in one test-host boot (session "console", 1-vCPU guests):

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

The guest is the default guest with `enlighten.modules=hyperv-keyboard,hid-hyperv,evdev,hyperv_fb`;
its /job reads the event devices with busybox (cat, then od) and prints what came."""

from __future__ import annotations

import base64
import re
import struct
import sys
import tempfile
import unittest
import zlib
from pathlib import Path

from harness import REPO, BG_VM_LIB, RunResult, Session, describe, kv, parts_line, section, vm_info, vmm_log

# libvncserver is loaded with dlopen() by --vnc: the test host gets it and what it needs.
VNC_LIBRARY = "/usr/lib/x86_64-linux-gnu/libvncserver.so.1"
CONSOLE = Session("console", host_libraries=(VNC_LIBRARY,))
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
start_console() {
    BG_NAME=$1; display=$2; shift 2
    SERIAL=$WORK/$BG_NAME.serial
    rm -f "$API"
    "$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus "$CPUS" \
        --serial "file:$SERIAL" --api-socket "$API" --on-reboot exit --log-level info --display "$display" \
        --cmdline "console=ttyS0 quiet panic=-1 enlighten.stay $MODULES" "$@" >"$WORK/$BG_NAME.vmm.log" 2>&1 &
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


if __name__ == "__main__":
    unittest.main()
