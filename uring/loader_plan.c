/*
 * Planning a load (loader_plan()): opens a component's files, checks them against what the
 * catalog saw, picks each file's read path (O_DIRECT or buffered, by page-cache residency),
 * places each selected tensor in the extent and turns the whole into the list of reads (ops)
 * that the loader thread runs (loader_read.c). Planning does no I/O on the data.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/file.h"
#include "core/base/log.h"
#include "core/format/convert.h"
#include "uring/loader_int.h"
#include "uring/residency.h"

/* Tensors at least this large are read straight into their slot; smaller ones are grouped. */
#define DIRECT_MIN (256u << 10)
/*
 * Tensors at least this large get an extent offset congruent to their file offset modulo
 * 4 KiB in the aligned layout (when the file offset is 64-byte aligned), so that O_DIRECT
 * reads land in place with no staging copy. The padding that costs, under 4 KiB per tensor,
 * stays under 0.4% of the tensor bytes.
 */
#define CONGRUENT_MIN (1u << 20)

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

/* The request is well formed: files, a chunk size O_DIRECT can use, a supported target. */
static int plan_check(const struct load_spec *spec, uint32_t chunk, char *msg, size_t msg_len)
{
	bool conv = spec->flags & LOAD_F_CONVERT;

	if (!spec->n_files || !spec->files || chunk % DIO_ALIGN || chunk < (64u << 10) ||
	    (spec->names && !spec->n_names) ||
	    (conv && spec->convert_to != ST_F16 && spec->convert_to != ST_BF16)) {
		setmsg(msg, msg_len, "component %s: invalid load request",
		       spec->name ? spec->name : "?");
		return -EINVAL;
	}
	return 0;
}

/*
 * Opens every file of @spec into @p and counts the tensors it selects into *n; each name the
 * spec asks for (marked in @found) must be in some file.
 */
static int plan_open(const struct load_spec *spec, struct load_plan *p, bool *found,
		     uint32_t *n, char *msg, size_t msg_len)
{
	int rc;

	for (size_t i = 0; i < spec->n_files; i++)
		p->files[i].fd = p->files[i].dfd = -1;
	p->n_files = (uint32_t)spec->n_files;
	for (size_t i = 0; i < spec->n_files; i++) {
		rc = open_file(spec, i, &p->files[i], msg, msg_len);
		if (rc)
			return rc;
		for (uint32_t t = 0; t < p->files[i].st.n_tensors; t++)
			*n += selected(spec, p->files[i].st.tensors[t].name, found);
	}
	for (size_t i = 0; spec->names && i < spec->n_names; i++) {
		if (!found[i]) {
			setmsg(msg, msg_len, "component %s: no tensor named \"%s\"", spec->name,
			       spec->names[i]);
			return -ENOENT;
		}
	}
	return 0;
}

/*
 * The read path of file @f: O_DIRECT when the file system allows it and no selected tensor is
 * converted (conversion pieces must hold whole elements, which only buffered reads allow),
 * and then which of its granules the page cache holds (those are read buffered).
 */
static int plan_read_path(const struct load_spec *spec, struct load_file *f, bool *found)
{
	bool conv = spec->flags & LOAD_F_CONVERT, fconv = false;
	uint32_t n_sel = 0;

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
		if (!f->cached)
			return -ENOMEM;
		if (residency_map(f->fd, f->st.file_size, f->cached))
			log_info("loader", "\"page cache residency unknown: O_DIRECT\" "
				 "file=\"%s\"", f->path);
	}
	return 0;
}

/*
 * Appends file @fi's selected tensors to @p, each placed at its extent offset: in the file
 * layout at the cursor plus its offset in the file; in the aligned layout at the cursor
 * rounded up to ARENA_TENSOR_ALIGN (and to its file offset modulo 4 KiB when it is big and
 * read O_DIRECT, CONGRUENT_MIN), the cursor moving past it.
 */
static void plan_place(const struct load_spec *spec, struct load_plan *p, uint32_t fi,
		       bool *found, uint64_t *cursor)
{
	bool conv = spec->flags & LOAD_F_CONVERT, file_layout = p->flags & LOAD_F_FILE_LAYOUT;
	struct load_file *f = &p->files[fi];
	uint64_t f0 = f->st.data_start & ~(uint64_t)(DIO_ALIGN - 1);

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
			T->off = *cursor + (T->src_off - f0);
		} else {
			*cursor = align_up(*cursor, ARENA_TENSOR_ALIGN);
			/* Large tensors of an O_DIRECT file: in place (CONGRUENT_MIN). */
			if (f->direct && T->src_bytes >= CONGRUENT_MIN &&
			    T->src_off % ARENA_TENSOR_ALIGN == 0)
				*cursor += (T->src_off - *cursor) % DIO_ALIGN;
			T->off = *cursor;
			*cursor += T->nbytes;
		}
		p->tensor_bytes += T->nbytes;
	}
}

/* File @fi of @p: its read path, its tensors' places and its reads, appended to @ob. */
static int plan_file(const struct load_spec *spec, struct load_plan *p, uint32_t fi,
		     uint32_t chunk, bool *found, uint64_t *cursor, struct opbuf *ob)
{
	struct load_file *f = &p->files[fi];
	uint64_t f0 = f->st.data_start & ~(uint64_t)(DIO_ALIGN - 1);
	uint32_t t0 = p->n_tensors;
	int rc;

	/* O_DIRECT first, since it decides the layout. */
	rc = plan_read_path(spec, f, found);
	if (rc)
		return rc;
	plan_place(spec, p, fi, found, cursor);
	if (p->flags & LOAD_F_FILE_LAYOUT) {
		rc = ops_file_layout(p, fi, *cursor, chunk, ob);
		*cursor += align_up(f->st.file_size, DIO_ALIGN) - f0;
		return rc;
	}
	if (f->direct)
		return ops_mixed(p, fi, t0, p->n_tensors, chunk, ob);
	return ops_buffered(p, fi, t0, p->n_tensors, chunk, ob);
}

/* The plan's byte counts by read path, and how many files are read O_DIRECT. */
static void plan_count(struct load_plan *p)
{
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
	rc = plan_check(spec, chunk, msg, msg_len);
	if (rc)
		return rc;
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
	rc = plan_open(spec, p, found, &n, msg, msg_len);
	if (rc)
		goto fail;
	p->tensors = calloc(n ? n : 1, sizeof(*p->tensors));
	if (!p->tensors) {
		rc = -ENOMEM;
		goto fail;
	}
	for (uint32_t fi = 0; fi < p->n_files; fi++) {
		rc = plan_file(spec, p, fi, chunk, found, &cursor, &ob);
		if (rc)
			goto fail;
	}
	p->bytes = cursor;
	p->ops = ob.ops;
	p->n_ops = ob.n;
	plan_count(p);
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
