/* Reference for the physical limit of a seccomp user-notification supervisor: the least a
 * supervisor can do per socket() call, in C, with nothing to decide.
 *   notifybound continue CMD ARGS...   every socket() answered with CONTINUE
 *   notifybound inject CMD ARGS...     every socket() made by the supervisor (in its own
 *                                      namespace) and injected with ADDFD|SEND
 * The listener is in synchronous wake-up mode where the kernel has it (6.6), as mstack's is.
 * The supervisor is a child process that takes the listener with pidfd_getfd(); the parent
 * installs the filter and execs CMD. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

static int serve(int listener, int inject) {
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
    for (;;) {
        memset(&req, 0, sizeof req);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req)) {
            if (errno == EINTR || errno == ENOENT) continue;
            return 0; /* the last task is gone */
        }
        memset(&resp, 0, sizeof resp);
        resp.id = req.id;
        if (!inject) {
            resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
            ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
            continue;
        }
        int fd = socket((int)req.data.args[0], (int)req.data.args[1], (int)req.data.args[2]);
        if (fd < 0) {
            resp.error = -errno;
            ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
            continue;
        }
        struct seccomp_notif_addfd addfd = {.id = req.id, .flags = SECCOMP_ADDFD_FLAG_SEND,
                                            .srcfd = (__u32)fd};
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) < 0) {
            resp.error = -errno;
            ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
        }
        close(fd);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int inject = !strcmp(argv[1], "inject");
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
    int ready[2], taken[2];
    if (pipe(ready) || pipe(taken)) return 1;
    pid_t parent = getpid();
    pid_t child = fork();
    if (child == 0) {
        int number;
        close(ready[1]);
        if (read(ready[0], &number, sizeof number) != sizeof number) return 1;
        int pidfd = (int)syscall(SYS_pidfd_open, parent, 0);
        int listener = (int)syscall(SYS_pidfd_getfd, pidfd, number, 0);
        if (listener < 0) { perror("pidfd_getfd"); return 1; }
        close(pidfd);
        if (write(taken[1], "", 1) != 1) return 1;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        return serve(listener, inject);
    }
    close(ready[0]);
    int listener;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        (listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                                 SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog)) < 0) {
        perror("seccomp");
        return 1;
    }
    if (write(ready[1], &listener, sizeof listener) != sizeof listener) return 1;
    close(ready[1]);
    /* The supervisor holds its own copy once it has taken it; ours must not outlive exec. */
    char byte;
    close(taken[1]);
    if (read(taken[0], &byte, 1) != 1) return 1;
    close(taken[0]);
    close(listener);
    execv(argv[2], argv + 2);
    perror("execv");
    return 127;
}
