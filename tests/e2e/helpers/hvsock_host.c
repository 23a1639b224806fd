/* The test host's side of the hv_sock end-to-end test (tests/e2e/test_vsock.py): a static
 * program, since the test host has only busybox, whose nc has no Unix sockets.
 *
 *   hvsock_host connect PATH PORT       connect to PATH, write "CONNECT PORT\n", print the
 *                                       "OK <n>" reply line on stderr, then relay
 *                                       stdin -> socket and socket -> stdout
 *   hvsock_host serve PATH COUNT CMD    listen on PATH; for each of COUNT connections, run
 *                                       `sh -c CMD` with its stdin and stdout on pipes relayed
 *                                       to and from the socket (at once, in parallel); exit
 *                                       when all are done (status: the worst child's)
 *
 * The relay half-closes: input EOF -> shutdown(SHUT_WR); socket EOF -> the output is
 * closed; it ends when both directions are done (each copied by a process of its own, so
 * that neither waits for the other). Exit 3 on an I/O error, 4 without OK. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int unix_socket(const char *path, struct sockaddr_un *a) {
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(a->sun_path)) {
        fprintf(stderr, "hvsock_host: path too long\n");
        exit(2);
    }
    strcpy(a->sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("socket");
        exit(3);
    }
    return fd;
}

/* Copies `from` to `to` until EOF; 0, or 3 on an error. */
static int copy(int from, int to) {
    char buf[65536];
    for (;;) {
        ssize_t got = read(from, buf, sizeof(buf));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            perror("read");
            return 3;
        }
        if (got == 0) return 0;
        for (ssize_t off = 0; off < got;) {
            ssize_t w = write(to, buf + off, (size_t)(got - off));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                perror("write");
                return 3;
            }
            off += w;
        }
    }
}

/* in -> sock and sock -> out at once, each direction in a process of its own (a blocking
 * writer in one direction must never stop the other from being read: the VMM's and the
 * guest's buffers are small), until both end. */
static int relay(int in, int out, int sock) {
    pid_t writer = fork();
    if (writer < 0) {
        perror("fork");
        return 3;
    }
    if (writer == 0) {
        close(out);  /* only the reader holds it: its reader sees EOF when that one closes it */
        int r = copy(in, sock);
        shutdown(sock, SHUT_WR);
        _exit(r);
    }
    close(in);
    int r = copy(sock, out);
    close(out);
    int st = 0;
    while (waitpid(writer, &st, 0) < 0 && errno == EINTR) {}
    int w = WIFEXITED(st) ? WEXITSTATUS(st) : 3;
    return r ? r : w;
}

static int do_connect(const char *path, const char *port) {
    struct sockaddr_un a;
    int fd = unix_socket(path, &a);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("connect");
        return 3;
    }
    char line[64];
    int len = snprintf(line, sizeof(line), "CONNECT %s\n", port);
    if (write(fd, line, (size_t)len) != len) {
        perror("write CONNECT");
        return 3;
    }
    /* The reply line, one byte at a time: what follows is the stream. */
    char reply[64];
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t got = read(fd, &c, 1);
        if (got != 1) {
            fprintf(stderr, "hvsock_host: no OK from the VMM (connection closed)\n");
            return 4;
        }
        if (c == '\n') break;
        if (n + 1 < sizeof(reply)) reply[n++] = c;
    }
    reply[n] = 0;
    fprintf(stderr, "%s\n", reply);
    if (strncmp(reply, "OK ", 3) != 0) return 4;
    return relay(0, 1, fd);
}

static int do_serve(const char *path, int count, const char *cmd) {
    struct sockaddr_un a;
    int ls = unix_socket(path, &a);
    unlink(path);
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 64) != 0) {
        perror("bind/listen");
        return 3;
    }
    fprintf(stderr, "hvsock_host: listening on %s\n", path);
    for (int i = 0; i < count; ++i) {
        int c = accept(ls, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR) { --i; continue; }
            perror("accept");
            return 3;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(ls);
            int to_child[2], from_child[2];
            if (pipe(to_child) || pipe(from_child)) _exit(3);
            pid_t sh = fork();
            if (sh == 0) {
                dup2(to_child[0], 0);
                dup2(from_child[1], 1);
                close(to_child[0]); close(to_child[1]); close(from_child[0]); close(from_child[1]); close(c);
                char n[16];
                snprintf(n, sizeof(n), "%d", i);
                setenv("CONN", n, 1);
                execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
                _exit(127);
            }
            close(to_child[0]);
            close(from_child[1]);
            int r = relay(from_child[0], to_child[1], c);
            int st = 0;
            waitpid(sh, &st, 0);
            _exit(r ? r : (WIFEXITED(st) ? WEXITSTATUS(st) : 1));
        }
        close(c);
    }
    close(ls);
    int worst = 0, st;
    while (wait(&st) > 0) {
        int code = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
        if (code > worst) worst = code;
    }
    return worst;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 4 && strcmp(argv[1], "connect") == 0) return do_connect(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "serve") == 0) return do_serve(argv[2], atoi(argv[3]), argv[4]);
    fprintf(stderr, "usage: hvsock_host connect PATH PORT | serve PATH COUNT CMD\n");
    return 2;
}
