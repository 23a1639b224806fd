#!/usr/bin/env python3
"""Load test for a running Enlighten management API (issue 16, "The API under abuse").

Usage:
    tests/tools/api_load.py SOCKET [--clients 200] [--slow 50] [--duration 5]
                            [--probe-interval 0.1] [--max-latency 1.0] [--verbose]

    SOCKET    the VM's --api-socket path (Python 3 standard library only; no VM changes)

For --duration seconds it runs, all at once:
  * --clients clients (threads), each sending GET /api/v1/vm.info on a fresh connection
    ("Connection: close") again and again; every request must get either a complete answer
    (200 with a JSON body) or a clean refusal (a complete 503 with a JSON {"error": ...}),
    never a reset, an EOF or a timeout without one;
  * --slow slow clients holding connections open: half send a request line a byte per
    second (slowloris), half connect and send nothing; when the server closes one (a 408 or
    the idle timeout, as it should) it reconnects at once, so the connections stay held;
  * one probe on a connection of its own (keep-alive, opened before the load starts and
    reopened when the server ends it) asking GET /api/v1/vm.info every --probe-interval
    seconds and timing each answer.

It prints one summary line and exits 0 when every probe answer was a 200 within
--max-latency seconds and every client request was answered or cleanly refused; 1 when not
(the line says what failed; --verbose prints each failure); 2 when it could not start (no
socket, nobody listening).

Example (a VM started with --api-socket /tmp/vm.sock):
    tests/tools/api_load.py /tmp/vm.sock
    api_load: PASS clients=200 requests=41234 ok=41234 refused=0 failed=0 slow=50 slow_reconnects=47
        probe n=50 p50=3.1ms p99=25.0ms max=31.2ms over=0 failed=0 (limit 1000ms)
"""

import argparse
import json
import multiprocessing
import socket
import struct
import sys
import threading
import time

INFO = b"GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
PROBE = b"GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\n\r\n"
SLOW_LINE = b"GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 4096


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.ok = 0
        self.refused = 0
        self.failed = 0
        self.failures = []
        self.slow_reconnects = 0

    def failure(self, what):
        with self.lock:
            self.failed += 1
            if len(self.failures) < 20:
                self.failures.append(what)


def connect(path, timeout):
    """A blocking connect, bounded by SO_SNDTIMEO: with a timeout set, Python connects
    non-blocking, and a Unix socket then fails at once (EAGAIN) while the server's listen
    backlog is full instead of waiting for its turn as a real client would."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sec = int(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", sec, int((timeout - sec) * 1e6)))
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    s.settimeout(timeout)
    return s


def parse_head(head):
    """Status and headers (lower-case names) of a response head, or (None, {})."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return None, {}
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(parts[1]), headers


def read_response(sock, buf):
    """Reads one response from sock (buf: bytes already read). Returns (status, headers, body, rest)
    or raises ValueError (incomplete, malformed) / OSError."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("EOF before a complete response head (%d bytes)" % len(buf))
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    if status is None:
        raise ValueError("not an HTTP response: %r" % head[:80])
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("EOF after %d of %d body bytes" % (len(rest), length))
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def json_ok(body, want_error):
    try:
        j = json.loads(body)
    except ValueError:
        return False
    if want_error:
        return isinstance(j, dict) and isinstance(j.get("error"), str)
    return isinstance(j, dict)


def client(path, stop, stats, timeout):
    while not stop.is_set():
        with stats.lock:
            stats.requests += 1
        s = None
        try:
            s = connect(path, timeout)
            try:
                s.sendall(INFO)
            except OSError:
                pass  # refused at once: the answer is still there to read
            status, _, body, _ = read_response(s, b"")
            if status == 200 and json_ok(body, False):
                with stats.lock:
                    stats.ok += 1
            elif status == 503 and json_ok(body, True):
                with stats.lock:
                    stats.refused += 1
            else:
                stats.failure("client: status %d, body %r" % (status, body[:120]))
        except (OSError, ValueError) as e:
            stats.failure("client: %s: %s" % (type(e).__name__, e))
        finally:
            if s is not None:
                s.close()


def slow_client(path, stop, stats, dribble):
    """Holds a connection: a byte a second (dribble) or nothing; reconnects when closed."""
    while not stop.is_set():
        try:
            s = connect(path, 1.0)
        except OSError:
            time.sleep(0.1)
            continue
        sent = 0
        try:
            while not stop.is_set():
                if dribble and sent < len(SLOW_LINE):
                    s.sendall(SLOW_LINE[sent:sent + 1])
                    sent += 1
                try:
                    if not s.recv(4096):
                        break  # closed by the server: its deadline, as it should
                except socket.timeout:
                    pass
        except OSError:
            pass
        finally:
            s.close()
        with stats.lock:
            stats.slow_reconnects += 1


def probe(path, conn, duration, interval, limit, timeout):
    """In a process of its own (no GIL shared with the load): times vm.info on a keep-alive
    connection and sends the results back over `conn`."""
    times, failures = [], []
    over = failed = 0
    sock = None
    buf = b""
    reused = False
    try:
        sock = connect(path, timeout)
    except OSError as e:
        failures.append("probe: connect: %s" % e)
    conn.send("ready")
    end = time.monotonic() + duration
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            if sock is None:
                sock = connect(path, timeout)
                buf = b""
                reused = False
            sock.sendall(PROBE)
            status, headers, body, buf = read_response(sock, buf)
            took = time.monotonic() - t0
            times.append(took)
            if took > limit:
                over += 1
                failures.append("probe: vm.info took %.0f ms" % (took * 1e3))
            if status != 200 or not json_ok(body, False):
                failed += 1
                failures.append("probe: status %d, body %r" % (status, body[:120]))
            reused = True
            if headers.get("connection", "").lower() == "close":
                sock.close()
                sock = None
        except (OSError, ValueError) as e:
            if sock is not None:
                sock.close()
                sock = None
            # A kept-alive connection the server had just closed (its idle timeout): ask
            # again on a new one.
            if reused and not buf and ("EOF before" in str(e) and "(0 bytes)" in str(e)
                                       or isinstance(e, (BrokenPipeError, ConnectionResetError))):
                reused = False
                continue
            failed += 1
            times.append(time.monotonic() - t0)
            failures.append("probe: %s: %s" % (type(e).__name__, e))
        time.sleep(interval)
    if sock is not None:
        sock.close()
    conn.send({"times": times, "over": over, "failed": failed, "failures": failures[:20]})


def percentile(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("socket")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--slow", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--probe-interval", type=float, default=0.1)
    ap.add_argument("--max-latency", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=10.0, help="a client's wait for an answer (s)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    try:
        connect(args.socket, 2.0).close()
    except OSError as e:
        print("api_load: cannot connect to %s: %s" % (args.socket, e), file=sys.stderr)
        return 2

    # The probe first, in its own process, on a connection made before the load starts.
    here, there = multiprocessing.Pipe()
    prober = multiprocessing.get_context("fork").Process(
        target=probe, args=(args.socket, there, args.duration, args.probe_interval, args.max_latency, args.timeout))
    prober.start()
    here.recv()  # connected

    threading.stack_size(256 * 1024)
    stats = Stats()
    stop = threading.Event()
    threads = []
    for i in range(args.slow):
        threads.append(threading.Thread(target=slow_client, args=(args.socket, stop, stats, i % 2 == 0)))
    for _ in range(args.clients):
        threads.append(threading.Thread(target=client, args=(args.socket, stop, stats, args.timeout)))
    for t in threads:
        t.start()
    result = here.recv()  # after --duration
    prober.join()
    stop.set()
    for t in threads:
        t.join()

    times = result["times"]
    ok = stats.failed == 0 and result["over"] == 0 and result["failed"] == 0 and len(times) > 0
    print("api_load: %s clients=%d requests=%d ok=%d refused=%d failed=%d slow=%d slow_reconnects=%d "
          "probe n=%d p50=%.1fms p99=%.1fms max=%.1fms over=%d failed=%d (limit %.0fms)" % (
              "PASS" if ok else "FAIL", args.clients, stats.requests, stats.ok, stats.refused, stats.failed,
              args.slow, stats.slow_reconnects, len(times), percentile(times, 50) * 1e3,
              percentile(times, 99) * 1e3, max(times, default=0.0) * 1e3, result["over"],
              result["failed"], args.max_latency * 1e3))
    failures = result["failures"] + stats.failures
    if not ok:
        for f in failures[:20 if args.verbose else 5]:
            print("  " + f)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
