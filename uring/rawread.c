/* Baseline reads for benchmarks (uring/rawread.h). */
#include "uring/rawread.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/common.h"
#include "core/format/gen.h"

const char *rawread_drop_name(enum rawread_drop d)
{
	switch (d) {
	case RAWREAD_DROP_CACHES:
		return "drop_caches";
	case RAWREAD_DROP_FADVISE:
		return "fadvise_dontneed";
	default:
		return "none";
	}
}

enum rawread_drop rawread_drop_cache(const char *const *paths, unsigned int n,
				     bool allow_global)
{
	enum rawread_drop how = RAWREAD_DROP_NONE;

	sync();
	if (allow_global) {
		int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);

		if (fd >= 0) {
			bool ok = write(fd, "1", 1) == 1;

			close(fd);
			if (ok)
				return RAWREAD_DROP_CACHES;
		}
	}
	for (unsigned int i = 0; i < n; i++) {
		int fd = open(paths[i], O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			continue;
		if (posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
			how = RAWREAD_DROP_FADVISE;
		close(fd);
	}
	return how;
}

int rawread_files(const char *const *paths, const uint64_t *sizes, const uint64_t *bases,
		  unsigned int n, void *buf, bool direct, double *secs)
{
	struct io_uring ring;
	unsigned int fi = 0, inflight = 0, opened = 0;
	uint64_t off = 0, t0;
	int *fds, ret = 0;

	*secs = 0;
	fds = calloc(n ? n : 1, sizeof(*fds));
	if (!fds)
		return -ENOMEM;
	ret = io_uring_queue_init(RAWREAD_QD, &ring, 0);
	if (ret < 0) {
		free(fds);
		return ret;
	}
	t0 = wd_now_ns();
	for (; opened < n; opened++) {
		fds[opened] = open(paths[opened], O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
		if (fds[opened] < 0) {
			ret = -errno;
			goto out;
		}
	}
	while (fi < n && !sizes[fi])
		fi++;
	for (;;) {
		struct io_uring_cqe *cqe;

		while (inflight < RAWREAD_QD && fi < n) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			uint64_t len = sizes[fi] - off < RAWREAD_CHUNK ? sizes[fi] - off : RAWREAD_CHUNK;

			if (!sqe)
				break;
			if (direct)
				len = (len + 4095) & ~4095ull;
			io_uring_prep_read(sqe, fds[fi], (char *)buf + bases[fi] + off,
					   (unsigned int)len, off);
			/* A short read can only be the file's end: ask for exactly what is left. */
			io_uring_sqe_set_data64(sqe, sizes[fi] - off < len ? sizes[fi] - off : len);
			inflight++;
			off += RAWREAD_CHUNK;
			if (off >= sizes[fi]) {
				do
					fi++;
				while (fi < n && !sizes[fi]);
				off = 0;
			}
		}
		if (!inflight)
			break;
		ret = io_uring_submit_and_wait(&ring, 1);
		if (ret < 0)
			goto drain;
		ret = 0;
		while (io_uring_peek_cqe(&ring, &cqe) == 0) {
			if (cqe->res < 0 && !ret)
				ret = cqe->res;
			else if (!ret && (uint64_t)cqe->res < io_uring_cqe_get_data64(cqe))
				ret = -EIO;
			io_uring_cqe_seen(&ring, cqe);
			inflight--;
		}
		if (ret)
			goto drain;
	}
	*secs = (double)(wd_now_ns() - t0) / 1e9;
	goto out;
drain:
	/* The buffer must outlive every read in flight: wait for them before returning. */
	while (inflight) {
		struct io_uring_cqe *cqe;

		if (io_uring_wait_cqe(&ring, &cqe) < 0)
			break;
		io_uring_cqe_seen(&ring, cqe);
		inflight--;
	}
out:
	for (unsigned int i = 0; i < opened; i++)
		close(fds[i]);
	io_uring_queue_exit(&ring);
	free(fds);
	return ret;
}

double rawread_memcpy_bps(uint64_t bytes, unsigned int runs)
{
	char *a = malloc(bytes), *b = malloc(bytes);
	double best = 0;

	if (!a || !b || !bytes) {
		free(a);
		free(b);
		return -1;
	}
	/* Fault both in first: the copy measures memory bandwidth, not page faults. */
	memset(a, 1, bytes);
	memset(b, 2, bytes);
	for (unsigned int r = 0; r < (runs ? runs : 1); r++) {
		uint64_t t0 = wd_now_ns(), dt;

		memcpy(b, a, bytes);
		/* Keep the copy from being elided: its result is read. */
		__asm__ __volatile__("" : : "r"(b) : "memory");
		dt = wd_now_ns() - t0;
		if (dt && (double)bytes * 1e9 / (double)dt > best)
			best = (double)bytes * 1e9 / (double)dt;
	}
	free(a);
	free(b);
	return best;
}

static void gen_progress(void *arg, uint64_t done, uint64_t total)
{
	uint64_t *last = arg, pct = total ? done * 100 / total : 0;

	if (pct / 10 != *last / 10)
		fprintf(stderr, "generating: %llu%%\n", (unsigned long long)pct);
	*last = pct;
}

int rawread_bench_model(const char *dir, uint64_t size, struct rawread_set *set)
{
	char stamp[4096], pattern[4096];
	glob_t g;
	int ret, fd;

	memset(set, 0, sizeof(*set));
	snprintf(stamp, sizeof(stamp), "%s/.complete", dir);
	if (access(stamp, F_OK)) {
		uint64_t last = 0;

		ret = gen_preset("llama", dir, &(struct gen_options){
					 .size = size, .shards = 4, .progress = gen_progress,
					 .arg = &last });
		if (ret)
			return ret;
		fd = open(stamp, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (fd < 0)
			return -errno;
		close(fd);
	}
	snprintf(pattern, sizeof(pattern), "%s/*.safetensors", dir);
	if (glob(pattern, 0, NULL, &g))
		return -ENOENT;
	ret = 0;
	for (size_t i = 0; i < g.gl_pathc && set->n < RAWREAD_MAX_FILES && !ret; i++) {
		struct stat sb;

		if (stat(g.gl_pathv[i], &sb)) {
			ret = -errno;
			break;
		}
		set->paths[set->n] = strdup(g.gl_pathv[i]);
		if (!set->paths[set->n]) {
			ret = -ENOMEM;
			break;
		}
		set->sizes[set->n] = (uint64_t)sb.st_size;
		set->bases[set->n] = set->total_alloc;
		set->total_file += (uint64_t)sb.st_size;
		set->total_alloc += ((uint64_t)sb.st_size + 4095) & ~4095ull;
		set->n++;
	}
	globfree(&g);
	if (!ret && !set->n)
		ret = -ENOENT;
	if (ret)
		rawread_set_free(set);
	return ret;
}

void rawread_set_free(struct rawread_set *set)
{
	for (unsigned int i = 0; i < set->n; i++)
		free(set->paths[i]);
	memset(set, 0, sizeof(*set));
}

/* ---- psync: pread(2) by a few threads ------------------------------------------------- */

struct psync {
	const char *const *paths;
	const uint64_t *sizes, *bases;
	unsigned int n;
	char *buf;
	int *fds;
	atomic_uint_least64_t next;	/* the next chunk, counted over all files */
	_Atomic int err;
};

static void *psync_job(void *arg)
{
	struct psync *ps = arg;

	for (;;) {
		uint64_t k = atomic_fetch_add(&ps->next, 1), off = k * RAWREAD_CHUNK;
		unsigned int f = 0;

		/* Chunk k of the concatenation: find its file (few files, a linear walk). */
		while (f < ps->n && off >= (ps->sizes[f] + RAWREAD_CHUNK - 1) / RAWREAD_CHUNK *
						 RAWREAD_CHUNK) {
			off -= (ps->sizes[f] + RAWREAD_CHUNK - 1) / RAWREAD_CHUNK * RAWREAD_CHUNK;
			f++;
		}
		if (f >= ps->n || atomic_load(&ps->err))
			return NULL;
		for (uint64_t want = ps->sizes[f] - off < RAWREAD_CHUNK ? ps->sizes[f] - off
									 : RAWREAD_CHUNK;
		     want;) {
			ssize_t r = pread(ps->fds[f], ps->buf + ps->bases[f] + off, want, (off_t)off);

			if (r <= 0) {
				atomic_store(&ps->err, r < 0 ? -errno : -EIO);
				return NULL;
			}
			off += (uint64_t)r;
			want -= (uint64_t)r;
		}
	}
}

int rawread_files_psync(const char *const *paths, const uint64_t *sizes, const uint64_t *bases,
			unsigned int n, void *buf, unsigned int jobs, double *secs)
{
	struct psync ps = { .paths = paths, .sizes = sizes, .bases = bases, .n = n, .buf = buf };
	pthread_t th[8];
	unsigned int started = 0;
	uint64_t t0;
	int ret = 0;

	*secs = 0;
	if (!jobs || jobs > 8)
		return -EINVAL;
	ps.fds = calloc(n ? n : 1, sizeof(int));
	if (!ps.fds)
		return -ENOMEM;
	t0 = wd_now_ns();
	for (unsigned int i = 0; i < n; i++) {
		ps.fds[i] = open(paths[i], O_RDONLY | O_CLOEXEC);
		if (ps.fds[i] < 0) {
			ret = -errno;
			while (i--)
				close(ps.fds[i]);
			free(ps.fds);
			return ret;
		}
	}
	for (; started < jobs; started++) {
		ret = -pthread_create(&th[started], NULL, psync_job, &ps);
		if (ret) {
			atomic_store(&ps.err, ret);
			break;
		}
	}
	for (unsigned int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	*secs = (double)(wd_now_ns() - t0) / 1e9;
	for (unsigned int i = 0; i < n; i++)
		close(ps.fds[i]);
	free(ps.fds);
	return atomic_load(&ps.err);
}

static void keep_best(double *best, double s)
{
	if (s > 0 && (*best <= 0 || s < *best))
		*best = s;
}

int rawread_best_warm(const char *const *paths, const uint64_t *sizes, const uint64_t *bases,
		      unsigned int n, void *buf, unsigned int runs, struct rawread_warm *out)
{
	double s;
	int ret;

	memset(out, 0, sizeof(*out));
	ret = rawread_files(paths, sizes, bases, n, buf, false, &s);
	for (unsigned int r = 0; r < runs && !ret; r++) {
		ret = rawread_files(paths, sizes, bases, n, buf, false, &s);
		keep_best(&out->uring, s);
		if (!ret)
			ret = rawread_files_psync(paths, sizes, bases, n, buf, 1, &s);
		keep_best(&out->psync1, s);
		if (!ret)
			ret = rawread_files_psync(paths, sizes, bases, n, buf, 2, &s);
		keep_best(&out->psync2, s);
	}
	if (ret)
		return ret;
	out->best = out->uring;
	out->best_name = "io_uring";
	if (out->psync1 < out->best) {
		out->best = out->psync1;
		out->best_name = "psync x1";
	}
	if (out->psync2 < out->best) {
		out->best = out->psync2;
		out->best_name = "psync x2";
	}
	return 0;
}
