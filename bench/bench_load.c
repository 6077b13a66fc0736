/*
 * Load benchmark: disk -> host cache as a user gets it, through a running daemon, against
 * the baselines it must be compared with, all measured in the same run on the same files (a
 * generated LLaMA checkpoint, -s bytes of tensors in 4 shards).
 *
 * Baselines (uring/rawread.h):
 *   best warm read       the files in the page cache, read into one pre-faulted buffer by
 *                        io_uring (QD 32 x 4 MiB) and by pread(2) with 1 and 2 threads; the
 *                        best of the three is the warm target's 100%
 *   raw O_DIRECT read    io_uring, QD 32 x 4 MiB, page cache dropped: the cold target's 100%
 *
 * Through the daemon (build/weightd started by this program, its own state directory):
 *   weightd_load()       what a C client's call takes, from request to "resident":
 *                        warm (files cached) and cold (page cache dropped), into a reused
 *                        arena (pages already touched by an earlier load, then unloaded) and
 *                        into a fresh one (a new daemon: the arena's pages never touched),
 *                        and into a fresh one of a daemon started with --host-prefault,
 *                        once its prefault is done
 *   weightctl load       the whole command, process start included, warm and cold
 *   Python client.load() bindings/python, the call alone, warm (a python3 child)
 *
 * Library level (second table): the loader alone into an arena, aligned and file layouts,
 * warm and cold, with mmap + touch and read() into malloc for comparison, and what finding
 * the cached ranges costs (uring/residency.h: cachestat, mincore).
 *
 * Cold means the page cache was dropped (echo 1 > /proc/sys/vm/drop_caches, as root) or,
 * when that is refused, each file was evicted with posix_fadvise(DONTNEED); the JSON says
 * which. Each figure is the best of -r runs, with the slowest beside it (the spread). The
 * machine's load average before and after is printed: figures taken on a busy machine say
 * little. Writes bench/out/load.json and, with gnuplot, bench/out/load.png; the last line
 * printed is one JSON object.
 *
 * One file (about 850 lines) because each bench/bench_*.c is built alone into its program
 * (the Makefile's bench rule): the baselines, the daemon runs, the library runs and the
 * report all measure one thing, the load, on the same files.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/base/common.h"
#include "core/format/gen.h"
#include "core/base/log.h"
#include "uring/arena.h"
#include "uring/loader.h"
#include "uring/rawread.h"
#include "uring/residency.h"
#include "weightd.h"

#define CHUNK (4u << 20)
#define MAXF RAWREAD_MAX_FILES

static struct rawread_set set;	/* the checkpoint's files */
static const char *cold_method = "none";
static char bindir[PATH_MAX];	/* where weightd and weightctl are */
static char model_dir[PATH_MAX], model_name[256];

static double now_s(void)
{
	return (double)wd_now_ns() / 1e9;
}

/* Best (least) and worst seconds of a figure's runs. */
struct fig {
	double best, worst;
};

static void add(struct fig *f, double s)
{
	if (s <= 0)
		return;
	if (f->best <= 0 || s < f->best)
		f->best = s;
	if (s > f->worst)
		f->worst = s;
}

static double gbs(double secs)
{
	return secs > 0 ? (double)set.total_file / secs / 1e9 : 0;
}

static void loadavg(char *buf, size_t size)
{
	FILE *f = fopen("/proc/loadavg", "re");

	snprintf(buf, size, "?");
	if (f) {
		if (fgets(buf, (int)size, f))
			buf[strcspn(buf, " ")] = '\0';
		fclose(f);
	}
}

/* Drops the page cache for our files: globally when allowed, else per file. */
static void drop_caches(void)
{
	cold_method = rawread_drop_name(rawread_drop_cache((const char *const *)set.paths, set.n,
							   true));
}

static void warm_files(char *buf)
{
	double s;

	if (rawread_files((const char *const *)set.paths, set.sizes, set.bases, set.n, buf, false,
			  &s)) {
		fprintf(stderr, "cannot read the files\n");
		exit(1);
	}
}

/*
 * The baselines, measured between the loads of every round (the machine may change speed
 * within a run: interleaving keeps each figure next to its baseline) and kept at their best.
 */
static struct fig b_uring, b_psync1, b_psync2, b_dio;

static void baseline_warm(char *buf)
{
	struct rawread_warm wb;

	if (rawread_best_warm((const char *const *)set.paths, set.sizes, set.bases, set.n, buf, 1,
			      &wb)) {
		fprintf(stderr, "warm baseline read failed\n");
		exit(1);
	}
	add(&b_uring, wb.uring);
	add(&b_psync1, wb.psync1);
	add(&b_psync2, wb.psync2);
}

static void baseline_cold(char *buf)
{
	double s;

	drop_caches();
	if (rawread_files((const char *const *)set.paths, set.sizes, set.bases, set.n, buf, true,
			  &s) == 0)
		add(&b_dio, s);
}

/* ---- the daemon ------------------------------------------------------------------------ */

struct daemon_proc {
	pid_t pid;
	char dir[PATH_MAX], sock[PATH_MAX + 8];
	struct weightd *w;
};

static void daemon_stop(struct daemon_proc *d)
{
	int st;

	if (d->w)
		weightd_detach(d->w);
	d->w = NULL;
	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		waitpid(d->pid, &st, 0);
	}
	d->pid = 0;
}

/* Whether @log has a line with @what. */
static bool log_has(const char *log, const char *what)
{
	char line[1024];
	bool found = false;
	FILE *f = fopen(log, "re");

	while (f && !found && fgets(line, sizeof(line), f))
		found = strstr(line, what) != NULL;
	if (f)
		fclose(f);
	return found;
}

/*
 * Starts build/weightd on the model's folder with room for it; attaches once it answers and
 * has published the model. With @prefault it runs with --host-prefault and this waits until
 * the whole host cache is allocated.
 */
static void daemon_start(struct daemon_proc *d, const char *dir, bool prefault)
{
	char exe[PATH_MAX + 16], budget[64], log[PATH_MAX + 16];

	snprintf(d->dir, sizeof(d->dir), "%s", dir);
	snprintf(d->sock, sizeof(d->sock), "%s/sock", dir);
	snprintf(exe, sizeof(exe), "%s/weightd", bindir);
	snprintf(budget, sizeof(budget), "%luM", (set.total_alloc * 5 / 4 >> 20) + 64);
	snprintf(log, sizeof(log), "%s/weightd.log", dir);
	unlink(d->sock);
	unlink(log);
	d->pid = fork();
	if (d->pid < 0) {
		perror("fork");
		exit(1);
	}
	if (d->pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

		if (fd >= 0)
			dup2(fd, 2);
		execl(exe, "weightd", "--foreground", "--state-dir", dir, "--socket", d->sock,
		      "--models", model_dir, "--host-budget", budget, "--log-level", "info",
		      prefault ? "--host-prefault" : (char *)NULL, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 2400; i++) {
		if (!d->w && weightd_attach(d->sock, NULL, &d->w))
			d->w = NULL;
		/* The daemon scans at start: wait until it publishes the model. */
		if (d->w && weightd_lookup(d->w, model_name, NULL) == 0 &&
		    (!prefault || log_has(log, "\"prefaulted\"")))
			return;
		usleep(25000);
	}
	fprintf(stderr, "the daemon (%s) did not publish %s; its log: %s\n", exe, model_name, log);
	daemon_stop(d);
	exit(1);
}

/* weightd_load() of the whole model; returns seconds. */
static double daemon_load(struct daemon_proc *d)
{
	double t0 = now_s();
	int ret = weightd_load(d->w, model_name, NULL, WEIGHTD_TIER_HOST, WEIGHTD_LOAD_NO_PROGRESS,
			       NULL, NULL);

	if (ret) {
		fprintf(stderr, "weightd_load(%s): %s\n", model_name, weightd_last_error());
		exit(1);
	}
	return now_s() - t0;
}

static void daemon_unload(struct daemon_proc *d)
{
	if (weightd_unload(d->w, model_name, NULL, WEIGHTD_TIER_HOST)) {
		fprintf(stderr, "weightd_unload(%s): %s\n", model_name, weightd_last_error());
		exit(1);
	}
}

/*
 * `weightctl load MODEL`, the whole process; returns seconds. posix_spawn, not fork: a fork
 * of this process would copy the page tables of its 1 GiB buffer first, and be timed.
 */
static double ctl_load(struct daemon_proc *d)
{
	char exe[PATH_MAX + 16], env_sock[PATH_MAX + 32];
	char *const args[] = { "weightctl", "load", model_name, NULL };
	char *const envp[] = { env_sock, "PATH=/usr/bin:/bin", NULL };
	posix_spawn_file_actions_t fa;
	double t0;
	int st, rc;
	pid_t pid;

	snprintf(exe, sizeof(exe), "%s/weightctl", bindir);
	snprintf(env_sock, sizeof(env_sock), "WEIGHTD_SOCKET=%s", d->sock);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	t0 = now_s();
	rc = posix_spawn(&pid, exe, &fa, NULL, args, envp);
	posix_spawn_file_actions_destroy(&fa);
	if (rc || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, "weightctl load %s failed\n", model_name);
		exit(1);
	}
	return now_s() - t0;
}

/*
 * Python's client.load() of the model, @runs times warm (unloaded in between), in one
 * python3 child; adds each call's seconds to @f. Returns false when Python or the binding
 * cannot run here (the row is then left out, and the JSON says so).
 */
static bool python_loads(struct daemon_proc *d, int runs, struct fig *f)
{
	static const char script[] =
		"import sys, time\n"
		"sys.path.insert(0, sys.argv[1])\n"
		"import weightd\n"
		"c = weightd.connect(sys.argv[2])\n"
		"for _ in range(int(sys.argv[4])):\n"
		"    t0 = time.perf_counter()\n"
		"    c.load(sys.argv[3], pin=False)\n"
		"    print('PYLOAD %.6f' % (time.perf_counter() - t0), flush=True)\n"
		"    c.unload(sys.argv[3])\n";
	char cmd[4 * PATH_MAX], line[256];
	bool any = false;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "WEIGHTD_LIB='%s/libweightd.so' %s -c \"$BENCH_PY\" "
		 "'%s/../bindings/python' '%s' '%s' %d 2>&1", bindir,
		 /* Debian's python3 has numpy; a python3 earlier in PATH (pyenv) may not. */
		 access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3", bindir,
		 d->sock, model_name, runs);
	setenv("BENCH_PY", script, 1);
	p = popen(cmd, "r");
	if (!p)
		return false;
	while (fgets(line, sizeof(line), p)) {
		double s;

		if (sscanf(line, "PYLOAD %lf", &s) == 1) {
			add(f, s);
			any = true;
		} else {
			fprintf(stderr, "python: %s", line);
		}
	}
	return pclose(p) == 0 && any;
}

struct product {
	struct fig warm, cold, fresh_warm, fresh_cold, pf_warm, pf_cold, ctl_warm, ctl_cold;
	struct fig py_warm;
	bool py;
	uint64_t pages;
	char pages_name[16];
};

/*
 * Loads into a fresh arena, @runs times cold then warm: each load by a new daemon (started
 * with --host-prefault when @prefault), whose arena pages nothing but its prefault touched.
 */
static void fresh_rounds(char *buf, int runs, struct daemon_proc *d, const char *dir,
			 bool prefault, struct fig *cold, struct fig *warm)
{
	for (int r = 0; r < runs; r++) {
		daemon_start(d, dir, prefault);
		baseline_cold(buf);
		drop_caches();
		add(cold, daemon_load(d));
		daemon_stop(d);
		daemon_start(d, dir, prefault);
		baseline_warm(buf);
		add(warm, daemon_load(d));
		daemon_stop(d);
	}
}

static void run_product(char *buf, int runs, struct product *pr)
{
	char tmpl[] = "/tmp/bench-load.XXXXXX";
	struct daemon_proc d = { 0 };
	struct weightd_stats st;
	char *dir = mkdtemp(tmpl), cmd[PATH_MAX + 16];

	if (!dir) {
		perror("mkdtemp");
		exit(1);
	}
	/* A fresh arena: each run a new daemon, whose arena pages nothing has touched yet. */
	fresh_rounds(buf, runs, &d, dir, false, &pr->fresh_cold, &pr->fresh_warm);
	/* The same, the daemon started with --host-prefault: its first load after the prefault. */
	fresh_rounds(buf, runs, &d, dir, true, &pr->pf_cold, &pr->pf_warm);
	/* A reused arena: one daemon; each load goes where the last one was unloaded from. */
	daemon_start(&d, dir, false);
	if (weightd_stats(d.w, &st) == 0) {
		pr->pages = st.host_page_size;
		snprintf(pr->pages_name, sizeof(pr->pages_name), "%s",
			 weightd_pages_name(st.host_page_kind));
	}
	daemon_load(&d);
	daemon_unload(&d);
	for (int r = 0; r < runs; r++) {
		baseline_cold(buf);
		drop_caches();
		add(&pr->cold, daemon_load(&d));
		daemon_unload(&d);
		drop_caches();
		add(&pr->ctl_cold, ctl_load(&d));
		daemon_unload(&d);
	}
	for (int r = 0; r < runs; r++) {
		baseline_warm(buf);
		add(&pr->warm, daemon_load(&d));
		daemon_unload(&d);
		add(&pr->ctl_warm, ctl_load(&d));
		daemon_unload(&d);
	}
	pr->py = python_loads(&d, runs, &pr->py_warm);
	daemon_stop(&d);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd))
		fprintf(stderr, "could not remove %s\n", dir);
}

/* ---- library level -------------------------------------------------------------------- */

static double mmap_touch(void)
{
	volatile uint64_t sink = 0;
	double t0 = now_s();

	for (unsigned int i = 0; i < set.n; i++) {
		int fd = open(set.paths[i], O_RDONLY);
		const volatile char *m = mmap(NULL, set.sizes[i], PROT_READ, MAP_PRIVATE, fd, 0);

		for (uint64_t o = 0; o < set.sizes[i]; o += 4096)
			sink += (uint64_t)m[o];
		munmap((void *)m, set.sizes[i]);
		close(fd);
	}
	(void)sink;
	return now_s() - t0;
}

static double read_malloc(void)
{
	double t0 = now_s();

	for (unsigned int i = 0; i < set.n; i++) {
		char *m = malloc(set.sizes[i]);
		int fd = open(set.paths[i], O_RDONLY);
		uint64_t got = 0;
		ssize_t n;

		while (got < set.sizes[i] && (n = read(fd, m + got, set.sizes[i] - got)) > 0)
			got += (uint64_t)n;
		close(fd);
		free(m);
	}
	return now_s() - t0;
}

struct lrun {
	double secs;
	uint64_t bytes, tensor_bytes, direct_bytes;
	uint32_t n_direct;
};

static struct lrun run_loader(struct arena *a, struct loader *l, unsigned int flags)
{
	struct load_file_spec fs[MAXF];
	struct load_spec spec = { .name = "llama", .n_files = (size_t)set.n, .files = fs,
				  .flags = flags };
	char msg[LOADER_MSG_MAX];
	struct lrun r = { -1, 0, 0, 0, 0 };
	struct load_plan *p;
	uint64_t ext;
	double t0;

	for (unsigned int i = 0; i < set.n; i++)
		fs[i] = (struct load_file_spec){ .path = set.paths[i] };
	t0 = now_s();
	if (loader_plan(&spec, CHUNK, &p, msg, sizeof(msg)) || arena_alloc(a, p->bytes, &ext)) {
		fprintf(stderr, "plan/alloc failed: %s\n", msg);
		exit(1);
	}
	if (loader_run(l, p, ext, NULL, msg, sizeof(msg))) {
		fprintf(stderr, "load failed: %s\n", msg);
		exit(1);
	}
	r.secs = now_s() - t0;
	r.bytes = p->bytes;
	r.tensor_bytes = p->tensor_bytes;
	r.direct_bytes = p->direct_bytes;
	r.n_direct = p->n_direct;
	arena_free(a, ext, p->bytes);
	loader_plan_free(p);
	return r;
}

/* Seconds to find the cached granules of every file with @m (the best of @runs). */
static double probe_cost(enum residency_method m, int runs)
{
	uint8_t *map = malloc(set.total_file / RESIDENCY_GRANULE + set.n + 1);
	struct fig f = { 0 };

	residency_set_method(m);
	for (int r = 0; r < runs && map; r++) {
		double t0 = now_s();

		for (unsigned int i = 0; i < set.n; i++) {
			int fd = open(set.paths[i], O_RDONLY | O_CLOEXEC);

			if (fd >= 0) {
				residency_map(fd, set.sizes[i], map);
				close(fd);
			}
		}
		add(&f, now_s() - t0);
	}
	residency_set_method(RESIDENCY_AUTO);
	free(map);
	return f.best;
}

struct library {
	struct fig raw_cold, mmap_warm, mmap_cold, read_warm, al_warm, fl_warm, al_cold, fl_cold;
	uint64_t tensor_bytes, aligned_bytes, file_bytes;
	uint32_t direct_files;
	double probe_cachestat, probe_mincore;	/* half warm: the costly case */
	const char *pages;
};

static void run_library(char *buf, int runs, struct library *lib)
{
	struct arena_options ao = { .budget = set.total_alloc * 2 + (64u << 20) };
	struct arena *arena;
	struct loader *loader;
	double s;

	if (arena_create(&ao, &arena) || loader_create(arena, NULL, &loader)) {
		fprintf(stderr, "arena or loader setup failed\n");
		exit(1);
	}
	lib->pages = arena_pages_name(arena->pages);
	for (int r = 0; r < runs; r++) {
		struct lrun lr;

		drop_caches();
		if (!rawread_files((const char *const *)set.paths, set.sizes, set.bases, set.n, buf,
				   false, &s))
			add(&lib->raw_cold, s);
		drop_caches();
		add(&lib->mmap_cold, mmap_touch());
		drop_caches();
		lr = run_loader(arena, loader, 0);
		add(&lib->al_cold, lr.secs);
		lib->direct_files = lr.n_direct;
		drop_caches();
		add(&lib->fl_cold, run_loader(arena, loader, LOAD_F_FILE_LAYOUT).secs);
	}
	warm_files(buf);
	for (int r = 0; r < runs; r++) {
		struct lrun lr;

		add(&lib->mmap_warm, mmap_touch());
		add(&lib->read_warm, read_malloc());
		lr = run_loader(arena, loader, 0);
		add(&lib->al_warm, lr.secs);
		lib->aligned_bytes = lr.bytes;
		lib->tensor_bytes = lr.tensor_bytes;
		lr = run_loader(arena, loader, LOAD_F_FILE_LAYOUT);
		add(&lib->fl_warm, lr.secs);
		lib->file_bytes = lr.bytes;
	}
	/* The probes' cost where it is highest: half of each file cached, granule by granule. */
	drop_caches();
	for (unsigned int i = 0; i < set.n; i++) {
		int fd = open(set.paths[i], O_RDONLY | O_CLOEXEC);

		posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
		for (uint64_t o = 0; o < set.sizes[i]; o += 2 * RESIDENCY_GRANULE)
			if (pread(fd, buf, RESIDENCY_GRANULE, (off_t)o) < 0)
				break;
		close(fd);
	}
	lib->probe_cachestat = probe_cost(RESIDENCY_CACHESTAT, runs);
	lib->probe_mincore = probe_cost(RESIDENCY_MINCORE, runs);
	loader_destroy(loader);
	arena_destroy(arena);
}

/* ---- report --------------------------------------------------------------------------- */

struct row {
	const char *key, *label;
	struct fig f;
};

static void print_rows(const char *title, const struct row *rows, size_t n)
{
	printf("\n%s\n%-46s %8s %8s %10s\n", title, "path", "GB/s", "seconds", "slowest s");
	for (size_t i = 0; i < n; i++) {
		if (rows[i].f.best <= 0)
			printf("%-46s %8s\n", rows[i].label, "n/a");
		else
			printf("%-46s %8.2f %8.3f %10.3f\n", rows[i].label, gbs(rows[i].f.best),
			       rows[i].f.best, rows[i].f.worst);
	}
}

static size_t json_rows(char *json, size_t size, const struct row *rows, size_t n)
{
	size_t o = 0;

	for (size_t i = 0; i < n && o < size; i++)
		o += (size_t)snprintf(json + o, size - o, ",\"%s_gbs\":%.3f", rows[i].key,
				      gbs(rows[i].f.best));
	return o;
}

/*
 * A ratio as a percentage; above 105% it says "baseline suspect": a load cannot beat a raw
 * read of the same bytes, so the baseline run was slowed by something else. Four static
 * buffers, used in turn.
 */
static const char *pct(double r)
{
	static char buf[4][64];
	static int k;

	k = (k + 1) % 4;
	snprintf(buf[k], sizeof(buf[k]), r > 1.05 ? "%.1f%% (baseline suspect)" : "%.1f%%",
		 100 * r);
	return buf[k];
}

static double ratio(double base_secs, double secs)
{
	return base_secs > 0 && secs > 0 ? base_secs / secs : 0;
}

/*
 * Writes OUT/load.json, OUT/load.dat (each kind of load beside its baseline) and, when
 * gnuplot is there, OUT/load.png.
 */
static void write_outputs(const char *out, const char *json, const struct fig *warm_base,
			  const struct fig *dio, const struct product *pr)
{
	char cmd[2400];
	FILE *f;

	snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", out);
	if (system(cmd) == 0) {
		char p[1200];

		snprintf(p, sizeof(p), "%s/load.json", out);
		f = fopen(p, "w");
		if (f) {
			fprintf(f, "%s\n", json);
			fclose(f);
		}
		snprintf(p, sizeof(p), "%s/load.dat", out);
		f = fopen(p, "w");
		if (f) {
			/* Each kind of load beside its baseline: warm ones, then cold ones. */
			const struct row chart[] = {
				{ NULL, "warm: raw read (baseline)", *warm_base },
				{ NULL, "warm: weightd_load", pr->warm },
				{ NULL, "warm: fresh arena", pr->fresh_warm },
				{ NULL, "warm: fresh, prefault", pr->pf_warm },
				{ NULL, "warm: weightctl load", pr->ctl_warm },
				{ NULL, "warm: Python load()", pr->py_warm },
				{ NULL, "cold: O_DIRECT read (baseline)", *dio },
				{ NULL, "cold: weightd_load", pr->cold },
				{ NULL, "cold: fresh arena", pr->fresh_cold },
				{ NULL, "cold: fresh, prefault", pr->pf_cold },
				{ NULL, "cold: weightctl load", pr->ctl_cold },
			};

			for (size_t i = 0; i < ARRAY_SIZE(chart); i++)
				fprintf(f, "\"%s\" %.3f\n", chart[i].label, gbs(chart[i].f.best));
			fclose(f);
		}
		if (system("command -v gnuplot >/dev/null 2>&1") == 0) {
			snprintf(cmd, sizeof(cmd),
				 "gnuplot -e \"set terminal png size 1200,600; set output '%s/load.png';"
				 " set style data histograms; set style fill solid; set ylabel 'GB/s';"
				 " set xtics rotate by -30; set yrange [0:*]; set termoption noenhanced;"
				 " set bmargin 11; set title 'disk -> host cache through the "
				 "daemon (%.2f GB, cold = %s)'; plot '%s/load.dat' using 2:xtic(1) "
				 "notitle\" 2>/dev/null", out, (double)set.total_file / 1e9, cold_method,
				 out);
			if (system(cmd))
				fprintf(stderr, "gnuplot failed; no chart\n");
		}
	}
}

int main(int argc, char **argv)
{
	const char *size_s = "1G", *dir = NULL, *out = "bench/out";
	char dirbuf[1024], la0[32], la1[32], self[PATH_MAX];
	struct product pr = { 0 };
	struct library lib = { 0 };
	uint64_t size;
	int runs = 3, c;
	bool product_only = false;
	ssize_t n;

	while ((c = getopt(argc, argv, "s:d:r:o:P")) != -1) {
		switch (c) {
		case 's': size_s = optarg; break;
		case 'd': dir = optarg; break;
		case 'r': runs = atoi(optarg); break;
		case 'o': out = optarg; break;
		case 'P': product_only = true; break;
		default:
			fprintf(stderr, "usage: bench_load [-s SIZE] [-d DIR] [-r RUNS] [-o OUTDIR] "
				"[-P (through the daemon only)]\n");
			return 2;
		}
	}
	if (gen_parse_size(size_s, &size) || runs < 1) {
		fprintf(stderr, "bad size or runs\n");
		return 2;
	}
	if (!dir) {
		snprintf(dirbuf, sizeof(dirbuf), "build/bench-data/llama-%s", size_s);
		dir = dirbuf;
	}
	c = rawread_bench_model(dir, size, &set);
	if (c) {
		fprintf(stderr, "cannot generate or list %s: %s\n", dir, strerror(-c));
		return 1;
	}
	if (!realpath(dir, model_dir)) {
		perror(dir);
		return 1;
	}
	snprintf(model_name, sizeof(model_name), "%s", basename(strdup(model_dir)));
	/* weightd and weightctl sit one folder up from this program (build/bench/..). */
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return 1;
	self[n] = '\0';
	snprintf(bindir, sizeof(bindir), "%s/..", dirname(self));
	log_set_level(LOG_WARN);

	char *buf = mmap(NULL, set.total_alloc + CHUNK, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED) {
		fprintf(stderr, "cannot map %lu bytes\n", set.total_alloc);
		return 1;
	}
	loadavg(la0, sizeof(la0));
	fprintf(stderr, "model %s: %d files, %.2f GB; load average %s\n", model_name, set.n,
		(double)set.total_file / 1e9, la0);

	run_product(buf, runs, &pr);
	if (!product_only)
		run_library(buf, runs, &lib);
	loadavg(la1, sizeof(la1));

	/* The best warm read is the best of its three methods. */
	struct fig dio = b_dio;
	struct { double best, uring, psync1, psync2; const char *best_name; } wb = {
		b_uring.best, b_uring.best, b_psync1.best, b_psync2.best, "io_uring" };

	if (wb.psync1 < wb.best) {
		wb.best = wb.psync1;
		wb.best_name = "psync x1";
	}
	if (wb.psync2 < wb.best) {
		wb.best = wb.psync2;
		wb.best_name = "psync x2";
	}

	const struct row base[] = {
		{ "best_warm_read", "best warm read (baseline, 100% of warm)",
		  { wb.best, wb.best } },
		{ "warm_uring", "  of which io_uring QD32", b_uring },
		{ "warm_psync1", "  of which pread x1", b_psync1 },
		{ "warm_psync2", "  of which pread x2", b_psync2 },
		{ "raw_odirect_cold", "raw O_DIRECT read (baseline, 100% of cold)", dio },
	};
	const struct row prod[] = {
		{ "daemon_warm", "weightd_load, warm, reused arena", pr.warm },
		{ "daemon_cold", "weightd_load, cold, reused arena", pr.cold },
		{ "daemon_fresh_warm", "weightd_load, warm, fresh arena", pr.fresh_warm },
		{ "daemon_fresh_cold", "weightd_load, cold, fresh arena", pr.fresh_cold },
		{ "daemon_prefault_warm", "weightd_load, warm, fresh, --host-prefault", pr.pf_warm },
		{ "daemon_prefault_cold", "weightd_load, cold, fresh, --host-prefault", pr.pf_cold },
		{ "ctl_warm", "weightctl load (whole command), warm", pr.ctl_warm },
		{ "ctl_cold", "weightctl load (whole command), cold", pr.ctl_cold },
		{ "python_warm", "Python client.load(), warm", pr.py_warm },
	};
	const struct row libr[] = {
		{ "lib_aligned_warm", "loader aligned, warm", lib.al_warm },
		{ "lib_file_warm", "loader file layout, warm", lib.fl_warm },
		{ "lib_aligned_cold", "loader aligned, cold", lib.al_cold },
		{ "lib_file_cold", "loader file layout, cold", lib.fl_cold },
		{ "raw_uring_cold", "raw io_uring buffered read, cold", lib.raw_cold },
		{ "mmap_touch_warm", "mmap + touch, warm", lib.mmap_warm },
		{ "mmap_touch_cold", "mmap + touch, cold", lib.mmap_cold },
		{ "read_malloc_warm", "read() into malloc, warm", lib.read_warm },
	};
	double warm_r = ratio(wb.best, pr.warm.best), cold_r = ratio(dio.best, pr.cold.best);
	double fwarm_r = ratio(wb.best, pr.fresh_warm.best);
	double fcold_r = ratio(dio.best, pr.fresh_cold.best);
	double pfwarm_r = ratio(wb.best, pr.pf_warm.best), pfcold_r = ratio(dio.best, pr.pf_cold.best);
	double py_ctl = pr.py && pr.ctl_warm.best > 0 ? pr.py_warm.best / pr.ctl_warm.best : 0;
	double py_c = pr.py && pr.warm.best > 0 ? pr.py_warm.best / pr.warm.best : 0;
	char json[8192];
	size_t o = 0;

	printf("model %s, %.2f GB in %d files; best of %d runs; cold = %s; host cache pages %s "
	       "(%lu bytes); load average %s before, %s after\n", model_name,
	       (double)set.total_file / 1e9, set.n, runs, cold_method, pr.pages_name, pr.pages,
	       la0, la1);
	print_rows("baselines", base, ARRAY_SIZE(base));
	print_rows("through the daemon (what a user gets)", prod, ARRAY_SIZE(prod));
	printf("\nwarm:  %s of the best warm read (%s)   target >= 90%%\n", pct(warm_r),
	       wb.best_name);
	printf("cold:  %s of raw O_DIRECT   target >= 90%%\n", pct(cold_r));
	printf("fresh arena: warm %s, cold %s of the same baselines   target >= 80%%\n",
	       pct(fwarm_r), pct(fcold_r));
	printf("fresh arena, --host-prefault (load after the prefault): warm %s, cold %s\n",
	       pct(pfwarm_r), pct(pfcold_r));
	if (pr.py)
		printf("Python client.load(): %.3fx the time of weightctl load, %.3fx weightd_load "
		       "(target <= 1.05x)\n", py_ctl, py_c);
	else
		printf("Python client.load(): not measured (python3 or the binding failed)\n");
	if (!product_only) {
		print_rows("library level (the loader alone, for comparison)", libr,
			   ARRAY_SIZE(libr));
		printf("arena overhead beyond tensor bytes: aligned %.4f%%, file layout %.4f%% "
		       "(target <= 1%%); O_DIRECT files (cold): %u of %d\n",
		       100.0 * (double)(lib.aligned_bytes - lib.tensor_bytes) /
			       (double)lib.tensor_bytes,
		       100.0 * (double)(lib.file_bytes - lib.tensor_bytes) /
			       (double)lib.tensor_bytes, lib.direct_files, set.n);
		printf("finding the cached granules (every other MiB cached): cachestat %.3f ms, "
		       "mincore %.3f ms; the loader uses %s\n", lib.probe_cachestat * 1e3,
		       lib.probe_mincore * 1e3, residency_method_name(residency_method_used()));
	}

	o += (size_t)snprintf(json + o, sizeof(json) - o,
			      "{\"bench\":\"load\",\"model\":\"%s\",\"files\":%d,\"file_bytes\":%lu,"
			      "\"runs\":%d,\"cold_method\":\"%s\",\"host_pages\":\"%s\","
			      "\"host_page_size\":%lu,\"loadavg_before\":%s,\"loadavg_after\":%s,"
			      "\"best_warm_method\":\"%s\"", model_name, set.n, set.total_file, runs,
			      cold_method, pr.pages_name, pr.pages, la0, la1, wb.best_name);
	o += json_rows(json + o, sizeof(json) - o, base, ARRAY_SIZE(base));
	o += json_rows(json + o, sizeof(json) - o, prod, ARRAY_SIZE(prod));
	if (!product_only) {
		o += json_rows(json + o, sizeof(json) - o, libr, ARRAY_SIZE(libr));
		o += (size_t)snprintf(json + o, sizeof(json) - o,
				      ",\"probe_cachestat_ms\":%.3f,\"probe_mincore_ms\":%.3f",
				      lib.probe_cachestat * 1e3, lib.probe_mincore * 1e3);
	}
	o += (size_t)snprintf(json + o, sizeof(json) - o,
			      ",\"warm_ratio\":%.3f,\"cold_ratio\":%.3f,\"fresh_warm_ratio\":%.3f,"
			      "\"fresh_cold_ratio\":%.3f,\"prefault_warm_ratio\":%.3f,"
			      "\"prefault_cold_ratio\":%.3f,\"python_vs_weightctl\":%.3f,"
			      "\"python_vs_weightd_load\":%.3f}", warm_r, cold_r, fwarm_r, fcold_r,
			      pfwarm_r, pfcold_r, py_ctl, py_c);

	write_outputs(out, json, &base[0].f, &dio, &pr);
	munmap(buf, set.total_alloc + CHUNK);
	printf("%s\n", json);
	return 0;
}
