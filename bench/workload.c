/* Benchmark workloads; prints nanoseconds per operation (best of REPS rounds) as JSON.
 *   workload getpid N | readzero N | socket FAMILY N | msocket PATH FAMILY N
 *   workload tcp-server PORT | tcp-client PORT BYTES CHUNK
 * Built static too, so the original View-OS umview (static programs only) can run it. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int fails;

static void one(const char *mode, char **argv, long n) {
    if (!strcmp(mode, "getpid")) {
        for (long i = 0; i < n; i++) syscall(SYS_getpid);
    } else if (!strcmp(mode, "readzero")) {
        static char buf[64];
        int fd = open("/dev/zero", O_RDONLY);
        for (long i = 0; i < n; i++) if (read(fd, buf, sizeof buf) < 0) fails++;
        close(fd);
    } else if (!strcmp(mode, "socket")) {
        int fam = atoi(argv[2]);
        for (long i = 0; i < n; i++) {
            int fd = socket(fam, fam == AF_NETLINK ? SOCK_RAW : SOCK_DGRAM, 0);
            if (fd < 0) fails++; else close(fd);
        }
    } else if (!strcmp(mode, "msocket")) {
        int fam = atoi(argv[3]);
        for (long i = 0; i < n; i++) {
            int fd = (int)syscall(-5, argv[2], fam, SOCK_DGRAM, 0);
            if (fd < 0) fails++; else close(fd);
        }
    }
}

static int tcp_server(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one_ = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one_, sizeof one_);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(s, (void *)&a, sizeof a) || listen(s, 1)) { perror("bind"); return 1; }
    printf("ready\n"); fflush(stdout);
    int c = accept(s, NULL, NULL);
    static char buf[1 << 16];
    long total = 0, r;
    while ((r = read(c, buf, sizeof buf)) > 0) total += r;
    printf("{\"received\": %ld}\n", total);
    return 0;
}

static int tcp_client(int port, long bytes, long chunk) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; connect(s, (void *)&a, sizeof a); i++) {
        if (i > 200) { perror("connect"); return 1; }
        usleep(10000);
        close(s); s = socket(AF_INET, SOCK_STREAM, 0);
    }
    static char buf[1 << 20];
    double t = now();
    for (long sent = 0; sent < bytes;) {
        long w = write(s, buf, chunk < bytes - sent ? chunk : bytes - sent);
        if (w <= 0) { perror("write"); return 1; }
        sent += w;
    }
    shutdown(s, SHUT_WR);
    char x;
    while (read(s, &x, 1) > 0) {}
    printf("{\"MBps\": %.1f}\n", bytes / ((now() - t) / 1e9) / 1e6);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "tcp-server")) return tcp_server(atoi(argv[2]));
    if (!strcmp(argv[1], "tcp-client")) return tcp_client(atoi(argv[2]), atol(argv[3]), atol(argv[4]));
    long n = atol(argv[argc - 1]);
    int reps = getenv("REPS") ? atoi(getenv("REPS")) : 5;
    double best = 1e30, all[64];
    one(argv[1], argv, n / 10 + 1);  /* warm up */
    for (int r = 0; r < reps && r < 64; r++) {
        double t = now();
        one(argv[1], argv, n);
        all[r] = (now() - t) / n;
        if (all[r] < best) best = all[r];
    }
    /* median */
    for (int i = 0; i < reps; i++)
        for (int j = i + 1; j < reps; j++)
            if (all[j] < all[i]) { double x = all[i]; all[i] = all[j]; all[j] = x; }
    printf("{\"min_ns\": %.1f, \"median_ns\": %.1f, \"fails\": %d}\n", best, all[reps / 2], fails);
    return 0;
}
