/*
 * Load benchmark: disk -> host cache, against the baselines it must be compared with, all
 * measured in the same run on the same files (a generated LLaMA checkpoint, --size bytes).
 *
 *   raw io_uring read, warm      buffered reads of whole files, QD 32 x 4 MiB, into one
 *                                pre-faulted buffer (the warm target's 100%)
 *   raw io_uring read, cold      the same after dropping the page cache
 *   raw O_DIRECT io_uring read   (the cold target's 100%)
 *   mmap + touch every page      warm and cold (what safetensors' mmap loader costs)
 *   read() into malloc'ed memory warm
 *   loader -> arena              warm and cold, aligned layout (every tensor 64-byte aligned)
 *                                and file layout (zero-copy, tensors aligned as in the file)
 *
 * Cold means the page cache was dropped (echo 1 > /proc/sys/vm/drop_caches, as root) or,
 * when that is refused, each file was evicted with posix_fadvise(DONTNEED); the JSON says
 * which. Each figure is the best of --runs runs. Prints a table, writes bench/out/load.json
 * and, with gnuplot, bench/out/load.png; the last line printed is one JSON object.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common.h"
#include "core/gen.h"
#include "core/log.h"
#include "uring/arena.h"
#include "uring/loader.h"
#include "uring/rawread.h"

#define CHUNK (4u << 20)
#define MAXF RAWREAD_MAX_FILES

static struct rawread_set set;	/* the checkpoint's files */
static const char *cold_method = "none";

static double now_s(void)
{
	return (double)wd_now_ns() / 1e9;
}

/* Drops the page cache for our files: globally when allowed, else per file. */
static void drop_caches(void)
{
	cold_method = rawread_drop_name(rawread_drop_cache((const char *const *)set.paths, set.n,
							   true));
}

/*
 * Reads every file whole into @buf (file i at bases[i]) with io_uring (uring/rawread.h, the
 * same baseline `weightctl bench` measures); returns seconds, or -1 when it cannot start.
 */
static double raw_uring(char *buf, bool direct)
{
	double secs;
	int ret;

	ret = rawread_files((const char *const *)set.paths, set.sizes, set.bases, set.n, buf,
			    direct, &secs);
	if (ret == -EINVAL || ret == -ENOMEM)
		return -1;
	if (ret) {
		fprintf(stderr, "read failed: %s\n", strerror(-ret));
		exit(1);
	}
	return secs;
}

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
	uint64_t bytes, tensor_bytes;
	uint32_t n_direct;
};

static struct lrun run_loader(struct arena *a, struct loader *l, unsigned int flags)
{
	struct load_file_spec fs[MAXF];
	struct load_spec spec = { .name = "llama", .n_files = (size_t)set.n, .files = fs,
				  .flags = flags };
	char msg[LOADER_MSG_MAX];
	struct lrun r = { -1, 0, 0, 0 };
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
	r.n_direct = p->n_direct;
	arena_free(a, ext, p->bytes);
	loader_plan_free(p);
	return r;
}

static double best(double a, double b)
{
	return a < 0 ? b : b < a ? b : a;
}

int main(int argc, char **argv)
{
	const char *size_s = "1G", *dir = NULL, *out = "bench/out";
	struct arena_options ao = { 0 };
	struct arena *arena;
	struct loader *loader;
	char cmd[2400], dirbuf[1024];
	uint64_t size, tensor_bytes = 0, arena_bytes = 0, aligned_bytes = 0;
	int runs = 3, c, direct_files = 0;
	double w_raw = -1, c_raw = -1, c_dio = -1, w_mmap = -1, c_mmap = -1, w_read = -1;
	double w_al = -1, w_fl = -1, c_al = -1, c_fl = -1;
	FILE *f;

	while ((c = getopt(argc, argv, "s:d:r:o:")) != -1) {
		switch (c) {
		case 's': size_s = optarg; break;
		case 'd': dir = optarg; break;
		case 'r': runs = atoi(optarg); break;
		case 'o': out = optarg; break;
		default:
			fprintf(stderr, "usage: bench_load [-s SIZE] [-d DIR] [-r RUNS] [-o OUTDIR]\n");
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

	char *buf = mmap(NULL, set.total_alloc + CHUNK, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ao.budget = set.total_alloc * 2 + (64u << 20);
	ao.flags = 0;
	if (buf == MAP_FAILED || arena_create(&ao, &arena) || loader_create(arena, NULL, &loader)) {
		fprintf(stderr, "setup failed\n");
		return 1;
	}
	fprintf(stderr, "files: %d, %.2f GB; arena pages: %s\n", set.n, (double)set.total_file / 1e9,
		arena_pages_name(arena->pages));
	/* Cold first (each after a drop), then warm. */
	for (int r = 0; r < runs; r++) {
		struct lrun lr;

		drop_caches();
		c_raw = best(c_raw, raw_uring(buf, false));
		drop_caches();
		c_dio = best(c_dio, raw_uring(buf, true));
		drop_caches();
		c_mmap = best(c_mmap, mmap_touch());
		drop_caches();
		lr = run_loader(arena, loader, 0);
		c_al = best(c_al, lr.secs);
		direct_files = (int)lr.n_direct;
		drop_caches();
		c_fl = best(c_fl, run_loader(arena, loader, LOAD_F_FILE_LAYOUT).secs);
	}
	raw_uring(buf, false); /* warm the cache */
	for (int r = 0; r < runs; r++) {
		struct lrun lr;

		w_raw = best(w_raw, raw_uring(buf, false));
		w_mmap = best(w_mmap, mmap_touch());
		w_read = best(w_read, read_malloc());
		lr = run_loader(arena, loader, LOAD_F_NO_DIRECT);
		w_al = best(w_al, lr.secs);
		aligned_bytes = lr.bytes;
		tensor_bytes = lr.tensor_bytes;
		lr = run_loader(arena, loader, LOAD_F_FILE_LAYOUT | LOAD_F_NO_DIRECT);
		w_fl = best(w_fl, lr.secs);
		arena_bytes = lr.bytes;
	}

	const struct {
		const char *key, *label;
		double secs;
	} rows[] = {
		{ "raw_uring_warm", "raw io_uring read, warm", w_raw },
		{ "read_malloc_warm", "read() into malloc, warm", w_read },
		{ "mmap_touch_warm", "mmap + touch, warm", w_mmap },
		{ "loader_aligned_warm", "loader aligned, warm", w_al },
		{ "loader_file_warm", "loader file layout, warm", w_fl },
		{ "raw_uring_cold", "raw io_uring read, cold", c_raw },
		{ "raw_odirect_cold", "raw O_DIRECT read", c_dio },
		{ "mmap_touch_cold", "mmap + touch, cold", c_mmap },
		{ "loader_aligned_cold", "loader aligned, cold", c_al },
		{ "loader_file_cold", "loader file layout, cold", c_fl },
	};
	double gbs[ARRAY_SIZE(rows)];
	char json[4096];
	size_t o = 0;

	printf("%-28s %10s %10s\n", "path", "seconds", "GB/s");
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		gbs[i] = (double)set.total_file / rows[i].secs / 1e9;
		printf("%-28s %10.3f %10.2f\n", rows[i].label, rows[i].secs, gbs[i]);
	}
	double warm_ratio = w_raw / w_al, warm_file_ratio = w_raw / w_fl;
	double cold_ratio = c_dio / c_al, cold_file_ratio = c_dio / c_fl;
	double vs_mmap = c_mmap / c_al, vs_mmap_file = c_mmap / c_fl;
	double overhead = (double)(aligned_bytes - tensor_bytes) / (double)tensor_bytes;
	double overhead_file = (double)(arena_bytes - tensor_bytes) / (double)tensor_bytes;

	printf("warm: loader aligned %.1f%% of raw io_uring (target >= 90%%), file layout %.1f%%\n",
	       100 * warm_ratio, 100 * warm_file_ratio);
	printf("cold (%s): loader aligned %.1f%% of raw O_DIRECT (target >= 90%%), file layout "
	       "%.1f%%; vs mmap+touch %.2fx / %.2fx (target >= 2x)\n", cold_method,
	       100 * cold_ratio, 100 * cold_file_ratio, vs_mmap, vs_mmap_file);
	printf("arena overhead beyond tensor bytes: aligned %.4f%%, file layout %.4f%% (target <= "
	       "1%%); O_DIRECT files: %d of %d\n", 100 * overhead, 100 * overhead_file,
	       direct_files, set.n);

	o += (size_t)snprintf(json + o, sizeof(json) - o,
			      "{\"bench\":\"load\",\"files\":%d,\"file_bytes\":%lu,"
			      "\"tensor_bytes\":%lu,\"runs\":%d,\"cold_method\":\"%s\","
			      "\"arena_pages\":\"%s\",\"odirect_files\":%d", set.n, set.total_file,
			      tensor_bytes, runs, cold_method, arena_pages_name(arena->pages),
			      direct_files);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++)
		o += (size_t)snprintf(json + o, sizeof(json) - o, ",\"%s_gbs\":%.3f", rows[i].key,
				      gbs[i]);
	o += (size_t)snprintf(json + o, sizeof(json) - o,
			      ",\"warm_ratio\":%.3f,\"warm_file_ratio\":%.3f,\"cold_ratio\":%.3f,"
			      "\"cold_file_ratio\":%.3f,\"cold_vs_mmap\":%.2f,"
			      "\"cold_file_vs_mmap\":%.2f,\"overhead_aligned\":%.6f,"
			      "\"overhead_file\":%.6f}", warm_ratio, warm_file_ratio, cold_ratio,
			      cold_file_ratio, vs_mmap, vs_mmap_file, overhead, overhead_file);

	snprintf(cmd, sizeof(cmd), "mkdir -p %s", out);
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
			for (size_t i = 0; i < ARRAY_SIZE(rows); i++)
				fprintf(f, "\"%s\" %.3f\n", rows[i].label, gbs[i]);
			fclose(f);
		}
		if (system("command -v gnuplot >/dev/null 2>&1") == 0) {
			snprintf(cmd, sizeof(cmd),
				 "gnuplot -e \"set terminal png size 1000,500; set output '%s/load.png';"
				 " set style data histograms; set style fill solid; set ylabel 'GB/s';"
				 " set xtics rotate by -30; set title 'disk -> host cache (%.2f GB, %s)';"
				 " plot '%s/load.dat' using 2:xtic(1) notitle\" 2>/dev/null", out,
				 (double)set.total_file / 1e9, cold_method, out);
			if (system(cmd))
				fprintf(stderr, "gnuplot failed; no chart\n");
		}
	}
	loader_destroy(loader);
	arena_destroy(arena);
	munmap(buf, set.total_alloc + CHUNK);
	printf("%s\n", json);
	return 0;
}
