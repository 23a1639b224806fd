"""A small headless-Chromium driver for tests, over the Chrome DevTools Protocol (CDP).

Debian's `chromium-headless-shell` (scripts/setup installs it) is started with
`--remote-debugging-pipe`: CDP messages are JSON, each ended by a NUL byte, the browser reads
them from its fd 3 and writes its answers and events to its fd 4. No WebSocket and no Python
package beyond the standard library.

    with Browser() as b:                       # a fresh profile in a temporary directory
        b.navigate("http://127.0.0.1:8080/?token=...")    # waits for the load event
        b.wait_for("document.querySelector('#vm-state').textContent == 'running'", 20)
        b.evaluate("1 + 1")                     # -> 2 (promises are awaited)
        b.click("#console")                     # a real mouse click at the element's centre
        b.type_key("a")                         # a real key press: keyDown (with text), keyUp
        width, height, rgb = b.screenshot()     # the viewport, decoded from PNG to RGB bytes
        print(b.log_text())                     # console messages and exceptions of the page

Every wait has a timeout (BrowserTimeout, with the page's console output in the message); the
browser's process group is killed when the `with` block ends, whatever happened.

    python3 -m enlighten_tools.browser --self-test   # against a throwaway local page
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable

from .common import ToolError

WINDOW = (1280, 960)
BINARY_CANDIDATES = ("/usr/bin/chromium-headless-shell", "/usr/lib/chromium/chromium-headless-shell")


class BrowserError(ToolError):
    """The browser failed, a CDP command returned an error, or page script threw."""


class BrowserTimeout(BrowserError):
    pass


def find_binary() -> str:
    env = os.environ.get("ENLIGHTEN_CHROMIUM")
    for c in ([env] if env else []) + list(BINARY_CANDIDATES):
        if c and os.access(c, os.X_OK):
            return c
    found = shutil.which("chromium-headless-shell")
    if found:
        return found
    raise BrowserError("chromium-headless-shell not found: install Debian's chromium-headless-shell "
                       "(scripts/setup does), or set ENLIGHTEN_CHROMIUM")


# ----------------------------------------------------------------------------- PNG
def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of an 8-bit RGB or RGBA PNG, non-interlaced (alpha dropped)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise BrowserError("not a PNG")
    pos, idat = 8, []
    width = height = channels = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            channels = {2: 3, 6: 4}.get(colour, 0)
            if depth != 8 or not channels or interlace:
                raise BrowserError(f"PNG with depth {depth}, colour type {colour}, interlace {interlace}: "
                                   "only 8-bit RGB/RGBA non-interlaced is decoded")
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if not channels:
        raise BrowserError("PNG without IHDR")
    raw = zlib.decompress(b"".join(idat))
    bpp = channels
    stride = width * bpp
    if len(raw) < (stride + 1) * height:
        raise BrowserError(f"PNG data too short: {len(raw)} bytes for {width}x{height}")
    rows = []
    prev = bytes(stride)
    for y in range(height):
        off = y * (stride + 1)
        ftype = raw[off]
        line = raw[off + 1:off + 1 + stride]
        if ftype == 0:
            cur = bytes(line)
        elif ftype == 1:  # sub: each channel is a running sum of its own bytes
            cur_b = bytearray(stride)
            for c in range(bpp):
                cur_b[c::bpp] = bytes(itertools.accumulate(line[c::bpp], lambda a, b: (a + b) & 0xFF))
            cur = bytes(cur_b)
        elif ftype == 2:  # up
            cur = bytes((a + b) & 0xFF for a, b in zip(line, prev))
        elif ftype in (3, 4):  # average, paeth
            cur_b = bytearray(stride)
            for i in range(stride):
                a = cur_b[i - bpp] if i >= bpp else 0
                b = prev[i]
                if ftype == 3:
                    pred = (a + b) >> 1
                else:
                    c = prev[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur_b[i] = (line[i] + pred) & 0xFF
            cur = bytes(cur_b)
        else:
            raise BrowserError(f"PNG row {y}: unknown filter type {ftype}")
        rows.append(cur)
        prev = cur
    pixels = b"".join(rows)
    if bpp == 4:  # drop alpha
        out = bytearray(width * height * 3)
        out[0::3], out[1::3], out[2::3] = pixels[0::4], pixels[1::4], pixels[2::4]
        pixels = bytes(out)
    return width, height, pixels


# ----------------------------------------------------------------------------- keys
# key -> (code, windowsVirtualKeyCode, text) for the keys that are not a plain character
_SPECIAL_KEYS = {
    "Enter": ("Enter", 13, "\r"), "Tab": ("Tab", 9, "\t"), "Backspace": ("Backspace", 8, ""),
    "Escape": ("Escape", 27, ""), "Delete": ("Delete", 46, ""), "Home": ("Home", 36, ""),
    "End": ("End", 35, ""), "ArrowLeft": ("ArrowLeft", 37, ""), "ArrowUp": ("ArrowUp", 38, ""),
    "ArrowRight": ("ArrowRight", 39, ""), "ArrowDown": ("ArrowDown", 40, ""), " ": ("Space", 32, " "),
}
_SHIFTED = {'!': '1', '@': '2', '#': '3', '$': '4', '%': '5', '^': '6', '&': '7', '*': '8', '(': '9', ')': '0',
            '_': '-', '+': '=', '{': '[', '}': ']', '|': '\\', ':': ';', '"': "'", '<': ',', '>': '.', '?': '/',
            '~': '`'}
_PUNCT = {'-': ("Minus", 189), '=': ("Equal", 187), '[': ("BracketLeft", 219), ']': ("BracketRight", 221),
          '\\': ("Backslash", 220), ';': ("Semicolon", 186), "'": ("Quote", 222), ',': ("Comma", 188),
          '.': ("Period", 190), '/': ("Slash", 191), '`': ("Backquote", 192)}


def key_event_fields(key: str) -> tuple[dict[str, Any], bool]:
    """The Input.dispatchKeyEvent fields of a key (a character such as 'a', 'A', '1', '/', or a
    DOM key name such as 'Enter'), and whether it needs Shift."""
    if key in _SPECIAL_KEYS:
        code, vk, text = _SPECIAL_KEYS[key]
        return {"key": key, "code": code, "windowsVirtualKeyCode": vk, "text": text}, False
    if len(key) != 1:
        raise BrowserError(f"unknown key {key!r}")
    shift = False
    base = key
    if key.isalpha() and key.isascii():
        shift = key.isupper()
        code, vk = f"Key{key.upper()}", ord(key.upper())
    elif key.isdigit():
        code, vk = f"Digit{key}", ord(key)
    else:
        if key in _SHIFTED:
            shift, base = True, _SHIFTED[key]
        if base not in _PUNCT and not base.isdigit():
            raise BrowserError(f"unknown key {key!r}")
        code, vk = (f"Digit{base}", ord(base)) if base.isdigit() else _PUNCT[base]
    return {"key": key, "code": code, "windowsVirtualKeyCode": vk, "text": key}, shift


# ----------------------------------------------------------------------------- the browser
class Browser:
    """A headless Chromium with one page, driven over CDP on a pipe. Use as a context manager."""

    def __init__(self, *, window: tuple[int, int] = WINDOW, binary: str | None = None,
                 extra_args: list[str] | tuple[str, ...] = (), timeout: float = 30.0) -> None:
        self.window = window
        self.binary = binary or find_binary()
        self.extra_args = list(extra_args)
        self.timeout = timeout           # default for every command and wait
        self.proc: subprocess.Popen | None = None
        self.profile: str | None = None
        self.session: str | None = None  # the page's CDP session
        self.messages: list[str] = []    # console messages, exceptions, log entries (in order)
        self.stderr_path: str | None = None
        self._to_browser: int | None = None
        self._from_browser: int | None = None
        self._lock = threading.Condition()
        self._next_id = itertools.count(1)
        self._answers: dict[int, dict] = {}
        self._events: list[dict] = []
        self._closed_reason: str | None = None
        self._reader: threading.Thread | None = None

    # -- lifetime
    def __enter__(self) -> "Browser":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="enlighten-chromium-")
        self.stderr_path = os.path.join(self.profile, "stderr.log")
        cmd_r, cmd_w = os.pipe()    # we write commands, the browser reads them at fd 3
        ans_r, ans_w = os.pipe()    # the browser writes to fd 4, we read
        # The child's ends at fds >= 10, so that bash's 3<&N 4>&M cannot overwrite one (dash takes one digit).
        child_r = _dup_high(cmd_r)
        child_w = _dup_high(ans_w)
        os.close(cmd_r)
        os.close(ans_w)
        self._to_browser, self._from_browser = cmd_w, ans_r
        args = [self.binary, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                f"--window-size={self.window[0]},{self.window[1]}", "--no-first-run",
                "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--mute-audio", "--hide-scrollbars",
                "--force-device-scale-factor=1", *self.extra_args]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
        args.append("about:blank")
        script = f'exec "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        with open(self.stderr_path, "wb") as err:
            # start_new_session: close() kills the whole group (zygote, renderers, GPU process)
            self.proc = subprocess.Popen(["bash", "-c", script, "bash", *args], pass_fds=(child_r, child_w),
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         start_new_session=True)
        os.close(child_r)
        os.close(child_w)
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        target = self.command("Target.createTarget", {"url": "about:blank", "width": self.window[0],
                                                      "height": self.window[1]}, session=False)
        attached = self.command("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                session=False)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.command(f"{domain}.enable")
        self.command("Emulation.setDeviceMetricsOverride", {"width": self.window[0], "height": self.window[1],
                                                            "deviceScaleFactor": 1, "mobile": False})

    def close(self) -> None:
        """Ends the browser (politely, then its process group by force) and removes its profile."""
        if self.proc is not None:
            if self.proc.poll() is None and self._to_browser is not None and self._closed_reason is None:
                try:
                    self._send("Browser.close", {}, None)
                    self.proc.wait(timeout=3)
                except (BrowserError, OSError, subprocess.TimeoutExpired):
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for fd in (self._to_browser, self._from_browser):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._to_browser = self._from_browser = None
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None

    def stderr_text(self, limit: int = 4000) -> str:
        """The browser's own stderr (while it runs)."""
        try:
            return Path(self.stderr_path).read_text(errors="replace")[-limit:] if self.stderr_path else ""
        except OSError:
            return ""

    # -- protocol
    def _read_loop(self) -> None:
        buf = b""
        fd = self._from_browser
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    try:
                        msg = json.loads(raw)
                    except json.JSONDecodeError:
                        continue
                    self._dispatch(msg)
        except OSError:
            pass
        with self._lock:
            self._closed_reason = self._closed_reason or "the browser closed its DevTools pipe (it exited?)"
            self._lock.notify_all()

    def _dispatch(self, msg: dict) -> None:
        method = msg.get("method")
        if method == "Runtime.consoleAPICalled":
            p = msg["params"]
            text = " ".join(_remote_text(a) for a in p.get("args", []))
            self._note(f"console.{p.get('type', 'log')}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = msg["params"].get("exceptionDetails", {})
            desc = d.get("exception", {}).get("description") or d.get("text", "")
            self._note(f"exception: {desc} (at {d.get('url', '?')}:{d.get('lineNumber', '?')})")
        elif method == "Log.entryAdded":
            e = msg["params"].get("entry", {})
            self._note(f"log.{e.get('level', '?')} [{e.get('source', '?')}]: {e.get('text', '')}"
                       + (f" ({e['url']})" if e.get("url") else ""))
        elif method == "Inspector.detached" or method == "Target.targetCrashed":
            self._note(f"{method}: {msg.get('params')}")
        with self._lock:
            if "id" in msg:
                self._answers[msg["id"]] = msg
            elif method:
                self._events.append(msg)
            self._lock.notify_all()

    def _note(self, text: str) -> None:
        with self._lock:
            self.messages.append(f"[{time.strftime('%H:%M:%S')}] {text}")

    def _send(self, method: str, params: dict, session: str | None) -> int:
        msg_id = next(self._next_id)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        if self._to_browser is None:
            raise BrowserError("the browser is not running")
        try:
            while data:
                n = os.write(self._to_browser, data)
                data = data[n:]
        except OSError as e:
            raise BrowserError(f"cannot send {method} to the browser: {e}") from e
        return msg_id

    def command(self, method: str, params: dict | None = None, *, session: bool = True,
                timeout: float | None = None) -> dict:
        """Send a CDP command (to the page's session unless session=False) and return its result."""
        msg_id = self._send(method, params or {}, self.session if session else None)
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._lock:
            while msg_id not in self._answers:
                if self._closed_reason:
                    raise BrowserError(f"{method}: {self._closed_reason}\n{self.stderr_text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserTimeout(f"{method}: no answer from the browser in {timeout or self.timeout:.0f} s"
                                         + self._context())
                self._lock.wait(min(left, 1.0))
            answer = self._answers.pop(msg_id)
        if "error" in answer:
            raise BrowserError(f"{method} {json.dumps(params)[:300]}: {answer['error']}")
        return answer.get("result", {})

    def wait_event(self, method: str, predicate: Callable[[dict], bool] | None = None,
                   timeout: float | None = None, since: int = 0) -> dict:
        """The first event `method` (at index >= since of the events received) that matches."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._lock:
            i = since
            while True:
                while i < len(self._events):
                    ev = self._events[i]
                    i += 1
                    if ev.get("method") == method and (predicate is None or predicate(ev.get("params", {}))):
                        return ev
                if self._closed_reason:
                    raise BrowserError(f"waiting for {method}: {self._closed_reason}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserTimeout(f"no {method} in {timeout or self.timeout:.0f} s" + self._context())
                self._lock.wait(min(left, 1.0))

    def _context(self) -> str:
        return ("\n--- browser console (last lines) ---\n" + self.log_text(15) + "\n--- end ---") if self.messages else ""

    def log_text(self, limit: int = 200) -> str:
        """The page's console messages, exceptions and log entries so far (the last `limit`;
        how many came before them is said first)."""
        with self._lock:
            skipped = max(0, len(self.messages) - limit)
            return (f"({skipped} earlier lines left out)\n" if skipped else "") + "\n".join(self.messages[-limit:])

    # -- page
    def navigate(self, url: str, timeout: float | None = None) -> None:
        """Load `url` in the page and wait for its load event."""
        with self._lock:
            mark = len(self._events)
        res = self.command("Page.navigate", {"url": url}, timeout=timeout)
        if res.get("errorText"):
            raise BrowserError(f"navigating to {url}: {res['errorText']}" + self._context())
        frame = res.get("frameId")
        if res.get("loaderId"):  # a new document (not a same-document navigation)
            self.wait_event("Page.loadEventFired", timeout=timeout, since=mark)
        elif frame is None:
            raise BrowserError(f"navigating to {url}: no frame in {res}")

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited); raises
        BrowserError when it throws."""
        res = self.command("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "userGesture": True},
                           timeout=timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            desc = d.get("exception", {}).get("description") or d.get("text", "")
            raise BrowserError(f"evaluating {expression[:200]!r}: {desc}")
        return res.get("result", {}).get("value")

    def wait_for(self, condition: str, timeout: float | None = None, what: str | None = None,
                 interval: float = 0.2, abort: Callable[[], str | None] | None = None) -> Any:
        """Evaluate the JavaScript `condition` until it is truthy; return its value. On timeout
        BrowserTimeout says what was awaited, the last value (or error), and the console.
        abort(): polled too; a reason it returns ends the wait at once (BrowserError)."""
        limit = timeout or self.timeout
        deadline = time.monotonic() + limit
        last: Any = None
        while True:
            why = abort() if abort is not None else None
            if why:
                raise BrowserError(f"gave up waiting for {what or condition!r}: {why}; last value: {last!r}"
                                   + self._context())
            try:
                last = self.evaluate(condition, timeout=max(1.0, deadline - time.monotonic()))
                if last:
                    return last
            except BrowserTimeout:
                raise
            except BrowserError as e:
                last = f"error: {e}"
                if self._closed_reason:
                    raise
            if time.monotonic() >= deadline:
                raise BrowserTimeout(f"waited {limit:.0f} s for {what or condition!r}; last value: {last!r}"
                                     + self._context())
            time.sleep(interval)

    def text(self, selector: str) -> str | None:
        """textContent of the first element matching `selector` (None if there is none)."""
        return self.evaluate(f"(e => e ? e.textContent : null)(document.querySelector({json.dumps(selector)}))")

    def box(self, selector: str) -> dict:
        """The element's bounding box in CSS pixels of the viewport, after scrolling it into view."""
        r = self.evaluate(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            if (!e) return null;
            e.scrollIntoView({{block: 'center', inline: 'center'}});
            const r = e.getBoundingClientRect();
            return {{x: r.x, y: r.y, width: r.width, height: r.height}};
        }})()""")
        if not r:
            raise BrowserError(f"no element {selector!r} in the page" + self._context())
        return r

    def click(self, selector: str, x: float | None = None, y: float | None = None, button: str = "left") -> None:
        """A mouse click in the element: at its centre, or at (x, y) relative to its top left."""
        b = self.box(selector)
        if b["width"] <= 0 or b["height"] <= 0:
            raise BrowserError(f"element {selector!r} has no area: {b}")
        self.click_at(b["x"] + (b["width"] / 2 if x is None else x), b["y"] + (b["height"] / 2 if y is None else y),
                      button)

    def click_at(self, x: float, y: float, button: str = "left") -> None:
        self.command("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.command("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": button,
                                                      "clickCount": 1, "buttons": 1 if kind == "mousePressed" else 0})

    def type_key(self, key: str) -> None:
        """One real key press where the focus is: keyDown (with the text it types), keyUp. `key`:
        a character ('a', 'A', '7', '/') or a DOM key name ('Enter', 'Escape', 'ArrowUp', ...)."""
        fields, shift = key_event_fields(key)
        shift_fields = {"key": "Shift", "code": "ShiftLeft", "windowsVirtualKeyCode": 16}
        modifiers = 8 if shift else 0
        if shift:
            self.command("Input.dispatchKeyEvent", {"type": "rawKeyDown", **shift_fields, "modifiers": 8})
        down = dict(fields)
        if down.get("text"):
            down.update(type="keyDown", unmodifiedText=down["text"] if not shift else down["text"].lower())
        else:
            down.pop("text", None)
            down["type"] = "rawKeyDown"
        self.command("Input.dispatchKeyEvent", {**down, "modifiers": modifiers})
        up = {k: v for k, v in fields.items() if k not in ("text",)}
        self.command("Input.dispatchKeyEvent", {**up, "type": "keyUp", "modifiers": modifiers})
        if shift:
            self.command("Input.dispatchKeyEvent", {"type": "keyUp", **shift_fields, "modifiers": 0})

    def type_text(self, text: str) -> None:
        """Each character of `text` as a real key press (type_key)."""
        for ch in text:
            self.type_key("Enter" if ch == "\n" else ch)

    def insert_text(self, text: str) -> None:
        """Text into the focused field as an IME would put it (no key events)."""
        self.command("Input.insertText", {"text": text})

    def screenshot(self, clip: dict | None = None) -> tuple[int, int, bytes]:
        """(width, height, RGB bytes) of the viewport, or of `clip` ({x, y, width, height} in CSS
        pixels, e.g. box(selector))."""
        params: dict[str, Any] = {"format": "png", "optimizeForSpeed": True}
        if clip:
            params["clip"] = {**{k: clip[k] for k in ("x", "y", "width", "height")}, "scale": 1}
        data = base64.b64decode(self.command("Page.captureScreenshot", params, timeout=60)["data"])
        return decode_png(data)

    def screenshot_png(self) -> bytes:
        return base64.b64decode(self.command("Page.captureScreenshot", {"format": "png"}, timeout=60)["data"])


def _dup_high(fd: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_DUPFD, 10)


def _remote_text(obj: dict) -> str:
    if "value" in obj:
        v = obj["value"]
        return v if isinstance(v, str) else json.dumps(v)
    return obj.get("description") or obj.get("unserializableValue") or obj.get("type", "?")


# ----------------------------------------------------------------------------- self-test
_SELF_TEST_PAGE = """<!doctype html>
<html><head><title>self-test</title>
<style>body { margin: 0; background: #fff; }
#red { position: absolute; left: 100px; top: 50px; width: 200px; height: 100px; background: rgb(255, 0, 0); }
#blue { position: absolute; left: 300px; top: 50px; width: 200px; height: 100px; background: rgb(0, 0, 255); }
#field { position: absolute; left: 100px; top: 200px; width: 300px; }
#later { display: none; }</style></head>
<body><div id="red"></div><div id="blue"></div><input id="field">
<div id="later">ready</div>
<script>
window.keys = [];
window.clicks = 0;
document.getElementById('field').addEventListener('keydown', e => keys.push(e.key + '/' + e.code + '/' + e.keyCode));
document.getElementById('red').addEventListener('click', () => { clicks++; });
setTimeout(() => { document.getElementById('later').style.display = 'block'; console.log('shown', 42); }, 300);
setTimeout(() => { throw new Error('self-test exception'); }, 100);
</script></body></html>
"""


def self_test() -> None:
    import http.server
    import socketserver

    root = tempfile.mkdtemp(prefix="enlighten-browser-selftest-")
    Path(root, "index.html").write_text(_SELF_TEST_PAGE)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=root, **kw)

        def log_message(self, *a):
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    t0 = time.monotonic()
    try:
        with Browser(timeout=30) as b:
            started = time.monotonic() - t0
            b.navigate(url)
            assert b.evaluate("document.title") == "self-test", "title"
            assert b.evaluate("Promise.resolve(6 * 7)") == 42, "awaited promise"
            b.wait_for("getComputedStyle(document.getElementById('later')).display == 'block'", 10)
            b.click("#red")
            b.wait_for("window.clicks == 1", 5, what="the click on #red")
            b.click("#field")
            b.type_text("aZ1/")
            b.type_key("Enter")
            value = b.evaluate("document.getElementById('field').value")
            assert value == "aZ1/", f"typed value {value!r}"
            keys = b.evaluate("window.keys")
            assert "a/KeyA/65" in keys and "Enter/Enter/13" in keys, f"key events {keys}"
            w, h, rgb = b.screenshot()
            assert (w, h) == WINDOW, f"screenshot size {w}x{h}"

            def px(x, y):
                return tuple(rgb[(y * w + x) * 3:(y * w + x) * 3 + 3])

            assert px(150, 100) == (255, 0, 0), f"red at (150, 100): {px(150, 100)}"
            assert px(350, 100) == (0, 0, 255), f"blue at (350, 100): {px(350, 100)}"
            assert px(5, 5) == (255, 255, 255), f"white at (5, 5): {px(5, 5)}"
            cw, ch, crgb = b.screenshot(b.box("#blue"))
            assert (cw, ch) == (200, 100) and tuple(crgb[:3]) == (0, 0, 255), f"clip {cw}x{ch} {tuple(crgb[:3])}"
            try:
                b.wait_for("false", 0.5)
                raise AssertionError("wait_for(false) did not time out")
            except BrowserTimeout:
                pass
            try:
                b.evaluate("nosuchname.x")
                raise AssertionError("a throwing expression did not raise")
            except BrowserError as e:
                assert "nosuchname" in str(e), str(e)
            log = b.log_text()
            assert "console.log: shown 42" in log, log
            assert "self-test exception" in log, log
            pid = b.proc.pid
        # killed; its children (zombies until init reaps them) gone within seconds
        for _ in range(50):
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the browser's process group is still alive 5 s after close()")
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"browser self-test ok ({time.monotonic() - t0:.1f} s, browser start {started:.1f} s)")


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    else:
        print(__doc__)
        sys.exit(2)
