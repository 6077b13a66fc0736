/*
 * The io_uring loader. loader_plan() turns a component into a list of reads (ops); the
 * loader thread keeps up to qd of them in flight across every running load, copies staged
 * bytes into tensor slots as reads complete, and finishes each load with its integrity
 * checks.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/format/convert.h"
#include "core/base/fault.h"
#include "core/base/file.h"
#include "core/base/log.h"
#include "core/policy/recovery.h"
#include "uring/loader.h"
#include "uring/residency.h"

#define DIO_ALIGN 4096u
#define MAX_FILE_SLOTS 256u
/* Tensors at least this large are read straight into their slot; smaller ones are grouped. */
#define DIRECT_MIN (256u << 10)
/*
 * Tensors at least this large get an extent offset congruent to their file offset modulo
 * 4 KiB in the aligned layout (when the file offset is 64-byte aligned), so that O_DIRECT
 * reads land in place with no staging copy. The padding that costs, under 4 KiB per tensor,
 * stays under 0.4% of the tensor bytes.
 */
#define CONGRUENT_MIN (1u << 20)

enum op_kind { OP_ARENA, OP_STAGE };

/*
 * One read. OP_ARENA reads [foff, foff + len) to extent offset dst. OP_STAGE reads it into a
 * staging buffer and then copies (or converts) the bytes of tensors t_first .. t_first +
 * t_count - 1 that it covers. valid is how many bytes the file has from foff on (less than
 * len only for the rounded-up last O_DIRECT read of a file).
 */
struct load_op {
	uint32_t file;
	uint16_t kind;
	uint16_t direct;	/* read with the file's O_DIRECT descriptor */
	uint64_t foff;
	uint32_t len;
	uint32_t valid;
	uint64_t dst;
	uint32_t t_first;
	uint32_t t_count;
};

struct load_file {
	char *path;
	int fd;			/* buffered */
	int dfd;		/* O_DIRECT, -1 when the file system refuses it */
	bool direct;		/* dfd >= 0 */
	uint8_t *cached;	/* per RESIDENCY_GRANULE while planning: in the page cache */
	struct st_file st;
	struct model_fp fp;	/* at open */
	uint64_t *expect;	/* per st tensor; NULL when none was given */
};

struct load_handle {
	atomic_int refs;
	struct loader *l;
	struct load_plan *plan;
	uint64_t extent;
	struct load_callbacks cb;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	atomic_int state;	/* enum load_state; final values are written under lock */
	int rc;
	char msg[LOADER_MSG_MAX];
	atomic_uint_least64_t done;
	uint64_t total;
	atomic_bool cancel;
	uint64_t t_start, t_end;
	/* Loader thread only. */
	struct load_handle *next;
	uint32_t next_op;
	uint32_t inflight;
	bool failed;
	int fail_rc;
	/* The populate thread's, under loader.pop_lock. */
	struct load_handle *pop_next;
	bool pop_queued;
	bool pop_abort;		/* atomic: read by arena_populate() */
	int *slots;		/* registered file index per plan file and descriptor
				 * (2 * file: buffered, 2 * file + 1: O_DIRECT), or -1 */
};

struct req {
	struct load_handle *h;
	uint32_t op;
	uint32_t done;
	int buf;
	struct req *next_free;
	/* Transient failures (core/policy/recovery.h): retries so far, short reads so far, and when
	 * the next retry is due. */
	uint32_t tries;
	uint32_t shorts;
	uint64_t due_ns;
	struct req *next_retry;
};

struct loader {
	struct arena *arena;
	struct io_uring ring;
	uint32_t qd, chunk, n_staging;
	char *staging;
	bool fixed_bufs;
	uint32_t *free_bufs;
	uint32_t n_free_bufs;
	bool fixed_files;
	int bufs_err, files_err;	/* why io_uring refused them (loader_io_path()) */
	bool slot_used[MAX_FILE_SLOTS];
	struct req *reqs;
	struct req *free_reqs;
	uint32_t inflight;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct load_handle *pending, **pending_tail;
	bool stop;
	struct load_handle *active;	/* thread only */
	struct req *retry;		/* thread only: reads waiting out their backoff */
	uint32_t n_retry;		/* of l->inflight, how many are in @retry */
	int cpu;			/* where the thread last woke up; atomic */
	/*
	 * The populate thread: faults in each submitted extent's pages in bulk
	 * (MADV_POPULATE_WRITE), ahead of its reads and on another CPU, so that page allocation
	 * and clearing leave the read path (a read that gets there first faults the page itself).
	 */
	pthread_t pop_thread;
	pthread_mutex_t pop_lock;
	pthread_cond_t pop_cond;
	struct load_handle *pop_head, **pop_tail;
	struct load_handle *pop_cur;	/* being populated, or NULL */
	bool pop_stop;
};



static void setmsg(char *msg, size_t len, const char *fmt, ...) WD_PRINTF(3, 4);
static void setmsg(char *msg, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!msg || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, len, fmt, ap);
	va_end(ap);
}

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) & ~(a - 1);
}

/* ---- planning ------------------------------------------------------------------------- */

void loader_plan_free(struct load_plan *plan)
{
	if (!plan)
		return;
	for (uint32_t i = 0; i < plan->n_files; i++) {
		struct load_file *f = &plan->files[i];

		if (f->fd >= 0)
			close(f->fd);
		if (f->dfd >= 0)
			close(f->dfd);
		free(f->cached);
		st_file_free(&f->st);
		free(f->path);
		free(f->expect);
	}
	free(plan->files);
	free(plan->tensors);
	free(plan->ops);
	free(plan->name);
	free(plan);
}

int loader_plan_find(const struct load_plan *plan, const char *name)
{
	for (uint32_t i = 0; i < plan->n_tensors; i++)
		if (!strcmp(plan->tensors[i].name, name))
			return (int)i;
	return -1;
}

/*
 * Tries O_DIRECT on @f: reopens its descriptor through /proc with O_DIRECT (same inode by
 * construction) and reads one aligned block. File systems that refuse (tmpfs, some overlay
 * setups) fail the open or the read with EINVAL; then the file stays buffered. The buffered
 * descriptor stays open too: the granules the page cache holds are read through it.
 */
static void probe_direct(struct load_file *f)
{
	char proc[64];
	void *blk = NULL;
	ssize_t n;
	int fd;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", f->fd);
	fd = open(proc, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0) {
		log_info("loader", "\"buffered fallback: O_DIRECT open refused\" file=\"%s\" "
			 "errno=%d", f->path, errno);
		return;
	}
	if (posix_memalign(&blk, DIO_ALIGN, DIO_ALIGN)) {
		close(fd);
		return;
	}
	n = pread(fd, blk, DIO_ALIGN, 0);
	free(blk);
	if (n < 0) {
		log_info("loader", "\"buffered fallback: O_DIRECT read refused\" file=\"%s\" "
			 "errno=%d", f->path, errno);
		close(fd);
		return;
	}
	f->dfd = fd;
	f->direct = true;
}

/* Whether every granule that [lo, hi) touches is in the page cache (residency map). */
static bool range_cached(const struct load_file *f, uint64_t lo, uint64_t hi)
{
	for (uint64_t g = lo / RESIDENCY_GRANULE; g * RESIDENCY_GRANULE < hi; g++)
		if (!f->cached[g])
			return false;
	return true;
}

/* The end of the run of granules from @lo on (up to @hi) that share @lo's residency. */
static uint64_t same_run(const struct load_file *f, uint64_t lo, uint64_t hi)
{
	uint8_t c = f->cached[lo / RESIDENCY_GRANULE];
	uint64_t e = lo;

	do
		e = (e / RESIDENCY_GRANULE + 1) * RESIDENCY_GRANULE;
	while (e < hi && f->cached[e / RESIDENCY_GRANULE] == c);
	return e < hi ? e : hi;
}

static bool selected(const struct load_spec *spec, const char *name, bool *found)
{
	bool any = false;

	if (!spec->prefix && !spec->names)
		return true;
	if (spec->prefix && !strncmp(name, spec->prefix, strlen(spec->prefix)))
		any = true;
	for (size_t i = 0; spec->names && i < spec->n_names; i++) {
		if (!strcmp(name, spec->names[i])) {
			found[i] = true;
			any = true;
		}
	}
	return any;
}

struct opbuf {
	struct load_op *ops;
	uint32_t n, cap;
};

static struct load_op *op_new(struct opbuf *b)
{
	if (b->n == b->cap) {
		uint32_t cap = b->cap ? b->cap * 2 : 64;
		struct load_op *n = realloc(b->ops, cap * sizeof(*n));

		if (!n)
			return NULL;
		b->ops = n;
		b->cap = cap;
	}
	memset(&b->ops[b->n], 0, sizeof(b->ops[0]));
	return &b->ops[b->n++];
}

/*
 * File layout: the whole data region, 4 KiB-aligned chunks, straight into the extent; the
 * granules in the page cache buffered, the others O_DIRECT (when the file allows it).
 */
static int ops_file_layout(struct load_plan *p, uint32_t fi, uint64_t region, uint32_t chunk,
			   struct opbuf *b)
{
	struct load_file *f = &p->files[fi];
	uint64_t f0 = f->st.data_start & ~(uint64_t)(DIO_ALIGN - 1);
	uint64_t f1 = align_up(f->st.file_size, DIO_ALIGN);

	for (uint64_t a = f0, e; a < f1; a = e) {
		struct load_op *op = op_new(b);
		bool direct = f->direct && !f->cached[a / RESIDENCY_GRANULE];
		uint64_t len;

		if (!op)
			return -ENOMEM;
		e = f->direct ? same_run(f, a, f1) : f1;
		if (e - a > chunk)
			e = a + chunk;
		len = e - a;
		op->file = fi;
		op->kind = OP_ARENA;
		op->direct = direct;
		op->foff = a;
		op->valid = (uint32_t)(f->st.file_size - a < len ? f->st.file_size - a : len);
		op->len = direct ? (uint32_t)len : op->valid;
		op->dst = region + (a - f0);
	}
	return 0;
}

/*
 * Aligned layout of a file that allows O_DIRECT: each piece of a tensor goes the way its
 * granules' residency says. Open staging windows are kept here while the file's ops are made.
 */
struct mixed {
	struct load_plan *p;
	struct load_file *f;
	struct opbuf *b;
	uint32_t fi, chunk;
	struct load_op *win;	/* open O_DIRECT staging window, or NULL */
	uint64_t win_lim;	/* how far it may grow: its start + chunk, or the file's end */
	struct load_op *grp;	/* open buffered group of small tensors, or NULL */
};

/* [lo, hi) of tensor @t straight into its slot, in pieces of at most chunk bytes. */
static int mixed_arena(struct mixed *m, uint32_t t, uint64_t lo, uint64_t hi, bool direct)
{
	const struct load_tensor *T = &m->p->tensors[t];

	m->win = m->grp = NULL;
	for (uint64_t k = lo; k < hi; k += m->chunk) {
		struct load_op *op = op_new(m->b);

		if (!op)
			return -ENOMEM;
		op->file = m->fi;
		op->kind = OP_ARENA;
		op->direct = direct;
		op->foff = k;
		op->len = op->valid = (uint32_t)(hi - k < m->chunk ? hi - k : m->chunk);
		op->dst = T->off + (k - T->src_off);
		op->t_first = t;
		op->t_count = 1;
	}
	return 0;
}

/*
 * [lo, hi) of tensor @t through O_DIRECT staging windows: aligned reads of at most chunk
 * bytes that end at the 4 KiB boundary after the last piece they hold. A window holds only
 * staged pieces (any other op closes it), and pieces start unaligned only at a tensor's first
 * byte, so a window's bytes that belong to its tensors are exactly their staged pieces:
 * scatter() copies nothing another op writes.
 */
static int mixed_stage(struct mixed *m, uint32_t t, uint64_t lo, uint64_t hi)
{
	uint64_t fend = align_up(m->f->st.file_size, DIO_ALIGN);

	m->grp = NULL;
	while (lo < hi) {
		struct load_op *op = m->win;
		uint64_t end;

		if (!op || lo >= m->win_lim) {
			uint64_t a = op && lo == m->win_lim ? lo : lo & ~(uint64_t)(DIO_ALIGN - 1);

			op = m->win = op_new(m->b);
			if (!op)
				return -ENOMEM;
			m->win_lim = a + m->chunk < fend ? a + m->chunk : fend;
			op->file = m->fi;
			op->kind = OP_STAGE;
			op->direct = 1;
			op->foff = a;
			op->t_first = t;
		}
		end = hi < m->win_lim ? hi : m->win_lim;
		op->t_count = t - op->t_first + 1;
		op->len = (uint32_t)(align_up(end, DIO_ALIGN) - op->foff);
		op->valid = (uint32_t)(m->f->st.file_size - op->foff < op->len
					       ? m->f->st.file_size - op->foff : op->len);
		lo = end;
	}
	return 0;
}

/* A small cached tensor, grouped with its cached neighbours into one buffered staged read. */
static int mixed_group(struct mixed *m, uint32_t t)
{
	const struct load_tensor *T = &m->p->tensors[t];
	uint64_t e = T->src_off + T->src_bytes;
	struct load_op *g = m->grp;

	m->win = NULL;
	if (g && e - g->foff <= m->chunk) {
		g->len = g->valid = (uint32_t)(e - g->foff);
		g->t_count = t - g->t_first + 1;
		return 0;
	}
	g = m->grp = op_new(m->b);
	if (!g)
		return -ENOMEM;
	g->file = m->fi;
	g->kind = OP_STAGE;
	g->foff = T->src_off;
	g->len = g->valid = (uint32_t)T->src_bytes;
	g->t_first = t;
	g->t_count = 1;
	return 0;
}

static int ops_mixed(struct load_plan *p, uint32_t fi, uint32_t t0, uint32_t t1,
		     uint32_t chunk, struct opbuf *b)
{
	struct mixed m = { .p = p, .f = &p->files[fi], .b = b, .fi = fi, .chunk = chunk };
	uint32_t big = chunk < DIRECT_MIN ? chunk : DIRECT_MIN;
	int rc = 0;

	for (uint32_t t = t0; t < t1 && !rc; t++) {
		const struct load_tensor *T = &p->tensors[t];
		uint64_t s = T->src_off, e = s + T->src_bytes, pe;
		bool congruent = (T->off - T->src_off) % DIO_ALIGN == 0;

		if (!T->src_bytes)
			continue;
		if (T->src_bytes < big) {
			rc = range_cached(m.f, s, e) ? mixed_group(&m, t) : mixed_stage(&m, t, s, e);
			continue;
		}
		for (; s < e && !rc; s = pe) {
			pe = same_run(m.f, s, e);
			if (m.f->cached[s / RESIDENCY_GRANULE]) {
				rc = mixed_arena(&m, t, s, pe, false);
			} else if (congruent) {
				/* The aligned middle in place; the partial blocks at either end staged. */
				uint64_t a0 = align_up(s, DIO_ALIGN), a1 = pe & ~(uint64_t)(DIO_ALIGN - 1);

				if (a0 > pe)
					a0 = pe;
				if (a1 < a0)
					a1 = a0;
				if (s < a0)
					rc = mixed_stage(&m, t, s, a0);
				if (!rc && a0 < a1)
					rc = mixed_arena(&m, t, a0, a1, true);
				if (!rc && a1 < pe)
					rc = mixed_stage(&m, t, a1, pe);
			} else {
				rc = mixed_stage(&m, t, s, pe);
			}
		}
	}
	return rc;
}

/* Aligned layout, buffered file: big tensors straight into slots, small ones grouped. */
static int ops_buffered(struct load_plan *p, uint32_t fi, uint32_t t0, uint32_t t1,
			uint32_t chunk, struct opbuf *b)
{
	uint32_t big = chunk < DIRECT_MIN ? chunk : DIRECT_MIN;
	struct load_op *grp = NULL;

	for (uint32_t t = t0; t < t1; t++) {
		struct load_tensor *T = &p->tensors[t];
		bool conv = T->dtype != T->src_dtype;
		uint64_t e = T->src_off + T->src_bytes;

		if (!T->src_bytes)
			continue;
		if ((T->src_bytes >= big && !conv) || T->src_bytes > chunk) {
			/* Pieces of chunk bytes: a multiple of 4096, so whole elements each. */
			grp = NULL;
			for (uint64_t k = 0; k < T->src_bytes; k += chunk) {
				struct load_op *op = op_new(b);

				if (!op)
					return -ENOMEM;
				op->file = fi;
				op->kind = conv ? OP_STAGE : OP_ARENA;
				op->foff = T->src_off + k;
				op->len = (uint32_t)(T->src_bytes - k < chunk ? T->src_bytes - k
									     : chunk);
				op->valid = op->len;
				op->dst = T->off + k;
				op->t_first = t;
				op->t_count = 1;
			}
			continue;
		}
		if (grp && e - grp->foff <= chunk) {
			grp->len = grp->valid = (uint32_t)(e - grp->foff);
			grp->t_count = t - grp->t_first + 1;
			continue;
		}
		grp = op_new(b);
		if (!grp)
			return -ENOMEM;
		grp->file = fi;
		grp->kind = OP_STAGE;
		grp->foff = T->src_off;
		grp->len = grp->valid = (uint32_t)T->src_bytes;
		grp->t_first = t;
		grp->t_count = 1;
	}
	return 0;
}

static int open_file(const struct load_spec *spec, size_t i, struct load_file *f, char *msg,
		     size_t msg_len)
{
	const struct load_file_spec *fs = &spec->files[i];
	struct st_error err = { 0 };
	struct stat sb;
	int rc;

	f->fd = -1;
	f->path = strdup(fs->path);
	if (!f->path)
		return -ENOMEM;
	rc = wd_open_regular(AT_FDCWD, fs->path, 0, &sb);
	if (rc == -EINVAL) {
		setmsg(msg, msg_len, "component %s: %s is not a regular file (%s)", spec->name,
		       fs->path, wd_file_kind(sb.st_mode));
		return rc;
	}
	if (rc < 0) {
		setmsg(msg, msg_len, "component %s: cannot open %s: %s", spec->name, fs->path,
		       strerror(-rc));
		return rc;
	}
	f->fd = rc;
	model_fp_of(&sb, &f->fp);
	if (fs->expect_fp && !model_fp_equal(fs->expect_fp, &f->fp)) {
		setmsg(msg, msg_len, "component %s: file %s changed since it was scanned "
		       "(size %lu -> %lu, mtime_ns %ld -> %ld, ctime_ns %ld -> %ld, inode %lu -> "
		       "%lu)", spec->name, fs->path, fs->expect_fp->size, f->fp.size,
		       fs->expect_fp->mtime_ns, f->fp.mtime_ns, fs->expect_fp->ctime_ns,
		       f->fp.ctime_ns, fs->expect_fp->ino, f->fp.ino);
		return -ESTALE;
	}
	rc = st_open_fd(f->fd, fs->path, &f->st, &err);
	if (rc) {
		setmsg(msg, msg_len, "component %s: %s", spec->name, err.message);
		return rc;
	}
	if (f->st.file_size != f->fp.size) {
		setmsg(msg, msg_len, "component %s: file %s changed while its header was read",
		       spec->name, fs->path);
		return -ESTALE;
	}
	if (fs->expect_xxh3 && f->st.n_tensors) {
		f->expect = malloc(f->st.n_tensors * sizeof(uint64_t));
		if (!f->expect)
			return -ENOMEM;
		memcpy(f->expect, fs->expect_xxh3, f->st.n_tensors * sizeof(uint64_t));
	}
	return 0;
}

int loader_plan(const struct load_spec *spec, uint32_t chunk, struct load_plan **out,
		char *msg, size_t msg_len)
{
	bool conv = spec->flags & LOAD_F_CONVERT, subset = spec->prefix || spec->names;
	bool file_layout = (spec->flags & LOAD_F_FILE_LAYOUT) && !subset && !conv;
	struct opbuf ob = { 0 };
	struct load_plan *p;
	bool *found = NULL;
	uint64_t cursor = 0;
	uint32_t n = 0;
	int rc;

	*out = NULL;
	setmsg(msg, msg_len, "%s", "");
	if (!chunk)
		chunk = LOADER_DEFAULT_CHUNK;
	if (!spec->n_files || !spec->files || chunk % DIO_ALIGN || chunk < (64u << 10) ||
	    (spec->names && !spec->n_names) ||
	    (conv && spec->convert_to != ST_F16 && spec->convert_to != ST_BF16)) {
		setmsg(msg, msg_len, "component %s: invalid load request",
		       spec->name ? spec->name : "?");
		return -EINVAL;
	}
	if ((spec->flags & LOAD_F_FILE_LAYOUT) && !file_layout)
		log_info("loader", "\"file layout needs a whole, unconverted component: using the "
			 "aligned layout\" component=\"%s\"", spec->name);
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->name = strdup(spec->name ? spec->name : "");
	p->files = calloc(spec->n_files, sizeof(*p->files));
	found = spec->names ? calloc(spec->n_names, sizeof(bool)) : NULL;
	if (!p->name || !p->files || (spec->names && !found)) {
		rc = -ENOMEM;
		goto fail;
	}
	p->flags = file_layout ? spec->flags : spec->flags & ~LOAD_F_FILE_LAYOUT;
	for (size_t i = 0; i < spec->n_files; i++)
		p->files[i].fd = p->files[i].dfd = -1;
	p->n_files = (uint32_t)spec->n_files;
	for (size_t i = 0; i < spec->n_files; i++) {
		rc = open_file(spec, i, &p->files[i], msg, msg_len);
		if (rc)
			goto fail;
		for (uint32_t t = 0; t < p->files[i].st.n_tensors; t++)
			n += selected(spec, p->files[i].st.tensors[t].name, found);
	}
	for (size_t i = 0; spec->names && i < spec->n_names; i++) {
		if (!found[i]) {
			setmsg(msg, msg_len, "component %s: no tensor named \"%s\"", spec->name,
			       spec->names[i]);
			rc = -ENOENT;
			goto fail;
		}
	}
	p->tensors = calloc(n ? n : 1, sizeof(*p->tensors));
	if (!p->tensors) {
		rc = -ENOMEM;
		goto fail;
	}
	for (uint32_t fi = 0; fi < p->n_files; fi++) {
		struct load_file *f = &p->files[fi];
		uint64_t f0 = f->st.data_start & ~(uint64_t)(DIO_ALIGN - 1);
		uint32_t t0 = p->n_tensors, n_sel = 0;
		bool fconv = false;

		/*
		 * O_DIRECT first, since it decides the layout: conversion pieces must hold whole
		 * elements, which only buffered reads allow, so a file with a converted tensor
		 * stays buffered.
		 */
		for (uint32_t t = 0; t < f->st.n_tensors; t++) {
			const struct st_tensor *s = &f->st.tensors[t];

			if (!selected(spec, s->name, found))
				continue;
			n_sel++;
			fconv |= conv && convert_supported(s->dtype, spec->convert_to);
		}
		if (!(spec->flags & LOAD_F_NO_DIRECT) && !fconv && n_sel)
			probe_direct(f);
		else if (fconv)
			log_info("loader", "\"buffered: converting\" file=\"%s\"", f->path);
		if (f->direct) {
			/* Where the bytes are now: cached granules are read buffered (residency.h). */
			f->cached = calloc(f->st.file_size / RESIDENCY_GRANULE + 1, 1);
			if (!f->cached) {
				rc = -ENOMEM;
				goto fail;
			}
			if (residency_map(f->fd, f->st.file_size, f->cached))
				log_info("loader", "\"page cache residency unknown: O_DIRECT\" "
					 "file=\"%s\"", f->path);
		}
		for (uint32_t t = 0; t < f->st.n_tensors; t++) {
			const struct st_tensor *s = &f->st.tensors[t];
			struct load_tensor *T;

			if (!selected(spec, s->name, found))
				continue;
			T = &p->tensors[p->n_tensors++];
			T->name = s->name;
			T->file = fi;
			T->index = t;
			T->src_dtype = (uint8_t)s->dtype;
			T->dtype = (uint8_t)s->dtype;
			T->rank = s->rank;
			T->shape = s->shape;
			T->src_off = f->st.data_start + s->begin;
			T->src_bytes = st_tensor_nbytes(s);
			T->nbytes = T->src_bytes;
			if (conv && convert_supported(s->dtype, spec->convert_to)) {
				T->dtype = (uint8_t)spec->convert_to;
				T->nbytes = s->nelem * st_dtype_info(spec->convert_to)->bits / 8;
			}
			if (file_layout) {
				T->off = cursor + (T->src_off - f0);
			} else {
				cursor = align_up(cursor, ARENA_TENSOR_ALIGN);
				/* Large tensors of an O_DIRECT file: in place (CONGRUENT_MIN). */
				if (f->direct && T->src_bytes >= CONGRUENT_MIN &&
				    T->src_off % ARENA_TENSOR_ALIGN == 0)
					cursor += (T->src_off - cursor) % DIO_ALIGN;
				T->off = cursor;
				cursor += T->nbytes;
			}
			p->tensor_bytes += T->nbytes;
		}
		if (file_layout) {
			rc = ops_file_layout(p, fi, cursor, chunk, &ob);
			cursor += align_up(f->st.file_size, DIO_ALIGN) - f0;
		} else if (f->direct) {
			rc = ops_mixed(p, fi, t0, p->n_tensors, chunk, &ob);
		} else {
			rc = ops_buffered(p, fi, t0, p->n_tensors, chunk, &ob);
		}
		if (rc)
			goto fail;
	}
	p->bytes = cursor;
	p->ops = ob.ops;
	p->n_ops = ob.n;
	for (uint32_t i = 0, last = UINT32_MAX; i < p->n_ops; i++) {
		const struct load_op *op = &p->ops[i];

		p->read_bytes += op->valid;
		if (op->direct) {
			p->direct_bytes += op->valid;
			p->n_direct += op->file != last;
			last = op->file;
		} else {
			p->buffered_bytes += op->valid;
		}
	}
	for (uint32_t fi = 0; fi < p->n_files; fi++) {
		free(p->files[fi].cached);
		p->files[fi].cached = NULL;
	}
	free(found);
	*out = p;
	return 0;
fail:
	free(ob.ops);
	free(found);
	loader_plan_free(p);
	return rc;
}

/* ---- handles ------------------------------------------------------------------------- */

struct load_handle *load_get(struct load_handle *h)
{
	atomic_fetch_add_explicit(&h->refs, 1, memory_order_relaxed);
	return h;
}

void load_put(struct load_handle *h)
{
	if (!h)
		return;
	/* acq_rel: the last owner must see every write the others made before dropping. */
	if (atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1)
		return;
	pthread_mutex_destroy(&h->lock);
	pthread_cond_destroy(&h->cond);
	free(h->slots);
	free(h);
}

enum load_state load_state(const struct load_handle *h)
{
	return (enum load_state)atomic_load_explicit(&h->state, memory_order_acquire);
}

void load_progress(const struct load_handle *h, uint64_t *done, uint64_t *total)
{
	*done = atomic_load_explicit(&h->done, memory_order_relaxed);
	*total = h->total;
}

const char *load_error(const struct load_handle *h)
{
	return load_state(h) >= LOAD_DONE ? h->msg : "";
}

uint64_t load_elapsed_ns(const struct load_handle *h)
{
	return load_state(h) >= LOAD_DONE && h->t_end > h->t_start ? h->t_end - h->t_start : 0;
}

struct load_plan *load_handle_plan(const struct load_handle *h)
{
	return h->plan;
}

uint64_t load_handle_extent(const struct load_handle *h)
{
	return h->extent;
}

void load_cancel(struct load_handle *h)
{
	atomic_store_explicit(&h->cancel, true, memory_order_relaxed);
}

int load_wait(struct load_handle *h, int64_t timeout_ns)
{
	struct timespec ts;
	int rc;

	if (timeout_ns >= 0) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += timeout_ns / 1000000000;
		ts.tv_nsec += timeout_ns % 1000000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
	}
	pthread_mutex_lock(&h->lock);
	while (load_state(h) < LOAD_DONE) {
		if (timeout_ns < 0) {
			pthread_cond_wait(&h->cond, &h->lock);
		} else if (pthread_cond_timedwait(&h->cond, &h->lock, &ts) == ETIMEDOUT) {
			pthread_mutex_unlock(&h->lock);
			return -ETIMEDOUT;
		}
	}
	rc = h->rc;
	pthread_mutex_unlock(&h->lock);
	return rc;
}

/* ---- the loader thread --------------------------------------------------------------- */

static void fail_load(struct load_handle *h, int rc, const char *fmt, ...) WD_PRINTF(3, 4);
static void fail_load(struct load_handle *h, int rc, const char *fmt, ...)
{
	va_list ap;

	if (h->failed)
		return;
	h->failed = true;
	h->fail_rc = rc;
	va_start(ap, fmt);
	vsnprintf(h->msg, sizeof(h->msg), fmt, ap);
	va_end(ap);
}

static void activate(struct loader *l, struct load_handle *h)
{
	struct load_plan *p = h->plan;

	h->t_start = wd_now_ns();
	atomic_store_explicit(&h->state, LOAD_RUNNING, memory_order_release);
	for (uint32_t i = 0; i < 2 * p->n_files; i++) {
		int fd = i % 2 ? p->files[i / 2].dfd : p->files[i / 2].fd;

		h->slots[i] = -1;
		if (!l->fixed_files || fd < 0)
			continue;
		for (uint32_t s = 0; s < MAX_FILE_SLOTS; s++) {
			if (l->slot_used[s])
				continue;
			if (io_uring_register_files_update(&l->ring, s, &fd, 1) == 1) {
				l->slot_used[s] = true;
				h->slots[i] = (int)s;
			}
			break;
		}
	}
}

static void release_slots(struct loader *l, struct load_handle *h)
{
	int none = -1;

	for (uint32_t i = 0; i < 2 * h->plan->n_files; i++) {
		if (h->slots[i] < 0)
			continue;
		io_uring_register_files_update(&l->ring, (unsigned int)h->slots[i], &none, 1);
		l->slot_used[h->slots[i]] = false;
		h->slots[i] = -1;
	}
}

static void prep(struct loader *l, struct req *r)
{
	struct load_handle *h = r->h;
	struct load_op *op = &h->plan->ops[r->op];
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	const struct load_file *f = &h->plan->files[op->file];
	int slot = h->slots[2 * op->file + op->direct];
	int fd = slot >= 0 ? slot : op->direct ? f->dfd : f->fd;
	uint64_t off = op->foff + r->done;
	unsigned int len = op->len - r->done;

	if (op->kind == OP_STAGE) {
		char *buf = l->staging + (size_t)r->buf * l->chunk + r->done;

		if (l->fixed_bufs)
			io_uring_prep_read_fixed(sqe, fd, buf, len, off, r->buf);
		else
			io_uring_prep_read(sqe, fd, buf, len, off);
	} else {
		io_uring_prep_read(sqe, fd, arena_ptr(l->arena, h->extent + op->dst + r->done), len,
				   off);
	}
	if (slot >= 0)
		sqe->flags |= IOSQE_FIXED_FILE;
	/*
	 * A buffered read of cached pages is a memory copy, which io_uring would do inline in
	 * this thread, one read at a time: sent to its workers instead (at most one per CPU,
	 * loader_create()), the copies run on every CPU at once (1.6x on 2 CPUs, 1 GiB warm).
	 */
	if (!op->direct)
		sqe->flags |= IOSQE_ASYNC;
	io_uring_sqe_set_data(sqe, r);
}

/* Starts the load's next op when a request slot (and a staging buffer if needed) is free. */
static bool start_one(struct loader *l, struct load_handle *h)
{
	struct load_op *op;
	struct req *r;

	if (h->failed || h->next_op >= h->plan->n_ops || !l->free_reqs ||
	    atomic_load_explicit(&h->cancel, memory_order_relaxed))
		return false;
	op = &h->plan->ops[h->next_op];
	if (op->kind == OP_STAGE && !l->n_free_bufs)
		return false;
	r = l->free_reqs;
	l->free_reqs = r->next_free;
	r->h = h;
	r->op = h->next_op++;
	r->done = 0;
	r->tries = 0;
	r->shorts = 0;
	r->buf = op->kind == OP_STAGE ? (int)l->free_bufs[--l->n_free_bufs] : -1;
	prep(l, r);
	h->inflight++;
	l->inflight++;
	return true;
}

static void release_req(struct loader *l, struct req *r)
{
	if (r->buf >= 0)
		l->free_bufs[l->n_free_bufs++] = (uint32_t)r->buf;
	r->h->inflight--;
	l->inflight--;
	r->next_free = l->free_reqs;
	l->free_reqs = r;
}

static void scatter(struct loader *l, struct load_handle *h, const struct load_op *op,
		    const char *buf)
{
	char *base = arena_ptr(l->arena, h->extent);
	uint64_t end = op->foff + op->valid;

	for (uint32_t t = op->t_first; t < op->t_first + op->t_count; t++) {
		const struct load_tensor *T = &h->plan->tensors[t];
		uint64_t lo = op->foff > T->src_off ? op->foff : T->src_off;
		uint64_t hi = end < T->src_off + T->src_bytes ? end : T->src_off + T->src_bytes;

		if (hi <= lo)
			continue;
		if (T->dtype == T->src_dtype) {
			memcpy(base + T->off + (lo - T->src_off), buf + (lo - op->foff), hi - lo);
		} else {
			uint32_t in = st_dtype_info(T->src_dtype)->bits / 8;
			uint32_t outsz = st_dtype_info(T->dtype)->bits / 8;

			convert_run(T->src_dtype, T->dtype,
				    base + T->off + (lo - T->src_off) / in * outsz,
				    buf + (lo - op->foff), (hi - lo) / in);
		}
	}
}

/*
 * A fault injected at this completion (core/base/fault.h): an errno replaces the result, SHORT
 * cuts a positive one to 1 byte (DIO_ALIGN for O_DIRECT, where a read that is not aligned
 * would mean the end of the file), so the rest must be read again.
 */
static int inject(const struct load_op *op, int res)
{
	int err = fault_take(FAULT_READ);
	int least = op->direct ? (int)DIO_ALIGN : 1;

	if (!err)
		return res;
	if (err != FAULT_SHORT)
		return -err;
	return res > least ? least : res;
}

/*
 * A transient failure of @r (@res: -EINTR or -EAGAIN; 0 for a short read that did not reach
 * the end of the file): the read of its missing bytes is queued again, after a backoff for an
 * error and at once for a short read (bytes are flowing), or the load fails when it used up
 * its retries (core/policy/recovery.h).
 */
static void retry_later(struct loader *l, struct req *r, int res)
{
	struct load_handle *h = r->h;
	struct load_op *op = &h->plan->ops[r->op];
	struct load_file *f = &h->plan->files[op->file];
	bool gave_up = res ? r->tries >= RECOVERY_IO_TRIES : r->shorts >= RECOVERY_SHORT_READS;

	if (h->failed || atomic_load_explicit(&h->cancel, memory_order_relaxed)) {
		release_req(l, r);
		return;
	}
	if (gave_up) {
		fail_load(h, res ? res : -EIO, "component %s: read of %s at byte %lu failed after "
			  "%u retries: %s", h->plan->name, f->path, op->foff + r->done,
			  res ? r->tries : r->shorts,
			  res ? strerror(-res) : "the file keeps returning short reads");
		release_req(l, r);
		return;
	}
	recovery_count(RECOVERY_IO_RETRIES, 1);
	if (!res) {
		r->shorts++;
		prep(l, r);
		return;
	}
	r->tries++;
	r->due_ns = wd_now_ns() + recovery_backoff_ns(r->tries);
	r->next_retry = l->retry;
	l->retry = r;
	l->n_retry++;
	log_debug("loader", "\"read retried\" component=\"%s\" file=%s offset=%lu try=%u err=%d",
		  h->plan->name, f->path, op->foff + r->done, r->tries, res);
}

/*
 * Resubmits the reads whose backoff has passed (and drops those whose load failed or was
 * cancelled meanwhile). Returns the nanoseconds until the next one is due, 0 when none waits.
 */
static uint64_t resubmit_due(struct loader *l)
{
	uint64_t now = wd_now_ns(), next = 0;

	for (struct req **pp = &l->retry, *r; (r = *pp);) {
		struct load_handle *h = r->h;

		if (h->failed || atomic_load_explicit(&h->cancel, memory_order_relaxed)) {
			*pp = r->next_retry;
			l->n_retry--;
			release_req(l, r);
		} else if (r->due_ns <= now) {
			*pp = r->next_retry;
			l->n_retry--;
			prep(l, r);
		} else {
			if (!next || r->due_ns - now < next)
				next = r->due_ns - now;
			pp = &r->next_retry;
		}
	}
	return next;
}

static void complete(struct loader *l, struct req *r, int res)
{
	struct load_handle *h = r->h;
	struct load_op *op = &h->plan->ops[r->op];
	struct load_file *f = &h->plan->files[op->file];

	res = inject(op, res);
	if (recovery_io_transient(res)) {
		retry_later(l, r, res);
		return;
	}
	if (res < 0) {
		fail_load(h, res, "component %s: read of %s at byte %lu failed: %s",
			  h->plan->name, f->path, op->foff + r->done, strerror(-res));
		release_req(l, r);
		return;
	}
	r->done += (uint32_t)res;
	if (r->done < op->valid) {
		/* A short read: the file ended early (truncated) unless it can simply go on. */
		if (res == 0 || (op->direct && r->done % DIO_ALIGN)) {
			fail_load(h, -ESTALE, "component %s: file %s was truncated during the load "
				  "(read ended at byte %lu, expected %lu)", h->plan->name,
				  f->path, op->foff + r->done, op->foff + op->valid);
			release_req(l, r);
		} else {
			/* Not the end of the file: read the rest, at once (recovery.h). */
			retry_later(l, r, 0);
		}
		return;
	}
	if (op->kind == OP_STAGE && !h->failed)
		scatter(l, h, op, l->staging + (size_t)r->buf * l->chunk);
	atomic_fetch_add_explicit(&h->done, op->valid, memory_order_relaxed);
	release_req(l, r);
	if (h->cb.progress)
		h->cb.progress(h->cb.arg, atomic_load_explicit(&h->done, memory_order_relaxed),
			       h->total);
}

/* After the last read: the files must be what they were when the load planned them. */
static void final_checks(struct loader *l, struct load_handle *h)
{
	struct load_plan *p = h->plan;
	struct model_fp now, path_now;
	struct stat sb;

	for (uint32_t i = 0; i < p->n_files && !h->failed; i++) {
		struct load_file *f = &p->files[i];

		if (fstat(f->fd, &sb) < 0) {
			fail_load(h, -errno, "component %s: fstat %s: %s", p->name, f->path,
				  strerror(errno));
			break;
		}
		model_fp_of(&sb, &now);
		if (stat(f->path, &sb) < 0)
			memset(&path_now, 0, sizeof(path_now));
		else
			model_fp_of(&sb, &path_now);
		/*
		 * Replaced first: a rename over the file also moves the old inode's ctime (its
		 * link count drops), and "replaced" is the better message for it.
		 */
		if (path_now.dev != f->fp.dev || path_now.ino != f->fp.ino)
			fail_load(h, -ESTALE, "component %s: file %s was replaced or removed "
				  "during the load (inode %lu -> %lu)", p->name, f->path,
				  f->fp.ino, path_now.ino);
		else if (!model_fp_equal(&now, &f->fp) || !model_fp_equal(&path_now, &f->fp))
			fail_load(h, -ESTALE, "component %s: file %s changed during the load "
				  "(size %lu -> %lu, mtime_ns %ld -> %ld, ctime_ns %ld -> %ld)",
				  p->name, f->path, f->fp.size, now.size, f->fp.mtime_ns,
				  now.mtime_ns, f->fp.ctime_ns, now.ctime_ns);
	}
	if (h->failed || !(p->flags & LOAD_F_VERIFY))
		return;
	for (uint32_t t = 0; t < p->n_tensors; t++) {
		struct load_tensor *T = &p->tensors[t];
		const uint64_t *exp = p->files[T->file].expect;

		T->xxh3 = XXH3_64bits(arena_ptr(l->arena, h->extent + T->off), T->nbytes);
		if (exp && T->dtype == T->src_dtype && exp[T->index] != T->xxh3) {
			fail_load(h, -EBADMSG, "component %s: tensor \"%s\" of %s: xxh3 %016lx, "
				  "expected %016lx", p->name, T->name, p->files[T->file].path,
				  T->xxh3, exp[T->index]);
			return;
		}
	}
}

/* ---- the populate thread ------------------------------------------------------------ */

static void *populate_main(void *arg)
{
	struct loader *l = arg;
	struct arena *a = l->arena;

	pthread_mutex_lock(&l->pop_lock);
	for (;;) {
		struct load_handle *h;

		while (!l->pop_stop && !l->pop_head)
			pthread_cond_wait(&l->pop_cond, &l->pop_lock);
		if (l->pop_stop)
			break;
		h = l->pop_head;
		l->pop_head = h->pop_next;
		if (!l->pop_head)
			l->pop_tail = &l->pop_head;
		h->pop_queued = false;
		l->pop_cur = h;
		pthread_mutex_unlock(&l->pop_lock);
		/* Failure is no error: the reads fault the pages in themselves. */
		arena_populate(a, h->extent, h->plan->bytes, &h->pop_abort);
		pthread_mutex_lock(&l->pop_lock);
		l->pop_cur = NULL;
		pthread_cond_broadcast(&l->pop_cond);
	}
	pthread_mutex_unlock(&l->pop_lock);
	return NULL;
}

/* Stops the populate thread (every load has finished, so its queue is empty). */
static void populate_stop(struct loader *l)
{
	pthread_mutex_lock(&l->pop_lock);
	l->pop_stop = true;
	pthread_cond_broadcast(&l->pop_cond);
	pthread_mutex_unlock(&l->pop_lock);
	pthread_join(l->pop_thread, NULL);
}

static void populate_queue(struct loader *l, struct load_handle *h)
{
	if (!h->plan->bytes)
		return;
	pthread_mutex_lock(&l->pop_lock);
	h->pop_queued = true;
	*l->pop_tail = h;
	l->pop_tail = &h->pop_next;
	pthread_cond_broadcast(&l->pop_cond);
	pthread_mutex_unlock(&l->pop_lock);
}

/*
 * Before a load reports its end: the populate thread lets go of its extent (which its owner
 * may free, or punch holes into, as soon as it knows the result).
 */
static void populate_forget(struct loader *l, struct load_handle *h)
{
	pthread_mutex_lock(&l->pop_lock);
	if (h->pop_queued) {
		struct load_handle **pp = &l->pop_head;

		while (*pp != h)
			pp = &(*pp)->pop_next;
		*pp = h->pop_next;
		if (!*pp)
			l->pop_tail = pp;
		h->pop_queued = false;
	}
	__atomic_store_n(&h->pop_abort, true, __ATOMIC_RELAXED);
	while (l->pop_cur == h)
		pthread_cond_wait(&l->pop_cond, &l->pop_lock);
	pthread_mutex_unlock(&l->pop_lock);
}

static void finish(struct loader *l, struct load_handle *h)
{
	bool cancelled = atomic_load_explicit(&h->cancel, memory_order_relaxed) && !h->failed &&
			 h->next_op < h->plan->n_ops;
	enum load_state st;
	int rc;

	populate_forget(l, h);
	if (!h->failed && !cancelled)
		final_checks(l, h);
	release_slots(l, h);
	if (cancelled) {
		rc = -ECANCELED;
		st = LOAD_CANCELLED;
		snprintf(h->msg, sizeof(h->msg), "component %s: load cancelled", h->plan->name);
	} else if (h->failed) {
		rc = h->fail_rc;
		st = LOAD_FAILED;
		char en[LOG_ESCAPE_MAX], em[LOG_ESCAPE_MAX];

		log_warn("loader", "\"load failed\" component=\"%s\" rc=%d msg=\"%s\"",
			 log_escape(h->plan->name, en, sizeof(en), LOG_ESC_QUOTES), rc,
			 log_escape(h->msg, em, sizeof(em), LOG_ESC_QUOTES));
	} else {
		rc = 0;
		st = LOAD_DONE;
	}
	pthread_mutex_lock(&h->lock);
	h->t_end = wd_now_ns();
	h->rc = rc;
	/* release: pairs with load_state()'s acquire, so a reader of the state sees rc/msg. */
	atomic_store_explicit(&h->state, st, memory_order_release);
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
	if (h->cb.done)
		h->cb.done(h->cb.arg, h);
	load_put(h);
}

static void *loader_main(void *arg)
{
	struct loader *l = arg;

	for (;;) {
		struct load_handle **pp, *h;
		struct io_uring_cqe *cqe;
		unsigned int head, seen = 0;
		bool stop, more;

		pthread_mutex_lock(&l->lock);
		while (!l->stop && !l->pending && !l->active)
			pthread_cond_wait(&l->cond, &l->lock);
		__atomic_store_n(&l->cpu, sched_getcpu(), __ATOMIC_RELAXED);
		while ((h = l->pending)) {
			l->pending = h->next;
			h->next = l->active;
			l->active = h;
			activate(l, h);
		}
		l->pending_tail = &l->pending;
		stop = l->stop;
		pthread_mutex_unlock(&l->lock);
		if (stop) {
			for (h = l->active; h; h = h->next)
				load_cancel(h);
		}
		if (!l->active && stop)
			break;
		/* One op per load per round, so that concurrent loads share the queue. */
		do {
			more = false;
			for (h = l->active; h; h = h->next)
				more |= start_one(l, h);
		} while (more);
		if (l->inflight) {
			uint64_t wait_ns = l->n_retry ? resubmit_due(l) : 0;
			int rc;

			if (wait_ns) {
				/* Some reads wait out a backoff: wake up when the first is due. */
				struct __kernel_timespec ts = { .tv_sec = (long long)(wait_ns / 1000000000),
								.tv_nsec = (long long)(wait_ns % 1000000000) };
				struct io_uring_cqe *unused;

				rc = io_uring_submit_and_wait_timeout(&l->ring, &unused, 1, &ts, NULL);
				if (rc == -ETIME)
					rc = 0;
			} else {
				rc = l->inflight > l->n_retry ? io_uring_submit_and_wait(&l->ring, 1) : 0;
			}
			if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
				log_error("loader", "\"io_uring_submit_and_wait failed\" rc=%d", rc);
			io_uring_for_each_cqe(&l->ring, head, cqe) {
				complete(l, io_uring_cqe_get_data(cqe), cqe->res);
				seen++;
			}
			io_uring_cq_advance(&l->ring, seen);
		}
		for (pp = &l->active; (h = *pp);) {
			bool cancel = atomic_load_explicit(&h->cancel, memory_order_relaxed);

			if (!h->inflight && (h->failed || cancel || h->next_op >= h->plan->n_ops)) {
				*pp = h->next;
				finish(l, h);
			} else {
				pp = &h->next;
			}
		}
	}
	return NULL;
}

int loader_create(struct arena *arena, const struct loader_options *opt, struct loader **out)
{
	struct loader_options o = opt ? *opt : (struct loader_options){ 0 };
	struct iovec *iov = NULL;
	struct loader *l;
	int rc;

	*out = NULL;
	if (!o.qd)
		o.qd = LOADER_DEFAULT_QD;
	if (!o.chunk)
		o.chunk = LOADER_DEFAULT_CHUNK;
	if (!o.n_staging)
		o.n_staging = LOADER_DEFAULT_STAGING;
	if (o.qd > 4096 || o.chunk % DIO_ALIGN || o.chunk < (64u << 10) || o.chunk > (1u << 30) ||
	    o.n_staging > 1024)
		return -EINVAL;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->arena = arena;
	l->cpu = -1;
	l->qd = o.qd;
	l->chunk = o.chunk;
	l->n_staging = o.n_staging;
	l->reqs = calloc(o.qd, sizeof(*l->reqs));
	l->free_bufs = calloc(o.n_staging, sizeof(uint32_t));
	iov = calloc(o.n_staging, sizeof(*iov));
	if (!l->reqs || !l->free_bufs || !iov) {
		rc = -ENOMEM;
		goto fail;
	}
	l->staging = mmap(NULL, (size_t)o.n_staging * o.chunk, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (l->staging == MAP_FAILED) {
		l->staging = NULL;
		rc = -errno;
		goto fail;
	}
	rc = io_uring_queue_init(o.qd, &l->ring, 0);
	if (rc < 0) {
		l->ring.ring_fd = -1;
		goto fail;
	}
	for (uint32_t i = 0; i < o.n_staging; i++) {
		iov[i].iov_base = l->staging + (size_t)i * o.chunk;
		iov[i].iov_len = o.chunk;
		l->free_bufs[i] = o.n_staging - 1 - i;
	}
	l->n_free_bufs = o.n_staging;
	rc = io_uring_register_buffers(&l->ring, iov, o.n_staging);
	l->fixed_bufs = rc == 0;
	l->bufs_err = rc;
	if (rc) {
		struct rlimit lim = { 0 };

		getrlimit(RLIMIT_MEMLOCK, &lim);
		/* Not silent: reads still work, through unregistered buffers, but slower. */
		log_warn("loader", "\"io_uring refused the fixed staging buffers, reading through "
			 "unregistered ones\" rc=%d err=\"%s\" bytes=%zu memlock_limit=%lld%s", rc,
			 strerror(-rc), (size_t)o.n_staging * o.chunk,
			 lim.rlim_cur == RLIM_INFINITY ? -1LL : (long long)lim.rlim_cur,
			 rc == -ENOMEM ? " hint=\"raise RLIMIT_MEMLOCK (LimitMEMLOCK= in "
					 "weightd.service, ulimit -l)\"" : "");
	}
	{
		/* Bounded workers (regular file reads) at most one per CPU; unbounded: default. */
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		unsigned int workers[2] = { ncpu > 0 ? (unsigned int)ncpu : 1, 0 };

		if (io_uring_register_iowq_max_workers(&l->ring, workers) < 0)
			log_info("loader", "\"io-wq worker limit not set\"");
	}
	rc = io_uring_register_files_sparse(&l->ring, MAX_FILE_SLOTS);
	l->fixed_files = rc == 0;
	l->files_err = rc;
	if (rc)
		log_info("loader", "\"unregistered files\" rc=%d", rc);
	for (uint32_t i = 0; i < o.qd; i++) {
		l->reqs[i].next_free = l->free_reqs;
		l->free_reqs = &l->reqs[i];
	}
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	pthread_mutex_init(&l->pop_lock, NULL);
	pthread_cond_init(&l->pop_cond, NULL);
	l->pending_tail = &l->pending;
	l->pop_tail = &l->pop_head;
	rc = -pthread_create(&l->pop_thread, NULL, populate_main, l);
	if (!rc) {
		rc = -pthread_create(&l->thread, NULL, loader_main, l);
		if (rc) {
			populate_stop(l);
		}
	}
	if (rc) {
		pthread_mutex_destroy(&l->lock);
		pthread_cond_destroy(&l->cond);
		pthread_mutex_destroy(&l->pop_lock);
		pthread_cond_destroy(&l->pop_cond);
		goto fail;
	}
	free(iov);
	*out = l;
	return 0;
fail:
	if (l->ring.ring_fd > 0)
		io_uring_queue_exit(&l->ring);
	if (l->staging)
		munmap(l->staging, (size_t)o.n_staging * o.chunk);
	free(iov);
	free(l->reqs);
	free(l->free_bufs);
	free(l);
	return rc;
}

void loader_destroy(struct loader *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	l->stop = true;
	pthread_cond_signal(&l->cond);
	pthread_mutex_unlock(&l->lock);
	pthread_join(l->thread, NULL);
	populate_stop(l);
	io_uring_queue_exit(&l->ring);
	munmap(l->staging, (size_t)l->n_staging * l->chunk);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
	pthread_mutex_destroy(&l->pop_lock);
	pthread_cond_destroy(&l->pop_cond);
	free(l->reqs);
	free(l->free_bufs);
	free(l);
}

int loader_cpu(const struct loader *l)
{
	return __atomic_load_n(&l->cpu, __ATOMIC_RELAXED);
}

uint32_t loader_chunk(const struct loader *l)
{
	return l->chunk;
}

void loader_io_path(const struct loader *l, struct loader_io *out)
{
	*out = (struct loader_io){ .fixed_bufs = l->fixed_bufs, .fixed_files = l->fixed_files,
				   .bufs_err = l->bufs_err, .files_err = l->files_err,
				   .staging_bytes = (uint64_t)l->n_staging * l->chunk };
}

int loader_submit(struct loader *l, struct load_plan *plan, uint64_t extent_off,
		  const struct load_callbacks *cb, struct load_handle **out)
{
	struct arena *a = l->arena;
	struct load_handle *h;
	pthread_condattr_t ca;

	*out = NULL;
	if (extent_off % ARENA_EXTENT_ALIGN || extent_off > a->seg.size ||
	    plan->bytes > a->seg.size - extent_off)
		return -EINVAL;
	for (uint32_t i = 0; i < plan->n_ops; i++)
		if (plan->ops[i].kind == OP_STAGE && plan->ops[i].len > l->chunk)
			return -EINVAL;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->slots = calloc(plan->n_files ? 2 * plan->n_files : 1, sizeof(int));
	if (!h->slots) {
		free(h);
		return -ENOMEM;
	}
	atomic_init(&h->refs, 2); /* the caller's and the loader thread's */
	h->l = l;
	h->plan = plan;
	h->extent = extent_off;
	if (cb)
		h->cb = *cb;
	h->total = plan->read_bytes;
	pthread_mutex_init(&h->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->cond, &ca);
	pthread_condattr_destroy(&ca);
	atomic_init(&h->state, LOAD_QUEUED);
	pthread_mutex_lock(&l->lock);
	if (l->stop) {
		pthread_mutex_unlock(&l->lock);
		atomic_init(&h->refs, 1);
		load_put(h);
		return -ESHUTDOWN;
	}
	*l->pending_tail = h;
	l->pending_tail = &h->next;
	/* Under l->lock: the loader thread cannot finish (and forget) @h before it is queued. */
	populate_queue(l, h);
	pthread_cond_signal(&l->cond);
	pthread_mutex_unlock(&l->lock);
	*out = h;
	return 0;
}

int loader_run(struct loader *l, struct load_plan *plan, uint64_t extent_off,
	       const struct load_callbacks *cb, char *msg, size_t msg_len)
{
	struct load_handle *h;
	int rc = loader_submit(l, plan, extent_off, cb, &h);

	if (rc) {
		setmsg(msg, msg_len, "component %s: cannot queue the load: %s", plan->name,
		       strerror(-rc));
		return rc;
	}
	rc = load_wait(h, -1);
	setmsg(msg, msg_len, "%s", load_error(h));
	load_put(h);
	return rc;
}
