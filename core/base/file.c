/* Opening model files without blocking; see core/base/file.h. */
#include "core/base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int wd_open_regular(int dirfd, const char *path, int extra_flags, struct stat *sb)
{
	struct stat local;
	int fd, fl;

	if (!sb)
		sb = &local;
	fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | extra_flags);
	if (fd < 0)
		return -errno;
	if (fstat(fd, sb) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	if (!S_ISREG(sb->st_mode)) {
		close(fd);
		return -EINVAL;
	}
	/* Regular files ignore O_NONBLOCK today; clear it so that no reader depends on that. */
	fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && (fl & O_NONBLOCK))
		(void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	return fd;
}

const char *wd_file_kind(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
		return "a regular file";
	case S_IFDIR:
		return "a directory";
	case S_IFIFO:
		return "a FIFO";
	case S_IFCHR:
		return "a character device";
	case S_IFBLK:
		return "a block device";
	case S_IFSOCK:
		return "a socket";
	case S_IFLNK:
		return "a symlink";
	default:
		return "not a regular file";
	}
}
