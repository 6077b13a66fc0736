/*
 * Admission and eviction policy: the refusal of what can never fit (with its exact message),
 * admission without and with eviction, score order, keep-alive TTLs, lease pins and explicit
 * pins, counters, co-access suggestions, and a load/evict churn against a real arena in which
 * nothing pinned is ever evicted and the policy's accounting matches the arena's.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/base/common.h"
#include "core/policy/evict.h"
#include "uring/arena.h"

#define S 1000000000ull	/* one second in ns */
#define MB (1ull << 20)

static struct evict_policy *mk(uint64_t budget, uint64_t ttl)
{
	struct evict_options o = { .budget = budget, .default_ttl_ns = ttl };
	struct evict_policy *p;

	assert_int_equal(evict_create(&o, &p), 0);
	return p;
}

static void add(struct evict_policy *p, const char *key, uint64_t bytes, uint64_t now)
{
	struct evict_victims v;

	assert_int_equal(evict_admit(p, key, bytes, now, &v, NULL, 0), 0);
	assert_int_equal(v.n, 0);
	evict_victims_free(&v);
	assert_int_equal(evict_insert(p, key, bytes, now, false), 0);
}

static void test_refuse_too_big(void **state)
{
	static const struct {
		uint64_t budget, bytes;
		int rc;
		const char *msg;
	} rows[] = {
		{ 100, 101, -EFBIG, "component sd/unet needs 101 bytes, host budget is 100" },
		{ 4 * MB, 4 * MB + 1, -EFBIG,
		  "component sd/unet needs 4194305 bytes, host budget is 4194304" },
		{ 100, 100, 0, "" },
		{ 100, 0, -EINVAL, "" },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct evict_policy *p = mk(rows[i].budget, 0);
		struct evict_victims v;
		struct evict_counters c;
		char msg[256];
		int rc = evict_admit(p, "sd/unet", rows[i].bytes, 0, &v, msg, sizeof(msg));

		if (rc != rows[i].rc || strcmp(msg, rows[i].msg)) {
			fprintf(stderr, "row %zu: rc=%d msg=\"%s\", want %d \"%s\"\n", i, rc, msg,
				rows[i].rc, rows[i].msg);
			fail();
		}
		evict_get_counters(p, &c);
		assert_int_equal(c.refused, rc == -EFBIG);
		evict_victims_free(&v);
		evict_destroy(p);
	}
}

/*
 * Score order. Entries a..d of various sizes, idle times and measured rates; admitting a
 * component that needs room must evict in descending idle x size / reload_cost order and
 * stop as soon as it fits.
 */
static void test_eviction_order(void **state)
{
	static const struct {
		const char *key;
		uint64_t bytes, used_at;
		double rate;	/* 0: default */
	} ents[] = {
		{ "a", 30 * MB, 10 * S, 0 },		/* idle 90 s, default rate 1e9: 9e10 */
		{ "b", 10 * MB, 50 * S, 0 },		/* idle 50 s: 5e10 */
		{ "c", 20 * MB, 90 * S, 5e9 },	/* idle 10 s, fast reload: 5e10 + tie by index */
		{ "d", 40 * MB, 99 * S, 1e8 },	/* idle 1 s, slow reload: 1e8 */
	};
	static const struct {
		uint64_t need;
		const char *victims[4];
		size_t n;
	} rows[] = {
		{ 5 * MB, { NULL }, 0 },
		{ 20 * MB, { "a" }, 1 },
		{ 40 * MB, { "a", "b" }, 2 },
		{ 55 * MB, { "a", "b", "c" }, 3 },
		{ 100 * MB, { "a", "b", "c", "d" }, 4 },
	};

	(void)state;
	for (size_t r = 0; r < ARRAY_SIZE(rows); r++) {
		struct evict_policy *p = mk(105 * MB, 0);
		struct evict_victims v;
		char msg[256];

		for (size_t i = 0; i < ARRAY_SIZE(ents); i++) {
			add(p, ents[i].key, ents[i].bytes, ents[i].used_at);
			if (ents[i].rate > 0)
				assert_int_equal(evict_set_rate(p, ents[i].key, ents[i].rate), 0);
		}
		assert_int_equal(evict_admit(p, "new", rows[r].need, 100 * S, &v, msg, sizeof(msg)),
				 0);
		if (v.n != rows[r].n) {
			fprintf(stderr, "need %lu: %zu victims, want %zu\n", rows[r].need, v.n,
				rows[r].n);
			fail();
		}
		for (size_t i = 0; i < v.n; i++) {
			if (strcmp(v.keys[i], rows[r].victims[i])) {
				fprintf(stderr, "need %lu: victim %zu is %s, want %s\n", rows[r].need,
					i, v.keys[i], rows[r].victims[i]);
				fail();
			}
			assert_int_equal(evict_remove(p, v.keys[i], true), 0);
		}
		assert_int_equal(evict_insert(p, "new", rows[r].need, 100 * S, false), 0);
		assert_true(evict_used(p) <= 105 * MB);
		assert_int_equal(evict_reserved(p), 0);
		evict_victims_free(&v);
		evict_destroy(p);
	}
}

/* What protects an entry: a lease, an explicit pin, a keep-alive TTL, being evicted. */
static void test_protection(void **state)
{
	static const struct {
		const char *name;
		int how;	/* 0 lease, 1 pin, 2 ttl used recently, 3 ttl expired, 4 none */
		bool evictable;
	} rows[] = {
		{ "lease", 0, false },
		{ "explicit pin", 1, false },
		{ "used within TTL", 2, false },
		{ "TTL expired", 3, true },
		{ "unprotected", 4, true },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct evict_policy *p = mk(10 * MB, 0);
		struct evict_victims v;
		char msg[256];
		int rc;

		add(p, "x", 8 * MB, 0);
		if (rows[i].how == 0)
			assert_int_equal(evict_pin(p, "x"), 0);
		if (rows[i].how == 1)
			assert_int_equal(evict_set_pinned(p, "x", true), 0);
		if (rows[i].how == 2 || rows[i].how == 3)
			assert_int_equal(evict_set_ttl(p, "x", 60 * S), 0);
		assert_int_equal(evict_lookup(p, "x", 30 * S), 1);
		rc = evict_admit(p, "y", 5 * MB, rows[i].how == 3 ? 120 * S : 60 * S, &v, msg,
				 sizeof(msg));
		if ((rc == 0) != rows[i].evictable || (rc && rc != -ENOSPC) ||
		    (!rc && (v.n != 1 || strcmp(v.keys[0], "x")))) {
			fprintf(stderr, "%s: rc=%d victims=%zu msg=\"%s\"\n", rows[i].name, rc, v.n,
				msg);
			fail();
		}
		if (rc)
			assert_non_null(strstr(msg, "pinned, leased or kept alive"));
		evict_victims_free(&v);
		evict_destroy(p);
	}
}

static void test_pins_and_victims(void **state)
{
	struct evict_policy *p = mk(10 * MB, 0);
	struct evict_victims v;
	char key[EVICT_KEY_MAX];

	(void)state;
	add(p, "a", 4 * MB, 0);
	add(p, "b", 4 * MB, 5 * S);
	assert_int_equal(evict_pin(p, "a"), 0);
	assert_int_equal(evict_pin(p, "a"), 0);
	assert_int_equal(evict_unpin(p, "a"), 0);
	assert_false(evict_evictable(p, "a", 100 * S));	/* one lease left */
	assert_int_equal(evict_next_victim(p, 100 * S, key), 0);
	assert_string_equal(key, "b");
	/* b is being evicted: neither a victim again nor a hit. */
	assert_int_equal(evict_next_victim(p, 100 * S, key), -ENOENT);
	assert_int_equal(evict_lookup(p, "b", 100 * S), 0);
	assert_int_equal(evict_remove(p, "b", true), 0);
	assert_int_equal(evict_unpin(p, "a"), 0);
	assert_int_equal(evict_unpin(p, "a"), -EINVAL);
	assert_int_equal(evict_pin(p, "zz"), -ENOENT);
	assert_int_equal(evict_set_rate(p, "a", 0), -EINVAL);
	assert_int_equal(evict_insert(p, "a", 1, 0, false), -EEXIST);
	assert_int_equal(evict_admit(p, "c", 7 * MB, 100 * S, &v, NULL, 0), 0);
	assert_int_equal(v.n, 1);
	assert_string_equal(v.keys[0], "a");
	evict_victims_free(&v);
	evict_destroy(p);
}

static void test_counters(void **state)
{
	struct evict_policy *p = mk(10 * MB, 0);
	struct evict_counters c;
	struct evict_victims v;

	(void)state;
	assert_int_equal(evict_lookup(p, "a", 0), 0);	/* miss */
	add(p, "a", 1 * MB, 0);
	assert_int_equal(evict_admit(p, "b", 2 * MB, 0, &v, NULL, 0), 0);
	evict_victims_free(&v);
	assert_int_equal(evict_insert(p, "b", 2 * MB, 0, true), 0);	/* a prefetch */
	assert_int_equal(evict_lookup(p, "a", 1), 1);
	assert_int_equal(evict_lookup(p, "b", 1), 1);	/* prefetch hit */
	assert_int_equal(evict_lookup(p, "b", 2), 1);	/* plain hit */
	assert_int_equal(evict_remove(p, "a", true), 0);
	evict_get_counters(p, &c);
	assert_int_equal(c.misses, 1);
	assert_int_equal(c.hits, 3);
	assert_int_equal(c.prefetches, 1);
	assert_int_equal(c.prefetch_hits, 1);
	assert_int_equal(c.loads, 2);
	assert_int_equal(c.load_bytes, 3 * MB);
	assert_int_equal(c.evictions, 1);
	assert_int_equal(c.evict_bytes, 1 * MB);
	assert_int_equal(c.resident_bytes, 2 * MB);
	evict_destroy(p);
}

/* Pipelines request unet+vae+text_encoder together; the LLM alone, much later. */
static void test_coaccess(void **state)
{
	static const struct {
		const char *key;
		uint64_t at;
	} reqs[] = {
		{ "sd/unet", 0 }, { "sd/vae", 1 * S }, { "sd/text_encoder", 2 * S },
		{ "sd/unet", 100 * S }, { "sd/vae", 101 * S },
		{ "llama", 200 * S },
		{ "sd/unet", 300 * S }, { "sd/vae", 300 * S }, { "sd/vae", 301 * S },
		{ "sd/text_encoder", 302 * S },
	};
	char out[4][EVICT_KEY_MAX];
	struct evict_policy *p = mk(MB, 0);
	size_t n;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(reqs); i++)
		assert_int_equal(evict_coaccess_record(p, reqs[i].key, reqs[i].at), 0);
	n = evict_coaccess_suggest(p, "sd/unet", 1, out, 4);
	assert_int_equal(n, 2);
	assert_string_equal(out[0], "sd/vae");		/* 3 times */
	assert_string_equal(out[1], "sd/text_encoder");	/* 2 times */
	assert_int_equal(evict_coaccess_suggest(p, "sd/unet", 3, out, 4), 1);
	assert_int_equal(evict_coaccess_suggest(p, "llama", 1, out, 4), 0);
	assert_int_equal(evict_coaccess_suggest(p, "unknown", 1, out, 4), 0);
	evict_destroy(p);
}

/* Saved counts seed suggestions and are not handed out again; new ones are, once. */
static void test_coaccess_seed_drain(void **state)
{
	static const struct {
		const char *a, *b;
		uint64_t count;
		int ret;
	} seeds[] = {
		{ "m/a", "m/b", 2, 0 },
		{ "m/b", "m/a", 1, 0 },		/* the same pair: counts add */
		{ "m/a", "m/a", 1, -EINVAL },
		{ "m/a", "m/c", 0, -EINVAL },
	};
	struct evict_coaccess_delta dl[4];
	char out[4][EVICT_KEY_MAX];
	struct evict_policy *p = mk(MB, 0);
	size_t n;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(seeds); i++) {
		int ret = evict_coaccess_seed(p, seeds[i].a, seeds[i].b, seeds[i].count);

		if (ret != seeds[i].ret)
			fail_msg("seed row %zu (%s, %s, %llu): %d, want %d", i, seeds[i].a,
				 seeds[i].b, (unsigned long long)seeds[i].count, ret, seeds[i].ret);
	}
	assert_int_equal(evict_coaccess_suggest(p, "m/a", 3, out, 4), 1);
	assert_string_equal(out[0], "m/b");
	assert_int_equal(evict_coaccess_drain(p, dl, 4), 0);
	assert_int_equal(evict_coaccess_record(p, "m/a", 10 * S), 0);
	assert_int_equal(evict_coaccess_record(p, "m/c", 11 * S), 0);
	assert_int_equal(evict_coaccess_record(p, "m/b", 12 * S), 0);
	n = evict_coaccess_drain(p, dl, 4);
	if (n != 3)
		fail_msg("drained %zu pairs after a, c, b within the window, want 3", n);
	for (size_t i = 0; i < n; i++)
		if (dl[i].n != 1)
			fail_msg("pair %s|%s: %u new co-accesses, want 1", dl[i].a, dl[i].b,
				 dl[i].n);
	assert_int_equal(evict_coaccess_drain(p, dl, 4), 0);
	assert_int_equal(evict_coaccess_suggest(p, "m/a", 4, out, 4), 1);

	/*
	 * Counts fade: m/a|m/b is 4. Two half-lives after the clock started (the first record,
	 * at 10 s) it is 1, so it no longer reaches 2; m/a|m/c (1) and m/b|m/c (1) fade to 0.
	 * The halving leaves the drained increments alone: they are saved on their own clock.
	 */
	const uint64_t hl = EVICT_COACCESS_HALF_LIFE_NS;

	assert_int_equal(evict_coaccess_record(p, "m/x", 10 * S + hl - 1), 0);
	assert_int_equal(evict_coaccess_suggest(p, "m/a", 4, out, 4), 1);
	assert_int_equal(evict_coaccess_record(p, "m/x", 10 * S + 2 * hl), 0);
	assert_int_equal(evict_coaccess_suggest(p, "m/a", 2, out, 4), 0);
	assert_int_equal(evict_coaccess_suggest(p, "m/a", 1, out, 4), 1);
	assert_string_equal(out[0], "m/b");
	assert_int_equal(evict_coaccess_suggest(p, "m/c", 1, out, 4), 0);
	assert_int_equal(evict_coaccess_drain(p, dl, 4), 0);
	evict_destroy(p);
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/*
 * Churn with a real arena: thousands of requests for 200 components of random sizes, with
 * random leases and explicit pins; each miss goes admit -> evict victims (free their
 * extents) -> arena_alloc (evicting more while the extent does not fit) -> insert.
 * Nothing pinned or leased is ever chosen, and the policy's bytes equal the arena's.
 */
static void test_churn_with_arena(void **state)
{
	enum { N = 200 };
	struct arena_options ao = { .budget = 512 * MB, .flags = ARENA_F_NO_HUGETLB };
	static uint64_t size[N], off[N];
	static bool resident[N], pinned[N];
	static uint32_t leases[N];
	struct evict_policy *p = mk(512 * MB, 0);
	struct evict_counters c;
	struct arena_stats ast;
	struct arena *a;
	uint64_t seed = 42, now = 0, refused = 0;
	char key[EVICT_KEY_MAX];

	(void)state;
	assert_int_equal(arena_create(&ao, &a), 0);
	for (int i = 0; i < N; i++)
		size[i] = (rnd(&seed) % (48 * MB)) + 4096;
	for (int it = 0; it < 4000; it++) {
		int i = (int)(rnd(&seed) % N), r;
		struct evict_victims v;
		char msg[256];

		now += S / 10;
		/* Clients come and go: some other entry loses a lease or its explicit pin. */
		r = (int)(rnd(&seed) % N);
		if (resident[r] && (leases[r] || pinned[r])) {
			snprintf(key, sizeof(key), "c%d", r);
			if (leases[r]) {
				assert_int_equal(evict_unpin(p, key), 0);
				leases[r]--;
			} else if (rnd(&seed) % 4 == 0) {
				assert_int_equal(evict_set_pinned(p, key, false), 0);
				pinned[r] = false;
			}
		}
		snprintf(key, sizeof(key), "c%d", i);
		if (resident[i]) {
			assert_int_equal(evict_lookup(p, key, now), 1);
		} else {
			assert_int_equal(evict_lookup(p, key, now), 0);
			r = evict_admit(p, key, size[i], now, &v, msg, sizeof(msg));
			if (r == -ENOSPC) {
				refused++;
				continue;
			}
			assert_int_equal(r, 0);
			for (size_t k = 0; k < v.n; k++) {
				int j = atoi(v.keys[k] + 1);

				if (pinned[j] || leases[j]) {
					fprintf(stderr, "iteration %d: %s chosen while pinned=%d "
						"leases=%u\n", it, v.keys[k], pinned[j], leases[j]);
					fail();
				}
				assert_int_equal(arena_free(a, off[j], size[j]), 0);
				assert_int_equal(evict_remove(p, v.keys[k], true), 0);
				resident[j] = false;
			}
			evict_victims_free(&v);
			while ((r = arena_alloc(a, size[i], &off[i])) == -ENOSPC) {
				char vk[EVICT_KEY_MAX];
				int j;

				/* The bytes fit but no extent does: evict one more. */
				if (evict_next_victim(p, now, vk))
					break;
				j = atoi(vk + 1);
				assert_false(pinned[j] || leases[j]);
				assert_int_equal(arena_free(a, off[j], size[j]), 0);
				assert_int_equal(evict_remove(p, vk, true), 0);
				resident[j] = false;
			}
			if (r) {
				evict_unreserve(p, size[i]);
				refused++;
				continue;
			}
			assert_int_equal(evict_insert(p, key, size[i], now, false), 0);
			resident[i] = true;
		}
		/* Random lease and pin traffic on resident entries. */
		r = (int)(rnd(&seed) % 20);
		if (r == 0 && leases[i] < 3) {
			assert_int_equal(evict_pin(p, key), 0);
			leases[i]++;
		} else if ((r == 1 || r == 3) && leases[i]) {
			assert_int_equal(evict_unpin(p, key), 0);
			leases[i]--;
		} else if (r == 2) {
			pinned[i] = !pinned[i] && rnd(&seed) % 4 == 0;
			assert_int_equal(evict_set_pinned(p, key, pinned[i]), 0);
		}
		if (it % 100 == 0) {
			uint64_t want = 0, rounded = 0;

			for (int k = 0; k < N; k++) {
				want += resident[k] ? size[k] : 0;
				rounded += resident[k] ? (size[k] + 4095) / 4096 * 4096 : 0;
			}
			arena_get_stats(a, &ast);
			if (evict_used(p) != want || ast.ext.used != rounded) {
				fprintf(stderr, "iteration %d: policy %lu (want %lu), arena %lu (want "
					"%lu)\n", it, evict_used(p), want, ast.ext.used, rounded);
				fail();
			}
		}
	}
	evict_get_counters(p, &c);
	arena_get_stats(a, &ast);
	fprintf(stderr, "churn: hits %lu misses %lu evictions %lu refused %lu; arena %lu used, "
		"%u free extents, largest free %lu of %lu, fragmentation %.3f\n", c.hits, c.misses,
		c.evictions, refused, ast.ext.used, ast.ext.n_free, ast.ext.largest_free,
		ast.ext.free, ast.ext.fragmentation);
	{
		int prot = 0, res = 0;

		for (int i = 0; i < N; i++) {
			res += resident[i];
			prot += resident[i] && (pinned[i] || leases[i]);
		}
		fprintf(stderr, "churn: at the end %d resident, %d of them pinned or leased\n", res,
			prot);
	}
	assert_true(c.evictions > 100);
	for (int i = 0; i < N; i++) {
		snprintf(key, sizeof(key), "c%d", i);
		assert_int_equal(evict_contains(p, key), resident[i]);
	}
	evict_destroy(p);
	arena_destroy(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_refuse_too_big),
		cmocka_unit_test(test_eviction_order),
		cmocka_unit_test(test_protection),
		cmocka_unit_test(test_pins_and_victims),
		cmocka_unit_test(test_counters),
		cmocka_unit_test(test_coaccess),
		cmocka_unit_test(test_coaccess_seed_drain),
		cmocka_unit_test(test_churn_with_arena),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
