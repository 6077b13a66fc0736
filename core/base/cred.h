/*
 * "Could this client open that file itself?", asked of the kernel.
 *
 * The daemon usually runs as root and may read anything; a client asks it to scan on the
 * client's behalf, so what the scan publishes must be what the client could have read
 * with its own credentials (docs/security.md). Mode bits alone are not the answer (ACLs,
 * search permission on every parent directory, LSMs), so the check runs in a short-lived
 * helper thread that takes on the client's filesystem credentials -- fsuid, fsgid and
 * supplementary groups, set with the raw system calls, which (unlike glibc's setgroups())
 * change only the calling thread -- and asks faccessat2(AT_EACCESS) for each path. The
 * rest of the daemon never runs with changed credentials.
 */
#ifndef WD_CORE_CRED_H
#define WD_CORE_CRED_H

#include <stdbool.h>
#include <sys/types.h>

#include "core/base/common.h"

/* A client's credentials, as SO_PEERCRED and SO_PEERGROUPS give them. */
struct wd_cred {
	uid_t uid;
	gid_t gid;
	const gid_t *groups;
	int n_groups;
};

/*
 * For each of the @n paths, sets @ok[i] when a process with credentials @c may read it:
 * R_OK for a file, R_OK | X_OK for a directory (@is_dir[i]; @is_dir may be NULL: all
 * files). Symlinks are followed with @c's rights, and every parent directory must be
 * searchable by @c, as for an open() of its own.
 * Returns 0; -EPERM when this process cannot take on @c (it lacks CAP_SETUID or
 * CAP_SETGID) -- every @ok[i] is then false, so a caller fails closed; -EAGAIN or -ENOMEM
 * when the helper thread cannot start (every @ok[i] false too).
 */
int wd_cred_may_read(const struct wd_cred *c, const char *const *paths, const bool *is_dir,
		     size_t n, bool *ok);

#endif
