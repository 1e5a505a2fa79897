/* Interface views a program gets: if_nametoindex() (glibc: an ioctl on some socket),
 * getifaddrs() (glibc: netlink) and SIOCGIFCONF. Prints one JSON object. */
#define _GNU_SOURCE
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    printf("{\"index\": {");
    for (int i = 1; i < argc; i++) {
        unsigned idx = if_nametoindex(argv[i]);
        printf("%s\"%s\": %d", i > 1 ? ", " : "", argv[i], idx ? (int)idx : -errno);
    }
    printf("}, \"getifaddrs\": [");
    struct ifaddrs *list, *p;
    int first = 1;
    if (getifaddrs(&list) == 0) {
        for (p = list; p; p = p->ifa_next) {
            if (p->ifa_addr && p->ifa_addr->sa_family == AF_PACKET) {
                printf("%s\"%s\"", first ? "" : ", ", p->ifa_name);
                first = 0;
            }
        }
        freeifaddrs(list);
    }
    printf("], \"ifconf\": [");
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct ifreq reqs[32];
    struct ifconf conf = {.ifc_len = sizeof reqs, .ifc_req = reqs};
    if (fd >= 0 && ioctl(fd, SIOCGIFCONF, &conf) == 0) {
        for (int i = 0; i < conf.ifc_len / (int)sizeof(struct ifreq); i++)
            printf("%s\"%s\"", i ? ", " : "", reqs[i].ifr_name);
    }
    printf("]}\n");
    return 0;
}
