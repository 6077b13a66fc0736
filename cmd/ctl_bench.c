/*
 * weightctl bench MODEL: how fast this host loads one model, next to what its storage, memory
 * and GPU can do, measured in the same run; and weightctl history MODEL: the runs recorded.
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
 * The run is stored in the catalog (bench_runs) with its figures as JSON.
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
#include "core/catalog/catalog.h"
#include "core/base/common.h"
#include "gpu/device.h"
#include "uring/rawread.h"

#define MEMCPY_MAX (1ull << 30)
/* Loads of each kind (cold, warm); the best is reported. */
#define LOAD_RUNS 2
/* A load faster than its baseline by more than this says the baseline was wrong. */
#define SUSPECT_RATIO 1.05
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

static void usage_history(FILE *out)
{
	fprintf(out,
		"usage: weightctl history [--socket PATH] [--json] [MODEL]\n\n"
		"Lists the `weightctl bench` runs recorded in the catalog, oldest first, for MODEL\n"
		"(a name or a path; or every model): when, host cold and warm load rates, the\n"
		"storage limits, and the load rate to the first GPU (cuda:0) when there was one.\n"
		"The catalog is the running daemon's when one answers on the socket, else the\n"
		"state directory's.\n\n"
		"  --json         one JSON object {\"runs\": [{\"id\", \"model\", \"time\",\n"
		"                 \"figures\"}], \"catalog\": {\"source\", \"path\"}}\n"
		"  --socket PATH  the daemon's socket (default $WEIGHTD_SOCKET, else per user)\n\n"
		"Exit status: 0, 1 the catalog cannot be read, 2 usage error.\n");
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

/* A bar chart of the bandwidths in @r with gnuplot; false when gnuplot failed. */
static bool plot(const char *png, json_t *r)
{
	/* Each load beside its baseline, named as a reader would say it. */
	static const char *const keys[][3] = {
		{ "storage", "cold_bps", "cold: raw O_DIRECT read (baseline)" },
		{ "host", "cold_bps", "cold: load via weightd" },
		{ "storage", "warm_bps", "warm: best raw read, cached (baseline)" },
		{ "host", "warm_bps", "warm: load via weightd" },
		{ NULL, "memcpy_bps", "memcpy, one thread" },
	};
	FILE *g = popen("gnuplot 2>/dev/null", "w");
	json_t *gpu;
	size_t k;

	if (!g)
		return false;
	fprintf(g, "set terminal pngcairo size 1100,600\nset output '%s'\nset style data histograms\n"
		   "set style fill solid\nset ylabel 'GB/s'\nset xtics rotate by -30\n"
		   "set bmargin 10\nset yrange [0:*]\nset termoption noenhanced\n"
		   "set title 'weightctl bench %s'\nunset key\nplot '-' using 2:xtic(1)\n", png,
		json_string_value(json_object_get(r, "model")));
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		json_t *o = keys[i][0] ? json_object_get(r, keys[i][0]) : r;
		json_t *v = o ? json_object_get(o, keys[i][1]) : NULL;

		if (v && json_is_number(v))
			fprintf(g, "\"%s\" %.3f\n", keys[i][2], json_number_value(v) / 1e9);
	}
	json_array_foreach(json_object_get(r, "gpus"), k, gpu) {
		const char *tier = json_string_value(json_object_get(gpu, "tier"));
		json_t *h2d = json_object_get(gpu, "h2d_pinned_bps");
		json_t *load = json_object_get(gpu, "load_bps");

		if (json_is_number(h2d))
			fprintf(g, "\"%s: pinned host-to-device copy (baseline)\" %.3f\n", tier,
				json_number_value(h2d) / 1e9);
		if (json_is_number(load))
			fprintf(g, "\"%s: load from the host cache via weightd\" %.3f\n", tier,
				json_number_value(load) / 1e9);
	}
	fprintf(g, "e\n");
	return pclose(g) == 0;
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

/* The measurements; fills @r. Returns 0 or the negative errno of the step that failed. */
static int measure(struct ctl *c, const struct bopts *o, struct weightd *w, json_t *r)
{
	char name[WEIGHTD_NAME_MAX], why[256] = "";
	struct weightd_model_info mi;
	struct weightd_stats st;
	struct files f;
	const char *sd = ctl_catalog_dir(c, "bench", o->socket, false);
	enum rawread_drop drop;
	double t_cold = NAN, t_warm = NAN, t_first = NAN, t_sc = NAN, t_sw = NAN, t_ar = NAN;
	double t_fill, mbps;
	struct rawread_warm wb;
	uint64_t b_cold = 0, b_warm = 0;
	uint32_t mid, n_t = 0;
	void *buf = NULL;
	bool direct = true;
	int ret;

	if (!sd)
		return -ENOENT;
	ret = model_files(sd, o->model, &f, name, sizeof(name));
	if (ret) {
		ctl_err("bench", "%s: not in the catalog at %s: %s", o->model, sd, strerror(-ret));
		return ret;
	}
	ret = weightd_lookup(w, name, &mid);
	if (!ret)
		ret = weightd_model(w, mid, &mi);
	if (ret) {
		ctl_err("bench", "%s: the daemon does not know it: %s", name, weightd_last_error());
		goto out;
	}
	step(o, "%s: %u components, %u files, %llu bytes of files", name, mi.n_components, f.n,
	     (unsigned long long)f.total);
	json_object_set_new(r, "model", json_string(name));
	json_object_set_new(r, "time", json_real((double)wd_wall_ns() / 1e9));
	json_object_set_new(r, "bytes", json_integer((json_int_t)mi.nbytes));
	json_object_set_new(r, "files", json_integer(f.n));
	json_object_set_new(r, "file_bytes", json_integer((json_int_t)f.total));

	/* Baselines first (bench/bench_load.c's): raw O_DIRECT read, cold; best warm read. */
	if (posix_memalign(&buf, 4096, f.span ? f.span : 4096)) {
		ret = -ENOMEM;
		goto out;
	}
	memset(buf, 0, f.span);
	drop = rawread_drop_cache(f.paths, f.n, geteuid() == 0);
	json_object_set_new(r, "cold_method", json_string(rawread_drop_name(drop)));
	ret = rawread_files(f.paths, f.sizes, f.bases, f.n, buf, true, &t_sc);
	if (ret == -EINVAL) {
		direct = false;
		rawread_drop_cache(f.paths, f.n, geteuid() == 0);
		ret = rawread_files(f.paths, f.sizes, f.bases, f.n, buf, false, &t_sc);
	}
	if (!ret)
		ret = rawread_best_warm(f.paths, f.sizes, f.bases, f.n, buf, 3, &wb);
	if (ret) {
		ctl_err("bench", "raw read of %s's files: %s", name, strerror(-ret));
		goto out;
	}
	t_sw = wb.best;
	step(o, "raw read: cold%s %.3f GB/s (caches dropped with %s); warm %.3f GB/s (best: %s)",
	     direct ? " O_DIRECT" : "", (double)f.total / t_sc / 1e9, rawread_drop_name(drop),
	     (double)f.total / t_sw / 1e9, wb.best_name);
	json_object_set_new(r, "storage", json_pack("{s:b, s:o, s:o, s:s, s:o, s:o, s:o}",
						    "direct", direct,
						    "cold_bps", num((double)f.total / t_sc),
						    "warm_bps", num((double)f.total / t_sw),
						    "warm_method", wb.best_name,
						    "warm_uring_bps", num((double)f.total / wb.uring),
						    "warm_psync1_bps", num((double)f.total / wb.psync1),
						    "warm_psync2_bps", num((double)f.total / wb.psync2)));

	/* Host tier: cold (caches dropped), then warm (every file read once first). */
	/*
	 * Two loads of each kind, the best kept: the first load into pages of the cache that
	 * nothing touched yet also pays for allocating them, which is not what the baseline
	 * measures (that first time is reported on its own, "first_s").
	 */
	for (int k = 0; k < 2 * LOAD_RUNS && !ret; k++) {
		bool cold = k < LOAD_RUNS;
		double t;
		uint64_t b = 0;

		if (cold)
			rawread_drop_cache(f.paths, f.n, geteuid() == 0);
		else
			ret = rawread_files(f.paths, f.sizes, f.bases, f.n, buf, false, &t_fill);
		if (!ret)
			ret = timed_load(w, name, 0, cold ? "bench: host cold" : "bench: host warm", &t,
					 &b);
		if (ret) {
			ctl_err("bench", "%s load of %s: %s", cold ? "cold" : "warm", name,
				ret == -EALREADY ? "still resident after unload (pinned by another "
				"client?)" : weightd_last_error());
			goto out;
		}
		step(o, "%s load: %.3f s, %.3f GB/s", cold ? "cold" : "warm", t,
		     (double)b / t / 1e9);
		if (k == 0)
			t_first = t;
		if (cold && (isnan(t_cold) || t < t_cold)) {
			t_cold = t;
			b_cold = b;
		} else if (!cold && (isnan(t_warm) || t < t_warm)) {
			t_warm = t;
			b_warm = b;
		}
	}
	json_object_set_new(r, "host", json_pack("{s:f, s:o, s:f, s:o, s:I, s:f, s:i}",
						 "cold_s", t_cold,
						 "cold_bps", num((double)b_cold / t_cold),
						 "warm_s", t_warm,
						 "warm_bps", num((double)b_warm / t_warm),
						 "bytes", (json_int_t)b_warm, "first_s", t_first,
						 "runs", LOAD_RUNS));
	free(buf);
	buf = NULL;
	mbps = rawread_memcpy_bps(f.total < MEMCPY_MAX ? (f.total ? f.total : 4096) :
				  MEMCPY_MAX, 3);
	step(o, "memcpy: %.3f GB/s", mbps / 1e9);
	json_object_set_new(r, "memcpy_bps", num(mbps));

	/* Each GPU tier the daemon has. */
	{
		struct weightd_device_info di[WEIGHTD_TIER_MAX - 1];
		char none[200] = "";
		json_t *gpus = json_array();
		int n = weightd_devices(w, di, ARRAY_SIZE(di), none, sizeof(none));

		if (n <= 0) {
			snprintf(why, sizeof(why), "no GPU tier: %.200s",
				 n < 0 ? weightd_last_error() : none[0] ? none : "host-only daemon");
			step(o, "%s", why);
			json_object_set_new(r, "gpu_reason", json_string(why));
		}
		for (int i = 0; i < n && i < (int)ARRAY_SIZE(di); i++)
			json_array_append_new(gpus, bench_gpu(w, name, &di[i], o));
		json_object_set_new(r, "gpus", gpus);
	}
	{
		double rc = ratio((double)b_cold / t_cold, (double)f.total / t_sc);
		double rw = ratio((double)b_warm / t_warm, (double)f.total / t_sw);

		json_object_set_new(r, "ratios", json_pack("{s:o, s:o}",
							   "host_cold_vs_storage_cold", num(rc),
							   "host_warm_vs_storage_warm", num(rw)));
		json_object_set_new(r, "suspect", json_pack("{s:b, s:b}",
							    "host_cold_vs_storage_cold",
							    rc > SUSPECT_RATIO,
							    "host_warm_vs_storage_warm",
							    rw > SUSPECT_RATIO));
	}

	ret = attach_resolve(o, w, name, &t_ar, &n_t);
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
	free(buf);
	files_free(&f);
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

/*
 * "(NN% of the baseline)", or, above SUSPECT_RATIO, a refusal to call it a result: a load
 * that beats a raw read of the same bytes says the baseline (@base) was measured wrong.
 * Returns one of two static buffers, in turn.
 */
static const char *vs(double ratio_v, const char *base)
{
	static char buf[2][200];
	static int k;

	k ^= 1;
	if (isnan(ratio_v))
		snprintf(buf[k], sizeof(buf[k]), "(no ratio: a figure is missing)");
	else if (ratio_v > SUSPECT_RATIO)
		snprintf(buf[k], sizeof(buf[k]), "(baseline suspect: the load ran at %.0f%% of "
			 "the %s; no ratio reported)", 100 * ratio_v, base);
	else
		snprintf(buf[k], sizeof(buf[k]), "(%.0f%% of the baseline below)", 100 * ratio_v);
	return buf[k];
}

static void print_text(json_t *r)
{
	json_t *h = json_object_get(r, "host"), *s = json_object_get(r, "storage");
	json_t *gpus = json_object_get(r, "gpus"), *ra = json_object_get(r, "ratios"), *g;
	size_t i;

	char cold_base[96], warm_base[96];

	printf("model %s: %lld bytes\n", ctl_esc(json_string_value(json_object_get(r, "model"))),
	       (long long)json_integer_value(json_object_get(r, "bytes")));
	snprintf(cold_base, sizeof(cold_base), "raw %s read, caches dropped by %s",
		 json_is_true(json_object_get(s, "direct")) ? "O_DIRECT" : "buffered",
		 json_string_value(json_object_get(r, "cold_method")));
	snprintf(warm_base, sizeof(warm_base), "best raw read of the cached files, %s",
		 json_string_value(json_object_get(s, "warm_method")));
	printf("  cold: load via weightd %8.3f GB/s  %s\n",
	       json_number_value(json_object_get(h, "cold_bps")) / 1e9,
	       vs(json_number_value(json_object_get(ra, "host_cold_vs_storage_cold")),
		  cold_base));
	printf("        baseline         %8.3f GB/s  (%s)\n",
	       json_number_value(json_object_get(s, "cold_bps")) / 1e9, cold_base);
	printf("  warm: load via weightd %8.3f GB/s  %s\n",
	       json_number_value(json_object_get(h, "warm_bps")) / 1e9,
	       vs(json_number_value(json_object_get(ra, "host_warm_vs_storage_warm")),
		  warm_base));
	printf("        baseline         %8.3f GB/s  (%s)\n",
	       json_number_value(json_object_get(s, "warm_bps")) / 1e9, warm_base);
	if (json_is_number(json_object_get(h, "first_s")))
		printf("  loads: the best of %lld each; the first (cold, and maybe allocating cache "
		       "pages) took %.3f s\n",
		       (long long)json_integer_value(json_object_get(h, "runs")),
		       json_number_value(json_object_get(h, "first_s")));
	printf("  memcpy, one thread     %8.3f GB/s\n",
	       json_number_value(json_object_get(r, "memcpy_bps")) / 1e9);
	json_array_foreach(gpus, i, g) {
		const char *tier = json_string_value(json_object_get(g, "tier"));

		if (json_object_get(g, "error"))
			printf("  %s\n", json_string_value(json_object_get(g, "error")));
		else
			printf("  load to %-8s %8.3f GB/s  (pinned H2D %.3f GB/s%s)\n", tier,
			       json_number_value(json_object_get(g, "load_bps")) / 1e9,
			       json_number_value(json_object_get(g, "h2d_pinned_bps")) / 1e9,
			       json_is_true(json_object_get(g, "emulated")) ?
			       "; emulated device: host memory, not a GPU figure" : "");
	}
	if (!json_array_size(gpus))
		printf("  %s\n", json_string_value(json_object_get(r, "gpu_reason")));
	printf("  new client       attach + resolve %lld tensors in %.3f ms\n",
	       (long long)json_integer_value(json_object_get(r, "tensors")),
	       json_number_value(json_object_get(r, "attach_resolve_s")) * 1e3);
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
	if (o.png && !plot(o.png, r)) {
		ctl_err("bench", "gnuplot could not draw %s (is gnuplot installed?)", o.png);
		ret = -EIO;
	}
	if (o.json) {
		char *txt = json_dumps(r, JSON_INDENT(2));

		if (txt)
			puts(txt);
		free(txt);
	} else {
		print_text(r);
	}
	json_decref(r);
	return ret ? CTL_FAIL : CTL_OK;
}

/* ---- history ---------------------------------------------------------------------------- */

struct hist_ctx {
	bool json;
	json_t *runs;
	unsigned int n;
};

static double fig(json_t *f, const char *obj, const char *key)
{
	json_t *o = obj ? json_object_get(f, obj) : f;
	json_t *v = o ? json_object_get(o, key) : NULL;

	return v && json_is_number(v) ? json_number_value(v) : NAN;
}

/* @bps as GB/s with three decimals, or "-" for a figure the run does not have. */
static const char *gbps(double bps, char *buf)
{
	if (isnan(bps))
		return "-";
	snprintf(buf, 16, "%.3f", bps / 1e9);
	return buf;
}

static int on_run(int64_t id, const char *model, uint64_t at_ns, const char *figures, void *arg)
{
	struct hist_ctx *h = arg;
	json_t *f = json_loads(figures, 0, NULL);
	time_t t = (time_t)(at_ns / 1000000000);
	char when[32], b[5][16];
	struct tm tm;

	h->n++;
	if (h->json) {
		json_array_append_new(h->runs, json_pack("{s:I, s:s, s:f, s:o}", "id",
							 (json_int_t)id, "model", model, "time",
							 (double)at_ns / 1e9,
							 "figures", f ? f : json_null()));
		return 0;
	}
	localtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	printf("%-5lld %-19s %-24s %9s %9s %9s %9s %9s\n", (long long)id, when, ctl_esc(model),
	       gbps(fig(f, "host", "cold_bps"), b[0]), gbps(fig(f, "host", "warm_bps"), b[1]),
	       gbps(fig(f, "storage", "cold_bps"), b[2]),
	       gbps(fig(f, "storage", "warm_bps"), b[3]),
	       gbps(fig(json_array_get(json_object_get(f, "gpus"), 0), NULL, "load_bps"), b[4]));
	json_decref(f);
	return 0;
}

int ctl_history(struct ctl *c, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct hist_ctx h = { 0 };
	struct catalog *cat;
	const char *sd, *model = NULL, *socket = NULL;
	char name[WEIGHTD_NAME_MAX];
	int opt, ret;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "hj", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j': h.json = true; break;
		case 's': socket = optarg; break;
		case 'h': usage_history(stdout); return CTL_OK;
		default: usage_history(stderr); return CTL_USAGE;
		}
	}
	if (optind + 1 < argc) {
		ctl_err("history", "takes at most one MODEL");
		usage_history(stderr);
		return CTL_USAGE;
	}
	sd = ctl_catalog_dir(c, "history", socket, h.json);
	if (!sd)
		return CTL_FAIL;
	ret = catalog_open(sd, &cat);
	if (ret) {
		ctl_err("history", "cannot open the catalog in %s: %s", sd, strerror(-ret));
		return CTL_FAIL;
	}
	if (optind < argc) {
		struct catalog_model m;

		/* A model is named as everywhere (name or path); runs are stored by its name. */
		model = argv[optind];
		if (catalog_get_model(cat, model, &m) == 0) {
			snprintf(name, sizeof(name), "%s", m.name);
			model = name;
			catalog_model_free(&m);
		}
	}
	if (h.json)
		h.runs = json_array();
	else
		printf("%-5s %-19s %-24s %9s %9s %9s %9s %9s\n", "ID", "TIME", "MODEL", "COLD GB/s",
		       "WARM GB/s", "DISK COLD", "DISK WARM", "GPU0 GB/s");
	ret = catalog_bench_list(cat, model, on_run, &h);
	catalog_close(cat);
	if (ret) {
		json_decref(h.runs);
		ctl_err("history", "cannot read the bench runs: %s", strerror(-ret));
		return CTL_FAIL;
	}
	if (h.json) {
		json_t *j = json_pack("{s:o, s:o}", "runs", h.runs, "catalog",
				      ctl_catalog_json(c));
		char *txt = json_dumps(j, JSON_INDENT(2));

		if (txt)
			puts(txt);
		free(txt);
		json_decref(j);
	} else if (!h.n) {
		printf("(no bench runs recorded%s%s)\n", model ? " for " : "", model ? ctl_esc(model) : "");
	}
	return CTL_OK;
}
