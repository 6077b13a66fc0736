/* The string-keyed open-addressing hash map discovery indexes paths with (scan_internal.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/catalog/scan_internal.h"

static uint64_t str_hash(const char *s)
{
	return XXH3_64bits(s, strlen(s));
}

int strmap_put(struct strmap *m, const char *key, uint32_t val)
{
	uint64_t h = str_hash(key);
	size_t i;

	if ((m->n + 1) * 2 > m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 256;
		struct map_slot *s = calloc(cap, sizeof(*s));

		if (!s)
			return -ENOMEM;
		for (size_t j = 0; j < m->cap; j++) {
			if (!m->slots[j].key)
				continue;
			for (i = m->slots[j].hash & (cap - 1); s[i].key; i = (i + 1) & (cap - 1))
				;
			s[i] = m->slots[j];
		}
		free(m->slots);
		m->slots = s;
		m->cap = cap;
	}
	for (i = h & (m->cap - 1); m->slots[i].key; i = (i + 1) & (m->cap - 1)) {
		if (m->slots[i].hash == h && !strcmp(m->slots[i].key, key)) {
			m->slots[i].val = val;
			return 0;
		}
	}
	m->slots[i] = (struct map_slot){ key, h, val };
	m->n++;
	return 0;
}

uint32_t strmap_get(const struct strmap *m, const char *key)
{
	uint64_t h;

	if (!m->n)
		return NONE;
	h = str_hash(key);
	for (size_t i = h & (m->cap - 1); m->slots[i].key; i = (i + 1) & (m->cap - 1))
		if (m->slots[i].hash == h && !strcmp(m->slots[i].key, key))
			return m->slots[i].val;
	return NONE;
}

void strmap_free(struct strmap *m)
{
	free(m->slots);
	memset(m, 0, sizeof(*m));
}
