/* The attach socket helpers; see shm/attach.h. */
#include "shm/attach.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int attach_send(int sock, const void *msg, size_t len, const int *fds, int nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * ATTACH_MAX_FDS)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (nfds < 0 || nfds > ATTACH_MAX_FDS || (nfds > 0 && !fds))
		return -EINVAL;
	if (nfds > 0) {
		struct cmsghdr *cm;

		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	do {
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	/* A seqpacket send is all or nothing; a short count means a stream socket was passed. */
	if ((size_t)n != len)
		return -EMSGSIZE;
	return 0;
}

/*
 * Walks the SCM_RIGHTS blocks of @mh: stores up to @cap descriptors in @fds and closes the
 * rest (all of them when @keep_none). Returns how many were stored.
 */
static int collect_fds(struct msghdr *mh, int *fds, int cap, int keep_none)
{
	struct cmsghdr *cm;
	int got = 0;

	for (cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		size_t n, i;
		int fd;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (i = 0; i < n; i++) {
			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (!keep_none && got < cap)
				fds[got++] = fd;
			else
				close(fd);
		}
	}
	return got;
}

ssize_t attach_recv(int sock, void *msg, size_t len, int *fds, int *nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * ATTACH_MAX_FDS)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	int cap = 0;
	ssize_t n;

	if (fds && !nfds)
		return -EINVAL;
	if (nfds) {
		cap = *nfds;
		if (cap < 0)
			return -EINVAL;
		if (!fds)
			cap = 0;
		*nfds = 0;
	}
	memset(&ctl, 0, sizeof(ctl));
	mh.msg_control = ctl.buf;
	mh.msg_controllen = sizeof(ctl.buf);
	do {
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (mh.msg_flags & MSG_TRUNC) {
		collect_fds(&mh, fds, cap, 1);
		return -EMSGSIZE;
	}
	/*
	 * MSG_CTRUNC means more descriptors were sent than the control buffer holds; the kernel
	 * already closed the ones that did not fit, so the ones that did are handled as usual.
	 */
	cap = collect_fds(&mh, fds, cap, 0);
	if (nfds)
		*nfds = cap;
	return n;
}

/* mkdir -p for the parent directory of @path, mode 0700. */
static int make_parent(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	size_t len;
	char *p;

	len = strlen(path);
	if (len >= sizeof(dir))
		return -ENAMETOOLONG;
	memcpy(dir, path, len + 1);
	p = strrchr(dir, '/');
	if (!p || p == dir)
		return 0;
	*p = '\0';
	for (p = dir + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char saved = *p;

		*p = '\0';
		if (mkdir(dir, 0700) < 0 && errno != EEXIST)
			return -errno;
		*p = saved;
		if (!saved)
			break;
	}
	return 0;
}

int attach_resolve_path(const char *option, char *out, size_t size)
{
	size_t max = sizeof(((struct sockaddr_un *)0)->sun_path);
	const char *env;
	struct stat st;
	char run[64];
	int n;

	if (option && *option)
		n = snprintf(out, size, "%s", option);
	else if ((env = getenv("WEIGHTD_SOCKET")) && *env)
		n = snprintf(out, size, "%s", env);
	else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
		n = snprintf(out, size, "%s/weightd/weightd.sock", env);
	else if (snprintf(run, sizeof(run), "/run/user/%u", (unsigned)getuid()) > 0 &&
		 stat(run, &st) == 0 && S_ISDIR(st.st_mode))
		n = snprintf(out, size, "%s/weightd/weightd.sock", run);
	else
		n = snprintf(out, size, "/tmp/weightd-%u/weightd.sock", (unsigned)getuid());
	if (n < 0 || (size_t)n >= size || (size_t)n >= max)
		return -ENAMETOOLONG;
	return 0;
}

int attach_socket_path(const char *option, char *out, size_t size)
{
	int ret = attach_resolve_path(option, out, size);

	return ret ? ret : make_parent(out);
}

int attach_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

/* The directory part of @path ("." for a bare name), in @dir. */
static int dir_of(const char *path, char *dir, size_t size)
{
	const char *slash = strrchr(path, '/');
	size_t n;

	if (!slash) {
		snprintf(dir, size, ".");
		return 0;
	}
	n = slash == path ? 1 : (size_t)(slash - path);
	if (n >= size)
		return -ENAMETOOLONG;
	memcpy(dir, path, n);
	dir[n] = '\0';
	return 0;
}

static bool uid_listed(const char *list, uid_t uid);

int attach_check_dir(const char *path, uid_t uid, uid_t extra, bool daemon, char *why,
		     size_t why_size)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct stat st;
	int ret = dir_of(path, dir, sizeof(dir));

	if (ret)
		return ret;
	if (stat(dir, &st) < 0)
		return -errno;
	if (daemon && st.st_uid != uid) {
		snprintf(why, why_size, "the socket's directory %s belongs to uid %u, not to this "
			 "daemon's uid %u: another user could replace the socket there; use "
			 "--socket in a directory of your own", dir, (unsigned)st.st_uid,
			 (unsigned)uid);
		return -EPERM;
	}
	if (daemon && (st.st_mode & (S_IWGRP | S_IWOTH))) {
		snprintf(why, why_size, "the socket's directory %s is writable by %s (mode %04o): "
			 "another user could replace the socket there; chmod go-w it or use "
			 "--socket elsewhere", dir, st.st_mode & S_IWOTH ? "others" : "its group",
			 (unsigned)(st.st_mode & 07777));
		return -EPERM;
	}
	if (!daemon && st.st_uid != uid && st.st_uid != 0 &&
	    !(extra != (uid_t)-1 && st.st_uid == extra) &&
	    !uid_listed(getenv("WEIGHTD_DAEMON_UID"), st.st_uid)) {
		snprintf(why, why_size, "the socket's directory %s belongs to uid %u, neither you "
			 "(uid %u) nor root: a daemon there may not be the one you mean (set "
			 "WEIGHTD_SOCKET to your daemon's socket, or WEIGHTD_DAEMON_UID to a uid "
			 "you trust)", dir, (unsigned)st.st_uid, (unsigned)uid);
		return -EPERM;
	}
	return 0;
}

/* @uid is one of the comma-separated numbers in @list. */
static bool uid_listed(const char *list, uid_t uid)
{
	while (list && *list) {
		char *end;
		unsigned long v = strtoul(list, &end, 10);

		if (end != list && (*end == ',' || !*end) && v == uid)
			return true;
		list = strchr(list, ',');
		if (list)
			list++;
	}
	return false;
}

int attach_check_peer(int fd, uid_t self, uid_t extra, char *why, size_t why_size)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return -errno;
	if (cr.uid == self || cr.uid == 0 || (extra != (uid_t)-1 && cr.uid == extra) ||
	    uid_listed(getenv("WEIGHTD_DAEMON_UID"), cr.uid))
		return 0;
	snprintf(why, why_size, "the daemon behind the socket runs as uid %u (pid %d), neither "
		 "you (uid %u) nor root: not attaching (name its uid in WEIGHTD_DAEMON_UID or "
		 "the attach options' daemon_uid to trust it)", (unsigned)cr.uid, (int)cr.pid,
		 (unsigned)self);
	return -EPERM;
}
