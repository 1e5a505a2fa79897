/* msocket paths named from inside a chroot; prints one JSON object.
 *
 *   chrooted NEWROOT UID PATH...   chroot(NEWROOT), chdir("/"), become UID (-1: stay), then
 *                                  msocket(PATH, AF_INET6, SOCK_DGRAM, 0) for each PATH
 *                                  ("@self" stands for /proc/<its pid>/ns/net)
 *
 * Each path maps to {"cookie": N} (SO_NETNS_COOKIE of the socket made) or {"errno": "NAME"}.
 * Natively a chrooted process resolves "..", absolute symlinks and its cwd inside its root;
 * the supervisor opening the path for it must too. Build: cc -O2 -o chrooted chrooted.c */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cookie.h"
#include "msocket.h"

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    if (chroot(argv[1]) || chdir("/")) { perror("chroot"); return 1; }
    int uid = atoi(argv[2]);
    if (uid >= 0 && (setresgid(uid, uid, uid) || setresuid(uid, uid, uid))) {
        perror("setresuid");
        return 1;
    }
    printf("{");
    for (int i = 3; i < argc; i++) {
        char own[64];
        snprintf(own, sizeof own, "/proc/%d/ns/net", (int)getpid());
        const char *path = strcmp(argv[i], "@self") ? argv[i] : own;
        int fd = msocket(path, AF_INET6, SOCK_DGRAM, 0), err = errno;
        printf("%s\"%s\": ", i > 3 ? ", " : "", argv[i]);
        if (fd < 0) {
            const char *name = strerrorname_np(err);
            printf("{\"errno\": \"%s\"}", name ? name : "?");
        } else {
            printf("{\"cookie\": %llu}", (unsigned long long)netns_cookie(fd));
            close(fd);
        }
    }
    printf("}\n");
    return 0;
}
