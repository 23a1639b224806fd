// Both ends of bench/vsock.py's streams (built static with the machine's gcc):
//
//   vsock_peer serve PORT
//       in the guest: an AF_VSOCK listener; each connection (a child process) reads one
//       command line:  SINK          read to EOF, then answer "GOT <bytes>\n"
//                      SOURCE <n>    write n bytes, shut down writing, wait for EOF
//                      PING          answer "PONG\n"
//   vsock_peer run TARGET WORKLOAD STREAMS MIB
//       in the test host. TARGET: vsock:CID:PORT (QEMU's vhost-vsock) or unix:PATH:PORT
//       (Enlighten's hybrid socket: "CONNECT PORT\n", then "OK <n>\n"). WORKLOAD:
//         tx       STREAMS connections at once, each sends MIB MiB to the guest (SINK)
//         rx       the same, the guest sends (SOURCE)
//         connect  STREAMS connections one after another, each a PING round trip
//       prints "RESULT bytes=<n> seconds=<s> mib_per_s=<x>" (tx, rx) or
//       "RESULT connects=<n> seconds=<s> connect_ms=<mean>" (connect); exit 1 on an error.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

enum { kChunk = 64 * 1024 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int write_all(int fd, const void* p, size_t n) {
    const char* c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

// One line (without the newline) into buf; -1 on EOF or error before the newline.
static int read_line(int fd, char* buf, size_t size) {
    size_t n = 0;
    while (n + 1 < size) {
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        if (ch == '\n') break;
        buf[n++] = ch;
    }
    buf[n] = 0;
    return 0;
}

static uint64_t drain(int fd) {
    static __thread char buf[kChunk];
    uint64_t total = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return total;
        total += (uint64_t)r;
    }
}

static int source(int fd, uint64_t bytes) {
    static __thread char buf[kChunk];
    memset(buf, 0x5a, sizeof buf);
    while (bytes) {
        size_t n = bytes < sizeof buf ? (size_t)bytes : sizeof buf;
        if (write_all(fd, buf, n) < 0) return -1;
        bytes -= n;
    }
    return 0;
}

static void serve_one(int fd) {
    char line[128];
    if (read_line(fd, line, sizeof line) < 0) return;
    if (strcmp(line, "SINK") == 0) {
        char reply[64];
        int n = snprintf(reply, sizeof reply, "GOT %llu\n", (unsigned long long)drain(fd));
        write_all(fd, reply, (size_t)n);
    } else if (strncmp(line, "SOURCE ", 7) == 0) {
        if (source(fd, strtoull(line + 7, NULL, 10)) == 0) {
            shutdown(fd, SHUT_WR);
            drain(fd);
        }
    } else if (strcmp(line, "PING") == 0) {
        write_all(fd, "PONG\n", 5);
    }
}

static int serve(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY};
    if (s < 0 || bind(s, (struct sockaddr*)&a, sizeof a) < 0 || listen(s, 64) < 0) {
        perror("vsock_peer serve");
        return 1;
    }
    signal(SIGCHLD, SIG_IGN);  // no zombies
    printf("VSOCK-PEER-LISTENING %u\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR) continue;
            perror("accept");
            return 1;
        }
        if (fork() == 0) {
            close(s);
            serve_one(c);
            close(c);
            _exit(0);
        }
        close(c);
    }
}

// ---- the test host's side

static char g_kind[16], g_path[100];
static unsigned g_cid, g_port;

static int dial(void) {
    if (strcmp(g_kind, "vsock") == 0) {
        int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = g_port, .svm_cid = g_cid};
        if (fd < 0 || connect(fd, (struct sockaddr*)&a, sizeof a) < 0) {
            perror("connect vsock");
            if (fd >= 0) close(fd);
            return -1;
        }
        return fd;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", g_path);
    if (fd < 0 || connect(fd, (struct sockaddr*)&a, sizeof a) < 0) {
        perror("connect unix");
        if (fd >= 0) close(fd);
        return -1;
    }
    char line[64];
    int n = snprintf(line, sizeof line, "CONNECT %u\n", g_port);
    if (write_all(fd, line, (size_t)n) < 0 || read_line(fd, line, sizeof line) < 0 || strncmp(line, "OK ", 3) != 0) {
        fprintf(stderr, "CONNECT %u: no OK\n", g_port);
        close(fd);
        return -1;
    }
    return fd;
}

struct Stream {
    int rx;
    uint64_t bytes;
    uint64_t moved;
    int failed;
};

static void* stream_main(void* arg) {
    struct Stream* st = arg;
    int fd = dial();
    if (fd < 0) {
        st->failed = 1;
        return NULL;
    }
    char line[64];
    if (st->rx) {
        int n = snprintf(line, sizeof line, "SOURCE %llu\n", (unsigned long long)st->bytes);
        if (write_all(fd, line, (size_t)n) < 0) st->failed = 1;
        st->moved = drain(fd);
        if (st->moved != st->bytes) st->failed = 1;
    } else {
        if (write_all(fd, "SINK\n", 5) < 0 || source(fd, st->bytes) < 0) st->failed = 1;
        shutdown(fd, SHUT_WR);
        if (read_line(fd, line, sizeof line) < 0 || strtoull(line + 4, NULL, 10) != st->bytes) st->failed = 1;
        st->moved = st->bytes;
    }
    close(fd);
    return NULL;
}

static int run(const char* target, const char* workload, int streams, unsigned mib) {
    if (sscanf(target, "vsock:%u:%u", &g_cid, &g_port) == 2) {
        strcpy(g_kind, "vsock");
    } else {
        const char* last = strrchr(target, ':');
        if (strncmp(target, "unix:", 5) != 0 || !last || last == target + 4) return 2;
        strcpy(g_kind, "unix");
        snprintf(g_path, sizeof g_path, "%.*s", (int)(last - target - 5), target + 5);
        g_port = (unsigned)strtoul(last + 1, NULL, 10);
    }
    if (strcmp(workload, "connect") == 0) {
        double t0 = now();
        for (int i = 0; i < streams; ++i) {
            int fd = dial();
            char line[16];
            if (fd < 0 || write_all(fd, "PING\n", 5) < 0 || read_line(fd, line, sizeof line) < 0 || strcmp(line, "PONG")) {
                fprintf(stderr, "connect %d failed\n", i);
                return 1;
            }
            close(fd);
        }
        double s = now() - t0;
        printf("RESULT connects=%d seconds=%.3f connect_ms=%.3f\n", streams, s, s * 1000.0 / streams);
        return 0;
    }
    struct Stream st[64];
    pthread_t th[64];
    if (streams < 1 || streams > 64) return 2;
    double t0 = now();
    for (int i = 0; i < streams; ++i) {
        st[i] = (struct Stream){.rx = strcmp(workload, "rx") == 0, .bytes = (uint64_t)mib << 20};
        pthread_create(&th[i], NULL, stream_main, &st[i]);
    }
    uint64_t total = 0;
    int failed = 0;
    for (int i = 0; i < streams; ++i) {
        pthread_join(th[i], NULL);
        total += st[i].moved;
        failed |= st[i].failed;
    }
    double s = now() - t0;
    if (failed) {
        fprintf(stderr, "a stream failed\n");
        return 1;
    }
    printf("RESULT bytes=%llu seconds=%.3f mib_per_s=%.2f\n", (unsigned long long)total, s, (double)total / 1048576.0 / s);
    return 0;
}

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return serve((unsigned)strtoul(argv[2], NULL, 10));
    if (argc == 6 && strcmp(argv[1], "run") == 0) return run(argv[2], argv[3], atoi(argv[4]), (unsigned)strtoul(argv[5], NULL, 10));
    fprintf(stderr, "usage: vsock_peer serve PORT | run TARGET tx|rx|connect STREAMS MIB\n");
    return 2;
}
