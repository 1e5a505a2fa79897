/* One interface ioctl as the caller makes it: ifioctl FAMILY REQUEST IFNAME [i386].
 * Makes a datagram socket of FAMILY (AF_PACKET: SOCK_DGRAM, needs CAP_NET_RAW), issues
 * REQUEST (hex) with an ifreq naming IFNAME, natively or through int 0x80 (32-byte ifreq
 * below 4 GiB), and prints {"errno": "NAME"} or {"addr": "a.b.c.d", "value": N}. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "int80.h"

static const char *name_of(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOTTY: return "ENOTTY";
    case ENODEV: return "ENODEV";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EINVAL: return "EINVAL";
    case EACCES: return "EACCES";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    default: return "OTHER";
    }
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int family = atoi(argv[1]);
    unsigned long request = strtoul(argv[2], NULL, 16);
    int fd = socket(family, SOCK_DGRAM, 0);
    if (fd < 0) {
        printf("{\"socket\": \"%s\"}\n", name_of(errno));
        return 0;
    }
    struct ifreq *req = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    strncpy(req->ifr_name, argv[3], IFNAMSIZ - 1);
    long r;
    int err = 0;
    if (argc > 4) {
        r = int80(54, fd, (long)request, (long)(uintptr_t)req);
        if (r < 0) err = (int)-r;
    } else {
        r = ioctl(fd, request, req);
        if (r < 0) err = errno;
    }
    if (err) {
        printf("{\"errno\": \"%s\"}\n", name_of(err));
        return 0;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)&req->ifr_addr;
    printf("{\"addr\": \"%s\", \"value\": %ld}\n", inet_ntoa(sin->sin_addr), r);
    return 0;
}
