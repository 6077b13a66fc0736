/* Fault injection for tests (core/base/fault.h). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/fault.h"
#include "core/base/log.h"

struct slot {
	atomic_uint_least32_t left;
	atomic_uint_least32_t skip;	/* events that pass before the faults */
	atomic_int err;
};

static struct slot slots[FAULT_POINT_COUNT];
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static const char *const point_names[FAULT_POINT_COUNT] = {
	[FAULT_READ] = "read",
	[FAULT_ALLOC] = "alloc",
	[FAULT_POPULATE] = "populate",
	[FAULT_VRAM] = "vram",
};

static const struct {
	const char *name;
	int err;
} err_names[] = {
	{ "EINTR", EINTR }, { "EAGAIN", EAGAIN }, { "EIO", EIO }, { "ENOSPC", ENOSPC },
	{ "ENOMEM", ENOMEM }, { "SHORT", FAULT_SHORT },
};

void fault_arm_after(enum fault_point point, int err, uint32_t n, uint32_t skip)
{
	if ((unsigned int)point >= FAULT_POINT_COUNT)
		return;
	/* err and skip before the count: a taker that sees the count sees them (release/acquire). */
	atomic_store_explicit(&slots[point].err, err, memory_order_relaxed);
	atomic_store_explicit(&slots[point].skip, n ? skip : 0, memory_order_relaxed);
	atomic_store_explicit(&slots[point].left, n, memory_order_release);
}

void fault_arm(enum fault_point point, int err, uint32_t n)
{
	fault_arm_after(point, err, n, 0);
}

/* One "POINT:ERR:N" item of @len bytes. */
static int parse_item(const char *s, size_t len, enum fault_point *point, int *err, uint32_t *n,
		      uint32_t *skip)
{
	const char *c1 = memchr(s, ':', len), *c2;
	char num[16], *end;
	size_t k;
	unsigned long v;

	if (!c1)
		return -EINVAL;
	c2 = memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - s));
	if (!c2)
		return -EINVAL;
	for (k = 0; k < FAULT_POINT_COUNT; k++)
		if (strlen(point_names[k]) == (size_t)(c1 - s) &&
		    !strncmp(s, point_names[k], (size_t)(c1 - s)))
			break;
	if (k == FAULT_POINT_COUNT)
		return -EINVAL;
	*point = (enum fault_point)k;
	for (k = 0; k < sizeof(err_names) / sizeof(err_names[0]); k++)
		if (strlen(err_names[k].name) == (size_t)(c2 - c1 - 1) &&
		    !strncasecmp(c1 + 1, err_names[k].name, (size_t)(c2 - c1 - 1)))
			break;
	if (k == sizeof(err_names) / sizeof(err_names[0]))
		return -EINVAL;
	*err = err_names[k].err;
	if ((size_t)(s + len - c2 - 1) == 0 || (size_t)(s + len - c2 - 1) >= sizeof(num))
		return -EINVAL;
	memcpy(num, c2 + 1, (size_t)(s + len - c2 - 1));
	num[s + len - c2 - 1] = '\0';
	errno = 0;
	v = strtoul(num, &end, 10);
	if (errno || (*end && *end != '@') || !v || v > UINT32_MAX || num[0] == '-')
		return -EINVAL;
	*n = (uint32_t)v;
	*skip = 0;
	if (*end == '@') {
		const char *at = end + 1;

		errno = 0;
		v = strtoul(at, &end, 10);
		if (errno || *end || end == at || v > UINT32_MAX || *at == '-')
			return -EINVAL;
		*skip = (uint32_t)v;
	}
	return 0;
}

int fault_arm_spec(const char *spec)
{
	enum fault_point pts[FAULT_POINT_COUNT * 4];
	int errs[FAULT_POINT_COUNT * 4];
	uint32_t ns[FAULT_POINT_COUNT * 4], skips[FAULT_POINT_COUNT * 4];
	size_t n = 0;

	/* Everything is checked before anything is armed. */
	for (const char *s = spec; *s;) {
		const char *comma = strchr(s, ',');
		size_t len = comma ? (size_t)(comma - s) : strlen(s);

		if (n == sizeof(pts) / sizeof(pts[0]) ||
		    parse_item(s, len, &pts[n], &errs[n], &ns[n], &skips[n]))
			return -EINVAL;
		n++;
		s += len;
		if (*s == ',' && !*++s)
			return -EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		fault_arm_after(pts[i], errs[i], ns[i], skips[i]);
	return 0;
}

static void read_env(void)
{
	const char *spec = getenv(FAULT_ENV);

	if (!spec || !*spec)
		return;
	if (fault_arm_spec(spec))
		log_warn("fault", "\"ignored: malformed\" %s=\"%.100s\"", FAULT_ENV, spec);
	else
		log_warn("fault", "\"fault injection armed\" %s=\"%.100s\"", FAULT_ENV, spec);
}

int fault_take(enum fault_point point)
{
	struct slot *s = &slots[point];
	uint_least32_t left;

	pthread_once(&env_once, read_env);
	/* acquire: pairs with fault_arm()'s release, so err is the one armed with the count. */
	left = atomic_load_explicit(&s->left, memory_order_acquire);
	if (left) {
		uint_least32_t skip = atomic_load_explicit(&s->skip, memory_order_relaxed);

		while (skip) {
			if (atomic_compare_exchange_weak_explicit(&s->skip, &skip, skip - 1,
								  memory_order_relaxed,
								  memory_order_relaxed))
				return 0;
		}
	}
	while (left) {
		if (atomic_compare_exchange_weak_explicit(&s->left, &left, left - 1,
							  memory_order_acquire,
							  memory_order_acquire))
			return atomic_load_explicit(&s->err, memory_order_relaxed);
	}
	return 0;
}

uint32_t fault_left(enum fault_point point)
{
	pthread_once(&env_once, read_env);
	return atomic_load_explicit(&slots[point].left, memory_order_relaxed);
}
