/* Test helper: a temporary directory per test program, and its removal. */
#ifndef WD_TESTS_HELPERS_TMP_H
#define WD_TESTS_HELPERS_TMP_H

#include <stddef.h>

/*
 * Creates a fresh directory $TMPDIR/NAME.XXXXXX (/tmp when TMPDIR is unset or empty) and
 * writes its path into @buf. Returns 0, or -1 when the path does not fit or mkdtemp fails.
 */
int td_tmpdir(char *buf, size_t size, const char *name);

/* Removes @dir and everything under it, without following symlinks. Returns 0 or -1. */
int td_rmtree(const char *dir);

#endif
