/* The network namespace a socket lives in, as the probes report it: its cookie
 * (SO_NETNS_COOKIE, socket(7), Linux 5.14), the one reader the C helpers share. */
#ifndef MSTACK_TEST_COOKIE_H
#define MSTACK_TEST_COOKIE_H

#include <stdint.h>
#include <sys/socket.h>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

/* The cookie of socket fd's namespace; 0 (no namespace has it) if the kernel cannot tell. */
static uint64_t netns_cookie(int fd) {
    uint64_t cookie = 0;
    socklen_t len = sizeof cookie;
    if (getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) < 0)
        return 0;
    return cookie;
}

#endif
