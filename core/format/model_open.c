/*
 * model_open(): one path (a .safetensors file, a sharded index, a folder with either, or a
 * diffusers folder) described and read sequentially, for the tools that read one model
 * without the scanner.
 */
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/common.h"
#include "core/format/model.h"
#include "core/format/model_internal.h"


/* Lists the safetensors and index file names of directory @dir. */
static int list_folder(const char *dir, char ***names, size_t *n)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **v = NULL;
	size_t k = 0;

	*names = NULL;
	*n = 0;
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		int kind = model_name_kind(de->d_name);
		char **nv;

		if (kind != MODEL_FILE_ST && kind != MODEL_FILE_INDEX)
			continue;
		nv = realloc(v, (k + 1) * sizeof(*v));
		if (!nv || !(nv[k] = strdup(de->d_name))) {
			v = nv ? nv : v;
			for (size_t i = 0; i < k; i++)
				free(v[i]);
			free(v);
			closedir(d);
			return -ENOMEM;
		}
		v = nv;
		k++;
	}
	closedir(d);
	if (k)
		qsort(v, k, sizeof(*v), cmp_str);
	*names = v;
	*n = k;
	return 0;
}

static void free_names(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* Adds the index at @index_path and its shards to the last component, reading the index. */
static int open_sharded(struct model *m, const char *index_path)
{
	char path[4096];
	struct model_file *ixf;
	int i = model_add_file(m, MODEL_FILE_INDEX, index_path, NULL);

	if (i < 0)
		return i;
	ixf = &m->files[i];
	if (model_file_load(ixf) == -ENOMEM)
		return -ENOMEM;
	if (ixf->rc)
		return 0; /* model_finish() reports it */
	for (size_t s = 0; s < m->files[i].index.n_shards; s++) {
		struct stat sb;
		int r = model_shard_path(index_path, m->files[i].index.shards[s], path,
					 sizeof(path));

		if (r < 0)
			return r;
		if (stat(path, &sb) < 0 && errno == ENOENT)
			r = model_add_missing(m, path);
		else
			r = model_add_file(m, MODEL_FILE_ST, path, NULL);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Adds the component files chosen in folder @dir (one index, or single files). */
static int open_folder(struct model *m, const char *dir, char **names, size_t n)
{
	size_t *pick = calloc(n ? n : 1, sizeof(*pick));
	char path[4096];
	bool is_index;
	size_t np;
	int rc = 0;

	if (!pick)
		return -ENOMEM;
	np = model_choose((const char *const *)names, n, pick, &is_index);
	for (size_t i = 0; i < np && !rc; i++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, names[pick[i]]) >=
		    sizeof(path)) {
			rc = -ENAMETOOLONG;
			break;
		}
		if (is_index)
			rc = open_sharded(m, path);
		else
			rc = model_add_file(m, MODEL_FILE_ST, path, NULL) < 0 ? -ENOMEM : 0;
	}
	free(pick);
	return rc;
}

static int open_diffusers(struct model *m, const char *dir)
{
	char path[4096];
	struct model_file *mi;
	int i, rc;

	snprintf(path, sizeof(path), "%s/model_index.json", dir);
	i = model_add_file(m, MODEL_FILE_MODEL_INDEX, path, NULL);
	if (i < 0)
		return i;
	rc = model_file_load(&m->files[i]);
	if (rc == -ENOMEM)
		return rc;
	mi = &m->files[i];
	if (rc)
		return model_fail(m, "%s", mi->err.message);
	for (size_t c = 0; c < m->files[i].n_names; c++) {
		const char *comp = m->files[i].names[c];
		char **names;
		size_t n;

		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, comp) >= sizeof(path))
			return -ENAMETOOLONG;
		rc = list_folder(path, &names, &n);
		if (rc == -ENOMEM)
			return rc;
		if (rc < 0 || !n) {
			free_names(names, n);
			continue; /* a folder without safetensors (scheduler, tokenizer) */
		}
		rc = model_add_component(m, comp);
		if (rc >= 0)
			rc = open_folder(m, path, names, n);
		free_names(names, n);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Decides the format of @path and describes the model. */
static int describe_path(const char *path, struct model *m)
{
	char name[512], buf[4096];
	struct stat sb;
	int rc;

	if (stat(path, &sb) < 0)
		return -errno;
	if (S_ISDIR(sb.st_mode)) {
		char **names;
		size_t n, pick1;
		bool is_index;

		snprintf(buf, sizeof(buf), "%s/model_index.json", path);
		if (access(buf, F_OK) == 0) {
			model_default_name(MODEL_DIFFUSERS, path, name, sizeof(name));
			rc = model_init(m, MODEL_DIFFUSERS, name, path);
			return rc ? rc : open_diffusers(m, path);
		}
		rc = list_folder(path, &names, &n);
		if (rc < 0)
			return rc;
		{
			size_t *pick = calloc(n ? n : 1, sizeof(*pick));
			size_t np;

			if (!pick) {
				free_names(names, n);
				return -ENOMEM;
			}
			np = model_choose((const char *const *)names, n, pick, &is_index);
			pick1 = pick[0];
			free(pick);
			if (np != 1) {
				free_names(names, n);
				return -EINVAL;
			}
		}
		rc = snprintf(buf, sizeof(buf), "%s/%s", path, names[pick1]) >= (int)sizeof(buf)
			     ? -ENAMETOOLONG
			     : 0;
		free_names(names, n);
		return rc ? rc : describe_path(buf, m);
	}
	if (!S_ISREG(sb.st_mode))
		return -EINVAL;
	switch (model_name_kind(base_name(path))) {
	case MODEL_FILE_MODEL_INDEX: {
		size_t dl = (size_t)(base_name(path) - path);

		snprintf(buf, sizeof(buf), "%.*s", (int)(dl > 1 ? dl - 1 : dl), path);
		return describe_path(buf, m);
	}
	case MODEL_FILE_INDEX:
		model_default_name(MODEL_SHARDED, path, name, sizeof(name));
		rc = model_init(m, MODEL_SHARDED, name, path);
		if (!rc)
			rc = model_add_component(m, "") < 0 ? -ENOMEM : 0;
		return rc ? rc : open_sharded(m, path);
	default:
		model_default_name(MODEL_SINGLE, path, name, sizeof(name));
		rc = model_init(m, MODEL_SINGLE, name, path);
		if (!rc)
			rc = model_add_component(m, "") < 0 ? -ENOMEM : 0;
		if (!rc)
			rc = model_add_file(m, MODEL_FILE_ST, path, NULL) < 0 ? -ENOMEM : 0;
		return rc;
	}
}

int model_open(const char *path, struct model *m)
{
	char abs[4096];
	size_t len;
	int rc;

	memset(m, 0, sizeof(*m));
	if (!realpath(path, abs))
		return -errno;
	len = strlen(abs);
	while (len > 1 && abs[len - 1] == '/')
		abs[--len] = '\0';
	rc = describe_path(abs, m);
	for (size_t i = 0; !rc && i < m->n_files; i++)
		if (!m->files[i].loaded && model_file_load(&m->files[i]) == -ENOMEM)
			rc = -ENOMEM;
	if (!rc)
		rc = model_finish(m);
	if (rc)
		model_free(m);
	return rc;
}

