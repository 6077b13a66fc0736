/*
 * weightctl bench MODEL: how fast this host loads one model, next to what its storage, memory
 * and GPU can do, measured in the same run (weightctl history shows the runs recorded).
 *
 * Figures (each load is timed around the client call, submission to final completion); the
 * baselines are those of bench/bench_load.c (make bench-load), so that both tell one story:
 *   storage     the same files read raw into one buffer (uring/rawread.h): cold, after the
 *               page cache was dropped (/proc/sys/vm/drop_caches when root may write it, else
 *               posix_fadvise(DONTNEED) on each file, which is what "cold" means without
 *               root), with O_DIRECT io_uring when the file system takes it; warm, the best
 *               of io_uring and pread(2) by one and two threads with every page cached
 *   host cold   the model unloaded from the host tier, its files' pages dropped, then loaded
 *               to the host tier
 *   host warm   unloaded again, the files read once so that the page cache holds them (a
 *               cold load reads O_DIRECT and leaves nothing cached), and loaded again
 *   Each load runs LOAD_RUNS times and the best is kept: the first load into cache pages
 *   nothing used yet also pays for allocating them (its time is reported as "first_s").
 *   memcpy      copy bandwidth of a buffer the size of the model (at most 1 GiB)
 *   GPU         for each of the daemon's GPUs (cuda:N): unload from it, load from the host
 *               copy, and the pinned host-to-device bandwidth of this process on device N
 *   attach      a fresh client in this process: attach, then resolve every tensor by name
 *   memory      bytes of the model resident on each tier, and the host cache in use
 * Each load is also reported as a ratio to its limit (storage for the host tier, pinned H2D
 * for the GPU). A load cannot beat a raw read of the same bytes by much: a ratio above 105%
 * is printed as "baseline suspect" (and flagged in the JSON's "suspect"), never as a result.
 * The run is stored in the catalog (bench_runs) with its figures as JSON (ctl_history.c
 * reads them back).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "cmd/ctl_bench.h"
#include "core/catalog/catalog.h"
#include "core/base/common.h"
#include "gpu/device.h"
#include "uring/rawread.h"

#define MEMCPY_MAX (1ull << 30)
/* Loads of each kind (cold, warm); the best is reported. */
#define LOAD_RUNS 2
#define H2D_BYTES (256ull << 20)

struct bopts {
	const char *socket;
	const char *model;
	const char *out;
	const char *png;
	const char *from;	/* --from: print this saved report instead of measuring */
	bool json;
	bool no_record;
};

/* The model's safetensors files, from the catalog. */
struct files {
	const char **paths;
	uint64_t *sizes, *bases;
	unsigned int n;
	uint64_t total, span;	/* bytes, and buffer bytes (each file 4096-rounded) */
};

static void usage_bench(FILE *out)
{
	fprintf(out,
		"usage: weightctl bench [--socket PATH] [--json] [--out FILE.json] [--png FILE.png]\n"
		"                       [--no-record] MODEL\n"
		"       weightctl bench [--json] [--png FILE.png] --from FILE.json\n\n"
		"Measures how fast the running daemon loads MODEL, next to the limits measured in\n"
		"the same run (the baselines of make bench-load): a cold load to the host tier\n"
		"against a raw O_DIRECT io_uring read of the same files with the page cache\n"
		"dropped, a warm one (files cached) against the best warm read of them (io_uring,\n"
		"pread by 1 and 2 threads), memcpy bandwidth, the load to each of the\n"
		"daemon's GPUs (cuda:N, from the host copy) against this process's pinned\n"
		"host-to-device bandwidth on that GPU, the time a new client takes to attach and\n"
		"resolve every tensor, and memory per tier.\n\n"
		"Cold: the files' cached pages are dropped first, with /proc/sys/vm/drop_caches when\n"
		"this user may write it (root), else posix_fadvise(DONTNEED) on each file.\n"
		"Each load runs twice and the best is kept (the first load into cache pages\n"
		"nothing used yet also allocates them; its time is shown apart).\n"
		"A ratio above 105%% means the baseline was not measured right: it is reported as\n"
		"\"baseline suspect\", not as a result.\n"
		"The model must not be pinned by another client (it is unloaded between runs).\n\n"
		"  --socket PATH     the daemon's socket (default $WEIGHTD_SOCKET, else the\n"
		"                    per-user runtime directory)\n"
		"  --json            write the report as JSON to stdout (progress stays on stderr)\n"
		"  --out FILE.json   also write the JSON report to FILE.json\n"
		"  --png FILE.png    a bar chart of the bandwidths (needs gnuplot)\n"
		"  --no-record       do not store the run in the catalog (bench_runs)\n"
		"  --from FILE.json  print (or chart) a report saved with --out; measures nothing\n\n"
		"The run is recorded in the catalog; `weightctl history MODEL` lists past runs.\n"
		"Exit status: 0, 1 a step failed, 2 usage error.\n");
}

static void step(const struct bopts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void step(const struct bopts *o, const char *fmt, ...)
{
	va_list ap;

	(void)o;
	fputs("bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static json_t *num(double v)
{
	return isnan(v) || isinf(v) ? json_null() : json_real(v);
}

static double ratio(double a, double b)
{
	return a > 0 && b > 0 ? a / b : NAN;
}

static void files_free(struct files *f)
{
	for (unsigned int i = 0; i < f->n; i++)
		free((char *)f->paths[i]);
	free(f->paths);
	free(f->sizes);
	free(f->bases);
	memset(f, 0, sizeof(*f));
}

/* The model's safetensors files from the catalog of @state_dir. */
static int model_files(const char *state_dir, const char *model, struct files *f, char *name,
		       size_t name_size)
{
	struct catalog *cat;
	struct catalog_model m;
	size_t cap = 0;
	int ret;

	memset(f, 0, sizeof(*f));
	ret = catalog_open(state_dir, &cat);
	if (ret)
		return ret;
	ret = catalog_get_model(cat, model, &m);
	catalog_close(cat);
	if (ret)
		return ret;
	snprintf(name, name_size, "%s", m.name);
	for (size_t c = 0; c < m.n_components; c++)
		cap += m.components[c].n_files;
	f->paths = calloc(cap + 1, sizeof(*f->paths));
	f->sizes = calloc(cap + 1, sizeof(*f->sizes));
	f->bases = calloc(cap + 1, sizeof(*f->bases));
	if (!f->paths || !f->sizes || !f->bases) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t c = 0; c < m.n_components; c++) {
		const struct catalog_component *cc = &m.components[c];

		for (size_t k = 0; k < cc->n_files; k++) {
			if (cc->files[k].kind != MODEL_FILE_ST)
				continue;
			f->paths[f->n] = strdup(cc->files[k].path);
			if (!f->paths[f->n]) {
				ret = -ENOMEM;
				goto out;
			}
			f->sizes[f->n] = cc->files[k].fp.size;
			f->bases[f->n] = f->span;
			f->total += f->sizes[f->n];
			f->span += (f->sizes[f->n] + 4095) & ~4095ull;
			f->n++;
		}
	}
out:
	catalog_model_free(&m);
	if (ret)
		files_free(f);
	return ret;
}

struct prog {
	struct ctl_progress p;
};

static void on_progress(uint64_t done, uint64_t total, void *arg)
{
	ctl_progress_update(&((struct prog *)arg)->p, done, total);
}

/*
 * Unloads @model from @tier (a missing copy is fine) and loads it again, timed.
 * Returns 0 with *@secs set, or the failing call's error.
 */
static int timed_load(struct weightd *w, const char *model, unsigned int tier, const char *label,
		      double *secs, uint64_t *bytes)
{
	struct weightd_load_result res = { 0 };
	struct prog pr;
	uint64_t t0;
	int ret;

	ret = weightd_unload(w, model, NULL, tier);
	if (ret && ret != -ENOENT)
		return ret;
	ctl_progress_begin(&pr.p, label, true);
	t0 = wd_now_ns();
	ret = weightd_load_ex(w, model, NULL, tier, 0, NULL, on_progress, &pr, &res);
	*secs = (double)(wd_now_ns() - t0) / 1e9;
	ctl_progress_end(&pr.p, res.bytes, res.bytes);
	if (ret)
		return ret;
	/* On the host tier a hit means the unload did not happen; a GPU load from the host
	 * copy reads no disk and says "hit" too, and that copy is what is measured there. */
	if (res.hit && tier == WEIGHTD_TIER_HOST)
		return -EALREADY;
	*bytes = res.bytes;
	return 0;
}

/* Pinned host-to-device bandwidth on device @ordinal of this process; NAN with @why when none. */
static double h2d_pinned_bps(int ordinal, char *why, size_t why_size)
{
	const struct gpu_ops *ops = gpu_ops_pick(why, why_size);
	struct gpu_dev *dev = NULL;
	struct gpu_stream *s = NULL;
	struct gpu_vram v = { .fd = -1 };
	void *host = NULL, *saved = NULL;
	double best = NAN;

	if (!ops || ops->open(ordinal, &dev, why, why_size))
		return NAN;
	/* The device layer runs in the thread's current context: this device's, meanwhile. */
	if (ops->ctx_enter(dev, &saved, why, why_size)) {
		ops->close(dev);
		return NAN;
	}
	if (ops->host_alloc(dev, H2D_BYTES, &host, why, why_size) ||
	    ops->vram_alloc(dev, H2D_BYTES, &v, why, why_size) ||
	    ops->stream_create(dev, &s, why, why_size))
		goto out;
	memset(host, 1, H2D_BYTES);
	for (int r = 0; r < 3; r++) {
		struct gpu_event *ev = NULL;
		uint64_t t0 = wd_now_ns(), dt;

		if (ops->copy_h2d(dev, s, v.dptr, host, H2D_BYTES, why, why_size) ||
		    ops->event_record(dev, s, &ev, why, why_size))
			break;
		if (ops->event_wait(dev, ev, why, why_size)) {
			ops->event_destroy(dev, ev);
			break;
		}
		ops->event_destroy(dev, ev);
		dt = wd_now_ns() - t0;
		if (dt && (isnan(best) || (double)H2D_BYTES * 1e9 / (double)dt > best))
			best = (double)H2D_BYTES * 1e9 / (double)dt;
	}
out:
	if (s)
		ops->stream_destroy(dev, s);
	if (v.size)
		ops->vram_free(dev, &v);
	if (host)
		ops->host_free(dev, host);
	ops->ctx_leave(dev, saved);
	ops->close(dev);
	return best;
}

/*
 * Loads @name to GPU @di from the host copy and measures this process's pinned H2D bandwidth
 * on the same device. An emulated device is host memory: its figures are marked, not a GPU's.
 */
static json_t *bench_gpu(struct weightd *w, const char *name,
			 const struct weightd_device_info *di, const struct bopts *o)
{
	unsigned int tier = WEIGHTD_TIER_CUDA(di->ordinal);
	char label[64], tn[16], why[256];
	double t = NAN, h2d;
	uint64_t bytes = 0;
	json_t *g;
	int ret;

	weightd_tier_name(tier, tn, sizeof(tn));
	snprintf(label, sizeof(label), "bench: %s", tn);
	ret = timed_load(w, name, tier, label, &t, &bytes);
	if (ret) {
		snprintf(why, sizeof(why), "load to %s failed: %.200s", tn,
			 weightd_last_error()[0] ? weightd_last_error() : strerror(-ret));
		step(o, "%s", why);
		return json_pack("{s:s, s:s}", "tier", tn, "error", why);
	}
	h2d = h2d_pinned_bps((int)di->ordinal, why, sizeof(why));
	step(o, "load to %s: %.3f s, %.3f GB/s; pinned H2D %.3f GB/s", tn, t,
	     (double)bytes / t / 1e9, h2d / 1e9);
	g = json_pack("{s:s, s:b, s:f, s:o, s:o, s:o}", "tier", tn, "emulated",
		      di->kind == WEIGHTD_DEVICE_EMULATED, "load_s", t, "load_bps",
		      num((double)bytes / t), "h2d_pinned_bps", num(h2d), "load_vs_h2d",
		      num(ratio((double)bytes / t, h2d)));
	if (isnan(h2d))
		json_object_set_new(g, "h2d_reason", json_string(why));
	return g;
}

/* A fresh client: attach, then resolve every tensor of @model by component and name. */
static int attach_resolve(const struct bopts *o, struct weightd *w, const char *model,
			  double *secs, uint32_t *n_out)
{
	struct weightd_attach_opts ao = { .client_name = "weightctl-bench-attach" };
	struct weightd_tensor_info *ti = NULL, one;
	char *names = NULL, (*comp)[WEIGHTD_NAME_MAX] = NULL;
	struct weightd *w2 = NULL;
	int n, ret;
	uint64_t t0;

	n = weightd_tensor_list(w, model, NULL, NULL, NULL, 0);
	if (n < 0)
		return n;
	ti = calloc((size_t)n + 1, sizeof(*ti));
	names = calloc((size_t)n + 1, WEIGHTD_NAME_MAX);
	comp = calloc((size_t)n + 1, sizeof(*comp));
	if (!ti || !names || !comp) {
		ret = -ENOMEM;
		goto out;
	}
	ret = weightd_tensor_list(w, model, NULL, ti, names, (uint32_t)n);
	if (ret < 0)
		goto out;
	for (int i = 0; i < n; i++) {
		struct weightd_component_info ci;

		ret = weightd_component(w, ti[i].component, &ci);
		if (ret)
			goto out;
		snprintf(comp[i], WEIGHTD_NAME_MAX, "%s", ci.name);
	}
	t0 = wd_now_ns();
	ret = weightd_attach(o->socket, &ao, &w2);
	for (int i = 0; !ret && i < n; i++)
		ret = weightd_tensor(w2, model, comp[i][0] ? comp[i] : NULL,
				     names + (size_t)i * WEIGHTD_NAME_MAX, &one);
	*secs = (double)(wd_now_ns() - t0) / 1e9;
	*n_out = (uint32_t)n;
out:
	weightd_detach(w2);
	free(ti);
	free(names);
	free(comp);
	return ret < 0 ? ret : 0;
}

/* Bytes of @model resident on each tier, from the registry. */
static json_t *memory_per_tier(struct weightd *w, uint32_t model_id, uint32_t n_comps,
			       const struct weightd_stats *st)
{
	uint64_t per[WEIGHTD_TIER_MAX] = { 0 };
	json_t *j = json_object();
	char tn[16];

	for (uint32_t id = 0;; id++) {
		struct weightd_component_info ci;

		if (weightd_component(w, id, &ci))
			break;
		if (ci.model != model_id)
			continue;
		for (unsigned int t = 0; t < WEIGHTD_TIER_MAX; t++)
			if (ci.tiers[t].state == WEIGHTD_RESIDENT)
				per[t] += ci.nbytes;
	}
	(void)n_comps;
	for (unsigned int t = 0; t < WEIGHTD_TIER_MAX; t++)
		if (per[t] || t == 0)
			json_object_set_new(j, weightd_tier_name(t, tn, sizeof(tn)),
					    json_integer((json_int_t)per[t]));
	json_object_set_new(j, "host_cache_used", json_integer((json_int_t)st->host_bytes));
	json_object_set_new(j, "host_cache_budget", json_integer((json_int_t)st->host_budget));
	return j;
}

static int parse_bench(int argc, char **argv, struct bopts *o)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "out", required_argument, NULL, 'o' },
		{ "png", required_argument, NULL, 'p' },
		{ "no-record", no_argument, NULL, 'n' },
		{ "from", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int opt;

	*o = (struct bopts){ 0 };
	optind = 1;
	while ((opt = getopt_long(argc, argv, "hj", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': o->socket = optarg; break;
		case 'j': o->json = true; break;
		case 'o': o->out = optarg; break;
		case 'p': o->png = optarg; break;
		case 'n': o->no_record = true; break;
		case 'f': o->from = optarg; break;
		case 'h': usage_bench(stdout); return CTL_OK;
		default: usage_bench(stderr); return CTL_USAGE;
		}
	}
	if (o->from && optind == argc)
		return -1;
	if (o->from || optind + 1 != argc) {
		ctl_err("bench", o->from ? "--from takes no MODEL" : "needs exactly one MODEL");
		usage_bench(stderr);
		return CTL_USAGE;
	}
	o->model = argv[optind];
	return -1;
}

/* One bench run's state, from step to step of measure(). */
struct bench_run {
	const struct bopts *o;
	struct weightd *w;
	json_t *r;			/* the report being filled */
	char name[WEIGHTD_NAME_MAX];	/* the model's registry name */
	struct files f;
	void *buf;			/* f.span bytes, page-aligned, for the raw reads */
	double t_sc, t_sw;		/* storage: cold and warm read of the files */
	double t_cold, t_warm, t_first;	/* host loads: best cold, best warm, the first */
	uint64_t b_cold, b_warm;	/* bytes those best loads made resident */
};

/* Baselines first (bench/bench_load.c's): raw O_DIRECT read, cold; best warm read. */
static int measure_storage(struct bench_run *b)
{
	const struct files *f = &b->f;
	enum rawread_drop drop;
	struct rawread_warm wb;
	bool direct = true;
	int ret;

	if (posix_memalign(&b->buf, 4096, f->span ? f->span : 4096)) {
		b->buf = NULL;
		return -ENOMEM;
	}
	memset(b->buf, 0, f->span);
	drop = rawread_drop_cache(f->paths, f->n, geteuid() == 0);
	json_object_set_new(b->r, "cold_method", json_string(rawread_drop_name(drop)));
	ret = rawread_files(f->paths, f->sizes, f->bases, f->n, b->buf, true, &b->t_sc);
	if (ret == -EINVAL) {
		direct = false;
		rawread_drop_cache(f->paths, f->n, geteuid() == 0);
		ret = rawread_files(f->paths, f->sizes, f->bases, f->n, b->buf, false, &b->t_sc);
	}
	if (!ret)
		ret = rawread_best_warm(f->paths, f->sizes, f->bases, f->n, b->buf, 3, &wb);
	if (ret) {
		ctl_err("bench", "raw read of %s's files: %s", b->name, strerror(-ret));
		return ret;
	}
	b->t_sw = wb.best;
	step(b->o, "raw read: cold%s %.3f GB/s (caches dropped with %s); warm %.3f GB/s "
	     "(best: %s)", direct ? " O_DIRECT" : "", (double)f->total / b->t_sc / 1e9,
	     rawread_drop_name(drop), (double)f->total / b->t_sw / 1e9, wb.best_name);
	json_object_set_new(b->r, "storage",
			    json_pack("{s:b, s:o, s:o, s:s, s:o, s:o, s:o}", "direct", direct,
				      "cold_bps", num((double)f->total / b->t_sc),
				      "warm_bps", num((double)f->total / b->t_sw),
				      "warm_method", wb.best_name,
				      "warm_uring_bps", num((double)f->total / wb.uring),
				      "warm_psync1_bps", num((double)f->total / wb.psync1),
				      "warm_psync2_bps", num((double)f->total / wb.psync2)));
	return 0;
}

/*
 * Host tier: cold (caches dropped), then warm (every file read once first). Two loads of
 * each kind, the best kept: the first load into pages of the cache that nothing touched yet
 * also pays for allocating them, which is not what the baseline measures (that first time is
 * reported on its own, "first_s").
 */
static int measure_host(struct bench_run *b)
{
	const struct files *f = &b->f;
	double t_fill;
	int ret = 0;

	for (int k = 0; k < 2 * LOAD_RUNS && !ret; k++) {
		bool cold = k < LOAD_RUNS;
		double t;
		uint64_t n = 0;

		if (cold)
			rawread_drop_cache(f->paths, f->n, geteuid() == 0);
		else
			ret = rawread_files(f->paths, f->sizes, f->bases, f->n, b->buf, false,
					    &t_fill);
		if (!ret)
			ret = timed_load(b->w, b->name, 0,
					 cold ? "bench: host cold" : "bench: host warm", &t, &n);
		if (ret) {
			ctl_err("bench", "%s load of %s: %s", cold ? "cold" : "warm", b->name,
				ret == -EALREADY ? "still resident after unload (pinned by another "
				"client?)" : weightd_last_error());
			return ret;
		}
		step(b->o, "%s load: %.3f s, %.3f GB/s", cold ? "cold" : "warm", t,
		     (double)n / t / 1e9);
		if (k == 0)
			b->t_first = t;
		if (cold && (isnan(b->t_cold) || t < b->t_cold)) {
			b->t_cold = t;
			b->b_cold = n;
		} else if (!cold && (isnan(b->t_warm) || t < b->t_warm)) {
			b->t_warm = t;
			b->b_warm = n;
		}
	}
	json_object_set_new(b->r, "host", json_pack("{s:f, s:o, s:f, s:o, s:I, s:f, s:i}",
						    "cold_s", b->t_cold,
						    "cold_bps", num((double)b->b_cold / b->t_cold),
						    "warm_s", b->t_warm,
						    "warm_bps", num((double)b->b_warm / b->t_warm),
						    "bytes", (json_int_t)b->b_warm,
						    "first_s", b->t_first, "runs", LOAD_RUNS));
	return 0;
}

/* Each GPU tier the daemon has, or why there is none. */
static void measure_gpus(struct bench_run *b)
{
	struct weightd_device_info di[WEIGHTD_TIER_MAX - 1];
	char none[200] = "", why[256];
	json_t *gpus = json_array();
	int n = weightd_devices(b->w, di, ARRAY_SIZE(di), none, sizeof(none));

	if (n <= 0) {
		snprintf(why, sizeof(why), "no GPU tier: %.200s",
			 n < 0 ? weightd_last_error() : none[0] ? none : "host-only daemon");
		step(b->o, "%s", why);
		json_object_set_new(b->r, "gpu_reason", json_string(why));
	}
	for (int i = 0; i < n && i < (int)ARRAY_SIZE(di); i++)
		json_array_append_new(gpus, bench_gpu(b->w, b->name, &di[i], b->o));
	json_object_set_new(b->r, "gpus", gpus);
}

/* The host loads against the storage baselines, and whether a baseline is suspect. */
static void measure_ratios(struct bench_run *b)
{
	double total = (double)b->f.total;
	double rc = ratio((double)b->b_cold / b->t_cold, total / b->t_sc);
	double rw = ratio((double)b->b_warm / b->t_warm, total / b->t_sw);

	json_object_set_new(b->r, "ratios", json_pack("{s:o, s:o}",
						      "host_cold_vs_storage_cold", num(rc),
						      "host_warm_vs_storage_warm", num(rw)));
	json_object_set_new(b->r, "suspect", json_pack("{s:b, s:b}",
						       "host_cold_vs_storage_cold",
						       rc > SUSPECT_RATIO,
						       "host_warm_vs_storage_warm",
						       rw > SUSPECT_RATIO));
}

/* The measurements; fills @r. Returns 0 or the negative errno of the step that failed. */
static int measure(struct ctl *c, const struct bopts *o, struct weightd *w, json_t *r)
{
	struct bench_run b = { .o = o, .w = w, .r = r, .t_cold = NAN, .t_warm = NAN,
			       .t_first = NAN, .t_sc = NAN, .t_sw = NAN };
	const char *sd = ctl_catalog_dir(c, "bench", o->socket, false);
	struct weightd_model_info mi;
	struct weightd_stats st;
	double t_ar = NAN, mbps;
	uint32_t mid, n_t = 0;
	int ret;

	if (!sd)
		return -ENOENT;
	ret = model_files(sd, o->model, &b.f, b.name, sizeof(b.name));
	if (ret) {
		ctl_err("bench", "%s: not in the catalog at %s: %s", o->model, sd, strerror(-ret));
		return ret;
	}
	ret = weightd_lookup(w, b.name, &mid);
	if (!ret)
		ret = weightd_model(w, mid, &mi);
	if (ret) {
		ctl_err("bench", "%s: the daemon does not know it: %s", b.name,
			weightd_last_error());
		goto out;
	}
	step(o, "%s: %u components, %u files, %llu bytes of files", b.name, mi.n_components,
	     b.f.n, (unsigned long long)b.f.total);
	json_object_set_new(r, "model", json_string(b.name));
	json_object_set_new(r, "time", json_real((double)wd_wall_ns() / 1e9));
	json_object_set_new(r, "bytes", json_integer((json_int_t)mi.nbytes));
	json_object_set_new(r, "files", json_integer(b.f.n));
	json_object_set_new(r, "file_bytes", json_integer((json_int_t)b.f.total));
	if ((ret = measure_storage(&b)) || (ret = measure_host(&b)))
		goto out;
	free(b.buf);
	b.buf = NULL;
	mbps = rawread_memcpy_bps(b.f.total < MEMCPY_MAX ? (b.f.total ? b.f.total : 4096) :
				  MEMCPY_MAX, 3);
	step(o, "memcpy: %.3f GB/s", mbps / 1e9);
	json_object_set_new(r, "memcpy_bps", num(mbps));
	measure_gpus(&b);
	measure_ratios(&b);
	ret = attach_resolve(o, w, b.name, &t_ar, &n_t);
	if (ret) {
		ctl_err("bench", "attach and resolve: %s", weightd_last_error());
		goto out;
	}
	step(o, "new client: attach + resolve %u tensors in %.3f ms", n_t, t_ar * 1e3);
	json_object_set_new(r, "attach_resolve_s", json_real(t_ar));
	json_object_set_new(r, "tensors", json_integer(n_t));
	ret = weightd_stats(w, &st);
	if (ret)
		goto out;
	json_object_set_new(r, "memory", memory_per_tier(w, mid, mi.n_components, &st));
out:
	free(b.buf);
	files_free(&b.f);
	return ret;
}

static int record(struct ctl *c, json_t *r)
{
	struct catalog *cat;
	char *txt = json_dumps(r, JSON_COMPACT);
	int ret = txt ? 0 : -ENOMEM;

	if (!ret)
		ret = catalog_open(ctl_catalog_dir(c, "bench", NULL, true), &cat);
	if (!ret) {
		ret = catalog_bench_add(cat, json_string_value(json_object_get(r, "model")),
					wd_wall_ns(), txt);
		catalog_close(cat);
	}
	free(txt);
	return ret;
}

int ctl_bench(struct ctl *c, int argc, char **argv)
{
	struct weightd_attach_opts ao = { .client_name = "weightctl-bench" };
	struct weightd *w = NULL;
	struct bopts o;
	json_t *r;
	int ret;

	if ((ret = parse_bench(argc, argv, &o)) >= 0)
		return ret;
	if (o.from) {
		json_error_t jerr;

		r = json_load_file(o.from, 0, &jerr);
		if (!r || !json_is_object(json_object_get(r, "host"))) {
			ctl_err("bench", "%s: not a saved bench report: %s", o.from,
				r ? "no \"host\" figures" : jerr.text);
			json_decref(r);
			return CTL_FAIL;
		}
		o.no_record = true;
		o.out = NULL;
		ret = 0;
		goto report;
	}
	ret = weightd_attach(o.socket, &ao, &w);
	if (ret) {
		ctl_err("bench", "cannot attach to the daemon: %s", weightd_last_error());
		return CTL_FAIL;
	}
	r = json_object();
	ret = r ? measure(c, &o, w, r) : -ENOMEM;
	weightd_detach(w);
	if (ret) {
		json_decref(r);
		return CTL_FAIL;
	}
report:
	if (!o.no_record) {
		ret = record(c, r);
		if (ret)
			ctl_err("bench", "cannot record the run in the catalog: %s", strerror(-ret));
		else
			step(&o, "recorded in the catalog (weightctl history %s)",
			     json_string_value(json_object_get(r, "model")));
	}
	if (o.out && json_dump_file(r, o.out, JSON_INDENT(2))) {
		ctl_err("bench", "cannot write %s", o.out);
		ret = -EIO;
	}
	if (o.png && !ctl_bench_plot(o.png, r)) {
		ctl_err("bench", "gnuplot could not draw %s (is gnuplot installed?)", o.png);
		ret = -EIO;
	}
	if (o.json) {
		char *txt = json_dumps(r, JSON_INDENT(2));

		if (txt)
			puts(txt);
		free(txt);
	} else {
		ctl_bench_print(r);
	}
	json_decref(r);
	return ret ? CTL_FAIL : CTL_OK;
}
