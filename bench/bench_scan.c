/*
 * Discovery benchmark: 10,000 generated single-tensor files (gen preset "files", 100 per
 * directory), scanned into a fresh catalog with the page cache dropped (cold), scanned
 * into a fresh catalog with the cache warm, and rescanned unchanged. Targets (DESIGN.md),
 * per 10,000 files: cold <= 2 s, unchanged rescan <= 100 ms (so 20 s and 1 s for the
 * 100,000-file case `make bench-scan` also runs).
 *
 * Then the daemon: build/weightd started on the first cold run's catalog (all COUNT models),
 * timed from its start to the first `weightctl status` that answers (target <= 1 s whatever
 * the catalog's size: the catalog is published in the background), and to the moment every
 * model is published; the baseline is the same start on an empty catalog.
 *
 * In-run baselines over the same tree: a bare recursive walk that stat()s every entry
 * (the floor of any rescan, which must at least look at every file), and a walk that
 * also opens each safetensors file and preads its 8-byte length and its header (the floor
 * of a first scan, which must read every header). Each figure is the median of several
 * runs; cold runs drop the page cache (sync; echo 3 > /proc/sys/vm/drop_caches) before
 * each run, which needs root: when that fails the "cold" figures are warm and the output
 * says so.
 *
 * usage: bench_scan [--count N] [--runs N] [--keep] [DIR]
 * Without DIR the files go to a temporary directory that is removed afterwards; with DIR
 * an existing generated tree of the same count is reused. The last line of the output is
 * one JSON object with every figure.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/catalog/catalog.h"
#include "core/base/common.h"
#include "core/format/gen.h"
#include "core/catalog/scan.h"

#define TARGET_COLD_S_PER_10K 2.0
#define TARGET_RESCAN_S_PER_10K 0.100
#define TARGET_STATUS_S 1.0
#define MAX_RUNS 15

struct walk_stats {
	uint64_t files;	 /* regular files ending in .safetensors */
	uint64_t bytes_read;
	int err;	 /* first negative errno met */
};

static bool has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !strcmp(s + n - m, suffix);
}

/* Reads the 8-byte length and the header of the file @name in @dirfd, like a scanner. */
static void read_header(int dirfd, const char *name, struct walk_stats *w)
{
	static char *buf;
	static size_t cap;
	uint64_t n = 0;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		w->err = w->err ? w->err : -errno;
		return;
	}
	if (pread(fd, &n, 8, 0) == 8 && n <= ST_MAX_HEADER) {
		if (n > cap) {
			free(buf);
			buf = malloc(n);
			cap = buf ? n : 0;
		}
		if (buf && pread(fd, buf, n, 8) == (ssize_t)n)
			w->bytes_read += 8 + n;
	}
	close(fd);
}

/* The baseline walk: fstatat() every entry, recurse into directories, optionally read. */
static void walk(int dirfd, bool read, struct walk_stats *w)
{
	DIR *d = fdopendir(dirfd);
	struct dirent *e;

	if (!d) {
		w->err = w->err ? w->err : -errno;
		close(dirfd);
		return;
	}
	while ((e = readdir(d))) {
		struct stat sb;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (fstatat(dirfd, e->d_name, &sb, 0) < 0) {
			w->err = w->err ? w->err : -errno;
			continue;
		}
		if (S_ISDIR(sb.st_mode)) {
			int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

			if (sub >= 0)
				walk(sub, read, w);
			else
				w->err = w->err ? w->err : -errno;
		} else if (S_ISREG(sb.st_mode) && has_suffix(e->d_name, ".safetensors")) {
			w->files++;
			if (read)
				read_header(dirfd, e->d_name, w);
		}
	}
	closedir(d);
}

static double walk_seconds(const char *root, bool read, struct walk_stats *w)
{
	uint64_t t0 = wd_now_ns();
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	memset(w, 0, sizeof(*w));
	if (fd < 0)
		w->err = -errno;
	else
		walk(fd, read, w);
	return (double)(wd_now_ns() - t0) / 1e9;
}

static uint64_t meminfo_cached_kb(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[256];
	unsigned long long kb = 0;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "Cached: %llu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* Drops the page cache; true when the kernel accepted it. */
static bool drop_caches(void)
{
	int fd;
	bool ok;

	sync();
	fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ok = write(fd, "3\n", 2) == 2;
	close(fd);
	return ok;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void rm_tree(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct scan_run {
	double seconds;
	struct scan_result res;
	int rc;
};

/* One scan of @root into the catalog in @state_dir (created fresh when @fresh). */
static int scan_once(const char *state_base, int k, bool fresh, const char *root,
		     struct scan_run *run)
{
	char state[4096];
	struct catalog *cat = NULL;
	uint64_t t0;
	int rc;

	snprintf(state, sizeof(state), "%s/state-%d", state_base, k);
	if (fresh)
		rm_tree(state);
	rc = catalog_open(state, &cat);
	if (rc) {
		fprintf(stderr, "bench_scan: catalog_open(%s): %s\n", state, strerror(-rc));
		return rc;
	}
	memset(&run->res, 0, sizeof(run->res));
	t0 = wd_now_ns();
	run->rc = scan_roots(cat, &root, 1, NULL, &run->res);
	run->seconds = (double)(wd_now_ns() - t0) / 1e9;
	catalog_close(cat);
	return run->rc;
}

/* The build directory holding weightd and weightctl: this program's ../ */
static char bin_dir[4200];

static void find_bin_dir(const char *argv0)
{
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0)
		snprintf(self, sizeof(self), "%s", argv0);
	else
		self[n] = '\0';
	slash = strrchr(self, '/');
	if (slash)
		*slash = '\0';
	snprintf(bin_dir, sizeof(bin_dir), "%s/..", self);
}

/* Runs `weightctl status [--json] --socket SOCK`; returns its exit status and its output. */
static int ctl_status(const char *sock, bool json, char *out, size_t size)
{
	char ctl[4300], cmd[8800];
	FILE *p;
	size_t n;
	int st;

	snprintf(ctl, sizeof(ctl), "%s/weightctl", bin_dir);
	snprintf(cmd, sizeof(cmd), "'%s' status %s--socket '%s' 2>/dev/null", ctl,
		 json ? "--json " : "", sock);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	n = fread(out, 1, size - 1, p);
	out[n] = '\0';
	st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/*
 * Starts weightd on the catalog in @state (no scan at start) and measures the seconds to the
 * first answered `status` (*@answer_s) and to @models published (*@published_s; -1 when
 * that did not happen within 120 s). Returns 0 or -1.
 */
static int daemon_start_times(const char *state, const char *models_dir, uint32_t models,
			      double *answer_s, double *published_s)
{
	char sock[4200], daemon[4300], out[8192], want[64];
	uint64_t t0, deadline;
	pid_t pid;
	int st;

	snprintf(sock, sizeof(sock), "%s/bench.sock", state);
	snprintf(daemon, sizeof(daemon), "%s/weightd", bin_dir);
	*answer_s = *published_s = -1;
	t0 = wd_now_ns();
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		if (null >= 0) {
			dup2(null, 1);
			dup2(null, 2);
		}
		execl(daemon, daemon, "--foreground", "--state-dir", state, "--socket", sock,
		      "--models", models_dir, "--no-scan", "--host-budget", "64M",
		      "--log-level", "warn", (char *)NULL);
		_exit(127);
	}
	deadline = t0 + 120ull * 1000000000;
	snprintf(want, sizeof(want), "\"models\":%u,", models);
	while (wd_now_ns() < deadline) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return -1;
		if (ctl_status(sock, true, out, sizeof(out)) == 0) {
			if (*answer_s < 0)
				*answer_s = (double)(wd_now_ns() - t0) / 1e9;
			if (strstr(out, want)) {
				*published_s = (double)(wd_now_ns() - t0) / 1e9;
				break;
			}
		}
		usleep(5000);
	}
	kill(pid, SIGTERM);
	waitpid(pid, &st, 0);
	return *answer_s < 0 ? -1 : 0;
}

static void usage(FILE *out)
{
	fprintf(out, "usage: bench_scan [--count N] [--runs N] [--keep] [DIR]\n");
}

static void pass_line(const char *what, double got, double target, double baseline,
		      const char *baseline_name)
{
	printf("%-26s %9.3f s  target <= %.3f s  %-4s  (%.2fx %s)\n", what, got, target,
	       got <= target ? "PASS" : "MISS", baseline > 0 ? got / baseline : 0,
	       baseline_name);
}

int main(int argc, char **argv)
{
	double d_answer = -1, d_published = -1, e_answer = -1, e_published = -1;
	double target_cold, target_rescan;
	uint32_t count = 10000;
	int runs = 3, rescans = 7;
	bool keep = false, tmp_dir = false, dropped = true, reused = false;
	const char *dir_arg = NULL, *tmp = getenv("TMPDIR");
	char dir[2048], state_base[2048], probe[4096];
	double cold_stat[MAX_RUNS], cold_read[MAX_RUNS], cold_scan[MAX_RUNS];
	double warm_stat[MAX_RUNS], warm_read[MAX_RUNS], warm_scan[MAX_RUNS];
	double rescan[MAX_RUNS];
	double gen_s = 0;
	uint64_t cached_before = 0, cached_after = 0, parsed_rescan = 0;
	struct walk_stats w;
	struct scan_run run;
	bool rescan_wrote = false, ok = true;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--count") && i + 1 < argc) {
			count = (uint32_t)strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
			runs = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--keep")) {
			keep = true;
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else if (argv[i][0] != '-' && !dir_arg) {
			dir_arg = argv[i];
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (count == 0 || runs < 1 || runs > MAX_RUNS) {
		usage(stderr);
		return 2;
	}
	find_bin_dir(argv[0]);
	/* The targets scale with the count, never below the 10,000-file ones. */
	target_cold = TARGET_COLD_S_PER_10K * (count > 10000 ? count / 10000.0 : 1.0);
	target_rescan = TARGET_RESCAN_S_PER_10K * (count > 10000 ? count / 10000.0 : 1.0);

	if (dir_arg) {
		snprintf(dir, sizeof(dir), "%s", dir_arg);
	} else {
		snprintf(dir, sizeof(dir), "%s/weightd-bench-scan.XXXXXX",
			 tmp && *tmp ? tmp : "/tmp");
		if (!mkdtemp(dir)) {
			perror("bench_scan: mkdtemp");
			return 1;
		}
		tmp_dir = true;
	}
	/* Catalogs live outside the scanned tree, in their own temporary directory. */
	snprintf(state_base, sizeof(state_base), "%s/weightd-bench-state.XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(state_base)) {
		perror("bench_scan: mkdtemp");
		return 1;
	}

	/* Reuse a tree generated earlier with the same count (gen is deterministic). */
	snprintf(probe, sizeof(probe), "%s/%03u/model-%05u.safetensors", dir,
		 (count - 1) / 100, count - 1);
	if (dir_arg && access(probe, F_OK) == 0 &&
	    (walk_seconds(dir, false, &w), w.files == count)) {
		reused = true;
	} else {
		struct gen_options opt = { .count = count };
		uint64_t t0 = wd_now_ns();

		rc = gen_preset("files", dir, &opt);
		gen_s = (double)(wd_now_ns() - t0) / 1e9;
		if (rc) {
			fprintf(stderr, "bench_scan: gen_preset(files, %s): %s\n", dir,
				strerror(-rc));
			return 1;
		}
	}
	if (reused)
		snprintf(probe, sizeof(probe), "reused an existing tree");
	else
		snprintf(probe, sizeof(probe), "generated in %.2f s", gen_s);
	printf("bench_scan: %u files in %s (%s), %d runs each, %u scan threads\n", count, dir,
	       probe, runs, scan_default_threads());

	/* Cold: each run starts from a dropped page cache. */
	for (int r = 0; r < runs; r++) {
		cached_before = meminfo_cached_kb();
		dropped = drop_caches() && dropped;
		cached_after = meminfo_cached_kb();
		cold_stat[r] = walk_seconds(dir, false, &w);
		if (w.files != count || w.err)
			ok = false;
		dropped = drop_caches() && dropped;
		cold_read[r] = walk_seconds(dir, true, &w);
		dropped = drop_caches() && dropped;
		rc = scan_once(state_base, r, true, dir, &run);
		cold_scan[r] = run.seconds;
		if (rc || run.res.n_files != count || run.res.n_models != count ||
		    run.res.n_invalid) {
			fprintf(stderr, "bench_scan: cold scan rc %d files %llu models %llu "
				"invalid %llu problems %zu\n", rc,
				(unsigned long long)run.res.n_files,
				(unsigned long long)run.res.n_models,
				(unsigned long long)run.res.n_invalid, run.res.n_problems);
			ok = false;
		}
		scan_result_free(&run.res);
	}
	if (!dropped)
		printf("note: could not drop the page cache (needs root); cold figures are warm\n");
	else
		printf("page cache dropped before each cold run (Cached %llu -> %llu MiB)\n",
		       (unsigned long long)cached_before / 1024,
		       (unsigned long long)cached_after / 1024);

	/* Warm: the same walks, and first scans into fresh catalogs, with the cache full. */
	walk_seconds(dir, true, &w);
	for (int r = 0; r < runs; r++) {
		warm_stat[r] = walk_seconds(dir, false, &w);
		warm_read[r] = walk_seconds(dir, true, &w);
		rc = scan_once(state_base, MAX_RUNS + r, true, dir, &run);
		warm_scan[r] = run.seconds;
		if (rc || run.res.n_files != count)
			ok = false;
		scan_result_free(&run.res);
	}

	/* Unchanged rescans of the first cold run's catalog. */
	for (int r = 0; r < rescans; r++) {
		rc = scan_once(state_base, 0, false, dir, &run);
		rescan[r] = run.seconds;
		parsed_rescan += run.res.n_parsed;
		rescan_wrote |= run.res.wrote;
		if (rc || run.res.n_files != count || run.res.n_reused != count)
			ok = false;
		scan_result_free(&run.res);
	}

	/* The daemon on the full catalog (state-0, the first cold run's) and on an empty one. */
	{
		char empty[4200], state0[4200];

		snprintf(state0, sizeof(state0), "%s/state-0", state_base);
		snprintf(empty, sizeof(empty), "%s/state-empty", state_base);
		if (daemon_start_times(state0, dir, count, &d_answer, &d_published) ||
		    daemon_start_times(empty, dir, 0, &e_answer, &e_published)) {
			fprintf(stderr, "bench_scan: the daemon did not start or answer (%s/weightd)\n",
				bin_dir);
			ok = false;
		}
	}

	{
		double cs = median(cold_stat, runs), cr = median(cold_read, runs);
		double cc = median(cold_scan, runs), ws = median(warm_stat, runs);
		double wr = median(warm_read, runs), wc = median(warm_scan, runs);
		double rs = median(rescan, rescans);

		printf("\n%-26s %9s  %12s\n", "", "median", "files/s");
		printf("%-26s %9.3f s  %12.0f\n", "cold walk + stat", cs, count / cs);
		printf("%-26s %9.3f s  %12.0f\n", "cold walk + read headers", cr, count / cr);
		printf("%-26s %9.3f s  %12.0f\n", "cold scan (fresh catalog)", cc, count / cc);
		printf("%-26s %9.3f s  %12.0f\n", "warm walk + stat", ws, count / ws);
		printf("%-26s %9.3f s  %12.0f\n", "warm walk + read headers", wr, count / wr);
		printf("%-26s %9.3f s  %12.0f\n", "warm first scan", wc, count / wc);
		printf("%-26s %9.3f s  %12.0f  (%llu files re-read, catalog %s)\n",
		       "unchanged rescan", rs, count / rs, (unsigned long long)parsed_rescan,
		       rescan_wrote ? "WRITTEN" : "untouched");
		printf("\n");
		printf("%-26s %9.3f s  (all %u models published after %.3f s)\n",
		       "daemon start to status", d_answer, count, d_published);
		printf("%-26s %9.3f s  (baseline: empty catalog)\n", "  same, empty catalog",
		       e_answer);
		printf("\n");
		pass_line(dropped ? "cold scan" : "cold scan (cache warm!)", cc, target_cold, cr,
			  "cold walk+read");
		pass_line("unchanged rescan", rs, target_rescan, ws, "warm walk+stat");
		pass_line("status after start", d_answer, TARGET_STATUS_S, e_answer,
			  "empty catalog");
		printf("%-26s %9.3f s  (%.2fx warm walk+read)\n", "warm first scan", wc,
		       wr > 0 ? wc / wr : 0);
		if (!ok)
			printf("ERROR: a scan or walk did not see all %u files (see stderr)\n",
			       count);
		printf("{\"bench\":\"scan\",\"files\":%u,\"runs\":%d,\"threads\":%u,"
		       "\"cache_dropped\":%s,\"generated_s\":%.3f,\"reused_tree\":%s,"
		       "\"cold_walk_stat_s\":%.4f,\"cold_walk_read_s\":%.4f,\"cold_scan_s\":%.4f,"
		       "\"cold_files_per_s\":%.0f,\"cold_ratio_vs_walk_read\":%.3f,"
		       "\"warm_walk_stat_s\":%.4f,\"warm_walk_read_s\":%.4f,"
		       "\"warm_first_scan_s\":%.4f,\"warm_ratio_vs_walk_read\":%.3f,"
		       "\"rescan_s\":%.4f,\"rescan_files_per_s\":%.0f,"
		       "\"rescan_ratio_vs_walk_stat\":%.3f,\"rescan_files_reread\":%llu,"
		       "\"rescan_wrote\":%s,\"target_cold_s\":%.1f,\"target_rescan_s\":%.3f,"
		       "\"daemon_status_s\":%.4f,\"daemon_status_empty_s\":%.4f,"
		       "\"daemon_published_s\":%.4f,\"target_status_s\":%.1f,\"status_pass\":%s,"
		       "\"cold_pass\":%s,\"rescan_pass\":%s,\"all_files_seen\":%s}\n",
		       count, runs, scan_default_threads(), dropped ? "true" : "false", gen_s,
		       reused ? "true" : "false", cs, cr, cc, count / cc, cr > 0 ? cc / cr : 0, ws,
		       wr, wc, wr > 0 ? wc / wr : 0, rs, count / rs, ws > 0 ? rs / ws : 0,
		       (unsigned long long)parsed_rescan, rescan_wrote ? "true" : "false",
		       target_cold, target_rescan, d_answer, e_answer, d_published,
		       TARGET_STATUS_S,
		       d_answer >= 0 && d_answer <= TARGET_STATUS_S ? "true" : "false",
		       cc <= target_cold ? "true" : "false",
		       rs <= target_rescan ? "true" : "false", ok ? "true" : "false");
	}

	rm_tree(state_base);
	if (tmp_dir && !keep)
		rm_tree(dir);
	else if (tmp_dir)
		fprintf(stderr, "bench_scan: kept %s\n", dir);
	return ok ? 0 : 1;
}
