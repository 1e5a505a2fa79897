/* Every way a 64-bit x86 process can ask the kernel for a socket, tried one by one.
 * Prints one JSON object: vector -> {"ret": fd or -1, "errno": name, "cookie": netns cookie}.
 * Build: cc -O2 -o vectors vectors.c (no multilib needed: int 0x80 works from 64-bit code). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define X32_BIT 0x40000000L

#include "cookie.h"
#include "int80.h"

static int first = 1;

static void report(const char *name, long ret, int err) {
    uint64_t cookie;
    printf("%s\"%s\": {\"ret\": %ld", first ? "" : ", ", name, ret < 0 ? -1L : ret);
    first = 0;
    if (ret < 0) {
        printf(", \"errno\": \"%s\"}", strerrorname_np(err) ? strerrorname_np(err) : "?");
        return;
    }
    if ((cookie = netns_cookie((int)ret)) != 0)
        printf(", \"cookie\": %llu}", (unsigned long long)cookie);
    else
        printf(", \"cookie\": null}");
    close((int)ret);
}

/* int 0x80 returns -errno in eax instead of setting errno */
static void report_raw(const char *name, long ret) {
    report(name, ret < 0 && ret > -4096 ? -1 : ret, ret < 0 && ret > -4096 ? (int)-ret : 0);
}

int main(int argc, char **argv) {
    int family = argc > 1 ? atoi(argv[1]) : AF_INET;
    long r;
    printf("{");
    errno = 0;
    r = syscall(SYS_socket, family, SOCK_STREAM, 0);
    report("x86_64", r, errno);
    errno = 0;
    r = syscall(SYS_socket, 0x100000000L | family, SOCK_STREAM, 0);
    report("high32", r, errno);
    errno = 0;
    r = syscall(SYS_socket | X32_BIT, family, SOCK_STREAM, 0);
    report("x32", r, errno);
    report_raw("i386_socket", int80(359, family, SOCK_STREAM, 0));
    /* socketcall's arguments must sit below 4 GiB for a 32-bit pointer */
    uint32_t *block = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    block[0] = (uint32_t)family;
    block[1] = SOCK_STREAM;
    block[2] = 0;
    report_raw("i386_socketcall", int80(102, 1 /* SYS_SOCKET */, (long)(uintptr_t)block, 0));
    /* arguments at an unmapped address: EFAULT natively, and under mstack too */
    report_raw("i386_socketcall_efault", int80(102, 1 /* SYS_SOCKET */, 0x1000, 0));
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    errno = 0;
    r = syscall(__NR_io_uring_setup, 4, &params);
    report("io_uring_setup", r, errno);
    report_raw("i386_io_uring_setup", int80(425, 4, (long)(uintptr_t)block, 0));
    printf("}\n");
    return 0;
}
