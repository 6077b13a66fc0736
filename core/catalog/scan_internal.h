/*
 * What the files of discovery share (core/catalog/scan.h is the public side): the state of
 * one scan and of each of its roots, and the phases scan_roots() runs in order (scan.c's top
 * comment numbers them the same way):
 *   scan_walk.c   1. walk a root (openat/fdopendir, stat only model file names), and mark
 *                    what scan_options.cred may not read;
 *   scan_plan.c   2. load the catalog's snapshot of the root;
 *   scan_group.c  3. group the files into models, each with a signature of its layout;
 *   scan_plan.c   4. decide which models to read again (their signature changed), and
 *   scan_read.c      read their files in parallel (headers parsed, checked and hashed);
 *   scan_plan.c   5. decide the writes, publish them in one transaction, report the changes.
 * scan.c drives the phases; scan_problem.c keeps the list of problems and joins paths (every
 * phase calls it, it calls none); scan_map.c is the string map
 * they index paths with.
 */
#ifndef WD_CATALOG_SCAN_INTERNAL_H
#define WD_CATALOG_SCAN_INTERNAL_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/catalog/scan.h"

#define NONE UINT32_MAX

/* ---- a string-keyed open-addressing hash map; keys are borrowed (scan_map.c) ---- */

struct map_slot {
	const char *key;
	uint64_t hash;
	uint32_t val;
};

struct strmap {
	struct map_slot *slots;
	size_t cap; /* a power of two */
	size_t n;
};

/* Maps @key to @val (replacing an earlier value). Returns 0 or -ENOMEM. */
int strmap_put(struct strmap *m, const char *key, uint32_t val);
/* The value of @key, or NONE. */
uint32_t strmap_get(const struct strmap *m, const char *key);
void strmap_free(struct strmap *m);

/* ---- per-root state ---- */

struct entry {
	char *path;
	const char *base; /* points into path */
	uint32_t dir;
	int kind; /* enum model_file_kind */
	struct model_fp fp;
	bool claimed;
	bool denied; /* scan_options.cred could not read it */
};

struct dir {
	char *path;
	uint32_t parent;
	uint32_t first; /* its entries: entries[first .. first + n) */
	uint32_t n;
	uint32_t model_index; /* entry of its model_index.json, or NONE */
	uint32_t owner;	      /* the diffusers directory that owns it, or NONE */
	bool denied;	      /* scan_options.cred could not list it */
};

struct pending {
	struct model m;
	uint64_t sig;
	const struct catalog_model_row *row; /* the catalog's model at this path, or NULL */
	bool rebuild;
	bool drop; /* a single file that could not be read: not a model this time */
	bool denied; /* it has a file the scan's cred could not read: left as it was */
};

struct root_scan {
	struct scan *sc;
	char root[PATH_MAX];
	bool is_file;
	struct entry *entries;
	size_t n_entries, cap_entries;
	struct dir *dirs;
	size_t n_dirs, cap_dirs;
	struct strmap entry_map; /* path -> entry */
	struct strmap dir_map;	 /* path -> dir */
	struct catalog_scope scope;
	struct strmap file_rows;  /* path -> scope.files index */
	struct strmap model_rows; /* path -> scope.models index */
	bool *row_kept;		  /* per scope file row */
	bool *model_seen;	  /* per scope model row */
	struct pending *models;
	size_t n_models, cap_models;
	uint64_t n_listed; /* directory entries seen by the walk, against the bound */
	bool partial;	   /* the walk stopped at a bound: remove nothing under this root */
};

/* Directories already walked, by (device, inode), over the whole scan (every root). */
struct devino {
	uint64_t dev, ino;
};

struct scan {
	struct catalog *cat;
	const struct scan_options *opt;
	struct scan_result *res;
	size_t cap_problems;
	int nomem;
	struct devino *seen; /* open addressing; {0, 0} is empty (no inode 0 directory) */
	size_t cap_seen, n_seen;
	char **allowed; /* scan_options.allowed_roots, resolved */
	size_t n_allowed;
	const struct root_scan *all_roots; /* the scan's own roots, for directory symlinks */
	size_t n_roots;
	uint64_t max_entries;
	unsigned max_depth;
	dev_t devtmpfs; /* the device of a devtmpfs /dev, or 0 */
};

/* Growing arrays of what catalog_apply() gets. */
struct plan {
	const char **roots;
	size_t n_roots;
	bool roots_new;
	int64_t *del_models;
	size_t n_del_models, cap_del_models;
	int64_t *del_files;
	size_t n_del_files, cap_del_files;
	struct model_file **put_files;
	size_t n_put_files, cap_put_files;
	struct catalog_put_model *put_models;
	size_t n_put_models, cap_put_models;
	struct model_file **to_read;
	size_t n_to_read, cap_to_read;
};


/* ---- scan_problem.c ---- */

/* Adds a problem about @path to the result (on no memory, sc->nomem is set instead). */
void scan_problem(struct scan *sc, const char *path, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Reports why @name in directory @dfd could not be stat()ed or opened. */
void scan_path_problem(struct scan *sc, int dfd, const char *path, const char *name, int e);
/* "@dir/@name", malloc()ed; NULL on no memory. */
char *scan_join(const char *dir, const char *name);

/* ---- scan_walk.c ---- */

/* Resolves @rs->root and walks it. 0, 1 (skip this root: a problem says why) or -ENOMEM. */
int scan_walk_root(struct root_scan *rs);
/* Marks the directories and files scan_options.cred may not read. 0 or -ENOMEM. */
int scan_check_access(struct root_scan *rs);

/* ---- scan_group.c ---- */

/* Groups the walked files of @rs into rs->models, sorted by path. 0 or -ENOMEM. */
int scan_group(struct root_scan *rs);

/* ---- scan_read.c ---- */

/* Calls scan_options.progress, when there is one. */
void scan_progress(struct scan *sc, uint64_t done, uint64_t total);
/* Reads @n files with a small thread pool, reporting progress from this thread. */
void scan_read_files(struct scan *sc, struct model_file **files, size_t n, uint64_t base,
		     uint64_t total);

/* ---- scan_plan.c ---- */

/* Loads the catalog's snapshot of @rs->root and indexes it by path. */
int scan_load_scope(struct root_scan *rs);
/* Decides, for one root, which files to read. 0 or -ENOMEM. */
int scan_plan_reads(struct root_scan *rs, struct plan *pl);
/* After the reads: finishes the re-read models and fills the plan's writes. */
int scan_plan_writes(struct root_scan *rs, struct plan *pl);
/* Writes the plan into the catalog in one transaction, when it changes anything. */
int scan_publish(struct scan *sc, struct plan *pl);
/* Counts the models of @rs and lists the changes, once the catalog names are final. */
int scan_report(struct scan *sc, struct root_scan *rs, size_t *cap);
void scan_plan_free(struct plan *pl);

#endif
