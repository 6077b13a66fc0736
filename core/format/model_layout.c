/*
 * Model layouts by file name: which names are model files, which files of a folder form a
 * component (model_choose), a model's default name, and a shard's path next to its index.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/common.h"
#include "core/format/model.h"
#include "core/format/model_internal.h"


int model_name_kind(const char *name)
{
	if (!strcmp(name, "model_index.json"))
		return MODEL_FILE_MODEL_INDEX;
	if (ends_with(name, ".json")) {
		const char *p = strstr(name, ".safetensors.index.");

		/* NAME.safetensors.index.json or NAME.safetensors.index.VARIANT.json */
		if (p && p > name)
			return MODEL_FILE_INDEX;
		return -1;
	}
	if (ends_with(name, ".safetensors") && strlen(name) > strlen(".safetensors"))
		return MODEL_FILE_ST;
	return -1;
}

/*
 * The variant of a file name into @buf: "fp16" for model.fp16.safetensors and for
 * model.safetensors.index.fp16.json, "" for the plain names. Also returns the stem
 * length (the part before the first '.') through @stem_len.
 */
static void name_variant(const char *name, int kind, char *buf, size_t size, size_t *stem_len)
{
	const char *dot = strchr(name, '.');
	const char *from, *to;

	*stem_len = dot ? (size_t)(dot - name) : strlen(name);
	if (kind == MODEL_FILE_INDEX) {
		from = strstr(name, ".safetensors.index.") + strlen(".safetensors.index.");
		to = name + strlen(name) - strlen(".json");
		from = from > to ? to : from;
	} else {
		to = name + strlen(name) - strlen(".safetensors");
		from = dot && dot < to ? dot + 1 : to;
	}
	snprintf(buf, size, "%.*s", (int)(to - from), from);
}

/* Orders variants by preference: none, then fp16, then by name. */
static int variant_cmp(const char *a, const char *b)
{
	int ra = !*a ? 0 : !strcmp(a, "fp16") ? 1 : 2;
	int rb = !*b ? 0 : !strcmp(b, "fp16") ? 1 : 2;

	if (ra != rb)
		return ra - rb;
	return strcmp(a, b);
}

static int known_stem(const char *name, size_t stem_len)
{
	static const char *const known[] = { "diffusion_pytorch_model", "model" };

	for (size_t i = 0; i < ARRAY_SIZE(known); i++)
		if (strlen(known[i]) == stem_len && !strncmp(name, known[i], stem_len))
			return (int)i;
	return -1;
}

size_t model_choose(const char *const *names, size_t n, size_t *pick, bool *is_index)
{
	char best[256] = "", var[256];
	bool have = false, want_index = false;
	size_t np = 0, stem;
	int best_known = 99;

	*is_index = false;
	for (size_t i = 0; i < n; i++)
		if (model_name_kind(names[i]) == MODEL_FILE_INDEX)
			want_index = true;
	for (size_t i = 0; i < n; i++) {
		int k = model_name_kind(names[i]);

		if (k != (want_index ? MODEL_FILE_INDEX : MODEL_FILE_ST))
			continue;
		name_variant(names[i], k, var, sizeof(var), &stem);
		if (!have || variant_cmp(var, best) < 0)
			snprintf(best, sizeof(best), "%s", var);
		have = true;
	}
	if (!have)
		return 0;
	/* Among the best variant, a well-known stem wins alone; else everything. */
	for (size_t i = 0; i < n; i++) {
		int k = model_name_kind(names[i]), kn;

		if (k != (want_index ? MODEL_FILE_INDEX : MODEL_FILE_ST))
			continue;
		name_variant(names[i], k, var, sizeof(var), &stem);
		if (strcmp(var, best))
			continue;
		kn = known_stem(names[i], stem);
		if (kn >= 0 && kn < best_known)
			best_known = kn;
	}
	for (size_t i = 0; i < n; i++) {
		int k = model_name_kind(names[i]);

		if (k != (want_index ? MODEL_FILE_INDEX : MODEL_FILE_ST))
			continue;
		name_variant(names[i], k, var, sizeof(var), &stem);
		if (strcmp(var, best))
			continue;
		if (best_known != 99 && known_stem(names[i], stem) != best_known)
			continue;
		pick[np++] = i;
	}
	/* Several indexes of one variant and no known stem: take the first by name. */
	if (want_index && np > 1) {
		size_t first = pick[0];

		for (size_t i = 1; i < np; i++)
			if (strcmp(names[pick[i]], names[first]) < 0)
				first = pick[i];
		pick[0] = first;
		np = 1;
	}
	/* Picks come out in name order so that callers describe files deterministically. */
	for (size_t i = 1; i < np; i++)
		for (size_t j = i; j > 0 && strcmp(names[pick[j - 1]], names[pick[j]]) > 0; j--) {
			size_t t = pick[j];

			pick[j] = pick[j - 1];
			pick[j - 1] = t;
		}
	*is_index = want_index;
	return np;
}

/* Writes the display name of directory @dir (its last component, or ORG/NAME for a
 * Hugging Face cache snapshot). */
static void dir_name(const char *dir, size_t len, char *buf, size_t size)
{
	const char *comp[3] = { NULL };
	size_t clen[3] = { 0 };
	size_t end = len;

	while (end > 1 && dir[end - 1] == '/')
		end--;
	/* The last three components: REV, "snapshots", "models--ORG--NAME". */
	for (int k = 0; k < 3 && end > 0; k++) {
		size_t s = end;

		while (s > 0 && dir[s - 1] != '/')
			s--;
		comp[k] = dir + s;
		clen[k] = end - s;
		end = s;
		while (end > 0 && dir[end - 1] == '/')
			end--;
	}
	if (comp[2] && clen[1] == 9 && !strncmp(comp[1], "snapshots", 9) && clen[2] > 8 &&
	    !strncmp(comp[2], "models--", 8)) {
		size_t o = 0;

		for (size_t i = 8; i < clen[2] && o + 1 < size; i++) {
			if (i + 1 < clen[2] && comp[2][i] == '-' && comp[2][i + 1] == '-') {
				buf[o++] = '/';
				i++;
			} else {
				buf[o++] = comp[2][i];
			}
		}
		buf[o] = '\0';
		return;
	}
	if (!comp[0] || !clen[0]) {
		snprintf(buf, size, "root");
		return;
	}
	snprintf(buf, size, "%.*s", (int)clen[0], comp[0]);
}

void model_default_name(enum model_format format, const char *path, char *buf, size_t size)
{
	static const char *const generic[] = {
		"model", "diffusion_pytorch_model", "pytorch_model", "consolidated",
		"weights", "adapter_model",
	};
	const char *base = base_name(path);
	size_t dir_len = (size_t)(base - path);

	if (format == MODEL_DIFFUSERS) {
		dir_name(path, strlen(path), buf, size);
		return;
	}
	if (format == MODEL_SINGLE) {
		size_t stem = strcspn(base, ".");
		size_t full = ends_with(base, ".safetensors") ? strlen(base) - 12 : strlen(base);
		bool is_generic = false;

		for (size_t i = 0; i < ARRAY_SIZE(generic); i++)
			if (strlen(generic[i]) == stem && !strncmp(base, generic[i], stem))
				is_generic = true;
		if (!is_generic || !dir_len) {
			snprintf(buf, size, "%.*s", (int)full, base);
			return;
		}
	}
	dir_name(path, dir_len ? dir_len - 1 : 0, buf, size);
}

int model_shard_path(const char *index_path, const char *shard, char *out, size_t size)
{
	size_t dl = (size_t)(base_name(index_path) - index_path);
	const char *p = shard;
	int n;

	if (!*shard || *shard == '/')
		return -EINVAL;
	while (*p) {
		size_t l = strcspn(p, "/");

		if (l == 2 && p[0] == '.' && p[1] == '.')
			return -EINVAL;
		p += l;
		while (*p == '/')
			p++;
	}
	n = snprintf(out, size, "%.*s%s", (int)dl, index_path, shard);
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	return 0;
}

