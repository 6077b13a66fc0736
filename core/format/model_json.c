/*
 * The layout JSONs, parsed from untrusted bytes: a Hugging Face sharded index
 * (model.safetensors.index.json: its weight_map's shard files) and a diffusers
 * model_index.json (its component folders). tests/fuzz/fuzz_model_json.c fuzzes both.
 */
#include <jansson.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/common.h"
#include "core/format/model.h"
#include "core/format/model_internal.h"

static int json_fail(const char *path, const json_error_t *je, const char *what,
		     struct st_error *err)
{
	int code = json_error_code(je) == json_error_duplicate_key ? ST_ERR_DUPLICATE_KEY
								   : ST_ERR_JSON;

	if (json_error_code(je) == json_error_out_of_memory)
		return st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX, NULL,
				    "out of memory");
	return st_error_set(err, -EINVAL, code, path, NULL, (uint64_t)je->position, what,
			    "%.*s", st_json_error_len(je->text), je->text);
}

void model_index_free(struct model_index *idx)
{
	for (size_t i = 0; i < idx->n_shards; i++)
		free(idx->shards[i]);
	free(idx->shards);
	json_decref(idx->root);
	memset(idx, 0, sizeof(*idx));
}

int model_index_parse(const char *path, const char *buf, size_t len, struct model_index *out,
		      struct st_error *err)
{
	json_error_t je;
	json_t *meta, *ts, *v;
	const char *key;
	char tmp[16];
	size_t n = 0;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	out->root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!out->root)
		return json_fail(path, &je, "index", err);
	out->weight_map = json_object_get(out->root, "weight_map");
	if (!json_is_object(out->root) || !json_is_object(out->weight_map)) {
		rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, NULL, UINT64_MAX, NULL,
				  "the index has no \"weight_map\" object");
		goto fail;
	}
	if (!json_object_size(out->weight_map)) {
		rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, NULL, UINT64_MAX, NULL,
				  "the weight_map is empty");
		goto fail;
	}
	out->shards = calloc(json_object_size(out->weight_map), sizeof(char *));
	if (!out->shards) {
		rc = st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX, NULL,
				  "out of memory");
		goto fail;
	}
	json_object_foreach(out->weight_map, key, v) {
		const char *s = json_string_value(v);

		if (!s || model_shard_path(path, s, tmp, 1) == -EINVAL) {
			rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, key, UINT64_MAX, NULL,
					  "the weight_map value must be a file name inside the "
					  "index's directory");
			goto fail;
		}
		out->shards[n++] = (char *)s; /* borrowed until deduplicated below */
	}
	qsort(out->shards, n, sizeof(char *), cmp_str); /* n >= 1: the map is not empty */
	for (size_t i = 0; i < n; i++) {
		if (out->n_shards && !strcmp(out->shards[out->n_shards - 1], out->shards[i]))
			continue;
		out->shards[out->n_shards++] = out->shards[i];
	}
	for (size_t i = 0; i < out->n_shards; i++) {
		out->shards[i] = strdup(out->shards[i]);
		if (!out->shards[i]) {
			/* Later entries are still borrowed: forget them before freeing. */
			out->n_shards = i;
			rc = st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX,
					  NULL, "out of memory");
			goto fail;
		}
	}
	meta = json_object_get(out->root, "metadata");
	ts = json_object_get(meta, "total_size");
	if (ts) {
		double d = json_number_value(ts);

		if (json_is_integer(ts) && json_integer_value(ts) >= 0) {
			out->total_size = (uint64_t)json_integer_value(ts);
		} else if (json_is_real(ts) && d >= 0 && d < 1.8e19 && d == (double)(uint64_t)d) {
			out->total_size = (uint64_t)d;
		} else {
			rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, NULL, UINT64_MAX, NULL,
					  "metadata.total_size is not a non-negative integer");
			goto fail;
		}
		out->has_total_size = true;
	}
	return 0;
fail:
	if (n && out->n_shards == 0 && out->shards) {
		/* Only borrowed pointers: nothing to free but the array. */
		free(out->shards);
		out->shards = NULL;
	}
	model_index_free(out);
	return rc;
}

int model_diffusers_parse(const char *path, const char *buf, size_t len, char ***names,
			  size_t *n, struct st_error *err)
{
	json_error_t je;
	json_t *root, *v;
	const char *key;
	char **out;
	size_t k = 0;
	int rc = 0;

	*names = NULL;
	*n = 0;
	root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return json_fail(path, &je, "model_index", err);
	if (!json_is_object(root)) {
		json_decref(root);
		return st_error_set(err, -EINVAL, ST_ERR_NOT_OBJECT, path, NULL, UINT64_MAX, NULL,
				    "model_index.json is not a JSON object");
	}
	out = calloc(json_object_size(root) + 1, sizeof(*out));
	if (!out) {
		json_decref(root);
		return st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX, NULL,
				    "out of memory");
	}
	json_object_foreach(root, key, v) {
		if (key[0] == '_' || !json_is_array(v) || json_array_size(v) != 2)
			continue;
		if (json_is_null(json_array_get(v, 0)) && json_is_null(json_array_get(v, 1)))
			continue;
		if (!*key || strchr(key, '/') || !strcmp(key, ".") || !strcmp(key, "..")) {
			rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, key, UINT64_MAX, NULL,
					  "a component name must be a plain folder name");
			break;
		}
		out[k] = strdup(key);
		if (!out[k]) {
			rc = st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX,
					  NULL, "out of memory");
			break;
		}
		k++;
	}
	json_decref(root);
	if (rc) {
		for (size_t i = 0; i < k; i++)
			free(out[i]);
		free(out);
		return rc;
	}
	if (k)
		qsort(out, k, sizeof(*out), cmp_str);
	*names = out;
	*n = k;
	return 0;
}

