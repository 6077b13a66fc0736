/* Access checks with a client's credentials; see core/base/cred.h. */
#include "core/base/cred.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct check {
	const struct wd_cred *c;
	const char *const *paths;
	const bool *is_dir;
	size_t n;
	bool *ok;
	int rc;
};

/* faccessat2() with AT_EACCESS: the check uses this thread's fsuid, fsgid and groups. */
static bool may(const char *path, bool dir)
{
	int mode = R_OK | (dir ? X_OK : 0), fd;
	long r = syscall(SYS_faccessat2, AT_FDCWD, path, mode, AT_EACCESS);

	if (r == 0)
		return true;
	if (errno != ENOSYS)
		return false;
	/* Kernels before 5.8: an open() with the same credentials answers the same question. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (dir ? O_DIRECTORY : 0));
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static void *run(void *arg)
{
	struct check *k = arg;
	const struct wd_cred *c = k->c;

	/*
	 * Raw system calls: glibc's wrappers of setgroups() (and of the set*id family) apply
	 * the change to every thread of the process; the kernel's calls change only this one.
	 * setfsuid()/setfsgid() return the previous value whatever happens, so each is checked
	 * by asking again with an invalid id (-1), which changes nothing.
	 */
	if (syscall(SYS_setgroups, (size_t)(c->n_groups > 0 ? c->n_groups : 0), c->groups) ||
	    (syscall(SYS_setfsgid, c->gid), (gid_t)syscall(SYS_setfsgid, -1) != c->gid) ||
	    (syscall(SYS_setfsuid, c->uid), (uid_t)syscall(SYS_setfsuid, -1) != c->uid)) {
		k->rc = -EPERM;
		return NULL;
	}
	for (size_t i = 0; i < k->n; i++)
		k->ok[i] = may(k->paths[i], k->is_dir && k->is_dir[i]);
	/* The thread ends here and its credentials with it: nothing to restore. */
	return NULL;
}

int wd_cred_may_read(const struct wd_cred *c, const char *const *paths, const bool *is_dir,
		     size_t n, bool *ok)
{
	struct check k = { .c = c, .paths = paths, .is_dir = is_dir, .n = n, .ok = ok };
	pthread_t t;
	int ret;

	memset(ok, 0, n * sizeof(*ok));
	if (!n)
		return 0;
	ret = pthread_create(&t, NULL, run, &k);
	if (ret)
		return -ret;
	pthread_join(t, NULL);
	if (k.rc)
		memset(ok, 0, n * sizeof(*ok));
	return k.rc;
}
