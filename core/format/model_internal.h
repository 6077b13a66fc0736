/*
 * What the model-format files of core/format share and nobody else sees: three small string
 * helpers. The files: model_read.c (describing, reading and checking a model), model_layout.c
 * (which file names make a model, default names, shard paths), model_json.c (the layout
 * JSONs: a sharded index and model_index.json), model_open.c (model_open: one path, read
 * sequentially).
 */
#ifndef WD_FORMAT_MODEL_INTERNAL_H
#define WD_FORMAT_MODEL_INTERNAL_H

#include <stdbool.h>
#include <string.h>

static inline bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !memcmp(s + n - m, suffix, m);
}

static inline const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

/* qsort() order of an array of strings. */
static inline int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

#endif
