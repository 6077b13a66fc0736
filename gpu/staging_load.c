/*
 * The pinned staging ring's disk-to-VRAM pipeline (staging_load()): io_uring reads into
 * pinned slots, H2D copies out of them on several streams, a slot recycled when the event
 * after its copies completed. Setup and host copies are gpu/staging.c.
 */
#include "gpu/staging.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/file.h"
#include "core/base/log.h"
#include "gpu/staging_int.h"

/* A file of one staging_load() call. */
struct sfile {
	int fd;			/* what is read: the caller's fd or an O_DIRECT reopen of it */
	int orig;
	bool direct;
	bool reopened;
	int fixed;		/* registered file index or -1 */
	char name[256];
};

/* The state of one staging_load() call. */
struct call {
	const struct staging_transfer *t;
	size_t n;
	size_t ti;		/* next transfer to place in a slot */
	uint64_t pos;		/* bytes of it already placed */
	uint32_t *file_of;	/* per transfer: index into files */
	struct sfile *files;
	uint32_t n_files;
	uint64_t done, total;
	int rc;			/* first failure */
	bool stop;		/* failed or cancelled: submit nothing more */
	char *why;
	size_t why_size;
};

static uint64_t align_down(uint64_t x, uint64_t a)
{
	return x / a * a;
}

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

static void fail(struct call *c, int rc, const char *fmt, ...) WD_PRINTF(3, 4);
static void fail(struct call *c, int rc, const char *fmt, ...)
{
	va_list ap;

	if (c->rc)
		return;
	c->rc = rc;
	c->stop = true;
	va_start(ap, fmt);
	vsnprintf(c->why, c->why_size, fmt, ap);
	va_end(ap);
}

/*
 * O_DIRECT for @f when its fd already has it, or when a reopen through /proc with O_DIRECT
 * works and reads one aligned block (tmpfs and some overlays refuse one or the other).
 */
static void probe_direct(struct staging *st, struct sfile *f)
{
	char proc[64];
	void *blk = NULL;
	int fl = fcntl(f->orig, F_GETFL), fd;

	if (fl >= 0 && (fl & O_DIRECT)) {
		f->direct = true;
		return;
	}
	if (st->no_direct)
		return;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", f->orig);
	/* @f->orig is a regular file (checked in staging_load()); the reopen cannot block. */
	fd = wd_open_regular(AT_FDCWD, proc, O_DIRECT, NULL);
	if (fd < 0)
		return;
	if (posix_memalign(&blk, DIO_ALIGN, DIO_ALIGN) || pread(fd, blk, DIO_ALIGN, 0) < 0) {
		free(blk);
		close(fd);
		return;
	}
	free(blk);
	f->fd = fd;
	f->direct = true;
	f->reopened = true;
}

static int add_file(struct staging *st, struct call *c, const struct staging_transfer *t)
{
	struct sfile *f;

	for (uint32_t i = c->n_files; i-- > 0;)
		if (c->files[i].orig == t->fd)
			return (int)i;
	f = &c->files[c->n_files];
	memset(f, 0, sizeof(*f));
	f->orig = f->fd = t->fd;
	f->fixed = -1;
	if (t->name) {
		snprintf(f->name, sizeof(f->name), "%s", t->name);
	} else {
		char proc[64];
		ssize_t k;

		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", t->fd);
		k = readlink(proc, f->name, sizeof(f->name) - 1);
		if (k < 0)
			snprintf(f->name, sizeof(f->name), "fd %d", t->fd);
		else
			f->name[k] = '\0';
	}
	probe_direct(st, f);
	if (f->direct)
		st->stats.direct_files++;
	if (st->stats.fixed_files && c->n_files < MAX_FIXED_FILES &&
	    io_uring_register_files_update(&st->ring, c->n_files, &f->fd, 1) == 1)
		f->fixed = (int)c->n_files;
	return (int)c->n_files++;
}

static void close_files(struct staging *st, struct call *c)
{
	for (uint32_t i = 0; i < c->n_files; i++) {
		struct sfile *f = &c->files[i];

		if (f->fixed >= 0) {
			int none = -1;

			io_uring_register_files_update(&st->ring, (unsigned)f->fixed, &none, 1);
		}
		if (f->reopened)
			close(f->fd);
	}
}

/* How long read @r may grow: to the end of its slot, and at most READ_MAX. */
static uint32_t read_cap(const struct staging *st, const struct sread *r)
{
	uint32_t room = st->slot_bytes - r->buf_off;

	return room < READ_MAX ? room : READ_MAX;
}

/*
 * Fills @s with the next pieces of the transfer list: returns false when there is nothing
 * left to place. A piece that continues the slot's last read (same file, starting inside or
 * at the end of it) extends that read; otherwise it starts a new read.
 */
static bool fill_slot(struct staging *st, struct call *c, struct slot *s)
{
	uint32_t used = 0;

	if (s->ev)
		st->stats.slot_reuse_early++;
	s->n_reads = s->n_copies = 0;
	s->bytes = 0;
	while (c->ti < c->n && s->n_copies < MAX_PIECES) {
		const struct staging_transfer *t = &c->t[c->ti];
		uint32_t fi = c->file_of[c->ti];
		const struct sfile *f = &c->files[fi];
		uint64_t fo = t->off + c->pos, rem = t->len - c->pos, want_end, avail;
		struct sread *r = s->n_reads ? &s->reads[s->n_reads - 1] : NULL;
		uint32_t n;

		if (!rem) {
			c->ti++;
			c->pos = 0;
			continue;
		}
		want_end = f->direct ? align_up(fo + rem, DIO_ALIGN) : fo + rem;
		if (!(r && r->file == fi && fo >= r->off && fo <= r->off + r->len &&
		      fo < r->off + read_cap(st, r))) {
			uint64_t start = f->direct ? align_down(fo, DIO_ALIGN) : fo;
			uint32_t boff = (uint32_t)align_up(used, f->direct ? DIO_ALIGN : PIECE_ALIGN);

			if (s->n_reads == MAX_PIECES || boff >= st->slot_bytes)
				break;
			r = &s->reads[s->n_reads++];
			r->slot = (uint32_t)(s - st->slots);
			r->file = fi;
			r->off = start;
			r->len = 0;
			r->need = 0;
			r->got = 0;
			r->buf_off = boff;
		}
		/* Grow the read towards want_end, as far as the slot and READ_MAX allow. */
		avail = read_cap(st, r);
		if (want_end - r->off > r->len)
			r->len = (uint32_t)(want_end - r->off < avail ? want_end - r->off : avail);
		used = r->buf_off + r->len;
		n = (uint32_t)(r->off + r->len - fo < rem ? r->off + r->len - fo : rem);
		if (!n)
			break;	/* the slot is full */
		s->copies[s->n_copies++] = (struct scopy){
			.buf_off = r->buf_off + (uint32_t)(fo - r->off),
			.n = n,
			.dst = t->dst + c->pos,
		};
		if (fo + n - r->off > r->need)
			r->need = (uint32_t)(fo + n - r->off);
		s->bytes += n;
		c->pos += n;
	}
	if (!s->n_copies)
		return false;
	/* A piece may have grown a read beyond what the copies need only for O_DIRECT. */
	s->seq = ++st->seq;
	st->stats.slot_fills++;
	return true;
}

static void prep_read(struct staging *st, struct call *c, struct sread *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&st->ring);
	const struct sfile *f = &c->files[r->file];
	struct slot *s = &st->slots[r->slot];
	char *buf = s->buf + r->buf_off + r->got;
	int fd = f->fixed >= 0 ? f->fixed : f->fd;

	if (!sqe) {
		/* The SQ is full: hand it to the kernel and take the freed entry. */
		io_uring_submit(&st->ring);
		sqe = io_uring_get_sqe(&st->ring);
	}
	if (st->stats.fixed_buffers)
		io_uring_prep_read_fixed(sqe, fd, buf, r->len - r->got, r->off + r->got, r->slot);
	else
		io_uring_prep_read(sqe, fd, buf, r->len - r->got, r->off + r->got);
	if (f->fixed >= 0)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data(sqe, r);
}

static bool any_copying(const struct staging *st)
{
	for (uint32_t i = 0; i < st->n_slots; i++)
		if (st->slots[i].state == SLOT_COPYING)
			return true;
	return false;
}

static void start_slot(struct staging *st, struct call *c, struct slot *s)
{
	if (any_copying(st))
		st->stats.overlapped_reads += s->n_reads;
	s->state = SLOT_READING;
	s->reads_left = s->n_reads;
	for (uint32_t i = 0; i < s->n_reads; i++)
		prep_read(st, c, &s->reads[i]);
}

/* All reads of @s arrived: queue its copies and the event after them. */
static void copy_slot(struct staging *st, struct call *c, struct slot *s)
{
	struct gpu_stream *stream;
	int rc;

	if (c->stop) {
		s->state = SLOT_FREE;
		return;
	}
	stream = st->streams[st->rr++ % st->n_streams];
	for (uint32_t i = 0; i < s->n_copies;) {
		const struct scopy *cp = &s->copies[i];
		uint64_t n = cp->n;
		uint32_t k = i + 1;

		/* Pieces that follow each other both in the slot and in VRAM (the tensors of one
		 * file, back to back) go as one copy: each copy has a fixed cost. */
		while (k < s->n_copies && s->copies[k].buf_off == cp->buf_off + n &&
		       s->copies[k].dst == cp->dst + n)
			n += s->copies[k++].n;
		rc = st->ops->copy_h2d(st->dev, stream, cp->dst, s->buf + cp->buf_off, n,
				       c->why, c->why_size);
		if (rc) {
			/* Copies queued before this one still read the slot: wait for them. */
			c->rc = rc;
			c->stop = true;
			break;
		}
		st->stats.copies++;
		st->stats.copy_bytes += n;
		i = k;
	}
	rc = st->ops->event_record(st->dev, stream, &s->ev, c->rc ? NULL : c->why,
				   c->rc ? 0 : c->why_size);
	if (rc) {
		/*
		 * Without an event nothing tells when the copies queued above have read the
		 * slot. The call fails; the slot is marked free, and a later call could in
		 * principle overwrite it early. Recording an event fails only when the driver
		 * is out of host memory, so this is not worth a stream-wide wait.
		 */
		if (!c->rc) {
			c->rc = rc;
			c->stop = true;
		}
		s->ev = NULL;
		s->state = SLOT_FREE;
		log_warn("staging", "\"event_record failed; a slot may be reused early\" rc=%d",
			 rc);
		return;
	}
	if (c->rc)
		s->bytes = 0;	/* a failed slot reports no progress */
	s->state = SLOT_COPYING;
}

static void on_cqe(struct staging *st, struct call *c, struct io_uring_cqe *cqe)
{
	struct sread *r = io_uring_cqe_get_data(cqe);
	struct slot *s = &st->slots[r->slot];
	const struct sfile *f = &c->files[r->file];
	int res = cqe->res;

	st->stats.reads++;
	if (res == -EINTR || res == -EAGAIN) {
		if (!c->stop) {
			prep_read(st, c, r);
			return;
		}
	} else if (res < 0) {
		fail(c, res, "%s: read of %u bytes at byte %" PRIu64 " failed: %s", f->name,
		     r->len - r->got, r->off + r->got, strerror(-res));
	} else {
		r->got += (uint32_t)res;
		st->stats.read_bytes += (uint64_t)res;
		if (r->got < r->need) {
			/*
			 * Short: at the end of the file (a zero read, or an O_DIRECT read that
			 * stopped off a block boundary) the transfer asks for bytes the file does
			 * not have; otherwise the rest is read again.
			 */
			if (res > 0 && !(f->direct && r->got % DIO_ALIGN) && !c->stop) {
				prep_read(st, c, r);
				return;
			}
			fail(c, -EIO, "%s: short read at byte %" PRIu64 ": the file ends at byte "
			     "%" PRIu64 " but a transfer needs bytes up to %" PRIu64, f->name,
			     r->off + r->got, r->off + r->got, r->off + r->need);
		}
	}
	if (--s->reads_left == 0)
		copy_slot(st, c, s);
}

static void finish_slot(struct staging *st, struct call *c, struct slot *s, int rc)
{
	st->ops->event_destroy(st->dev, s->ev);
	s->ev = NULL;
	s->state = SLOT_FREE;
	if (rc) {
		if (!c->rc) {
			c->rc = rc;
			c->stop = true;
		}
		return;
	}
	c->done += s->bytes;
}

static void report(const struct staging_call *call, const struct call *c, uint64_t *last)
{
	if (call && call->progress && c->done != *last) {
		*last = c->done;
		call->progress(call->arg, c->done, c->total);
	}
}

/* The pipeline; returns when nothing is in flight any more. */
static void run(struct staging *st, struct call *c, const struct staging_call *call)
{
	uint64_t reported = 0;

	for (;;) {
		uint32_t reading = 0, copying = 0, busy;
		struct slot *oldest = NULL;
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		bool more = true;

		if (!c->stop && cancelled(call))
			fail(c, -ECANCELED, "cancelled after %" PRIu64 " of %" PRIu64 " bytes",
			     c->done, c->total);
		for (uint32_t i = 0; i < st->n_slots; i++) {
			struct slot *s = &st->slots[i];
			int rc;

			if (s->state != SLOT_COPYING)
				continue;
			rc = st->ops->event_query(st->dev, s->ev, c->rc ? NULL : c->why,
						  c->rc ? 0 : c->why_size);
			if (rc != -EAGAIN)
				finish_slot(st, c, s, rc);
		}
		report(call, c, &reported);
		for (uint32_t i = 0; i < st->n_slots && !c->stop && more; i++) {
			struct slot *s = &st->slots[i];

			if (s->state != SLOT_FREE)
				continue;
			more = fill_slot(st, c, s);
			if (more)
				start_slot(st, c, s);
		}
		io_uring_submit(&st->ring);
		for (uint32_t i = 0; i < st->n_slots; i++) {
			struct slot *s = &st->slots[i];

			reading += s->state == SLOT_READING;
			if (s->state == SLOT_COPYING) {
				copying++;
				if (!oldest || s->seq < oldest->seq)
					oldest = s;
			}
		}
		busy = reading + copying;
		if (busy > st->stats.max_busy_slots)
			st->stats.max_busy_slots = busy;
		if (!busy)
			return;
		if (reading) {
			struct __kernel_timespec ts = { .tv_nsec = POLL_NS };
			int rc = copying ? io_uring_wait_cqe_timeout(&st->ring, &cqe, &ts) :
					   io_uring_wait_cqe(&st->ring, &cqe);

			if (rc < 0 && rc != -ETIME && rc != -EINTR) {
				fail(c, rc, "staging: waiting for reads: %s", strerror(-rc));
				/* Reads still in flight target the slots: they must drain. Reap what
				 * completed (-EBADR leaves completions in the ring) and pause before
				 * asking again, so that a wait that keeps failing does not spin. */
				usleep(1000);
			}
			io_uring_for_each_cqe(&st->ring, head, cqe) {
				on_cqe(st, c, cqe);
				seen++;
			}
			io_uring_cq_advance(&st->ring, seen);
			io_uring_submit(&st->ring);	/* resubmitted short reads */
		} else {
			int rc = st->ops->event_wait(st->dev, oldest->ev, c->rc ? NULL : c->why,
						     c->rc ? 0 : c->why_size);

			finish_slot(st, c, oldest, rc);
			report(call, c, &reported);
		}
	}
}

int staging_load(struct staging *st, const struct staging_transfer *t, size_t n,
		 const struct staging_call *call, char *why, size_t why_size)
{
	struct call c = { .t = t, .n = n, .why = why, .why_size = why_size };
	int rc = 0;

	if (why_size)
		why[0] = '\0';
	if (!n)
		return 0;
	c.file_of = calloc(n, sizeof(*c.file_of));
	c.files = calloc(n, sizeof(*c.files));
	if (!c.file_of || !c.files) {
		snprintf(why, why_size, "staging: out of memory");
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct stat sb;

		if (t[i].off + t[i].len < t[i].off || t[i].dst + t[i].len < t[i].dst) {
			snprintf(why, why_size, "staging: transfer %zu (%s at byte %" PRIu64 ", %"
				 PRIu64 " bytes) overflows", i, t[i].name ? t[i].name : "?",
				 t[i].off, t[i].len);
			rc = -EINVAL;
			goto out;
		}
		if (!t[i].len)
			continue;
		if (t[i].fd < 0 || fstat(t[i].fd, &sb) < 0) {
			/* Taken before snprintf(), which may change errno. */
			rc = t[i].fd < 0 ? -EBADF : -errno;
			snprintf(why, why_size, "staging: transfer %zu (%s): bad fd %d", i,
				 t[i].name ? t[i].name : "?", t[i].fd);
			goto out;
		}
		if (!S_ISREG(sb.st_mode)) {
			/* A FIFO or a device would block the ring's reads, or never end. */
			rc = -EINVAL;
			snprintf(why, why_size, "staging: transfer %zu (%s): fd %d is %s, not a "
				 "regular file", i, t[i].name ? t[i].name : "?", t[i].fd,
				 wd_file_kind(sb.st_mode));
			goto out;
		}
		c.file_of[i] = (uint32_t)add_file(st, &c, &t[i]);
		c.total += t[i].len;
	}
	if (!c.total)
		goto out;
	run(st, &c, call);
	rc = c.rc;
out:
	if (c.files)
		close_files(st, &c);
	free(c.file_of);
	free(c.files);
	return rc;
}

