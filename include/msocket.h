/* msocket.h — choose the network stack of a socket, as in VUOS/View-OS.
 *
 * Under mstack(1) the virtual system call -5 (VUOS' __VVU_msocket) is answered by the
 * supervisor:
 *   msocket(path, domain, type, protocol)   a socket of `domain` from the stack at `path`
 *                                           (NULL: the caller's default stack for `domain`;
 *                                           "null", "native", a netns path or `ip netns` name)
 *   msocket(path, domain, SOCK_DEFAULT, 0)  make `path` the caller's default stack for
 *                                           `domain` (every family for AF_UNSPEC); returns 0
 * Errors: ENOENT no such stack, ENOTSUP not a stack, EPERM locked by mstack --lock or a
 * policy, EACCES a stack this process may not name, EAGAIN too many stacks named in this
 * tree, EXDEV a relative path leaving the working directory of a caller whose root is not
 * the supervisor's (chroot), ENOSYS not running under mstack. Paths resolve as the caller's
 * own open() would: in its root and working directory.
 */
#ifndef MSTACK_MSOCKET_H
#define MSTACK_MSOCKET_H

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __VVU_msocket
#define __VVU_msocket -5
#endif
#ifndef __NR_msocket
#define __NR_msocket __VVU_msocket
#endif
#ifndef SOCK_DEFAULT
#define SOCK_DEFAULT 0
#endif

static inline int msocket(const char *path, int domain, int type, int protocol)
{
	return (int)syscall(__NR_msocket, path, domain, type, protocol);
}

#endif /* MSTACK_MSOCKET_H */
