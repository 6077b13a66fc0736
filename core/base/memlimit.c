/* The memory this process may use; see core/base/memlimit.h. */
#include "core/base/memlimit.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A number from the first line of @path; "max" (v2: no limit) and errors give UINT64_MAX. */
static uint64_t read_u64(const char *path)
{
	char buf[64];
	unsigned long long v;
	FILE *f = fopen(path, "re");

	if (!f)
		return UINT64_MAX;
	if (!fgets(buf, sizeof(buf), f) || sscanf(buf, "%llu", &v) != 1)
		v = UINT64_MAX;
	fclose(f);
	return v;
}

/*
 * The tightest @file limit of cgroup @cg (a path like "/a/b") and its ancestors under the
 * hierarchy mounted at @mount. v1 reports "no limit" as a huge page-rounded number: any
 * value of 2^62 or more counts as none.
 */
static void tightest(struct wd_memlimit *out, const char *mount, const char *cg,
		     const char *file, const char *usage_file)
{
	char path[2 * PATH_MAX + 32], p[PATH_MAX];
	bool leaf = true;

	snprintf(p, sizeof(p), "%s", cg);
	for (;;) {
		uint64_t v;
		char *slash;

		snprintf(path, sizeof(path), "%s%s/%s", mount, strcmp(p, "/") ? p : "", file);
		v = read_u64(path);
		if (v < (1ull << 62) && v < out->cgroup_limit) {
			out->cgroup_limit = v;
			/* Cut at the buffer's end if it must: it only names the file in a log. */
			size_t l = strnlen(path, sizeof(out->cgroup_file) - 1);

			memcpy(out->cgroup_file, path, l);
			out->cgroup_file[l] = '\0';
		}
		if (leaf) {
			snprintf(path, sizeof(path), "%s%s/%s", mount, strcmp(p, "/") ? p : "",
				 usage_file);
			v = read_u64(path);
			if (v != UINT64_MAX)
				out->cgroup_usage = v;
			leaf = false;
		}
		if (!strcmp(p, "/") || !p[0])
			break;
		slash = strrchr(p, '/');
		if (slash == p)
			p[1] = '\0';
		else if (slash)
			*slash = '\0';
		else
			break;
	}
}

void wd_memlimit_read(struct wd_memlimit *out)
{
	const char *fs = getenv("WEIGHTD_CGROUP_FS");
	char line[PATH_MAX + 64], mount[PATH_MAX];
	unsigned long long kb;
	FILE *f;

	memset(out, 0, sizeof(*out));
	out->cgroup_limit = UINT64_MAX;
	if (!fs || !*fs)
		fs = "/sys/fs/cgroup";
	f = fopen("/proc/meminfo", "re");
	if (f) {
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) {
				out->mem_total = (uint64_t)kb * 1024;
				break;
			}
		fclose(f);
	}
	f = fopen("/proc/self/cgroup", "re");
	if (f) {
		while (fgets(line, sizeof(line), f)) {
			char *ctl = strchr(line, ':'), *cg;

			if (!ctl || !(cg = strchr(ctl + 1, ':')))
				continue;
			*cg++ = '\0';
			ctl++;
			cg[strcspn(cg, "\n")] = '\0';
			if (!*ctl) {
				/* v2: the unified hierarchy at the mount itself, or at unified/. */
				tightest(out, fs, cg, "memory.max", "memory.current");
				snprintf(mount, sizeof(mount), "%s/unified", fs);
				tightest(out, mount, cg, "memory.max", "memory.current");
			} else {
				/* v1: a hierarchy whose controllers include "memory". */
				char *save = NULL;

				for (char *c = strtok_r(ctl, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
					if (strcmp(c, "memory"))
						continue;
					snprintf(mount, sizeof(mount), "%s/memory", fs);
					tightest(out, mount, cg, "memory.limit_in_bytes",
						 "memory.usage_in_bytes");
				}
			}
		}
		fclose(f);
	}
	out->limit = out->mem_total ? out->mem_total : UINT64_MAX;
	if (out->cgroup_limit < out->limit)
		out->limit = out->cgroup_limit;
}
