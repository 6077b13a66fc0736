/*
 * SPSC ring tests: layout, fill/drain over a table of ring sizes and start cursors (including
 * the wrap of the 32-bit index), hostile cursors and headers, a two-thread and a two-process
 * stress with sequence checking, and the doorbell (park, wake, timeout, many rings, stop).
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/base/common.h"
#include "shm/ring.h"
#include "shm/segment.h"

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

/* Stress sizes: smaller under ThreadSanitizer, which slows every access down ~10x. */
#define STRESS_OPS (UNDER_TSAN ? 50000u : 300000u)
#define PINGPONG_OPS (UNDER_TSAN ? 2000u : 20000u)
#define WAIT_LIMIT_NS (10ll * 1000 * 1000 * 1000)

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			print_error("%s:%d: check failed: %s\n  ", __FILE__, __LINE__, #cond); \
			print_error(__VA_ARGS__);                                          \
			print_error("\n");                                                 \
			fail();                                                            \
		}                                                                          \
	} while (0)

/* Both sides' views of one ring segment, as the daemon and a client would hold them. */
struct pair {
	struct shm_segment seg;
	struct ring d_sq, d_cq;	/* daemon: SQ consumer, CQ producer */
	struct ring c_sq, c_cq;	/* client: SQ producer, CQ consumer */
};

static const char *state(const struct ring *r)
{
	static __thread char buf[256];

	snprintf(buf, sizeof(buf),
		 "ring{size=%u pos=%u published=%u cached=%u error=%d | shared tail=%u head=%u "
		 "waiting=%u}",
		 r->size, r->pos, r->published, r->cached, r->error, READ_ONCE(r->hdr->tail),
		 READ_ONCE(r->hdr->head), READ_ONCE(r->hdr->waiting));
	return buf;
}

static void pair_open(struct pair *p, uint32_t sq, uint32_t cq, uint32_t start)
{
	struct ring_seg_params prm = { .sq_entries = sq, .cq_entries = cq, .client_id = 7,
				       .start_index = start };
	int64_t size = ring_seg_size(&prm, NULL);
	uint32_t id = 0;

	CHECK(size > 0, "ring_seg_size(sq=%u cq=%u) = %lld", sq, cq, (long long)size);
	CHECK(shm_segment_create("test-ring", (size_t)size, 0, &p->seg) == 0, "memfd of %lld",
	      (long long)size);
	CHECK(ring_seg_format(p->seg.base, p->seg.size, &prm, &p->d_sq, &p->d_cq) == 0,
	      "format sq=%u cq=%u", sq, cq);
	CHECK(ring_seg_attach(p->seg.base, p->seg.size, &p->c_sq, &p->c_cq, &id) == 0,
	      "attach sq=%u cq=%u", sq, cq);
	CHECK(id == 7, "client id %u", id);
}

static void pair_close(struct pair *p)
{
	shm_segment_close(&p->seg);
}

static struct wd_sqe make_sqe(uint64_t seq)
{
	struct wd_sqe s = { .opcode = WD_OP_PING, .user_data = seq, .arg = { seq, ~seq } };

	return s;
}

/* ---- layout ------------------------------------------------------------------------------ */

static void test_seg_size(void **unused)
{
	static const struct {
		uint32_t sq, cq;
		int ok;
	} rows[] = {
		{ 2, 2, 1 }, { 64, 128, 1 }, { 4096, 4096, 1 }, { WD_RING_MAX, WD_RING_MAX, 1 },
		{ 0, 2, 0 }, { 1, 2, 0 }, { 3, 4, 0 }, { 4, 6, 0 }, { WD_RING_MAX * 2, 4, 0 },
		{ 4, 0x80000000u, 0 },
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct ring_seg_params p = { .sq_entries = rows[i].sq, .cq_entries = rows[i].cq };
		struct wd_ring_seg_hdr h;
		int64_t n = ring_seg_size(&p, &h);

		if (!rows[i].ok) {
			CHECK(n == -EINVAL, "row %zu sq=%u cq=%u: got %lld", i, rows[i].sq,
			      rows[i].cq, (long long)n);
			continue;
		}
		CHECK(n > 0 && n % 4096 == 0 && (uint64_t)n == h.seg_size, "row %zu: %lld", i,
		      (long long)n);
		CHECK(h.sq_off % WD_RING_ALIGN == 0 && h.cq_off % WD_RING_ALIGN == 0 &&
			      h.sq_entries_off % 64 == 0 && h.cq_entries_off % 64 == 0 &&
			      h.sq_data_off % 64 == 0 && h.cq_data_off % 64 == 0,
		      "row %zu: misaligned region", i);
		CHECK(h.cq_data_off + (uint64_t)rows[i].cq * WD_DATA_SLOT_SIZE <= h.seg_size,
		      "row %zu: cq data ends past %llu", i, (unsigned long long)h.seg_size);
	}
}

/* ---- fill / drain across sizes and start cursors ------------------------------------- */

static const uint32_t sizes[] = { 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096 };

/* Start cursors: zero, just below the wrap, and so that a full ring straddles it. */
static uint32_t start_of(unsigned int which, uint32_t size)
{
	switch (which) {
	case 0:
		return 0;
	case 1:
		return UINT32_MAX;
	case 2:
		return UINT32_MAX - size / 2;
	default:
		return UINT32_MAX - size + 1;
	}
}

/* Pushes through @prod, pops through @cons; entries carry their sequence number. */
static void fill_drain(struct ring *prod, struct ring *cons, uint32_t size, uint32_t start,
		       const char *which)
{
	uint8_t in[64], out[64];
	uint64_t seq = 0, expect = 0;
	uint32_t esz = prod->entry_size;

	/* Fill exactly to capacity; one more push must report full. */
	for (uint32_t i = 0; i < size; i++) {
		memset(in, 0, sizeof(in));
		memcpy(in + 8, &seq, 8);
		memcpy(in, &seq, 8);
		CHECK(ring_push(prod, in) == 0, "%s size=%u start=%u push %u: %s", which, size,
		      start, i, state(prod));
		seq++;
	}
	CHECK(ring_push(prod, in) == -EAGAIN, "%s size=%u start=%u: push on full: %s", which,
	      size, start, state(prod));
	CHECK(ring_cons_avail(cons) == (int)size, "%s size=%u start=%u: avail: %s", which, size,
	      start, state(cons));
	CHECK(READ_ONCE(prod->hdr->tail) == start + size, "%s: tail %u != start+size %u", which,
	      READ_ONCE(prod->hdr->tail), start + size);

	/* Drain; one more pop must report empty. */
	for (uint32_t i = 0; i < size; i++) {
		uint64_t got;

		CHECK(ring_pop(cons, out) == 1, "%s size=%u start=%u pop %u: %s", which, size,
		      start, i, state(cons));
		memcpy(&got, out, 8);
		CHECK(got == expect, "%s size=%u start=%u: popped seq %llu, want %llu: %s", which,
		      size, start, (unsigned long long)got, (unsigned long long)expect,
		      state(cons));
		expect++;
	}
	CHECK(ring_pop(cons, out) == 0, "%s size=%u: pop on empty: %s", which, size, state(cons));

	/* Interleaved batches of several lengths, enough to lap the ring three times. */
	const uint32_t batches[] = { 1, size / 2 + 1 > size ? size : size / 2 + 1, size };

	for (size_t b = 0; b < ARRAY_SIZE(batches); b++) {
		uint32_t n = batches[b];

		for (uint32_t lap = 0; lap < 3 * size / n + 1; lap++) {
			for (uint32_t i = 0; i < n; i++) {
				memcpy(in, &seq, 8);
				CHECK(ring_push(prod, in) == 0, "%s size=%u batch=%u: %s", which,
				      size, n, state(prod));
				seq++;
			}
			for (uint32_t i = 0; i < n; i++) {
				uint64_t got;

				CHECK(ring_pop(cons, out) == 1, "%s size=%u batch=%u: %s", which,
				      size, n, state(cons));
				memcpy(&got, out, 8);
				CHECK(got == expect, "%s size=%u batch=%u: seq %llu want %llu: %s",
				      which, size, n, (unsigned long long)got,
				      (unsigned long long)expect, state(cons));
				expect++;
			}
		}
	}
	CHECK(ring_cons_avail(cons) == 0 && ring_prod_space(prod) == (int)size,
	      "%s size=%u: not empty at the end: %s", which, size, state(cons));
	(void)esz;
}

static void test_fill_drain(void **unused)
{
	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
		for (unsigned int s = 0; s < 4; s++) {
			uint32_t start = start_of(s, sizes[i]);
			struct pair p;

			pair_open(&p, sizes[i], sizes[i], start);
			fill_drain(&p.c_sq, &p.d_sq, sizes[i], start, "sq");
			fill_drain(&p.d_cq, &p.c_cq, sizes[i], start, "cq");
			pair_close(&p);
		}
	}
}

/* Batched production: several slots advanced, one publish, with payloads. */
static void test_batch_payload(void **unused)
{
	struct pair p;
	struct wd_sqe out;

	pair_open(&p, 8, 16, UINT32_MAX - 3);
	for (uint32_t i = 0; i < 8; i++) {
		struct wd_sqe *s = ring_prod_slot(&p.c_sq);
		char *data = ring_prod_data(&p.c_sq);

		CHECK(s != NULL, "slot %u: %s", i, state(&p.c_sq));
		*s = make_sqe(i);
		s->arg_len = (uint16_t)snprintf(data, WD_DATA_SLOT_SIZE, "model-%u", i);
		ring_prod_advance(&p.c_sq);
		CHECK(ring_cons_avail(&p.d_sq) == 0, "visible before publish: %s", state(&p.d_sq));
	}
	CHECK(ring_prod_slot(&p.c_sq) == NULL, "9th slot of 8: %s", state(&p.c_sq));
	ring_prod_publish(&p.c_sq);
	CHECK(ring_cons_avail(&p.d_sq) == 8, "after publish: %s", state(&p.d_sq));
	for (uint32_t i = 0; i < 8; i++) {
		char want[32];
		const char *data = ring_cons_data(&p.d_sq, 0);

		memcpy(&out, ring_cons_slot(&p.d_sq, 0), sizeof(out));
		snprintf(want, sizeof(want), "model-%u", i);
		CHECK(out.user_data == i && out.arg_len == strlen(want) &&
			      memcmp(data, want, out.arg_len) == 0,
		      "slot %u: user_data=%llu arg_len=%u data=%.*s", i,
		      (unsigned long long)out.user_data, out.arg_len, (int)out.arg_len, data);
		ring_cons_release(&p.d_sq, 1);
	}
	pair_close(&p);
}

/* ---- hostile peers -------------------------------------------------------------------- */

static void test_hostile_cursors(void **unused)
{
	enum { SQ_TAIL_AHEAD, SQ_TAIL_BACK, CQ_HEAD_AHEAD, CQ_HEAD_BACK, CQ_TAIL_AHEAD };
	static const struct {
		const char *name;
		int what;
	} rows[] = {
		{ "client moves SQ tail past head + size", SQ_TAIL_AHEAD },
		{ "client moves SQ tail backwards", SQ_TAIL_BACK },
		{ "client moves CQ head past the tail", CQ_HEAD_AHEAD },
		{ "client moves CQ head backwards", CQ_HEAD_BACK },
		{ "daemon moves CQ tail past head + size", CQ_TAIL_AHEAD },
	};
	uint8_t buf[64] = { 0 };

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct pair p;
		struct wd_sqe s = make_sqe(1);

		pair_open(&p, 8, 8, UINT32_MAX - 2);
		switch (rows[i].what) {
		case SQ_TAIL_AHEAD:
			WRITE_ONCE(p.d_sq.hdr->tail, p.d_sq.pos + 9);
			CHECK(ring_cons_avail(&p.d_sq) == -EPROTO, "%s: %s", rows[i].name,
			      state(&p.d_sq));
			CHECK(ring_pop(&p.d_sq, buf) == -EPROTO, "%s: broken ring must stay broken",
			      rows[i].name);
			break;
		case SQ_TAIL_BACK:
			ring_sq_push(&p.c_sq, &s);
			ring_sq_push(&p.c_sq, &s);
			CHECK(ring_pop(&p.d_sq, buf) == 1 && ring_pop(&p.d_sq, buf) == 1, "%s",
			      rows[i].name);
			WRITE_ONCE(p.d_sq.hdr->tail, p.d_sq.pos - 1);
			CHECK(ring_cons_avail(&p.d_sq) == -EPROTO, "%s: %s", rows[i].name,
			      state(&p.d_sq));
			break;
		case CQ_HEAD_AHEAD:
		case CQ_HEAD_BACK:
			/* Fill the CQ so the daemon has to read the head again. */
			for (int k = 0; k < 8; k++)
				CHECK(ring_push(&p.d_cq, buf) == 0, "%s: fill", rows[i].name);
			WRITE_ONCE(p.d_cq.hdr->head, rows[i].what == CQ_HEAD_AHEAD
							     ? p.d_cq.pos + 1
							     : p.d_cq.pos - 9);
			CHECK(ring_push(&p.d_cq, buf) == -EPROTO, "%s: %s", rows[i].name,
			      state(&p.d_cq));
			CHECK(ring_error(&p.d_cq) == -EPROTO, "%s: error not sticky", rows[i].name);
			break;
		case CQ_TAIL_AHEAD:
			WRITE_ONCE(p.c_cq.hdr->tail, p.c_cq.pos + 100);
			CHECK(ring_pop(&p.c_cq, buf) == -EPROTO, "%s: %s", rows[i].name,
			      state(&p.c_cq));
			break;
		}
		/* The other ring of the same segment is unaffected. */
		if (rows[i].what <= SQ_TAIL_BACK) {
			CHECK(ring_push(&p.d_cq, buf) == 0 && ring_pop(&p.c_cq, buf) == 1,
			      "%s: CQ broken too: %s", rows[i].name, state(&p.d_cq));
		}
		pair_close(&p);
	}
}

static void test_attach_validation(void **unused)
{
	enum { MAGIC, VERSION, ENTRIES, SEGSIZE, MISALIGN, OVERLAP, OUTSIDE, CURSORS, SHORT };
	static const struct {
		const char *name;
		int what;
		int want;
	} rows[] = {
		{ "wrong magic", MAGIC, -EBADMSG },
		{ "other ABI version", VERSION, -EPROTONOSUPPORT },
		{ "sq_entries not a power of two", ENTRIES, -EBADMSG },
		{ "seg_size beyond the mapping", SEGSIZE, -EOVERFLOW },
		{ "misaligned sq_off", MISALIGN, -EBADMSG },
		{ "cq entries overlap sq entries", OVERLAP, -EBADMSG },
		{ "cq data offset past the end", OUTSIDE, -EOVERFLOW },
		{ "SQ tail more than size ahead", CURSORS, -EPROTO },
		{ "mapping shorter than the header", SHORT, -EBADMSG },
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct pair p;
		struct wd_ring_seg_hdr *h;
		struct ring sq, cq;
		size_t size;
		int ret;

		pair_open(&p, 16, 16, 0);
		h = p.seg.base;
		size = p.seg.size;
		switch (rows[i].what) {
		case MAGIC:
			h->magic ^= 1;
			break;
		case VERSION:
			h->version = WD_ABI_VERSION + 1;
			break;
		case ENTRIES:
			h->sq_entries = 12;
			break;
		case SEGSIZE:
			h->seg_size = size + 4096;
			break;
		case MISALIGN:
			h->sq_off += 8;
			break;
		case OVERLAP:
			h->cq_entries_off = h->sq_entries_off;
			break;
		case OUTSIDE:
			h->cq_data_off = UINT64_MAX - 64 + 1;
			break;
		case CURSORS:
			((struct wd_ring_hdr *)((uint8_t *)h + h->sq_off))->tail = 17;
			break;
		case SHORT:
			size = sizeof(*h) - 1;
			break;
		}
		ret = ring_seg_attach(p.seg.base, size, &sq, &cq, NULL);
		CHECK(ret == rows[i].want, "%s: got %d (%s), want %d", rows[i].name, ret,
		      strerror(-ret), rows[i].want);
		pair_close(&p);
	}
}

static void test_sqe_check(void **unused)
{
	static const struct {
		const char *name;
		struct wd_sqe sqe;
		int want;
	} rows[] = {
		{ "ping", { .opcode = WD_OP_PING }, 0 },
		{ "load with pin, 200-byte name", { .opcode = WD_OP_LOAD, .flags = WD_SQE_F_PIN,
						    .arg_len = 200, .tier = WD_TIER_CUDA(3) }, 0 },
		{ "zeroed slot", { .opcode = 0 }, -EOPNOTSUPP },
		{ "opcode past the end", { .opcode = WD_OP_COUNT }, -EOPNOTSUPP },
		{ "opcode 255", { .opcode = 255 }, -EOPNOTSUPP },
		{ "unknown flag", { .opcode = WD_OP_PING, .flags = 0x80 }, -EINVAL },
		{ "reserved set", { .opcode = WD_OP_PING, .reserved = 1 }, -EINVAL },
		{ "arg_len past the slot", { .opcode = WD_OP_SCAN, .arg_len = 257 }, -EINVAL },
		{ "tier past the last", { .opcode = WD_OP_LOAD, .tier = WD_TIER_MAX }, -EINVAL },
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		int ret = ring_sqe_check(&rows[i].sqe);

		CHECK(ret == rows[i].want, "%s: got %d want %d", rows[i].name, ret, rows[i].want);
	}
}

/* ---- two threads ----------------------------------------------------------------------- */

struct stress {
	struct pair *p;
	uint32_t ops;
	uint64_t spin_ns;
	int result;		/* 0, or the line of the first failure */
	char msg[256];
};

/*
 * The server side: pops requests, checks the sequence and the payload, and answers each with
 * a completion that echoes it. Used by the thread test and the forked child.
 */
static int serve(struct ring *sq, struct ring *cq, uint32_t ops, uint64_t spin_ns, char *msg,
		 size_t msglen)
{
	struct wd_sqe s;

	for (uint32_t i = 0; i < ops; i++) {
		int n = ring_wait(sq, spin_ns, WAIT_LIMIT_NS);
		uint64_t tag;

		if (n <= 0) {
			snprintf(msg, msglen, "server wait %u: %d %s", i, n, state(sq));
			return __LINE__;
		}
		memcpy(&tag, ring_cons_data(sq, 0), 8);
		memcpy(&s, ring_cons_slot(sq, 0), sizeof(s));
		ring_cons_release(sq, 1);
		if (s.user_data != i || s.arg[0] != i || s.arg[1] != ~(uint64_t)i ||
		    tag != i * 3 || ring_sqe_check(&s)) {
			snprintf(msg, msglen, "server %u: user_data=%llu arg0=%llu tag=%llu", i,
				 (unsigned long long)s.user_data, (unsigned long long)s.arg[0],
				 (unsigned long long)tag);
			return __LINE__;
		}
		struct wd_cqe c = { .user_data = s.user_data, .res = 0, .aux0 = s.arg[0] };
		int ret;

		while ((ret = ring_cq_push(cq, &c)) == -EAGAIN)
			sched_yield();
		if (ret) {
			snprintf(msg, msglen, "server push %u: %d %s", i, ret, state(cq));
			return __LINE__;
		}
		ring_notify(cq);
	}
	return 0;
}

/* The client side: keeps up to @window requests in flight and checks completions in order. */
static int client(struct ring *sq, struct ring *cq, uint32_t ops, uint32_t window,
		  uint64_t spin_ns, char *msg, size_t msglen)
{
	uint32_t sent = 0, done = 0;
	struct wd_cqe c;

	while (done < ops) {
		while (sent < ops && sent - done < window) {
			struct wd_sqe *s = ring_prod_slot(sq);
			uint64_t tag = (uint64_t)sent * 3;

			if (!s)
				break;
			*s = make_sqe(sent);
			memcpy(ring_prod_data(sq), &tag, 8);
			ring_prod_advance(sq);
			ring_prod_publish(sq);
			ring_notify(sq);
			sent++;
		}
		int n = ring_wait(cq, spin_ns, WAIT_LIMIT_NS);

		if (n <= 0) {
			snprintf(msg, msglen, "client wait at %u/%u: %d %s", done, sent, n,
				 state(cq));
			return __LINE__;
		}
		while (ring_cq_pop(cq, &c) == 1) {
			if (c.user_data != done || c.aux0 != done || c.res != 0) {
				snprintf(msg, msglen, "completion %u: user_data=%llu res=%d", done,
					 (unsigned long long)c.user_data, c.res);
				return __LINE__;
			}
			done++;
		}
	}
	return 0;
}

static void *server_thread(void *arg)
{
	struct stress *st = arg;

	st->result = serve(&st->p->d_sq, &st->p->d_cq, st->ops, st->spin_ns, st->msg,
			   sizeof(st->msg));
	return NULL;
}

static void test_thread_stress(void **unused)
{
	static const struct {
		uint32_t sq, cq, window, start;
		uint64_t spin_ns;
		uint32_t ops;
	} rows[] = {
		{ 2, 2, 2, UINT32_MAX - 1, 1000000, STRESS_OPS },
		{ 8, 16, 8, UINT32_MAX - 5, 50000, STRESS_OPS },
		{ 256, 256, 200, UINT32_MAX - 100, 50000, STRESS_OPS },
		{ 4, 4, 1, UINT32_MAX, 0, PINGPONG_OPS },	/* parked both ways: lost wake-ups */
		{ 16, 16, 16, 0, 0, PINGPONG_OPS },
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct pair p;
		struct stress st = { .p = &p, .ops = rows[i].ops, .spin_ns = rows[i].spin_ns };
		char msg[256] = "";
		pthread_t t;
		int ret;

		pair_open(&p, rows[i].sq, rows[i].cq, rows[i].start);
		CHECK(pthread_create(&t, NULL, server_thread, &st) == 0, "pthread_create");
		ret = client(&p.c_sq, &p.c_cq, rows[i].ops, rows[i].window, rows[i].spin_ns, msg,
			     sizeof(msg));
		pthread_join(t, NULL);
		CHECK(ret == 0 && st.result == 0,
		      "row %zu (sq=%u cq=%u window=%u spin=%llu): client line %d %s; server line %d "
		      "%s",
		      i, rows[i].sq, rows[i].cq, rows[i].window,
		      (unsigned long long)rows[i].spin_ns, ret, msg, st.result, st.msg);
		CHECK(READ_ONCE(p.c_sq.hdr->tail) == rows[i].start + rows[i].ops,
		      "row %zu: sq tail %u", i, READ_ONCE(p.c_sq.hdr->tail));
		pair_close(&p);
	}
}

/* ---- two processes ----------------------------------------------------------------------- */

/* Moves a ring view from one mapping of its segment to another. */
static void rebase(struct ring *r, const void *from, void *to)
{
	r->hdr = (void *)((uint8_t *)to + ((const uint8_t *)r->hdr - (const uint8_t *)from));
	r->entries = (uint8_t *)to + (r->entries - (const uint8_t *)from);
	r->data = (uint8_t *)to + (r->data - (const uint8_t *)from);
}

static void test_process_stress(void **unused)
{
	static const struct {
		uint32_t sq, cq, window;
		uint64_t spin_ns;
		uint32_t ops;
	} rows[] = {
		{ 64, 64, 32, 20000, STRESS_OPS },
		{ 4, 8, 1, 0, PINGPONG_OPS },
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct pair p;
		char msg[256] = "";
		int status = 0, ret;
		pid_t pid;

		pair_open(&p, rows[i].sq, rows[i].cq, UINT32_MAX - 7);
		pid = fork();
		CHECK(pid >= 0, "fork: %s", strerror(errno));
		if (pid == 0) {
			/*
			 * The child plays the daemon through its own mapping of the memfd, as a
			 * separate process would after receiving the descriptor.
			 */
			struct shm_segment seg;
			struct ring sq = p.d_sq, cq = p.d_cq;

			if (shm_segment_map(dup(p.seg.fd), true, p.seg.size, &seg))
				_exit(10);
			rebase(&sq, p.seg.base, seg.base);
			rebase(&cq, p.seg.base, seg.base);
			ret = serve(&sq, &cq, rows[i].ops, rows[i].spin_ns, msg, sizeof(msg));
			if (ret)
				fprintf(stderr, "child: line %d: %s\n", ret, msg);
			_exit(ret ? 1 : 0);
		}
		ret = client(&p.c_sq, &p.c_cq, rows[i].ops, rows[i].window, rows[i].spin_ns, msg,
			     sizeof(msg));
		CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
		CHECK(ret == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "row %zu: client line %d %s; child status %#x", i, ret, msg, status);
		pair_close(&p);
	}
}

/* ---- doorbell ---------------------------------------------------------------------------- */

struct sleeper {
	struct ring *r;
	int64_t timeout_ns;
	int result;
	uint64_t waited_ns;
};

static void *sleeper_thread(void *arg)
{
	struct sleeper *s = arg;
	uint64_t t0 = wd_now_ns();

	s->result = ring_wait(s->r, 0, s->timeout_ns);
	s->waited_ns = wd_now_ns() - t0;
	return NULL;
}

static void wait_parked(struct ring *r)
{
	/* The flag goes up just before FUTEX_WAIT; give the sleeper time to get into the kernel. */
	for (int i = 0; i < 5000 && !READ_ONCE(r->hdr->waiting); i++)
		usleep(1000);
	CHECK(READ_ONCE(r->hdr->waiting) == 1, "consumer never announced it parks: %s",
	      state(r));
	usleep(50000);
}

static void test_doorbell_wake(void **unused)
{
	struct pair p;
	struct sleeper s;
	pthread_t t;
	struct wd_sqe sqe = make_sqe(42), out;
	int woke;

	pair_open(&p, 8, 8, UINT32_MAX);
	s = (struct sleeper){ .r = &p.d_sq, .timeout_ns = WAIT_LIMIT_NS };
	CHECK(pthread_create(&t, NULL, sleeper_thread, &s) == 0, "pthread_create");
	wait_parked(&p.d_sq);
	CHECK(ring_sq_push(&p.c_sq, &sqe) == 0, "push");
	smp_mb();
	CHECK(READ_ONCE(p.c_sq.hdr->waiting) == 1, "flag dropped before the wake: %s",
	      state(&p.c_sq));
	woke = ring_wake(&p.c_sq);
	pthread_join(t, NULL);
	CHECK(woke == 1, "FUTEX_WAKE woke %d sleepers, want 1 (consumer was not parked?)", woke);
	CHECK(s.result == 1, "ring_wait returned %d: %s", s.result, state(&p.d_sq));
	CHECK(READ_ONCE(p.d_sq.hdr->waiting) == 0, "flag left set: %s", state(&p.d_sq));
	CHECK(ring_sq_pop(&p.d_sq, &out) == 1 && out.user_data == 42, "entry after wake");
	pair_close(&p);
}

static void test_doorbell_timeouts(void **unused)
{
	static const struct {
		uint64_t spin_ns;
		int64_t timeout_ns;
	} rows[] = {
		{ 0, 0 }, { 0, 20000000 }, { 5000000, 10000000 }, { 100000000, 20000000 },
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct pair p;
		uint64_t t0, dt;
		int ret;

		pair_open(&p, 4, 4, 0);
		t0 = wd_now_ns();
		ret = ring_wait(&p.c_cq, rows[i].spin_ns, rows[i].timeout_ns);
		dt = wd_now_ns() - t0;
		CHECK(ret == -ETIMEDOUT, "row %zu: got %d: %s", i, ret, state(&p.c_cq));
		CHECK(dt >= (uint64_t)rows[i].timeout_ns && dt < (uint64_t)rows[i].timeout_ns +
									  2000000000ull,
		      "row %zu: waited %llu ns for a %lld ns timeout", i, (unsigned long long)dt,
		      (long long)rows[i].timeout_ns);
		CHECK(READ_ONCE(p.c_cq.hdr->waiting) == 0, "row %zu: flag left set", i);
		pair_close(&p);
	}
}

struct many {
	struct ring **rings;
	unsigned int n;
	int result;
};

static void *many_thread(void *arg)
{
	struct many *m = arg;

	m->result = ring_wait_many(m->rings, m->n, 0, WAIT_LIMIT_NS);
	return NULL;
}

static void test_doorbell_many(void **unused)
{
	enum { N = 5 };
	struct pair p[N];
	struct ring *rings[N];
	struct wd_sqe sqe = make_sqe(9);
	struct many m = { .rings = rings, .n = N };
	pthread_t t;

	for (int i = 0; i < N; i++) {
		pair_open(&p[i], 4, 4, (uint32_t)i * 1000);
		rings[i] = &p[i].d_sq;
	}
	CHECK(ring_wait_many(rings, 0, 0, 0) == -EINVAL, "n = 0");
	CHECK(ring_wait_many(rings, RING_WAIT_MANY_MAX + 1, 0, 0) == -E2BIG, "n too large");
	CHECK(ring_wait_many(rings, N, 1000, 1000000) == -ETIMEDOUT, "empty rings");

	CHECK(pthread_create(&t, NULL, many_thread, &m) == 0, "pthread_create");
	for (int i = 0; i < N; i++)
		wait_parked(rings[i]);
	CHECK(ring_sq_push(&p[3].c_sq, &sqe) == 0, "push");
	ring_notify(&p[3].c_sq);
	pthread_join(t, NULL);
	CHECK(m.result == 1, "ring_wait_many returned %d", m.result);
	for (int i = 0; i < N; i++) {
		CHECK(ring_cons_avail(rings[i]) == (i == 3), "ring %d: %s", i, state(rings[i]));
		CHECK(READ_ONCE(rings[i]->hdr->waiting) == 0, "ring %d flag left set", i);
	}
	/* A broken ring counts as ready, so the server notices and drops its client. */
	WRITE_ONCE(p[1].c_sq.hdr->tail, p[1].d_sq.pos + 77);
	CHECK(ring_wait_many(rings, N, 0, 0) == 2, "broken + ready ring");
	CHECK(ring_cons_avail(rings[1]) == -EPROTO, "ring 1 broken: %s", state(rings[1]));
	for (int i = 0; i < N; i++)
		pair_close(&p[i]);
}

static void test_doorbell_stop(void **unused)
{
	struct pair p;
	struct sleeper s;
	pthread_t t;
	int err = 0;

	pair_open(&p, 4, 4, 0);
	s = (struct sleeper){ .r = &p.c_cq, .timeout_ns = WAIT_LIMIT_NS };
	CHECK(pthread_create(&t, NULL, sleeper_thread, &s) == 0, "pthread_create");
	wait_parked(&p.c_cq);
	ring_seg_set_status(p.seg.base, &p.d_cq, WD_RING_BROKEN, -EPROTO);
	pthread_join(t, NULL);
	CHECK(s.result == -EPIPE, "client wait returned %d after the daemon gave up", s.result);
	CHECK(ring_seg_status(p.seg.base, &err) == WD_RING_BROKEN && err == -EPROTO,
	      "status/error: %d", err);
	pair_close(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seg_size),
		cmocka_unit_test(test_fill_drain),
		cmocka_unit_test(test_batch_payload),
		cmocka_unit_test(test_hostile_cursors),
		cmocka_unit_test(test_attach_validation),
		cmocka_unit_test(test_sqe_check),
		cmocka_unit_test(test_thread_stress),
		cmocka_unit_test(test_process_stress),
		cmocka_unit_test(test_doorbell_wake),
		cmocka_unit_test(test_doorbell_timeouts),
		cmocka_unit_test(test_doorbell_many),
		cmocka_unit_test(test_doorbell_stop),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
