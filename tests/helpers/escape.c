/* Low-level escape attempts for the policy escape suite; prints one JSON object.
 *
 *   escape sock FAMILY TYPE PROTO   socket() through every ABI: x86_64, high 32 bits set,
 *                                   i386 socket (int 0x80) and i386 socketcall
 *   escape clone FAMILY TYPE PROTO  clone(CLONE_NEWNET) and clone3(CLONE_NEWNET); the child
 *                                   (if any) makes the socket in its new namespace
 *   escape remap FAMILY TYPE PROTO  msocket(-5) SOCK_DEFAULT to "null" for every family, and
 *                                   a seccomp filter with NEW_LISTENER (a nested supervisor's
 *                                   two doors), then the socket
 *   escape burst FAMILY TYPE N      N socket()+close() back to back in one thread, then the
 *                                   last socket's cookie and how many calls failed
 *
 * A socket is reported as {"cookie": N} (SO_NETNS_COOKIE, the namespace it lives in), a
 * failure as {"errno": "NAME"}. Build: cc -O2 -o escape escape.c (no multilib needed). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cookie.h"
#include "int80.h"

/* Format the outcome of a socket call (fd or -1 with err) into buf; closes the fd. */
static void describe(char *buf, size_t size, long ret, int err) {
    uint64_t cookie;
    if (ret < 0) {
        const char *name = strerrorname_np(err);
        snprintf(buf, size, "{\"errno\": \"%s\"}", name ? name : "?");
        return;
    }
    if ((cookie = netns_cookie((int)ret)) != 0)
        snprintf(buf, size, "{\"cookie\": %llu}", (unsigned long long)cookie);
    else
        snprintf(buf, size, "{\"cookie\": null}");
    close((int)ret);
}

static void emit(const char *name, long ret, int err, int *first) {
    char buf[128];
    describe(buf, sizeof buf, ret, err);
    printf("%s\"%s\": %s", *first ? "" : ", ", name, buf);
    *first = 0;
}

/* int 0x80 returns -errno in eax */
static void emit_raw(const char *name, long ret, int *first) {
    int failed = ret < 0 && ret > -4096;
    emit(name, failed ? -1 : ret, failed ? (int)-ret : 0, first);
}

static int sock_abis(int family, int type, int proto) {
    int first = 1;
    long r;
    printf("{");
    errno = 0;
    r = syscall(SYS_socket, family, type, proto);
    emit("x86_64", r, errno, &first);
    errno = 0;
    r = syscall(SYS_socket, 0x100000000L | (unsigned)family, type, proto);
    emit("high32", r, errno, &first);
    emit_raw("i386_socket", int80(359, family, type, proto), &first);
    uint32_t *block = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    block[0] = (uint32_t)family;
    block[1] = (uint32_t)type;
    block[2] = (uint32_t)proto;
    emit_raw("i386_socketcall", int80(102, 1 /* SYS_SOCKET */, (long)(uintptr_t)block, 0),
             &first);
    printf("}\n");
    return 0;
}

/* After a successful clone: the child reports its socket through a pipe. */
static void child_report(int fd, int family, int type, int proto) {
    char buf[128];
    errno = 0;
    long r = syscall(SYS_socket, family, type, proto);
    describe(buf, sizeof buf, r, errno);
    if (write(fd, buf, strlen(buf)) < 0)
        _exit(1);
    _exit(0);
}

static void clone_result(const char *name, long ret, int err, int pipefd[2], int *first) {
    char child[128] = "null";
    if (ret > 0) {
        close(pipefd[1]);
        ssize_t n = read(pipefd[0], child, sizeof child - 1);
        child[n > 0 ? n : 0] = 0;
        if (n <= 0)
            strcpy(child, "null");
        waitpid((pid_t)ret, NULL, 0);
        close(pipefd[0]);
    } else {
        close(pipefd[0]);
        close(pipefd[1]);
    }
    printf("%s\"%s\": {\"ret\": %ld, \"errno\": \"%s\", \"child\": %s}", *first ? "" : ", ",
           name, ret < 0 ? -1L : ret, ret < 0 ? strerrorname_np(err) : "", child);
    *first = 0;
}

static int clones(int family, int type, int proto) {
    int first = 1, p[2];
    long r;
    printf("{");
    if (pipe(p) < 0)
        return 1;
    errno = 0;
    r = syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0);
    if (r == 0)
        child_report(p[1], family, type, proto);
    clone_result("clone", r, errno, p, &first);
    if (pipe(p) < 0)
        return 1;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWNET;
    args.exit_signal = SIGCHLD;
    errno = 0;
    r = syscall(SYS_clone3, &args, sizeof args);
    if (r == 0)
        child_report(p[1], family, type, proto);
    clone_result("clone3", r, errno, p, &first);
    printf("}\n");
    return 0;
}

/* Both ways a nested mstack would change the mapping, each reported with its errno, then
 * the socket as it comes out. The filter installed (if any) allows everything. */
static int remap(int family, int type, int proto) {
    char buf[128];
    errno = 0;
    long r = syscall(-5L, "null", 0 /* AF_UNSPEC */, 0 /* SOCK_DEFAULT */, 0);
    printf("{\"msocket\": {\"ret\": %ld, \"errno\": \"%s\"}", r,
           r < 0 ? strerrorname_np(errno) : "");
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = 1, .filter = &allow};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    errno = 0;
    r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    printf(", \"listener\": {\"ret\": %ld, \"errno\": \"%s\"}", r,
           r < 0 ? strerrorname_np(errno) : "");
    errno = 0;
    r = syscall(SYS_socket, family, type, proto);
    describe(buf, sizeof buf, r, errno);
    printf(", \"socket\": %s}\n", buf);
    return 0;
}

/* A caller that makes sockets back to back: what co-location is for (colocate.py). */
static int burst(int family, int type, int count) {
    char buf[128] = "null";
    int failed = 0;
    for (int i = 0; i < count; i++) {
        errno = 0;
        long r = syscall(SYS_socket, family, type, 0);
        if (r < 0)
            failed++;
        if (i == count - 1)
            describe(buf, sizeof buf, r, errno);
        else if (r >= 0)
            close((int)r);
    }
    printf("{\"last\": %s, \"failed\": %d}\n", buf, failed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: escape sock|clone|remap FAMILY TYPE PROTO | burst FAMILY TYPE N\n");
        return 2;
    }
    int family = atoi(argv[2]), type = atoi(argv[3]), proto = atoi(argv[4]);
    if (strcmp(argv[1], "sock") == 0)
        return sock_abis(family, type, proto);
    if (strcmp(argv[1], "clone") == 0)
        return clones(family, type, proto);
    if (strcmp(argv[1], "remap") == 0)
        return remap(family, type, proto);
    if (strcmp(argv[1], "burst") == 0)
        return burst(family, type, proto);
    fprintf(stderr, "escape: unknown command %s\n", argv[1]);
    return 2;
}
