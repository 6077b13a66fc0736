/*
 * Opening a model file, the one way every reader does it (the scan, the daemon's loads and
 * validations, the io_uring loader, the staging ring, weightctl).
 *
 * A model file's path comes from a directory that someone else may write: the name can be
 * a FIFO (open() for reading blocks until a writer appears, and the daemon's worker with
 * it), a device, or a directory by the time it is opened. So the open never blocks
 * (O_NONBLOCK, cleared again afterwards), never makes a terminal the caller's controlling
 * terminal (O_NOCTTY), and anything but a regular file is refused after fstat().
 */
#ifndef WD_CORE_FILE_H
#define WD_CORE_FILE_H

#include <sys/stat.h>

#include "core/base/common.h"

/*
 * Opens @path (relative to @dirfd when not absolute; AT_FDCWD for the working directory)
 * read-only with @extra_flags added (O_DIRECT, O_NOFOLLOW), and stores its fstat() in @sb
 * when @sb is not NULL. Returns the descriptor (O_CLOEXEC), or:
 *   -errno from openat() or fstat() (-ENOENT, -EACCES, -ELOOP ...);
 *   -EINVAL when it is not a regular file: wd_file_kind(sb->st_mode) names what it is.
 */
int wd_open_regular(int dirfd, const char *path, int extra_flags, struct stat *sb);

/* What a file of mode @mode is, for messages: "a FIFO", "a directory", "a socket" ... */
const char *wd_file_kind(mode_t mode);

#endif
