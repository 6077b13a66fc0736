#include "tests/helpers_tmp.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

int td_tmpdir(char *buf, size_t size, const char *name)
{
	const char *t = getenv("TMPDIR");
	int n = snprintf(buf, size, "%s/%s.XXXXXX", t && *t ? t : "/tmp", name);

	if (n < 0 || (size_t)n >= size)
		return -1;
	return mkdtemp(buf) ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

int td_rmtree(const char *dir)
{
	return nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}
