/*
 * The host cache arena and its extent allocator: allocation tables, coalescing, refusals,
 * bounded fragmentation under churn, the seals, a read-only client mapping in a forked child
 * (a write faults there and the parent is unaffected), page release, NUMA binding and the
 * hugepage decision.
 */
#include <errno.h>
#include <fcntl.h>
#include <numaif.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/base/common.h"
#include "core/policy/extent.h"
#include "uring/arena.h"

#define K 4096ull

static void dump(const struct extent_alloc *ea)
{
	fprintf(stderr, "  used=%lu n_used=%lu free list:", ea->used, ea->n_used);
	for (uint32_t i = 0; i < ea->n_free; i++)
		fprintf(stderr, " [%lu,+%lu)", ea->free[i].off, ea->free[i].len);
	fprintf(stderr, "\n");
}

/* The free list's invariants: sorted, in bounds, never adjacent, sums to capacity - used. */
static void check_invariants(const struct extent_alloc *ea)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < ea->n_free; i++) {
		const struct extent *e = &ea->free[i];

		sum += e->len;
		if (!e->len || e->off % ea->align || e->len % ea->align ||
		    e->off + e->len > ea->capacity ||
		    (i && ea->free[i - 1].off + ea->free[i - 1].len >= e->off)) {
			fprintf(stderr, "free list invariant broken at %u\n", i);
			dump(ea);
			fail();
		}
	}
	assert_int_equal(sum, ea->capacity - ea->used);
	assert_true(ea->n_free <= ea->n_used + 1);
}

/* One step of an allocator script: allocate (size) or free (the i-th allocation). */
struct step {
	char op;		/* 'a' allocate, 'f' free */
	uint64_t arg;		/* size for 'a'; step index of the allocation for 'f' */
	int rc;
	uint64_t off;		/* expected offset for a successful 'a' */
	uint32_t n_free;	/* free extents afterwards */
};

static void test_extent_scripts(void **state)
{
	static const struct {
		const char *name;
		uint64_t cap;
		struct step s[10];
		int n;
	} rows[] = {
		{ "fill and empty", 16 * K, {
			{ 'a', 4 * K, 0, 0, 1 }, { 'a', 12 * K, 0, 4 * K, 0 },
			{ 'a', 1, -ENOSPC, 0, 0 }, { 'f', 0, 0, 0, 1 }, { 'f', 1, 0, 0, 1 } }, 5 },
		{ "rounding to 4 KiB", 16 * K, {
			{ 'a', 1, 0, 0, 1 }, { 'a', K + 1, 0, K, 1 }, { 'a', K, 0, 3 * K, 1 } }, 3 },
		{ "best fit picks the smaller hole", 32 * K, {
			{ 'a', 8 * K, 0, 0, 1 }, { 'a', 2 * K, 0, 8 * K, 1 },
			{ 'a', 4 * K, 0, 10 * K, 1 }, { 'a', 2 * K, 0, 14 * K, 1 },
			{ 'f', 0, 0, 0, 2 }, { 'f', 2, 0, 0, 3 },
			{ 'a', 3 * K, 0, 10 * K, 3 } }, 7 },
		{ "coalesce with both neighbours", 12 * K, {
			{ 'a', 4 * K, 0, 0, 1 }, { 'a', 4 * K, 0, 4 * K, 1 },
			{ 'a', 4 * K, 0, 8 * K, 0 }, { 'f', 0, 0, 0, 1 }, { 'f', 2, 0, 0, 2 },
			{ 'f', 1, 0, 0, 1 }, { 'a', 12 * K, 0, 0, 0 } }, 7 },
		{ "zero size", 8 * K, { { 'a', 0, -EINVAL, 0, 1 } }, 1 },
		{ "larger than everything", 8 * K, { { 'a', 9 * K, -ENOSPC, 0, 1 } }, 1 },
	};

	(void)state;
	for (size_t r = 0; r < ARRAY_SIZE(rows); r++) {
		struct extent_alloc ea;
		uint64_t offs[10] = { 0 }, sizes[10] = { 0 };

		assert_int_equal(extent_init(&ea, rows[r].cap, K), 0);
		for (int i = 0; i < rows[r].n; i++) {
			const struct step *s = &rows[r].s[i];
			int rc;

			if (s->op == 'a') {
				rc = extent_alloc(&ea, s->arg, &offs[i]);
				sizes[i] = s->arg;
			} else {
				rc = extent_free(&ea, offs[s->arg], sizes[s->arg]);
			}
			if (rc != s->rc || (s->op == 'a' && !rc && offs[i] != s->off) ||
			    ea.n_free != s->n_free) {
				fprintf(stderr, "%s, step %d (%c %lu): rc=%d off=%lu n_free=%u; want "
					"rc=%d off=%lu n_free=%u\n", rows[r].name, i, s->op, s->arg,
					rc, offs[i], ea.n_free, s->rc, s->off, s->n_free);
				dump(&ea);
				fail();
			}
			check_invariants(&ea);
		}
		extent_destroy(&ea);
	}
}

static void test_extent_refusals(void **state)
{
	struct extent_alloc ea;
	uint64_t a, b;

	(void)state;
	assert_int_equal(extent_init(&ea, 100, 3), -EINVAL);
	assert_int_equal(extent_init(&ea, 100, K), -EINVAL);
	assert_int_equal(extent_init(&ea, 64 * K, K), 0);
	assert_int_equal(extent_alloc(&ea, 8 * K, &a), 0);
	assert_int_equal(extent_alloc(&ea, 8 * K, &b), 0);
	assert_int_equal(extent_free(&ea, a + 1, 8 * K), -EINVAL);	/* misaligned */
	assert_int_equal(extent_free(&ea, 64 * K, K), -EINVAL);		/* outside */
	assert_int_equal(extent_free(&ea, 16 * K, K), -EINVAL);		/* never allocated */
	assert_int_equal(extent_free(&ea, a, 8 * K), 0);
	assert_int_equal(extent_free(&ea, a, 8 * K), -EINVAL);		/* double free */
	assert_int_equal(extent_free(&ea, b, 8 * K), 0);
	assert_int_equal(ea.n_free, 1);
	assert_int_equal(ea.used, 0);
	assert_int_equal(extent_alloc(&ea, UINT64_MAX, &a), -ENOSPC);
	extent_destroy(&ea);
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/*
 * Load/evict churn: components of 4 KiB .. 64 MiB (log-uniform, like a mix of VAEs, text
 * encoders and UNets) are loaded until the arena is about 80% full, then for thousands of
 * rounds a random unpinned one is evicted and a new one loaded, evicting more while it does
 * not fit. A fifth of the components are pinned and never freed.
 *
 * Bound checked (the fragmentation metric of core/policy/extent.h): after every round the free
 * list has at most one extent more than there are live allocations, and whenever at least
 * 25% of the arena is free, the largest free extent holds at least 10% of the free bytes
 * (external fragmentation <= 0.9). Averages are printed for the report.
 */
static void test_extent_churn(void **state)
{
	enum { MAXA = 4096 };
	const uint64_t cap = 1ull << 30;
	static uint64_t off[MAXA], len[MAXA];
	static bool pinned[MAXA];
	struct extent_alloc ea;
	uint64_t seed = 0x9e3779b97f4a7c15ull, evictions = 0, samples = 0;
	double frag_sum = 0, frag_max = 0;
	int n = 0;

	(void)state;
	assert_int_equal(extent_init(&ea, cap, K), 0);
	for (int round = 0; round < 5000; round++) {
		uint64_t size = K << (rnd(&seed) % 15);
		struct extent_stats st;

		size += (rnd(&seed) % size) & ~(K - 1);
		while (extent_alloc(&ea, size, &off[n]) == -ENOSPC) {
			int v, tries = 0;

			do {
				v = (int)(rnd(&seed) % (uint64_t)n);
			} while (pinned[v] && ++tries < 1000);
			assert_false(pinned[v]);
			assert_int_equal(extent_free(&ea, off[v], len[v]), 0);
			off[v] = off[n - 1];
			len[v] = len[n - 1];
			pinned[v] = pinned[n - 1];
			n--;
			evictions++;
		}
		len[n] = size;
		pinned[n] = rnd(&seed) % 5 == 0 && ea.used < cap / 4;
		n++;
		assert_true(n < MAXA);
		/* Keep occupancy near 80% between loads: evict unpinned at random. */
		while (ea.used > cap / 10 * 8) {
			int v = (int)(rnd(&seed) % (uint64_t)n);

			if (pinned[v])
				continue;
			assert_int_equal(extent_free(&ea, off[v], len[v]), 0);
			off[v] = off[n - 1];
			len[v] = len[n - 1];
			pinned[v] = pinned[n - 1];
			n--;
			evictions++;
		}
		check_invariants(&ea);
		extent_get_stats(&ea, &st);
		if (st.free >= cap / 4) {
			samples++;
			frag_sum += st.fragmentation;
			if (st.fragmentation > frag_max)
				frag_max = st.fragmentation;
			if (st.fragmentation > 0.9) {
				fprintf(stderr, "round %d: fragmentation %.3f (largest free %lu of %lu "
					"free, %u extents)\n", round, st.fragmentation,
					st.largest_free, st.free, st.n_free);
				fail();
			}
		}
	}
	fprintf(stderr, "churn: 5000 loads, %lu evictions, %lu samples with >= 25%% free: "
		"fragmentation mean %.3f max %.3f\n", evictions, samples,
		samples ? frag_sum / (double)samples : 0.0, frag_max);
	extent_destroy(&ea);
}

/* ---- the arena ---------------------------------------------------------------------- */

static void test_arena_create(void **state)
{
	static const struct {
		uint64_t budget;
		unsigned int flags;
		int rc;
		uint64_t size;
	} rows[] = {
		{ 1u << 20, 0, 0, 1u << 20 },
		{ (64u << 20) + 1, ARENA_F_NO_HUGETLB, 0, (64u << 20) + K },
		{ 5000, ARENA_F_RELEASE, 0, 2 * K },
		{ 0, 0, -EINVAL, 0 },
		{ 1u << 20, 0x80, -EINVAL, 0 },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct arena_options o = { .budget = rows[i].budget, .flags = rows[i].flags };
		struct arena *a = NULL;
		int rc = arena_create(&o, &a), seals;

		if (rc != rows[i].rc || (!rc && a->pages != ARENA_PAGES_HUGETLB &&
					 a->seg.size != rows[i].size)) {
			fprintf(stderr, "row %zu: rc=%d size=%zu, want rc=%d size=%lu\n", i, rc,
				a ? a->seg.size : 0, rows[i].rc, rows[i].size);
			fail();
		}
		if (rc)
			continue;
		seals = fcntl(a->seg.fd, F_GET_SEALS);
		assert_true((seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
			    (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
		assert_int_equal(!!(seals & F_SEAL_FUTURE_WRITE), !(rows[i].flags & ARENA_F_RELEASE));
		assert_int_equal(ftruncate(a->seg.fd, 0), -1);
		assert_int_equal(errno, EPERM);
		assert_int_equal(ftruncate(a->seg.fd, (off_t)a->seg.size * 2), -1);
		assert_int_equal(errno, EPERM);
		arena_destroy(a);
	}
}

/*
 * Hugepages: with enough free huge pages the arena must use them; without, it must fall back
 * to shmem and say which pages it has.
 */
static void test_arena_hugepages(void **state)
{
	struct arena_options o = { .budget = 8u << 20 };
	unsigned long nfree = 0;
	struct arena *a;
	char line[256];
	FILE *f = fopen("/proc/meminfo", "r");

	(void)state;
	assert_non_null(f);
	while (fgets(line, sizeof(line), f))
		sscanf(line, "HugePages_Free: %lu", &nfree);
	fclose(f);
	assert_int_equal(arena_create(&o, &a), 0);
	if (nfree >= 4) {
		assert_int_equal(a->pages, ARENA_PAGES_HUGETLB);
	} else {
		assert_int_not_equal(a->pages, ARENA_PAGES_HUGETLB);
		fprintf(stderr, "SKIP hugetlb: %lu free huge pages on this system; the arena fell "
			"back to %s pages\n", nfree, arena_pages_name(a->pages));
	}
	memset(arena_ptr(a, 0), 0x5a, 8u << 20);
	arena_destroy(a);
}

/*
 * A client maps the read-only descriptor in a forked child: it sees the daemon's bytes at
 * base + offset, cannot make the mapping writable in any way, and a write faults with
 * SIGSEGV; the parent's data is untouched.
 */
static int child_checks(int rofd, uint64_t off)
{
	void *w;
	char proc[64];
	int fd2;
	struct stat sb;
	unsigned char *ro;

	if (fstat(rofd, &sb) < 0)
		return 10;
	ro = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, rofd, 0);
	if (ro == MAP_FAILED)
		return 11;
	for (int i = 0; i < 4096; i++)
		if (ro[off + (uint64_t)i] != (unsigned char)(i * 7))
			return 12;
	if (mprotect(ro, 4096, PROT_READ | PROT_WRITE) == 0)
		return 13;
	w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rofd, 0);
	if (w != MAP_FAILED)
		return 14;
	/* Reopening through /proc gives a writable descriptor, but the seal stops the mapping. */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", rofd);
	fd2 = open(proc, O_RDWR);
	if (fd2 >= 0) {
		w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd2, 0);
		if (w != MAP_FAILED)
			return 15;
		if (pwrite(fd2, "x", 1, 0) == 1)
			return 16;
	}
	ro[off] = 1; /* must fault */
	return 17;
}

static void test_ro_client_mapping(void **state)
{
	struct arena_options o = { .budget = 4u << 20 };
	struct arena *a;
	uint64_t off;
	int rofd, status;
	pid_t pid;
	unsigned char *p;

	(void)state;
	assert_int_equal(arena_create(&o, &a), 0);
	assert_int_equal(arena_alloc(a, 64 * K, &off), 0);
	assert_int_equal(arena_alloc(a, 64 * K, &off), 0);
	p = arena_ptr(a, off);
	for (int i = 0; i < 4096; i++)
		p[i] = (unsigned char)(i * 7);
	rofd = arena_ro_fd(a);
	assert_true(rofd >= 0);
	assert_int_equal(fcntl(rofd, F_GETFL) & O_ACCMODE, O_RDONLY);
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		signal(SIGSEGV, SIG_DFL);
		_exit(child_checks(rofd, off));
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGSEGV) {
		fprintf(stderr, "child: exited=%d code=%d signalled=%d sig=%d; want SIGSEGV\n",
			WIFEXITED(status), WIFEXITED(status) ? WEXITSTATUS(status) : -1,
			WIFSIGNALED(status), WIFSIGNALED(status) ? WTERMSIG(status) : -1);
		fail();
	}
	for (int i = 0; i < 4096; i++)
		assert_int_equal(p[i], (unsigned char)(i * 7));
	close(rofd);
	arena_destroy(a);
}

/* ARENA_F_RELEASE gives a freed extent's pages back; the default keeps them. */
static void test_release_on_free(void **state)
{
	static const unsigned int flags[] = { ARENA_F_RELEASE, 0 };

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(flags); i++) {
		struct arena_options o = { .budget = 32u << 20, .flags = flags[i] | ARENA_F_NO_HUGETLB };
		struct arena_stats before, after;
		struct arena *a;
		uint64_t off;

		assert_int_equal(arena_create(&o, &a), 0);
		assert_int_equal(arena_alloc(a, 16u << 20, &off), 0);
		memset(arena_ptr(a, off), 1, 16u << 20);
		arena_get_stats(a, &before);
		assert_true(before.resident >= (16u << 20));
		assert_int_equal(before.ext.used, 16u << 20);
		assert_int_equal(arena_free(a, off, 16u << 20), 0);
		arena_get_stats(a, &after);
		assert_int_equal(after.ext.used, 0);
		if (flags[i] & ARENA_F_RELEASE)
			assert_true(after.resident < (1u << 20));
		else
			assert_true(after.resident >= (16u << 20));
		arena_destroy(a);
	}
}

/*
 * arena_populate() allocates an extent's pages in bulk before anything writes them, once:
 * a second call finds the chunks marked; with ARENA_F_RELEASE a freed extent loses its pages
 * and its marks, and the next populate allocates them again. The prefault thread does the
 * whole arena.
 */
static void test_populate(void **state)
{
	static const unsigned int flags[] = { ARENA_F_RELEASE, 0 };

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(flags); i++) {
		struct arena_options o = { .budget = 32u << 20, .flags = flags[i] | ARENA_F_NO_HUGETLB };
		struct arena_stats st;
		struct arena *a;
		uint64_t off;
		bool stop = false;

		assert_int_equal(arena_create(&o, &a), 0);
		assert_int_equal(arena_alloc(a, 8u << 20, &off), 0);
		arena_get_stats(a, &st);
		assert_true(st.resident < (1u << 20));
		assert_int_equal(arena_populate(a, off, 8u << 20, NULL), 0);
		arena_get_stats(a, &st);
		assert_true(st.resident >= (8u << 20));
		for (uint64_t c = off / ARENA_POPULATE_CHUNK;
		     c * ARENA_POPULATE_CHUNK < off + (8u << 20); c++)
			assert_int_equal(a->populated[c], 1);
		assert_int_equal(arena_populate(a, off, 8u << 20, &stop), 0);
		assert_int_equal(arena_populate(a, 32u << 20, 1, NULL), -EINVAL);
		assert_int_equal(arena_free(a, off, 8u << 20), 0);
		arena_get_stats(a, &st);
		if (flags[i] & ARENA_F_RELEASE) {
			assert_true(st.resident < (1u << 20));
			assert_int_equal(a->populated[off / ARENA_POPULATE_CHUNK], 0);
			assert_int_equal(arena_populate(a, off, 8u << 20, NULL), 0);
			arena_get_stats(a, &st);
			assert_true(st.resident >= (8u << 20));
		} else {
			assert_true(st.resident >= (8u << 20));
			assert_int_equal(a->populated[off / ARENA_POPULATE_CHUNK], 1);
		}
		/* An abort before the first chunk populates nothing. */
		stop = true;
		assert_int_equal(arena_populate(a, 16u << 20, 8u << 20, &stop), 0);
		assert_int_equal(a->populated[(16u << 20) / ARENA_POPULATE_CHUNK], 0);
		/* The prefault thread: the whole arena, then arena_destroy() joins it. */
		assert_int_equal(arena_prefault_start(a), 0);
		for (int k = 0; k < 1000 && arena_prefaulted(a) < (32u << 20); k++)
			usleep(10000);
		assert_int_equal(arena_prefaulted(a), 32u << 20);
		arena_get_stats(a, &st);
		assert_true(st.resident >= (32u << 20));
		arena_destroy(a);
	}
}

/* NUMA: an extent bound to a node gets its pages there; unknown nodes are refused. */
static void test_numa_bind(void **state)
{
	struct arena_options o = { .budget = 8u << 20 };
	unsigned long mask[16] = { 0 };
	struct arena *a;
	uint64_t off;
	int mode = -1, node;

	(void)state;
	assert_int_equal(arena_create(&o, &a), 0);
	assert_int_equal(arena_alloc(a, 1u << 20, &off), 0);
	assert_int_equal(arena_bind_node(a, off, 1u << 20, 0), 0);
	memset(arena_ptr(a, off), 3, 1u << 20);
	assert_int_equal(get_mempolicy(&mode, mask, sizeof(mask) * 8, arena_ptr(a, off),
				       MPOL_F_ADDR), 0);
	assert_int_equal(mode, MPOL_BIND);
	assert_int_equal(mask[0] & 1, 1);
	node = arena_page_node(a, off + 4096);
	assert_int_equal(node, 0);
	assert_int_equal(arena_bind_node(a, off, 0, 0), -EINVAL);
	assert_int_equal(arena_bind_node(a, a->seg.size, 4096, 0), -EINVAL);
	assert_int_equal(arena_bind_node(a, off, 4096, -1), -EINVAL);
	if (access("/sys/devices/system/node/node1", F_OK) != 0) {
		assert_int_not_equal(arena_bind_node(a, off, 4096, 1), 0);
		fprintf(stderr, "SKIP second NUMA node: this machine has one; binding to node 1 "
			"was refused as it must be\n");
	} else {
		assert_int_equal(arena_bind_node(a, off, 1u << 20, 1), 0);
		assert_int_equal(arena_page_node(a, off + 4096), 1);
	}
	arena_destroy(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_extent_scripts),
		cmocka_unit_test(test_extent_refusals),
		cmocka_unit_test(test_extent_churn),
		cmocka_unit_test(test_arena_create),
		cmocka_unit_test(test_arena_hugepages),
		cmocka_unit_test(test_ro_client_mapping),
		cmocka_unit_test(test_release_on_free),
		cmocka_unit_test(test_populate),
		cmocka_unit_test(test_numa_bind),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
