/*
 * Model formats: what a "model" is on disk, and how its files are read and checked.
 *
 * A model is one of three layouts (DESIGN.md, "Model and tiers"):
 *   MODEL_SINGLE     one .safetensors file; one component named "".
 *   MODEL_SHARDED    an HF sharded checkpoint: NAME.safetensors.index.json whose weight_map
 *                    maps every tensor to a shard file in the same directory; one component
 *                    named "" made of the shards in name order.
 *   MODEL_DIFFUSERS  a directory with model_index.json; each subfolder it names (unet, vae,
 *                    text_encoder, transformer ...) that holds safetensors (one file, or a
 *                    sharded index) is one component named after the subfolder.
 *
 * A struct model owns an array of struct model_file: the safetensors files of every
 * component plus the JSON files that define the layout (the index files and
 * model_index.json). Components refer to their files by index into that array, so the
 * array can be built incrementally. Building a model is three steps, shared by
 * model_open() (one path, sequential) and the scanner (a whole tree, parallel reads):
 *
 *   1. describe: model_init(), model_add_component(), model_add_file() with the paths
 *      (and stat fingerprints) of the files;
 *   2. load: model_file_load() on each file (thread-safe: it touches only that file);
 *   3. finish: model_finish() checks the index against the shards, aggregates the
 *      per-component statistics, detects the architecture and sets valid/error.
 *
 * A model with a broken file stays a model: valid is false and error says why, with one
 * line per problem naming the file and the tensor. Functions return 0 or a negative errno;
 * content problems are never an error return, they are recorded in the model.
 */
#ifndef WD_CORE_MODEL_H
#define WD_CORE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/format/st.h"

enum model_format { MODEL_SINGLE = 0, MODEL_SHARDED = 1, MODEL_DIFFUSERS = 2 };

/* "safetensors", "sharded", "diffusers"; "unknown" when out of range. */
const char *model_format_name(int format);
/* The inverse of model_format_name(); -1 when @name is none of them. */
int model_format_from_name(const char *name);

enum model_file_kind {
	MODEL_FILE_ST = 0,	    /* a .safetensors file */
	MODEL_FILE_INDEX = 1,	    /* *.safetensors.index.json (or a variant index) */
	MODEL_FILE_MODEL_INDEX = 2, /* diffusers model_index.json */
};

/*
 * What tells a file changed without reading it: equal fingerprints mean "unchanged".
 * The mtime alone is not enough: anyone who can write the file can set it back
 * (`touch -d`) after rewriting the bytes in place. The ctime cannot be set by any user
 * (every write and every utimensat() moves it to "now"), and the inode changes when the
 * file is replaced, so both are part of it.
 */
struct model_fp {
	uint64_t dev;
	uint64_t ino;
	uint64_t size;
	int64_t mtime_ns;
	int64_t ctime_ns;
};

static inline bool model_fp_equal(const struct model_fp *a, const struct model_fp *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns;
}

/* The fingerprint of a file from its stat(). */
static inline void model_fp_of(const struct stat *sb, struct model_fp *fp)
{
	fp->dev = (uint64_t)sb->st_dev;
	fp->ino = (uint64_t)sb->st_ino;
	fp->size = (uint64_t)sb->st_size;
	fp->mtime_ns = (int64_t)sb->st_mtim.tv_sec * 1000000000 + sb->st_mtim.tv_nsec;
	fp->ctime_ns = (int64_t)sb->st_ctim.tv_sec * 1000000000 + sb->st_ctim.tv_nsec;
}

/* A parsed *.safetensors.index.json. */
struct model_index {
	json_t *weight_map;	/* tensor name -> shard file name (a borrowed view of root) */
	json_t *root;		/* the whole document, owned */
	size_t n_shards;
	char **shards;		/* distinct shard names, sorted (strcmp) */
	bool has_total_size;
	uint64_t total_size;	/* metadata.total_size */
};

struct model_file {
	char *path;
	enum model_file_kind kind;
	struct model_fp fp;	/* from stat() when described, from fstat() once loaded */
	uint64_t content_hash;	/* ST: xxh3 of the first 8 + N bytes; JSON: of the file */
	bool loaded;		/* model_file_load() ran (or the file is known missing) */
	/*
	 * Meaningful once loaded: 0; -EINVAL when the content is invalid (err says why);
	 * another negative errno when the file could not be read (-ENOENT for a shard that
	 * an index names but that does not exist, with missing set).
	 */
	int rc;
	bool missing;
	struct st_error err;
	struct st_file st;	/* ST, rc == 0 */
	struct model_index index; /* INDEX, rc == 0 */
	size_t n_names;		/* MODEL_INDEX, rc == 0: the component folders it names */
	char **names;
	int64_t db_id;		/* the catalog's row id (set by it); 0 when not stored */
};

struct model_component {
	char *name;		/* "" for single-file and sharded models */
	int index_file;		/* index into model.files of its index JSON; -1 when none */
	size_t first;		/* its safetensors files: files[first .. first + n_files) */
	size_t n_files;
	/* Set by model_finish(). */
	const char *arch;	/* arch_detect() over the valid files; static string */
	uint64_t n_tensors;
	uint64_t params;	/* element count */
	uint64_t bytes;		/* tensor data bytes */
	uint64_t dtype_bytes[ST_DTYPE_COUNT];
	bool valid;
	char *error;		/* one line per problem; NULL when valid */
};

struct model {
	char *name;
	char *path;		/* file (single), index JSON (sharded), directory (diffusers) */
	enum model_format format;
	size_t n_files;
	struct model_file *files;
	size_t n_components;
	struct model_component *components;
	/* Set by model_finish() (error may also be set while describing, see model_fail()). */
	const char *arch;	/* arch_model() over the components; static string */
	uint64_t n_tensors;
	uint64_t params;
	uint64_t bytes;
	bool valid;
	char *error;		/* one line per problem, "component: reason"; NULL when valid */
	size_t n_meta;		/* __metadata__ of every file merged; the first value wins */
	struct st_kv *meta;
};

/* The i-th safetensors file of component @c. */
static inline struct model_file *model_comp_file(const struct model *m,
						 const struct model_component *c, size_t i)
{
	return &m->files[c->first + i];
}

/*
 * Starts describing a model. @m is overwritten. Returns 0 or -ENOMEM (then @m is empty
 * and model_free() is still safe).
 */
int model_init(struct model *m, enum model_format format, const char *name, const char *path);

/* Appends a component named @name (files are added to the last component). Returns its
 * index, or -ENOMEM. */
int model_add_component(struct model *m, const char *name);

/*
 * Appends a file of @kind at @path to the model; a MODEL_FILE_ST file joins the last
 * component's file range (so add a component's files together), a MODEL_FILE_INDEX file
 * becomes the last component's index. @fp may be NULL (filled when loaded). Returns the
 * file's index in m->files, or -ENOMEM. -EINVAL when an ST or INDEX file has no component
 * to join, or when the last component's files would not be contiguous.
 */
int model_add_file(struct model *m, enum model_file_kind kind, const char *path,
		   const struct model_fp *fp);

/*
 * Records a shard that an index names but that does not exist: an ST file with
 * loaded, missing and rc = -ENOENT set. Returns as model_add_file().
 */
int model_add_missing(struct model *m, const char *path);

/*
 * Records a problem that is found while describing (an unreadable model_index.json, a
 * folder with nothing to load); model_finish() keeps it and marks the model invalid.
 * Returns 0 or -ENOMEM.
 */
int model_fail(struct model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Reads file @f according to its kind: opens it, fstat()s it (refreshing f->fp), and parses
 * the safetensors header, the index JSON or model_index.json. Thread-safe for distinct
 * files. Always sets f->loaded and f->rc (see struct model_file) and returns f->rc, so a
 * return of -EINVAL means invalid content and anything else negative means an I/O error.
 */
int model_file_load(struct model_file *f);

/*
 * Validates and aggregates a described model whose files are loaded (files that are not
 * loaded are treated as unreadable). Checks: every file valid; for a sharded component,
 * every tensor of the weight_map is in exactly the shard it names, every shard tensor is
 * in the weight_map, every shard the index names exists, and metadata.total_size equals
 * the sum of the shards' data bytes. Fills the statistics, arch, meta, valid and error.
 * Returns 0 or -ENOMEM.
 */
int model_finish(struct model *m);

/* Releases everything @m owns; @m may be zeroed. */
void model_free(struct model *m);

/*
 * Describes, loads and finishes the model at @path: a .safetensors file, an index JSON,
 * a model_index.json, or a directory holding one of those layouts (model_index.json first,
 * then an index, then a single safetensors file). Returns 0 (the model may still be
 * invalid: check m->valid), -ENOENT/-EACCES/... when @path cannot be stat()ed or listed,
 * -EINVAL when @path is none of the layouts (a directory with no safetensors, or with
 * several files and no index), or -ENOMEM. On error @m is empty.
 */
int model_open(const char *path, struct model *m);

/*
 * Layout helpers, shared with the scanner.
 *
 * model_name_kind() classifies a file name: MODEL_FILE_ST for "*.safetensors",
 * MODEL_FILE_INDEX for "*.safetensors.index.json" and variant indexes
 * "*.safetensors.index.VARIANT.json", MODEL_FILE_MODEL_INDEX for "model_index.json",
 * and -1 for anything else.
 */
int model_name_kind(const char *name);

/*
 * Chooses which files of one component folder form the component, from the folder's
 * safetensors and index file names @names (n of them, any order; other names are
 * ignored). An index is preferred over single files; non-variant files over variant ones
 * ("model.fp16.safetensors"), and when only variants exist "fp16" first, then the
 * variant that sorts first. Among single files of the chosen variant, a well-known name
 * (diffusion_pytorch_model, model) is taken alone; otherwise all of them are.
 * Writes the chosen positions into @pick (room for n) and returns how many (0 when
 * nothing fits); *is_index tells whether the one pick is an index.
 */
size_t model_choose(const char *const *names, size_t n, size_t *pick, bool *is_index);

/*
 * The default name of a model at @path: the file stem for a single file, unless the stem
 * is generic ("model", "diffusion_pytorch_model", ...) in which case the directory's name;
 * the directory's name for the other formats. A Hugging Face cache snapshot directory
 * (models--ORG--NAME/snapshots/REV) is named ORG/NAME. Writes into @buf (NUL-terminated).
 */
void model_default_name(enum model_format format, const char *path, char *buf, size_t size);

/*
 * Joins an index's shard name @shard to the directory of @index_path into @out.
 * Returns 0, -EINVAL when @shard is empty, absolute or contains a ".." component (an index
 * must not point outside its directory), or -ENAMETOOLONG.
 */
int model_shard_path(const char *index_path, const char *shard, char *out, size_t size);

/*
 * Parses an index JSON held in @buf (@len bytes; @path is for messages) into @out with
 * duplicate keys rejected. Returns 0, -EINVAL with @err filled (ST_ERR_JSON,
 * ST_ERR_DUPLICATE_KEY or ST_ERR_ENTRY), or -ENOMEM.
 */
int model_index_parse(const char *path, const char *buf, size_t len, struct model_index *out,
		      struct st_error *err);
void model_index_free(struct model_index *idx);

/*
 * Parses a diffusers model_index.json in @buf into the sorted list of component folder
 * names it declares (keys not starting with '_' whose value is a [library, class] pair
 * that is not [null, null]). Returns 0, -EINVAL with @err filled, or -ENOMEM.
 */
int model_diffusers_parse(const char *path, const char *buf, size_t len, char ***names,
			  size_t *n, struct st_error *err);

#endif
