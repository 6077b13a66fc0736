/* The admission and eviction policy: entries in an array, co-access pairs in another. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/policy/evict.h"

struct entry {
	char key[EVICT_KEY_MAX];
	uint64_t bytes;
	uint64_t last_used;
	uint64_t ttl;
	uint32_t leases;
	bool pinned;
	bool evicting;
	bool prefetched;	/* loaded as a prefetch and not used yet */
	double rate;		/* bytes/s; 0: the default */
};

struct pair {
	uint32_t a, b;		/* interned key ids, a < b */
	uint32_t count;
	uint32_t unsaved;	/* co-accesses not yet handed to evict_coaccess_drain() */
};

struct recent {
	uint32_t id;
	uint64_t at;
};

struct evict_policy {
	uint64_t budget;
	double default_rate;
	uint64_t default_ttl;
	uint64_t window;
	char tier[32];
	uint64_t used, reserved;
	struct evict_counters ctr;
	struct entry *e;
	size_t n, cap;
	/* Co-access. */
	char **names;
	uint32_t n_names, cap_names;
	struct pair *pairs;
	uint32_t n_pairs, cap_pairs;
	struct recent hist[EVICT_COACCESS_HISTORY];
	uint32_t hist_n, hist_head;
	uint64_t half_life, halved_at;	/* halved_at 0: the clock has not started */
};

int evict_create(const struct evict_options *opt, struct evict_policy **out)
{
	struct evict_policy *p;

	*out = NULL;
	if (!opt->budget)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->budget = opt->budget;
	p->default_rate = opt->default_rate > 0 ? opt->default_rate : EVICT_DEFAULT_RATE;
	p->default_ttl = opt->default_ttl_ns;
	p->window = opt->coaccess_window_ns ? opt->coaccess_window_ns : EVICT_COACCESS_WINDOW_NS;
	p->half_life = opt->coaccess_half_life_ns ? opt->coaccess_half_life_ns
						  : EVICT_COACCESS_HALF_LIFE_NS;
	snprintf(p->tier, sizeof(p->tier), "%s", opt->tier ? opt->tier : "host");
	*out = p;
	return 0;
}

void evict_destroy(struct evict_policy *p)
{
	if (!p)
		return;
	for (uint32_t i = 0; i < p->n_names; i++)
		free(p->names[i]);
	free(p->names);
	free(p->pairs);
	free(p->e);
	free(p);
}

void evict_victims_free(struct evict_victims *v)
{
	for (size_t i = 0; i < v->n; i++)
		free(v->keys[i]);
	free(v->keys);
	memset(v, 0, sizeof(*v));
}

static struct entry *find(const struct evict_policy *p, const char *key)
{
	for (size_t i = 0; i < p->n; i++)
		if (!strcmp(p->e[i].key, key))
			return &p->e[i];
	return NULL;
}

static bool can_evict(const struct entry *e, uint64_t now)
{
	if (e->leases || e->pinned || e->evicting)
		return false;
	/* Used within its keep-alive window: stays. */
	return !e->ttl || now < e->last_used || now - e->last_used >= e->ttl;
}

static double score_of(const struct evict_policy *p, const struct entry *e, uint64_t now)
{
	double idle = now > e->last_used ? (double)(now - e->last_used) / 1e9 : 0.0;
	double rate = e->rate > 0 ? e->rate : p->default_rate;
	double reload = (double)e->bytes / rate;

	/* A zero-byte entry reloads for free; evict it first (its score is its idle time). */
	if (reload <= 0)
		return idle * rate;
	return idle * (double)e->bytes / reload;
}

struct cand {
	size_t idx;
	double score;
};

static int by_score(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	if (x->score != y->score)
		return x->score < y->score ? 1 : -1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int evict_admit(struct evict_policy *p, const char *name, uint64_t bytes, uint64_t now_ns,
		struct evict_victims *victims, char *msg, size_t msg_len)
{
	uint64_t avail = p->budget - p->used - p->reserved, gain = 0, held = 0;
	struct cand *c;
	size_t nc = 0, take = 0;

	memset(victims, 0, sizeof(*victims));
	if (msg && msg_len)
		msg[0] = '\0';
	if (!bytes)
		return -EINVAL;
	if (bytes > p->budget) {
		p->ctr.refused++;
		if (msg)
			snprintf(msg, msg_len, "component %s needs %lu bytes, %s budget is %lu", name,
				 bytes, p->tier, p->budget);
		return -EFBIG;
	}
	if (bytes <= avail) {
		p->reserved += bytes;
		return 0;
	}
	c = malloc((p->n ? p->n : 1) * sizeof(*c));
	if (!c)
		return -ENOMEM;
	for (size_t i = 0; i < p->n; i++) {
		if (can_evict(&p->e[i], now_ns))
			c[nc++] = (struct cand){ i, score_of(p, &p->e[i], now_ns) };
		else
			held += p->e[i].bytes;
	}
	qsort(c, nc, sizeof(*c), by_score);
	while (take < nc && avail + gain < bytes)
		gain += p->e[c[take++].idx].bytes;
	if (avail + gain < bytes) {
		free(c);
		p->ctr.refused++;
		if (msg)
			snprintf(msg, msg_len, "component %s needs %lu bytes: %s budget %lu, %lu in "
				 "use of which %lu are pinned, leased or kept alive, %lu reserved "
				 "by loads in progress", name, bytes, p->tier, p->budget, p->used,
				 held, p->reserved);
		return -ENOSPC;
	}
	victims->keys = calloc(take ? take : 1, sizeof(char *));
	if (!victims->keys) {
		free(c);
		return -ENOMEM;
	}
	for (size_t i = 0; i < take; i++) {
		victims->keys[i] = strdup(p->e[c[i].idx].key);
		if (!victims->keys[i]) {
			victims->n = i;
			evict_victims_free(victims);
			free(c);
			return -ENOMEM;
		}
	}
	for (size_t i = 0; i < take; i++)
		p->e[c[i].idx].evicting = true;
	victims->n = take;
	victims->bytes = gain;
	p->reserved += bytes;
	free(c);
	return 0;
}

void evict_unreserve(struct evict_policy *p, uint64_t bytes)
{
	p->reserved -= bytes < p->reserved ? bytes : p->reserved;
}

int evict_insert(struct evict_policy *p, const char *key, uint64_t bytes, uint64_t now_ns,
		 bool prefetched)
{
	struct entry *e;

	if (strlen(key) >= EVICT_KEY_MAX)
		return -ENAMETOOLONG;
	if (find(p, key))
		return -EEXIST;
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 32;
		struct entry *n = realloc(p->e, cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		p->e = n;
		p->cap = cap;
	}
	e = &p->e[p->n++];
	memset(e, 0, sizeof(*e));
	strcpy(e->key, key);
	e->bytes = bytes;
	e->last_used = now_ns;
	e->ttl = p->default_ttl;
	e->prefetched = prefetched;
	evict_unreserve(p, bytes);
	p->used += bytes;
	p->ctr.loads++;
	p->ctr.load_bytes += bytes;
	p->ctr.prefetches += prefetched;
	p->ctr.resident_bytes = p->used;
	return 0;
}

int evict_remove(struct evict_policy *p, const char *key, bool evicted)
{
	struct entry *e = find(p, key);

	if (!e)
		return -ENOENT;
	p->used -= e->bytes;
	if (evicted) {
		p->ctr.evictions++;
		p->ctr.evict_bytes += e->bytes;
	}
	*e = p->e[--p->n];
	p->ctr.resident_bytes = p->used;
	return 0;
}

int evict_lookup(struct evict_policy *p, const char *key, uint64_t now_ns)
{
	struct entry *e = find(p, key);

	if (!e || e->evicting) {
		p->ctr.misses++;
		return 0;
	}
	p->ctr.hits++;
	if (e->prefetched) {
		p->ctr.prefetch_hits++;
		e->prefetched = false;
	}
	if (now_ns > e->last_used)
		e->last_used = now_ns;
	return 1;
}

int evict_pin(struct evict_policy *p, const char *key)
{
	struct entry *e = find(p, key);

	if (!e)
		return -ENOENT;
	e->leases++;
	return 0;
}

int evict_unpin(struct evict_policy *p, const char *key)
{
	struct entry *e = find(p, key);

	if (!e)
		return -ENOENT;
	if (!e->leases)
		return -EINVAL;
	e->leases--;
	return 0;
}

int evict_set_pinned(struct evict_policy *p, const char *key, bool pinned)
{
	struct entry *e = find(p, key);

	if (!e)
		return -ENOENT;
	e->pinned = pinned;
	return 0;
}

int evict_set_ttl(struct evict_policy *p, const char *key, uint64_t ttl_ns)
{
	struct entry *e = find(p, key);

	if (!e)
		return -ENOENT;
	e->ttl = ttl_ns;
	return 0;
}

int evict_set_rate(struct evict_policy *p, const char *key, double bytes_per_s)
{
	struct entry *e = find(p, key);

	if (!e)
		return -ENOENT;
	if (!(bytes_per_s > 0))
		return -EINVAL;
	e->rate = bytes_per_s;
	return 0;
}

bool evict_contains(const struct evict_policy *p, const char *key)
{
	return find(p, key) != NULL;
}

bool evict_evictable(const struct evict_policy *p, const char *key, uint64_t now_ns)
{
	const struct entry *e = find(p, key);

	return e && can_evict(e, now_ns);
}

int evict_next_victim(struct evict_policy *p, uint64_t now_ns, char *key)
{
	struct entry *best = NULL;
	double bs = 0;

	for (size_t i = 0; i < p->n; i++) {
		double s;

		if (!can_evict(&p->e[i], now_ns))
			continue;
		s = score_of(p, &p->e[i], now_ns);
		if (!best || s > bs) {
			best = &p->e[i];
			bs = s;
		}
	}
	if (!best)
		return -ENOENT;
	best->evicting = true;
	strcpy(key, best->key);
	return 0;
}

double evict_score(const struct evict_policy *p, const char *key, uint64_t now_ns)
{
	const struct entry *e = find(p, key);

	return e ? score_of(p, e, now_ns) : -1.0;
}

void evict_get_counters(const struct evict_policy *p, struct evict_counters *out)
{
	*out = p->ctr;
}

uint64_t evict_used(const struct evict_policy *p)
{
	return p->used;
}

uint64_t evict_reserved(const struct evict_policy *p)
{
	return p->reserved;
}

/* ---- co-access ----------------------------------------------------------------------- */

static int intern(struct evict_policy *p, const char *key, bool add)
{
	for (uint32_t i = 0; i < p->n_names; i++)
		if (!strcmp(p->names[i], key))
			return (int)i;
	if (!add)
		return -ENOENT;
	if (p->n_names == p->cap_names) {
		uint32_t cap = p->cap_names ? p->cap_names * 2 : 32;
		char **n = realloc(p->names, cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		p->names = n;
		p->cap_names = cap;
	}
	p->names[p->n_names] = strdup(key);
	if (!p->names[p->n_names])
		return -ENOMEM;
	return (int)p->n_names++;
}

static int bump(struct evict_policy *p, uint32_t a, uint32_t b, uint32_t n, bool saved)
{
	uint32_t lo = a < b ? a : b, hi = a < b ? b : a, weakest = 0;
	uint32_t unsaved = saved ? 0 : n;

	for (uint32_t i = 0; i < p->n_pairs; i++) {
		if (p->pairs[i].a == lo && p->pairs[i].b == hi) {
			p->pairs[i].count = n > UINT32_MAX - p->pairs[i].count ?
					    UINT32_MAX : p->pairs[i].count + n;
			if (!saved)
				p->pairs[i].unsaved += n;
			return 0;
		}
		if (p->pairs[i].count < p->pairs[weakest].count)
			weakest = i;
	}
	/* Full: the least-seen pair makes room, so new patterns can still be learnt. */
	if (p->n_pairs == EVICT_COACCESS_MAX_PAIRS) {
		p->pairs[weakest] = (struct pair){ lo, hi, n, unsaved };
		return 0;
	}
	if (p->n_pairs == p->cap_pairs) {
		uint32_t cap = p->cap_pairs ? p->cap_pairs * 2 : 64;
		struct pair *np = realloc(p->pairs, cap * sizeof(*np));

		if (!np)
			return -ENOMEM;
		p->pairs = np;
		p->cap_pairs = cap;
	}
	p->pairs[p->n_pairs++] = (struct pair){ lo, hi, n, unsaved };
	return 0;
}

int evict_coaccess_seed(struct evict_policy *p, const char *a, const char *b, uint64_t count)
{
	int ia, ib;

	if (strlen(a) >= EVICT_KEY_MAX || strlen(b) >= EVICT_KEY_MAX)
		return -ENAMETOOLONG;
	if (!strcmp(a, b) || !count)
		return -EINVAL;
	ia = intern(p, a, true);
	if (ia < 0)
		return ia;
	ib = intern(p, b, true);
	if (ib < 0)
		return ib;
	return bump(p, (uint32_t)ia, (uint32_t)ib,
		    count > UINT32_MAX ? UINT32_MAX : (uint32_t)count, true);
}

size_t evict_coaccess_drain(struct evict_policy *p, struct evict_coaccess_delta *out, size_t max)
{
	size_t n = 0;

	for (uint32_t i = 0; i < p->n_pairs && n < max; i++) {
		if (!p->pairs[i].unsaved)
			continue;
		out[n].a = p->names[p->pairs[i].a];
		out[n].b = p->names[p->pairs[i].b];
		out[n].n = p->pairs[i].unsaved;
		p->pairs[i].unsaved = 0;
		n++;
	}
	return n;
}

/* Halves every count once per half-life passed since the last halving. */
static void fade(struct evict_policy *p, uint64_t now_ns)
{
	uint64_t k;

	if (!p->halved_at || now_ns < p->halved_at) {
		p->halved_at = now_ns ? now_ns : 1;
		return;
	}
	k = (now_ns - p->halved_at) / p->half_life;
	if (!k)
		return;
	for (uint32_t i = 0; i < p->n_pairs; i++)
		p->pairs[i].count = k >= 32 ? 0 : p->pairs[i].count >> k;
	p->halved_at += k * p->half_life;
}

int evict_coaccess_record(struct evict_policy *p, const char *key, uint64_t now_ns)
{
	bool seen[EVICT_COACCESS_HISTORY] = { false };
	int id, rc;

	if (strlen(key) >= EVICT_KEY_MAX)
		return -ENAMETOOLONG;
	fade(p, now_ns);
	id = intern(p, key, true);
	if (id < 0)
		return id;
	for (uint32_t k = 0; k < p->hist_n; k++) {
		uint32_t i = (p->hist_head + EVICT_COACCESS_HISTORY - 1 - k) % EVICT_COACCESS_HISTORY;
		const struct recent *r = &p->hist[i];
		bool dup = false;

		if (now_ns < r->at || now_ns - r->at > p->window)
			break;
		if (r->id == (uint32_t)id)
			continue;
		/* A key requested twice in the window still counts once per request of @key. */
		for (uint32_t j = 0; j < k; j++) {
			uint32_t i2 = (p->hist_head + EVICT_COACCESS_HISTORY - 1 - j) %
				      EVICT_COACCESS_HISTORY;

			if (seen[j] && p->hist[i2].id == r->id)
				dup = true;
		}
		if (dup)
			continue;
		seen[k] = true;
		rc = bump(p, (uint32_t)id, r->id, 1, false);
		if (rc)
			return rc;
	}
	p->hist[p->hist_head] = (struct recent){ (uint32_t)id, now_ns };
	p->hist_head = (p->hist_head + 1) % EVICT_COACCESS_HISTORY;
	if (p->hist_n < EVICT_COACCESS_HISTORY)
		p->hist_n++;
	return 0;
}

struct sugg {
	uint32_t id, count;
};

static int by_count(const void *a, const void *b)
{
	const struct sugg *x = a, *y = b;

	if (x->count != y->count)
		return x->count < y->count ? 1 : -1;
	return x->id < y->id ? -1 : x->id > y->id;
}

size_t evict_coaccess_suggest(const struct evict_policy *p, const char *key, uint32_t min_count,
			      char (*out)[EVICT_KEY_MAX], size_t max)
{
	struct sugg *s;
	size_t n = 0;
	int id = -1;

	for (uint32_t i = 0; i < p->n_names; i++)
		if (!strcmp(p->names[i], key))
			id = (int)i;
	if (id < 0 || !max || !p->n_pairs)
		return 0;
	s = malloc(p->n_pairs * sizeof(*s));
	if (!s)
		return 0;
	for (uint32_t i = 0; i < p->n_pairs; i++) {
		const struct pair *q = &p->pairs[i];

		if (q->count < min_count || (q->a != (uint32_t)id && q->b != (uint32_t)id))
			continue;
		s[n++] = (struct sugg){ q->a == (uint32_t)id ? q->b : q->a, q->count };
	}
	qsort(s, n, sizeof(*s), by_count);
	if (n > max)
		n = max;
	for (size_t i = 0; i < n; i++)
		snprintf(out[i], EVICT_KEY_MAX, "%s", p->names[s[i].id]);
	free(s);
	return n;
}
