/*
 * The attach socket: helpers both sides of weightd use to exchange one handshake message
 * with file descriptors attached (SCM_RIGHTS) over a SOCK_SEQPACKET Unix socket, and the
 * rule that decides where that socket lives.
 *
 * SOCK_SEQPACKET keeps message boundaries (one wd_hello, one wd_hello_reply) and still gives
 * the connection semantics the lease needs: when either side closes or dies, the other sees
 * EOF / POLLHUP on its end. The file is part of libweightd, so it depends on nothing but libc.
 */
#ifndef WD_SHM_ATTACH_H
#define WD_SHM_ATTACH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The most descriptors one attach message carries (the handshake sends 2). */
#define ATTACH_MAX_FDS 8

/*
 * Sends @len bytes of @msg as one message on @sock with @nfds descriptors from @fds attached
 * as SCM_RIGHTS (nfds may be 0; fds may then be NULL). Retries on EINTR and uses
 * MSG_NOSIGNAL so a peer that went away gives -EPIPE rather than SIGPIPE.
 * Returns 0, -EINVAL when nfds is negative or above ATTACH_MAX_FDS, -EMSGSIZE when the
 * kernel sent fewer bytes than @len, or the negative errno of sendmsg (-EPIPE, -ECONNRESET,
 * -EAGAIN on a non-blocking socket, ...).
 */
int attach_send(int sock, const void *msg, size_t len, const int *fds, int nfds);

/*
 * Receives one message of at most @len bytes into @msg from @sock, with descriptors.
 * @nfds: in, the capacity of @fds (0 and fds NULL to accept none); out, how many were
 * stored. Descriptors beyond the capacity, or any that arrive when the message was
 * truncated, are closed so they never leak; every received descriptor is close-on-exec
 * (MSG_CMSG_CLOEXEC). Retries on EINTR.
 * Returns the number of bytes received (> 0), 0 on EOF (peer closed), -EMSGSIZE when the
 * message was longer than @len (it is discarded and all its descriptors closed; *nfds = 0),
 * -EINVAL for a NULL @nfds with non-NULL @fds or a negative capacity, or the negative
 * errno of recvmsg (-EAGAIN on a non-blocking socket with nothing queued, -ECONNRESET).
 */
ssize_t attach_recv(int sock, void *msg, size_t len, int *fds, int *nfds);

/*
 * Resolves the attach socket path into @out (@size bytes), first match wins:
 * @option (from --socket) when not NULL or empty; $WEIGHTD_SOCKET; $XDG_RUNTIME_DIR/weightd/
 * weightd.sock; /run/user/UID/weightd/weightd.sock when /run/user/UID exists;
 * /tmp/weightd-UID/weightd.sock. The parent directory of the result is created with mode
 * 0700 when missing (an existing one is left as it is).
 * Returns 0, -ENAMETOOLONG when the path does not fit @out or a sockaddr_un (108 bytes
 * including the NUL), or the negative errno of mkdir for the parent directory.
 */
int attach_socket_path(const char *option, char *out, size_t size);

/*
 * The same path as attach_socket_path(), without creating its parent directory: for a
 * client, which only connects (a missing directory means no daemon: connect says ENOENT),
 * and saves a mkdir per path component on every attach. Returns 0 or -ENAMETOOLONG.
 */
int attach_resolve_path(const char *option, char *out, size_t size);

/*
 * Connects a new SOCK_SEQPACKET|SOCK_CLOEXEC socket to @path.
 * Returns the socket (>= 0), -ENAMETOOLONG when @path does not fit a sockaddr_un, or the
 * negative errno of socket/connect (-ENOENT: no socket there; -ECONNREFUSED: nobody listens).
 */
int attach_connect(const char *path);

/*
 * Checks the directory that holds the socket at @path, so that nobody else can put a
 * socket of their own there (docs/security.md). Daemon side (@daemon true): the directory
 * must be owned by @uid and writable by neither group nor others. Client side: it must be
 * owned by @uid, by root, or by a daemon uid the client trusts (@extra when not (uid_t)-1,
 * or one listed in $WEIGHTD_DAEMON_UID). Returns 0; -EPERM with @why (@why_size bytes)
 * saying which rule failed; or -errno when it cannot be examined (-ENOENT: no such
 * directory).
 */
int attach_check_dir(const char *path, uid_t uid, uid_t extra, bool daemon, char *why,
		     size_t why_size);

/*
 * Checks who serves the connected socket @fd (SO_PEERCRED): its uid must be @self, root,
 * @extra (when not (uid_t)-1), or one of the comma-separated uids in $WEIGHTD_DAEMON_UID.
 * Returns 0, or -EPERM with @why filled (-errno when SO_PEERCRED fails).
 */
int attach_check_peer(int fd, uid_t self, uid_t extra, char *why, size_t why_size);

#endif
