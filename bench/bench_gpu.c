/*
 * GPU load benchmark: disk -> VRAM and host cache -> VRAM, against the baselines the targets
 * are defined by, all measured in the same run on the same files (a generated LLaMA
 * checkpoint of --size bytes, as bench/bench_load.c makes it):
 *
 *   pinned H2D           cuMemHostAlloc buffer -> VRAM, 64 MiB copies on two streams: the
 *                        physical limit of the link (the host -> VRAM target's 100%)
 *   storage, O_DIRECT    raw io_uring O_DIRECT read of the files (uring/rawread.h), cold
 *   disk -> VRAM         staging_load() of every tensor, page cache dropped first
 *   host -> VRAM         staging_copy_host() of the files' bytes from pageable memory,
 *                        staged through the ring's page-locked slots (what the daemon does);
 *                        then from the same memory page-locked, with the cost of
 *                        cuMemHostRegister/Unregister of it timed apart (GB/s of locking)
 *   safetensors          safetensors.torch.load_file(path, device="cuda:0") per file, cold
 *                        and warm (when `import safetensors.torch` works and CUDA is there)
 *
 * Targets (DESIGN.md): host -> VRAM >= 0.90 x pinned; disk -> VRAM >= 0.85 x min(storage,
 * pinned); disk -> VRAM >= 3 x safetensors (cold against cold).
 *
 * Without a CUDA driver it prints why and exits 0 with {"skipped": "..."}. With
 * $WEIGHTD_GPU_EMULATE set it runs the same steps on the emulated device instead: every
 * figure is labelled "emulated", no target is evaluated (memcpy is not a PCIe link), and the
 * JSON keeps them under "emulated". The last line printed is always one JSON object.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/common.h"
#include "core/format/gen.h"
#include "core/policy/placement.h"
#include "core/format/st.h"
#include "gpu/device.h"
#include "gpu/staging.h"
#include "gpu/topo.h"
#include "uring/rawread.h"

#define MAXF RAWREAD_MAX_FILES
#define PINNED_BUF (256u << 20)
#define PINNED_CHUNK (64u << 20)
#define VRAM_ALIGN 256u

static struct rawread_set set;	/* the checkpoint's files */

static double now_s(void)
{
	return (double)wd_now_ns() / 1e9;
}

static double best(double a, double b)
{
	return a <= 0 || (b > 0 && b < a) ? b : a;
}

static void skip(const char *why)
{
	char esc[512];
	size_t j = 0;

	printf("bench_gpu: skipped: %s\n", why);
	for (size_t i = 0; why[i] && j + 2 < sizeof(esc); i++) {
		if (why[i] == '"' || why[i] == '\\')
			esc[j++] = '\\';
		esc[j++] = (unsigned char)why[i] < 0x20 ? ' ' : why[i];
	}
	esc[j] = '\0';
	printf("{\"bench\":\"gpu\",\"skipped\":\"%s\"}\n", esc);
}

static int cmp_transfer(const void *a, const void *b)
{
	const struct staging_transfer *x = a, *y = b;

	if (x->fd != y->fd)
		return x->fd < y->fd ? -1 : 1;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* One transfer per tensor of every file, packed at VRAM_ALIGN in VRAM from @base. */
static int plan_transfers(int *fds, uint64_t base, struct staging_transfer **out, size_t *n_out,
			  uint64_t *bytes_out)
{
	struct staging_transfer *t = NULL;
	size_t n = 0, cap = 0;
	uint64_t dst = 0, bytes = 0;

	for (unsigned int i = 0; i < set.n; i++) {
		struct st_file f;
		struct st_error err;

		if (st_open_fd(fds[i], set.paths[i], &f, &err))
			return -EINVAL;
		for (uint32_t k = 0; k < f.n_tensors; k++) {
			uint64_t len = f.tensors[k].end - f.tensors[k].begin;

			if (n == cap) {
				struct staging_transfer *nt;

				cap = cap ? 2 * cap : 1024;
				nt = realloc(t, cap * sizeof(*t));
				if (!nt) {
					free(t);
					st_file_free(&f);
					return -ENOMEM;
				}
				t = nt;
			}
			t[n++] = (struct staging_transfer){ .fd = fds[i], .name = set.paths[i],
							    .off = f.data_start + f.tensors[k].begin,
							    .len = len };
			bytes += len;
		}
		st_file_free(&f);
	}
	qsort(t, n, sizeof(*t), cmp_transfer);
	for (size_t k = 0; k < n; k++) {
		t[k].dst = base + dst;
		dst += (t[k].len + VRAM_ALIGN - 1) / VRAM_ALIGN * VRAM_ALIGN;
	}
	*out = t;
	*n_out = n;
	*bytes_out = bytes;
	return 0;
}

/*
 * Where copy @k of pinned_h2d() reads and writes: chunk-sized slots of the pinned buffer and
 * of the allocation, taken in turn, so every source offset is a multiple of the chunk (4 KiB
 * aligned) and every copy ends inside the allocation, whatever its size (a model smaller than
 * one chunk gets one slot of its own size).
 */
static void pinned_slot(uint64_t k, uint64_t vsize, uint64_t *chunk, uint64_t *src,
			uint64_t *dst)
{
	uint64_t c = vsize < PINNED_CHUNK ? vsize / 4096 * 4096 : PINNED_CHUNK;

	if (!c)
		c = vsize;
	*chunk = c;
	*src = k % (PINNED_BUF / PINNED_CHUNK) * PINNED_CHUNK;
	*dst = k % (vsize / c) * c;
}

static uint64_t misaligned_src;	/* pinned_h2d() copies whose source was not 4 KiB aligned */

/* Pinned buffer -> VRAM, @bytes in chunk copies alternating over two streams. */
static double pinned_h2d(const struct gpu_ops *ops, struct gpu_dev *dev, void *pinned,
			 struct gpu_vram *v, uint64_t bytes)
{
	struct gpu_stream *s[2];
	struct gpu_event *ev[2];
	char why[256];
	double t0, t1;
	uint64_t off = 0, k = 0;

	if (ops->stream_create(dev, &s[0], why, sizeof(why)) ||
	    ops->stream_create(dev, &s[1], why, sizeof(why))) {
		fprintf(stderr, "pinned: %s\n", why);
		return -1;
	}
	t0 = now_s();
	for (; off < bytes; k++) {
		uint64_t chunk, src, dst, len;

		pinned_slot(k, v->size, &chunk, &src, &dst);
		len = bytes - off < chunk ? bytes - off : chunk;
		misaligned_src += src % 4096 != 0;
		if (ops->copy_h2d(dev, s[k & 1], v->dptr + dst, (char *)pinned + src, len, why,
				  sizeof(why))) {
			fprintf(stderr, "pinned: %s\n", why);
			return -1;
		}
		off += len;
	}
	for (int i = 0; i < 2; i++) {
		if (ops->event_record(dev, s[i], &ev[i], why, sizeof(why)) ||
		    ops->event_wait(dev, ev[i], why, sizeof(why))) {
			fprintf(stderr, "pinned: %s\n", why);
			return -1;
		}
	}
	t1 = now_s();
	for (int i = 0; i < 2; i++) {
		ops->event_destroy(dev, ev[i]);
		ops->stream_destroy(dev, s[i]);
	}
	return t1 - t0;
}

/* safetensors.torch.load_file(..., device="cuda:0") of every file: seconds, or < 0. */
static double safetensors_load(bool cold)
{
	char cmd[16384];
	size_t len;
	double secs = -1;
	FILE *f;

	if (cold)
		rawread_drop_cache((const char *const *)set.paths, set.n, true);
	len = (size_t)snprintf(cmd, sizeof(cmd), "python3 -c '"
		"import sys, time, torch\n"
		"from safetensors.torch import load_file\n"
		"torch.zeros(1, device=\"cuda:0\"); torch.cuda.synchronize()\n"
		"t = time.perf_counter()\n"
		"for p in sys.argv[1:]:\n"
		"    d = load_file(p, device=\"cuda:0\")\n"
		"torch.cuda.synchronize()\n"
		"print(time.perf_counter() - t)\n' ");
	for (unsigned int i = 0; i < set.n && len < sizeof(cmd); i++)
		len += (size_t)snprintf(cmd + len, sizeof(cmd) - len, " '%s'", set.paths[i]);
	if (len >= sizeof(cmd))
		return -1;
	f = popen(cmd, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%lf", &secs) != 1)
		secs = -1;
	if (pclose(f))
		secs = -1;
	return secs;
}

static bool have_safetensors(void)
{
	return system("python3 -c 'import safetensors.torch, torch; "
		      "assert torch.cuda.is_available()' >/dev/null 2>&1") == 0;
}

int main(int argc, char **argv)
{
	const char *size_s = "1G", *dir = NULL;
	char dirbuf[512], why[512] = "";
	int runs = 3, c, fds[MAXF];
	uint64_t size, tensor_bytes = 0;
	const struct gpu_ops *ops;
	struct gpu_dev *dev = NULL;
	struct gpu_device info;
	struct gpu_vram v;
	void *saved_ctx = NULL;
	struct staging *st = NULL;
	struct staging_transfer *t = NULL;
	struct staging_stats ss;
	struct placement *pl = NULL;
	struct gpu_topo_entry te = { .node = -1 };
	size_t nt = 0;
	void *pinned = NULL;
	char *host = NULL;
	bool emulated, st_ok = false;
	double s_pinned = 0, s_storage = 0, s_disk = 0, s_host = 0, s_st_cold = 0, s_st_warm = 0;
	double s_host_reg = 0, s_reg = 0, s_unreg = 0;

	while ((c = getopt(argc, argv, "s:d:r:")) != -1) {
		switch (c) {
		case 's': size_s = optarg; break;
		case 'd': dir = optarg; break;
		case 'r': runs = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: bench_gpu [-s SIZE] [-d DIR] [-r RUNS]\n");
			return 2;
		}
	}
	if (gen_parse_size(size_s, &size) || runs < 1) {
		fprintf(stderr, "bad size or runs\n");
		return 2;
	}
	ops = gpu_ops_pick(why, sizeof(why));
	if (!ops) {
		skip(why);
		return 0;
	}
	emulated = !strcmp(ops->kind, "emulated");
	if (ops->open(0, &dev, why, sizeof(why)) || ops->info(dev, &info, why, sizeof(why)) ||
	    ops->ctx_enter(dev, &saved_ctx, why, sizeof(why))) {
		skip(why);
		return 0;
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
	for (unsigned int i = 0; i < set.n; i++) {
		fds[i] = open(set.paths[i], O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0) {
			fprintf(stderr, "%s: %s\n", set.paths[i], strerror(errno));
			return 1;
		}
	}
	if (plan_transfers(fds, 0, &t, &nt, &tensor_bytes)) {
		fprintf(stderr, "cannot read the headers in %s\n", dir);
		return 1;
	}
	/* VRAM for every tensor (packed at VRAM_ALIGN) plus room for a misaligned end. */
	if (ops->vram_alloc(dev, t[nt - 1].dst + t[nt - 1].len + (1u << 20), &v, why,
			    sizeof(why))) {
		fprintf(stderr, "vram_alloc: %s\n", why);
		return 1;
	}
	for (size_t k = 0; k < nt; k++)
		t[k].dst += v.dptr;
	if (!placement_open_this_system(!emulated, &pl) &&
	    gpu_topo_place(pl, &info, -1, &te) == 0) {
		char line[256];

		gpu_topo_format(&te, line, sizeof(line));
		fprintf(stderr, "placement: %s\n", line);
	}
	{
		struct staging_options so = { .node = te.node };

		if (staging_create(ops, dev, &so, &st, why, sizeof(why))) {
			fprintf(stderr, "staging_create: %s\n", why);
			return 1;
		}
	}
	if (ops->host_alloc(dev, PINNED_BUF, &pinned, why, sizeof(why))) {
		fprintf(stderr, "host_alloc: %s\n", why);
		return 1;
	}
	memset(pinned, 0x3c, PINNED_BUF);
	if (posix_memalign((void **)&host, 4096, set.total_alloc + (4u << 20))) {
		fprintf(stderr, "out of memory for %llu bytes\n", (unsigned long long)set.total_alloc);
		return 1;
	}
	memset(host, 0, set.total_alloc + (4u << 20));
	fprintf(stderr, "device: %s%s (%s), files: %u, %.2f GB, %zu tensors\n", info.name,
		emulated ? " [emulated]" : "", info.pci_bus_id[0] ? info.pci_bus_id : "no PCI id",
		set.n, (double)set.total_file / 1e9, nt);
	st_ok = !emulated && have_safetensors();

	for (int r = 0; r < runs; r++) {
		double t0, secs;

		s_pinned = best(s_pinned, pinned_h2d(ops, dev, pinned, &v, tensor_bytes));

		rawread_drop_cache((const char *const *)set.paths, set.n, true);
		if (rawread_files((const char *const *)set.paths, set.sizes, set.bases, set.n, host,
				  true, &secs) == 0)
			s_storage = best(s_storage, secs);

		rawread_drop_cache((const char *const *)set.paths, set.n, true);
		t0 = now_s();
		if (staging_load(st, t, nt, NULL, why, sizeof(why))) {
			fprintf(stderr, "staging_load: %s\n", why);
			return 1;
		}
		s_disk = best(s_disk, now_s() - t0);

		/*
		 * The host cache's copy of the files (the bytes rawread just put in @host), as
		 * the daemon copies it: staged through the ring's page-locked slots (the arena
		 * is not page-locked). Then the same bytes page-locked first, timing the
		 * registration apart: what registering extents as they become resident would
		 * cost, against what staging costs.
		 */
		{
			struct staging_host_copy *hc = calloc(nt, sizeof(*hc));

			if (!hc)
				return 1;
			for (size_t k = 0; k < nt; k++) {
				unsigned int fi = 0;

				while (fds[fi] != t[k].fd)
					fi++;
				hc[k] = (struct staging_host_copy){ host + set.bases[fi] + t[k].off,
								    t[k].len, t[k].dst, false };
			}
			t0 = now_s();
			if (staging_copy_host(st, hc, nt, NULL, why, sizeof(why))) {
				fprintf(stderr, "staging_copy_host (staged): %s\n", why);
				return 1;
			}
			s_host = best(s_host, now_s() - t0);
			t0 = now_s();
			if (ops->host_register(dev, host, set.total_alloc, why, sizeof(why)) == 0) {
				s_reg = best(s_reg, now_s() - t0);
				for (size_t k = 0; k < nt; k++)
					hc[k].locked = true;
				t0 = now_s();
				if (staging_copy_host(st, hc, nt, NULL, why, sizeof(why))) {
					fprintf(stderr, "staging_copy_host (registered): %s\n", why);
					return 1;
				}
				s_host_reg = best(s_host_reg, now_s() - t0);
				t0 = now_s();
				ops->host_unregister(dev, host);
				s_unreg = best(s_unreg, now_s() - t0);
			} else {
				fprintf(stderr, "host_register: %s\n", why);
			}
			free(hc);
		}
		if (st_ok) {
			s_st_cold = best(s_st_cold, safetensors_load(true));
			s_st_warm = best(s_st_warm, safetensors_load(false));
		}
	}
	staging_get_stats(st, &ss);

	{
		double gb = (double)tensor_bytes / 1e9, files_gb = (double)set.total_file / 1e9;
		double pinned_gbps = s_pinned > 0 ? gb / s_pinned : 0;
		double storage_gbps = s_storage > 0 ? files_gb / s_storage : 0;
		double disk_gbps = s_disk > 0 ? gb / s_disk : 0;
		double host_gbps = s_host > 0 ? gb / s_host : 0;
		double host_reg_gbps = s_host_reg > 0 ? gb / s_host_reg : 0;
		double alloc_gb = (double)set.total_alloc / 1e9;
		double reg_gbps = s_reg > 0 ? alloc_gb / s_reg : 0;
		double unreg_gbps = s_unreg > 0 ? alloc_gb / s_unreg : 0;
		double stc_gbps = s_st_cold > 0 ? gb / s_st_cold : 0;
		double stw_gbps = s_st_warm > 0 ? gb / s_st_warm : 0;
		double lim = pinned_gbps < storage_gbps ? pinned_gbps : storage_gbps;
		const char *tag = emulated ? " [emulated]" : "";
		char ratios[512] = "", stc_s[32] = "null", stw_s[32] = "null";

		printf("%-34s %10s\n", "path", "GB/s");
		printf("%-34s %10.2f%s\n", "pinned H2D (the link)", pinned_gbps, tag);
		printf("%-34s %10.2f%s\n", "storage, O_DIRECT io_uring", storage_gbps, tag);
		printf("%-34s %10.2f%s\n", "disk -> VRAM (staging_load)", disk_gbps, tag);
		printf("%-34s %10.2f%s\n", "host -> VRAM, staged (the daemon)", host_gbps, tag);
		printf("%-34s %10.2f%s\n", "host -> VRAM, from registered", host_reg_gbps, tag);
		printf("%-34s %10.2f%s\n", "cuMemHostRegister (page-locking)", reg_gbps, tag);
		printf("%-34s %10.2f%s\n", "cuMemHostUnregister", unreg_gbps, tag);
		if (st_ok) {
			snprintf(stc_s, sizeof(stc_s), "%.3f", stc_gbps);
			snprintf(stw_s, sizeof(stw_s), "%.3f", stw_gbps);
			printf("%-34s %10.2f\n", "safetensors -> cuda:0, cold", stc_gbps);
			printf("%-34s %10.2f\n", "safetensors -> cuda:0, warm", stw_gbps);
		} else {
			printf("safetensors baseline: not run (%s)\n",
			       emulated ? "emulated device" : "python3 safetensors.torch/CUDA missing");
		}
		printf("staging: %u slot fills per run, %llu overlapped reads, %u files O_DIRECT, "
		       "node %d\n", (unsigned)(ss.slot_fills / (unsigned)runs),
		       (unsigned long long)ss.overlapped_reads, ss.direct_files / (unsigned)runs,
		       ss.node);
		printf("staging path: slots %s (%s), %s (%s), node bind %s (%s); %llu copies for "
		       "%llu bytes\n", ss.slots_locked ? "page-locked" : "PAGEABLE",
		       strerror(-ss.slots_err), ss.fixed_buffers ? "io_uring fixed buffers" :
		       "NOT fixed buffers", strerror(-ss.fixed_buffers_err),
		       ss.node < 0 ? "not asked" : ss.node_err ? "FAILED" : "ok",
		       strerror(-ss.node_err), (unsigned long long)ss.copies,
		       (unsigned long long)ss.copy_bytes);
		if (!emulated) {
			double r_host = pinned_gbps ? host_gbps / pinned_gbps : 0;
			double r_disk = lim ? disk_gbps / lim : 0;
			double r_st = stc_gbps ? disk_gbps / stc_gbps : 0;

			printf("host -> VRAM / pinned        %.3f (target >= 0.90) %s\n", r_host,
			       r_host >= 0.90 ? "met" : "MISSED");
			printf("disk -> VRAM / min(storage, pinned) %.3f (target >= 0.85) %s\n",
			       r_disk, r_disk >= 0.85 ? "met" : "MISSED");
			if (st_ok)
				printf("disk -> VRAM / safetensors cold %.2fx (target >= 3x) %s\n", r_st,
				       r_st >= 3 ? "met" : "MISSED");
			char st_ratio[32] = "null";

			if (st_ok)
				snprintf(st_ratio, sizeof(st_ratio), "%.4f", r_st);
			snprintf(ratios, sizeof(ratios),
				 ",\"ratios\":{\"host_vs_pinned\":%.4f,\"disk_vs_limit\":%.4f,"
				 "\"disk_vs_safetensors_cold\":%s},\"targets_met\":{"
				 "\"host_vs_pinned\":%s,\"disk_vs_limit\":%s,\"vs_safetensors\":%s}",
				 r_host, r_disk, st_ratio, r_host >= 0.90 ? "true" : "false",
				 r_disk >= 0.85 ? "true" : "false",
				 !st_ok ? "null" : r_st >= 3 ? "true" : "false");
		} else {
			printf("emulated device: memcpy figures, not GPU figures; no target "
			       "evaluated\n");
		}
		printf("{\"bench\":\"gpu\",\"device\":\"%s\",\"kind\":\"%s\",\"bytes\":%llu,"
		       "\"files\":%u,\"tensors\":%zu,\"runs\":%d,\"node\":%d,\"%s\":{"
		       "\"pinned_h2d_gbps\":%.3f,\"storage_direct_gbps\":%.3f,"
		       "\"disk_to_vram_gbps\":%.3f,\"host_to_vram_gbps\":%.3f,"
		       "\"host_registered_to_vram_gbps\":%.3f,\"host_register_gbps\":%.3f,"
		       "\"host_unregister_gbps\":%.3f,"
		       "\"safetensors_cold_gbps\":%s,\"safetensors_warm_gbps\":%s}%s,"
		       "\"staging\":{\"slots_locked\":%s,\"slots_err\":%d,\"fixed_buffers\":%s,"
		       "\"fixed_buffers_err\":%d,\"node_err\":%d,\"copies\":%llu,"
		       "\"staged_bytes\":%llu},\"pinned_src_misaligned\":%llu}\n",
		       info.name, ops->kind, (unsigned long long)tensor_bytes, set.n, nt, runs,
		       te.node, emulated ? "emulated" : "figures", pinned_gbps, storage_gbps,
		       disk_gbps, host_gbps, host_reg_gbps, reg_gbps, unreg_gbps, stc_s, stw_s,
		       ratios, ss.slots_locked ? "true" : "false", ss.slots_err,
		       ss.fixed_buffers ? "true" : "false", ss.fixed_buffers_err, ss.node_err,
		       (unsigned long long)ss.copies, (unsigned long long)ss.staged_bytes,
		       (unsigned long long)misaligned_src);
	}
	staging_destroy(st);
	ops->host_free(dev, pinned);
	ops->vram_free(dev, &v);
	ops->ctx_leave(dev, saved_ctx);
	ops->close(dev);
	placement_close(pl);
	free(host);
	free(t);
	for (unsigned int i = 0; i < set.n; i++)
		close(fds[i]);
	return 0;
}
