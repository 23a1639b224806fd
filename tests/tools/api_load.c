/* Load test for a running Enlighten management API (issue 16, "The API under abuse").
 *
 * C11 and pthreads, one file, no other dependency: it runs where there is no Python, as in
 * the end-to-end tests' test host (busybox only), built static when the session runs
 * (tests/e2e/test_services.py, run "api-load"). Elsewhere build it with
 *
 *     gcc -std=c11 -O2 -Wall -Wextra -Werror -pthread -o api_load tests/tools/api_load.c
 *
 * Usage:
 *     api_load SOCKET [--clients 200] [--slow 50] [--duration 5] [--probe-interval 0.1]
 *                     [--max-latency 1.0] [--timeout 10] [--idle] [--verbose]
 *
 *     SOCKET    the VM's --api-socket path
 *
 * For --duration seconds it runs, all at once:
 *   * --clients clients (threads), each sending GET /api/v1/vm.info on a fresh connection
 *     ("Connection: close") again and again; every request must get either a complete
 *     answer (200 with a JSON object) or a clean refusal (a complete 503 with a JSON
 *     {"error": "..."}), never a reset, an EOF or a timeout (--timeout) without one;
 *   * --slow slow clients holding connections open: half send a request line a byte per
 *     second (slowloris), half connect and send nothing; when the server closes one (a 408
 *     or the idle timeout, as it should) it reconnects at once, so the connections stay held;
 *   * one probe on a connection of its own (keep-alive, opened before the load starts and
 *     reopened when the server ends it) asking GET /api/v1/vm.info every --probe-interval
 *     seconds and timing each answer.
 *
 * --idle runs the clients and the slow clients at SCHED_IDLE: they then get only the CPU time
 * that the VMM and the probe leave, so that on a small machine (the test host's 2 vCPUs) the
 * probe measures the server, not the load tool's own threads crowding out the VMM. The
 * server still has every client's connection and request to deal with.
 *
 * It prints one summary line and exits 0 when every probe answer was a 200 within
 * --max-latency seconds and every client request was answered or cleanly refused; 1 when
 * not (the line says what failed, and up to 5 failures follow, 20 with --verbose); 2 when it
 * could not start (bad arguments, no socket, nobody listening, no threads).
 *
 * Example (a VM started with --api-socket /tmp/vm.sock):
 *     api_load /tmp/vm.sock
 *     api_load: PASS clients=200 requests=41234 ok=41234 refused=0 failed=0 slow=50 slow_reconnects=47
 *         probe n=50 p50=3.1ms p99=25.0ms max=31.2ms over=0 failed=0 (limit 1000ms)
 *
 * Without a VM, tests/unit/api_load_test.cpp's disabled test ServeForTheLoadTool serves a
 * fake VM on a socket for it. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char INFO[] = "GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
static const char PROBE[] = "GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\n\r\n";
static const char SLOW_PREFIX[] = "GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
enum { SLOW_PAD = 4096, MAX_FAILURES = 20, MAX_RESPONSE = 16 << 20 };

static struct {
    const char *path;
    long clients, slow;
    double duration, interval, limit, timeout;
    bool idle, verbose;
} opt = {NULL, 200, 50, 5.0, 0.1, 1.0, 10.0, false, false};

static char slow_line[sizeof SLOW_PREFIX - 1 + SLOW_PAD];
static atomic_bool stop;

/* ------------------------------------------------------------------------------ helpers */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec t = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

static struct timeval timeval_of(double s) {
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    if (tv.tv_sec == 0 && tv.tv_usec == 0) tv.tv_usec = 1; /* 0 would mean "no timeout" */
    return tv;
}

/* A blocking connect bounded by SO_SNDTIMEO (a full listen backlog makes it wait for its
 * turn, as a real client would, rather than fail at once); reads are bounded by
 * SO_RCVTIMEO. Returns the socket, or -1 with errno set. */
static int connect_to(const char *path, double timeout) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = timeval_of(timeout);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static const char *error_name(int e) {
    return e == EAGAIN ? "timed out" : strerror(e);
}

/* Sends all of data; false with errno set on an error (EPIPE without a signal). */
static bool send_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data += n;
        len -= (size_t)n;
    }
    return true;
}

/* Up to 120 bytes of s, printable (others as \xNN), for messages. */
static void snip(char *out, size_t outlen, const char *s, size_t len) {
    size_t o = 0;
    for (size_t i = 0; i < len && i < 120 && o + 5 < outlen; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else {
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
        }
    }
    out[o] = '\0';
}

/* ------------------------------------------------------------------------------ JSON */
/* A syntax check (RFC 8259), enough to tell a complete JSON answer from a cut or garbled
 * one. `error` (top level only): set when the object has a key "error" with a string value. */

static const char *ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
    return p;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool is_hex(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static const char *jstring(const char *p, const char *e) {
    if (p >= e || *p != '"') return NULL;
    for (++p; p < e; ++p) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (++p >= e) return NULL;
            if (*p == 'u') {
                if (e - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) || !is_hex(p[3]) || !is_hex(p[4])) return NULL;
                p += 4;
            } else if (!strchr("\"\\/bfnrt", *p)) {
                return NULL;
            }
        }
    }
    return NULL;
}

static const char *jnumber(const char *p, const char *e) {
    if (p < e && *p == '-') ++p;
    if (p >= e || !is_digit(*p)) return NULL;
    if (*p == '0') {
        ++p;
    } else {
        while (p < e && is_digit(*p)) ++p;
    }
    if (p < e && *p == '.') {
        if (++p >= e || !is_digit(*p)) return NULL;
        while (p < e && is_digit(*p)) ++p;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        ++p;
        if (p < e && (*p == '+' || *p == '-')) ++p;
        if (p >= e || !is_digit(*p)) return NULL;
        while (p < e && is_digit(*p)) ++p;
    }
    return p;
}

static const char *jvalue(const char *p, const char *e, int depth, bool *error);

static const char *jobject(const char *p, const char *e, int depth, bool *error) {
    p = ws(p + 1, e);
    if (p < e && *p == '}') return p + 1;
    for (;;) {
        const char *key = p;
        p = jstring(p, e);
        if (!p) return NULL;
        bool is_error = error && p - key == 7 && memcmp(key, "\"error\"", 7) == 0;
        p = ws(p, e);
        if (p >= e || *p != ':') return NULL;
        p = ws(p + 1, e);
        if (is_error && p < e && *p == '"') *error = true;
        p = jvalue(p, e, depth + 1, NULL);
        if (!p) return NULL;
        p = ws(p, e);
        if (p < e && *p == '}') return p + 1;
        if (p >= e || *p != ',') return NULL;
        p = ws(p + 1, e);
    }
}

static const char *jarray(const char *p, const char *e, int depth) {
    p = ws(p + 1, e);
    if (p < e && *p == ']') return p + 1;
    for (;;) {
        p = jvalue(p, e, depth + 1, NULL);
        if (!p) return NULL;
        p = ws(p, e);
        if (p < e && *p == ']') return p + 1;
        if (p >= e || *p != ',') return NULL;
        p = ws(p + 1, e);
    }
}

static const char *jvalue(const char *p, const char *e, int depth, bool *error) {
    if (p >= e || depth > 64) return NULL;
    switch (*p) {
        case '{': return jobject(p, e, depth, error);
        case '[': return jarray(p, e, depth);
        case '"': return jstring(p, e);
        case 't': return e - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
        case 'f': return e - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
        case 'n': return e - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
        default: return jnumber(p, e);
    }
}

/* A JSON object; with want_error, one with an "error" string. */
static bool json_ok(const char *body, size_t len, bool want_error) {
    const char *e = body + len;
    const char *p = ws(body, e);
    if (p >= e || *p != '{') return false;
    bool error = false;
    p = jvalue(p, e, 0, &error);
    return p && ws(p, e) == e && (!want_error || error);
}

/* ------------------------------------------------------------------------------ HTTP */

struct buf {
    char *p;
    size_t len, cap;
};

struct response {
    int status;
    size_t head_len; /* with the blank line */
    size_t body_len;
    bool close;      /* Connection: close */
};

enum read_result { READ_OK, READ_ERRNO, READ_EOF_EMPTY, READ_BAD };

/* Reads more into b; returns bytes read (0: EOF) or -1 (errno). */
static ssize_t fill(int fd, struct buf *b) {
    if (b->cap - b->len < 4096) {
        size_t cap = b->cap ? b->cap * 2 : 65536;
        if (cap > MAX_RESPONSE) {
            errno = EMSGSIZE;
            return -1;
        }
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    for (;;) {
        ssize_t n = recv(fd, b->p + b->len, b->cap - b->len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n > 0) b->len += (size_t)n;
        return n;
    }
}

static bool header_is(const char *line, size_t len, const char *name, const char **value, size_t *vlen) {
    size_t n = strlen(name);
    if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0) return false;
    const char *v = line + n + 1, *e = line + len;
    while (v < e && (*v == ' ' || *v == '\t')) ++v;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) --e;
    *value = v;
    *vlen = (size_t)(e - v);
    return true;
}

/* Reads one response into b (which may hold bytes already read; the response starts at
 * b->p). READ_EOF_EMPTY: EOF before any byte of it. On READ_ERRNO, errno says why; on
 * READ_BAD (and the EOFs), `why` does. */
static enum read_result read_response(int fd, struct buf *b, struct response *r, char *why, size_t whylen) {
    const char *end;
    while (!(end = b->len ? memmem(b->p, b->len, "\r\n\r\n", 4) : NULL)) {
        ssize_t n = fill(fd, b);
        if (n < 0) return READ_ERRNO;
        if (n == 0) {
            snprintf(why, whylen, "EOF before a complete response head (%zu bytes)", b->len);
            return b->len == 0 ? READ_EOF_EMPTY : READ_BAD;
        }
    }
    r->head_len = (size_t)(end - b->p) + 4;
    r->close = false;
    const char *line_end = memmem(b->p, r->head_len, "\r\n", 2);
    const char *s = b->p;
    if (line_end - s < 12 || memcmp(s, "HTTP/1.", 7) != 0 || s[8] != ' ' || !is_digit(s[9]) ||
        !is_digit(s[10]) || !is_digit(s[11]) || (line_end - s > 12 && s[12] != ' ')) {
        char shown[512];
        snip(shown, sizeof shown, s, (size_t)(line_end - s));
        snprintf(why, whylen, "not an HTTP response: '%s'", shown);
        return READ_BAD;
    }
    r->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    size_t length = 0;
    for (const char *l = line_end + 2; l < end; ) {
        const char *le = memmem(l, (size_t)(end + 2 - l), "\r\n", 2);
        const char *v;
        size_t vlen;
        if (header_is(l, (size_t)(le - l), "content-length", &v, &vlen)) {
            length = 0;
            if (vlen == 0 || vlen > 9) {
                snprintf(why, whylen, "bad Content-Length");
                return READ_BAD;
            }
            for (size_t i = 0; i < vlen; ++i) {
                if (!is_digit(v[i])) {
                    snprintf(why, whylen, "bad Content-Length");
                    return READ_BAD;
                }
                length = length * 10 + (size_t)(v[i] - '0');
            }
        } else if (header_is(l, (size_t)(le - l), "connection", &v, &vlen)) {
            r->close = vlen == 5 && strncasecmp(v, "close", 5) == 0;
        }
        l = le + 2;
    }
    if (length > MAX_RESPONSE) {
        snprintf(why, whylen, "Content-Length %zu too large", length);
        return READ_BAD;
    }
    while (b->len - r->head_len < length) {
        ssize_t n = fill(fd, b);
        if (n < 0) return READ_ERRNO;
        if (n == 0) {
            snprintf(why, whylen, "EOF after %zu of %zu body bytes", b->len - r->head_len, length);
            return READ_BAD;
        }
    }
    r->body_len = length;
    return READ_OK;
}

/* Drops the response at the start of b, keeping what came after it. */
static void consume(struct buf *b, const struct response *r) {
    size_t used = r->head_len + r->body_len;
    memmove(b->p, b->p + used, b->len - used);
    b->len -= used;
}

/* ------------------------------------------------------------------------------ the load */

static struct {
    atomic_long requests, ok, refused, failed, slow_reconnects;
    pthread_mutex_t mu;
    int nfailures;
    char failures[MAX_FAILURES][1024];
} stats = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void failure(const char *fmt, ...) {
    atomic_fetch_add(&stats.failed, 1);
    pthread_mutex_lock(&stats.mu);
    if (stats.nfailures < MAX_FAILURES) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(stats.failures[stats.nfailures++], sizeof stats.failures[0], fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&stats.mu);
}

static void load_thread_start(void) {
    if (opt.idle) {
        struct sched_param sp = {0};
        pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
    }
}

static void *client(void *unused) {
    (void)unused;
    load_thread_start();
    struct buf b = {0};
    char why[1024], shown[512];
    while (!atomic_load(&stop)) {
        atomic_fetch_add(&stats.requests, 1);
        int fd = connect_to(opt.path, opt.timeout);
        if (fd < 0) {
            failure("client: connect: %s", error_name(errno));
            sleep_s(0.01); /* no busy loop if the server is gone */
            continue;
        }
        /* Refused at once, a write may fail (EPIPE): the answer is still there to read. */
        (void)send_all(fd, INFO, sizeof INFO - 1);
        b.len = 0;
        struct response r;
        enum read_result rr = read_response(fd, &b, &r, why, sizeof why);
        if (rr == READ_OK) {
            const char *body = b.p + r.head_len;
            if (r.status == 200 && json_ok(body, r.body_len, false)) {
                atomic_fetch_add(&stats.ok, 1);
            } else if (r.status == 503 && json_ok(body, r.body_len, true)) {
                atomic_fetch_add(&stats.refused, 1);
            } else {
                snip(shown, sizeof shown, body, r.body_len);
                failure("client: status %d, body '%s'", r.status, shown);
            }
        } else if (rr == READ_ERRNO) {
            failure("client: recv: %s", error_name(errno));
        } else {
            failure("client: %s", why);
        }
        close(fd);
    }
    free(b.p);
    return NULL;
}

/* Holds a connection: a byte a second (dribble) or nothing; reconnects when closed. */
static void *slow_client(void *arg) {
    const bool dribble = (intptr_t)arg != 0;
    load_thread_start();
    while (!atomic_load(&stop)) {
        int fd = connect_to(opt.path, 1.0);
        if (fd < 0) {
            sleep_s(0.1);
            continue;
        }
        size_t sent = 0;
        while (!atomic_load(&stop)) {
            if (dribble && sent < sizeof slow_line) {
                if (send(fd, slow_line + sent, 1, MSG_NOSIGNAL) != 1) break;
                ++sent;
            }
            char tmp[4096];
            ssize_t n = recv(fd, tmp, sizeof tmp, 0); /* at most a second (SO_RCVTIMEO) */
            if (n == 0) break;                        /* closed by the server: its deadline, as it should */
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
        }
        close(fd);
        atomic_fetch_add(&stats.slow_reconnects, 1);
    }
    return NULL;
}

/* ------------------------------------------------------------------------------ the probe */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready;
    double *times;
    size_t n, cap;
    long over, failed;
    int nfailures;
    char failures[MAX_FAILURES][1024];
} probe_state = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void probe_time(double t) {
    if (probe_state.n == probe_state.cap) {
        size_t cap = probe_state.cap ? probe_state.cap * 2 : 1024;
        double *p = realloc(probe_state.times, cap * sizeof *p);
        if (!p) return;
        probe_state.times = p;
        probe_state.cap = cap;
    }
    probe_state.times[probe_state.n++] = t;
}

static void probe_failure(const char *fmt, ...) {
    if (probe_state.nfailures >= MAX_FAILURES) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(probe_state.failures[probe_state.nfailures++], sizeof probe_state.failures[0], fmt, ap);
    va_end(ap);
}

/* Times vm.info on a keep-alive connection, opened before the load starts. */
static void *probe(void *unused) {
    (void)unused;
    struct buf b = {0};
    char why[1024], shown[512];
    bool reused = false;
    int fd = connect_to(opt.path, opt.timeout);
    if (fd < 0) probe_failure("probe: connect: %s", error_name(errno));
    pthread_mutex_lock(&probe_state.mu);
    probe_state.ready = true;
    pthread_cond_signal(&probe_state.cv);
    pthread_mutex_unlock(&probe_state.mu);
    const double end = now() + opt.duration;
    while (now() < end) {
        const double t0 = now();
        int err = 0;
        enum read_result rr = READ_OK;
        bool had_bytes = b.len > 0;
        struct response r;
        if (fd < 0) {
            fd = connect_to(opt.path, opt.timeout);
            b.len = 0;
            had_bytes = false;
            reused = false;
            if (fd < 0) {
                err = errno;
                snprintf(why, sizeof why, "connect: %s", error_name(err));
                rr = READ_ERRNO;
            }
        }
        if (fd >= 0) {
            if (!send_all(fd, PROBE, sizeof PROBE - 1)) {
                err = errno;
                snprintf(why, sizeof why, "send: %s", error_name(err));
                rr = READ_ERRNO;
            } else {
                rr = read_response(fd, &b, &r, why, sizeof why);
                if (rr == READ_ERRNO) {
                    err = errno;
                    snprintf(why, sizeof why, "recv: %s", error_name(err));
                }
            }
        }
        const double took = now() - t0;
        if (rr == READ_OK) {
            probe_time(took);
            if (took > opt.limit) {
                ++probe_state.over;
                probe_failure("probe: vm.info took %.0f ms", took * 1e3);
            }
            if (r.status != 200 || !json_ok(b.p + r.head_len, r.body_len, false)) {
                ++probe_state.failed;
                snip(shown, sizeof shown, b.p + r.head_len, r.body_len);
                probe_failure("probe: status %d, body '%s'", r.status, shown);
            }
            consume(&b, &r);
            reused = true;
            if (r.close) {
                close(fd);
                fd = -1;
            }
        } else {
            if (fd >= 0) close(fd);
            fd = -1;
            /* A kept-alive connection the server had just closed (its idle timeout or its
             * request cap): ask again on a new one. */
            if (reused && !had_bytes &&
                (rr == READ_EOF_EMPTY || (rr == READ_ERRNO && (err == EPIPE || err == ECONNRESET)))) {
                reused = false;
                continue;
            }
            ++probe_state.failed;
            probe_time(took);
            probe_failure("probe: %s", why);
        }
        sleep_s(opt.interval);
    }
    if (fd >= 0) close(fd);
    free(b.p);
    return NULL;
}

/* ------------------------------------------------------------------------------ main */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The value at rank round(p% of n-1) (ties to even, as the Python tool did), sorted v. */
static double percentile(const double *v, size_t n, double p) {
    if (n == 0) return 0.0;
    double x = p / 100.0 * (double)(n - 1);
    size_t i = (size_t)x;
    double frac = x - (double)i;
    if (frac > 0.5 || (frac == 0.5 && i % 2 == 1)) ++i;
    return v[i < n - 1 ? i : n - 1];
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: api_load SOCKET [--clients N] [--slow N] [--duration S] [--probe-interval S]\n"
            "                       [--max-latency S] [--timeout S] [--idle] [--verbose]\n"
            "  defaults: --clients 200 --slow 50 --duration 5 --probe-interval 0.1 --max-latency 1.0\n"
            "            --timeout 10 (a client's wait for an answer); --idle: the load at SCHED_IDLE\n"
            "  exit 0: pass; 1: failures (the summary line says which); 2: could not start\n");
}

static bool parse_long(const char *s, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > 100000) return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0) || v > 1e6) return false;
    *out = v;
    return true;
}

static bool parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; ++i) {
        char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--idle") == 0) {
            opt.idle = true;
            continue;
        }
        if (strcmp(a, "--verbose") == 0) {
            opt.verbose = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (opt.path) return false;
            opt.path = a;
            continue;
        }
        const char *value;
        char name[32];
        const char *eq = strchr(a, '=');
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a), a);
            value = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
            if (++i >= argc) return false;
            value = argv[i];
        }
        bool ok;
        if (strcmp(name, "--clients") == 0) ok = parse_long(value, &opt.clients);
        else if (strcmp(name, "--slow") == 0) ok = parse_long(value, &opt.slow);
        else if (strcmp(name, "--duration") == 0) ok = parse_double(value, &opt.duration) && opt.duration > 0;
        else if (strcmp(name, "--probe-interval") == 0) ok = parse_double(value, &opt.interval);
        else if (strcmp(name, "--max-latency") == 0) ok = parse_double(value, &opt.limit) && opt.limit > 0;
        else if (strcmp(name, "--timeout") == 0) ok = parse_double(value, &opt.timeout) && opt.timeout > 0;
        else ok = false;
        if (!ok) {
            fprintf(stderr, "api_load: bad option %s %s\n", name, value);
            return false;
        }
    }
    return opt.path != NULL;
}

int main(int argc, char **argv) {
    if (!parse_args(argc, argv)) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    memcpy(slow_line, SLOW_PREFIX, sizeof SLOW_PREFIX - 1);
    memset(slow_line + sizeof SLOW_PREFIX - 1, 'a', SLOW_PAD);

    int fd = connect_to(opt.path, 2.0);
    if (fd < 0) {
        fprintf(stderr, "api_load: cannot connect to %s: %s\n", opt.path, error_name(errno));
        return 2;
    }
    close(fd);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);

    /* The probe first, on a connection made before the load starts. */
    pthread_t prober;
    if (pthread_create(&prober, &attr, probe, NULL) != 0) {
        fprintf(stderr, "api_load: cannot start the probe thread\n");
        return 2;
    }
    pthread_mutex_lock(&probe_state.mu);
    while (!probe_state.ready) pthread_cond_wait(&probe_state.cv, &probe_state.mu);
    pthread_mutex_unlock(&probe_state.mu);

    const size_t total = (size_t)(opt.slow + opt.clients);
    pthread_t *threads = calloc(total ? total : 1, sizeof *threads);
    size_t started = 0;
    int rc_start = 0;
    for (; threads && started < total; ++started) {
        bool slow = started < (size_t)opt.slow;
        int e = slow ? pthread_create(&threads[started], &attr, slow_client, (void *)(intptr_t)(started % 2 == 0))
                     : pthread_create(&threads[started], &attr, client, NULL);
        if (e != 0) {
            fprintf(stderr, "api_load: cannot start thread %zu of %zu: %s\n", started + 1, total, strerror(e));
            rc_start = 2;
            break;
        }
    }
    if (!threads) {
        fprintf(stderr, "api_load: out of memory\n");
        rc_start = 2;
    }
    pthread_join(prober, NULL); /* after --duration */
    atomic_store(&stop, true);
    for (size_t i = 0; i < started; ++i) pthread_join(threads[i], NULL);
    free(threads);
    if (rc_start) return rc_start;

    qsort(probe_state.times, probe_state.n, sizeof(double), cmp_double);
    const size_t n = probe_state.n;
    const long failed = atomic_load(&stats.failed);
    const bool ok = failed == 0 && probe_state.over == 0 && probe_state.failed == 0 && n > 0;
    printf("api_load: %s clients=%ld requests=%ld ok=%ld refused=%ld failed=%ld slow=%ld slow_reconnects=%ld "
           "probe n=%zu p50=%.1fms p99=%.1fms max=%.1fms over=%ld failed=%ld (limit %.0fms)\n",
           ok ? "PASS" : "FAIL", opt.clients, atomic_load(&stats.requests), atomic_load(&stats.ok),
           atomic_load(&stats.refused), failed, opt.slow, atomic_load(&stats.slow_reconnects), n,
           percentile(probe_state.times, n, 50) * 1e3, percentile(probe_state.times, n, 99) * 1e3,
           (n ? probe_state.times[n - 1] : 0.0) * 1e3, probe_state.over, probe_state.failed, opt.limit * 1e3);
    if (!ok) {
        int shown = 0, limit = opt.verbose ? MAX_FAILURES : 5;
        for (int i = 0; i < probe_state.nfailures && shown < limit; ++i, ++shown) printf("  %s\n", probe_state.failures[i]);
        for (int i = 0; i < stats.nfailures && shown < limit; ++i, ++shown) printf("  %s\n", stats.failures[i]);
    }
    fflush(stdout);
    return ok ? 0 : 1;
}
