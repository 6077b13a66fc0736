/*
 * Discovery: walks model roots, groups files into models (see model.h for the formats),
 * reads what changed, and records the result in the catalog in one transaction.
 *
 * The walk follows directory symlinks; a directory that is its own ancestor (a symlink
 * loop, compared by device and inode) is reported and not entered. A symlink that points
 * to an ancestor is the only case of a directory seen twice that is refused: a directory
 * reachable by two non-looping paths is walked under both, because the models found under
 * each path are different models to the user (a VAE symlinked into a diffusers folder is
 * both a component of that pipeline and a model of its own).
 *
 * Unreadable directories and files (EACCES), files that vanish between readdir() and
 * open() (ENOENT), dangling symlinks with a model file name and symlink loops are per-path
 * problems: they are listed in the result and the scan goes on. Invalid content is not a
 * problem but an invalid model (model.h), which the catalog stores with its reason.
 *
 * Change detection: each file's fingerprint is (st_dev, st_ino, st_size, st_mtime in ns)
 * plus the xxh3 of its header, kept in the catalog. A rescan loads every fingerprint of
 * a root in one query, stat()s the tree, and reads (in parallel, min(8, 2 x CPUs) threads)
 * only the files of models whose signature, a hash of their files' paths and
 * fingerprints and of the layout, changed. When nothing changed nothing is read and
 * nothing is written. A model with one changed file is read whole again (its architecture
 * is detected over all its headers), so n_parsed counts those files too.
 *
 * Paths are stored as walked from the absolute, resolved root, so a file reached through
 * a symlinked directory keeps the symlink's path. A root's scope is its own path and
 * everything under "root/": files and models there that a rescan no longer finds are
 * removed from the catalog, and so are files under a directory that became unreadable.
 */
#ifndef WD_CORE_SCAN_H
#define WD_CORE_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/catalog/catalog.h"
#include "core/base/cred.h"

/* One path the scan could not use, and why. */
struct scan_problem {
	char *path;
	int err;	/* negative errno: -EACCES, -ENOENT, -ELOOP, ... */
	char *message;	/* one line, names the path */
};

enum scan_change_kind { SCAN_ADDED, SCAN_UPDATED, SCAN_REMOVED };

/* One model that the scan added, re-read or removed. */
struct scan_change {
	int kind;	/* enum scan_change_kind */
	char *name;	/* the name in the catalog */
	char *path;
	bool valid;	/* false: invalid, see error (always true for SCAN_REMOVED) */
	char *error;
};

struct scan_options {
	/* Reader threads; 0 means min(8, 2 x online CPUs). */
	unsigned threads;
	/*
	 * Called on the thread that called scan_roots(), at most every 100 ms while files are
	 * read and once at the end: @done of @total safetensors files are settled (read now
	 * or known unchanged). May be NULL.
	 */
	void (*progress)(uint64_t done, uint64_t total, void *arg);
	void *progress_arg;
	/* Called by a reader thread just before it opens @path; for tests. May be NULL. */
	void (*before_read)(const char *path, void *arg);
	void *hook_arg;
	/*
	 * On whose authority the scan reads (docs/security.md). NULL: the caller's own. Else
	 * a file or directory that @cred could not read itself is not read: a model that
	 * needs one is neither added nor changed (the catalog keeps what it had), and the
	 * path is a problem ("permission denied for uid N").
	 */
	const struct wd_cred *cred;
	/*
	 * Where symlinks may lead: a symlink is followed only when its target resolves under
	 * one of these directories (a file, or a directory to walk into). NULL: symlinked
	 * files anywhere, symlinked directories only under the scan's own roots.
	 */
	const char *const *allowed_roots;
	size_t n_allowed_roots;
	/* Bounds of one root's walk: entries listed (files and directories) and depth.
	 * 0: SCAN_MAX_ENTRIES and SCAN_MAX_DEPTH. Past one, the walk of that root stops with
	 * a problem and nothing under that root is removed from the catalog. */
	uint64_t max_entries;
	unsigned max_depth;
};

#define SCAN_MAX_ENTRIES 10000000ull
#define SCAN_MAX_DEPTH 64u

struct scan_result {
	uint64_t n_files;	/* safetensors files found */
	uint64_t n_models;	/* models found, valid or not */
	uint64_t n_invalid;	/* of those, invalid */
	uint64_t n_parsed;	/* files read this time (headers and layout JSON) */
	uint64_t n_reused;	/* safetensors files known unchanged, not read */
	uint64_t n_added;	/* models, see changes */
	uint64_t n_updated;
	uint64_t n_removed;
	bool wrote;		/* the catalog was written */
	uint64_t elapsed_ns;
	size_t n_problems;
	struct scan_problem *problems;
	size_t n_changes;
	struct scan_change *changes;
};

/*
 * Scans the @n directories (or single model files) @roots into @cat. Relative roots are
 * resolved against the working directory; a root inside another root of the same call
 * is scanned once, as part of the outer one. A root that does not exist or cannot be
 * opened is a problem and leaves its part of the catalog untouched. @opt may be NULL.
 * @res is filled (release it with scan_result_free()) whether or not the call succeeds.
 * Returns 0 when the scan ran (check res->n_problems), -ENOMEM, or a catalog error from
 * catalog_scope_load()/catalog_apply() (then the catalog is unchanged).
 */
int scan_roots(struct catalog *cat, const char *const *roots, size_t n,
	       const struct scan_options *opt, struct scan_result *res);

void scan_result_free(struct scan_result *res);

/* Default reader thread count: min(8, 2 x online CPUs). */
unsigned scan_default_threads(void);

#endif
