/*
 * Discovery: walk, group, diff against the catalog, read what changed, apply.
 *
 * A scan runs in phases so that the cheap ones decide how much of the expensive one
 * (reading headers) is needed:
 *   1. walk each root with openat()/fdopendir(), stat()ing only files with a model file
 *      name, and remember per directory the run of files found in it;
 *   2. load what the catalog knows under the root (one read transaction);
 *   3. group files into models: diffusers folders first (they own every file below them),
 *      then sharded indexes (they own their shards), then the remaining single files.
 *      A layout JSON whose fingerprint matches the catalog is not read: the catalog kept
 *      the list it derived from it. Each model gets a signature of its layout and files;
 *   4. models whose signature differs from the catalog's are read in parallel and checked;
 *   5. the differences are applied in one transaction, or not at all when there are none.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/base/array.h"
#include "core/base/common.h"
#include "core/base/log.h"
#include "core/catalog/scan.h"

#define NONE UINT32_MAX
#define MAX_THREADS 8
/* Seed of model signatures; change it when the grouping rules change, so that every model
 * is read again by the first scan of the new version. */
#define SIG_SEED 0x7765696768746431ull

/* ---- a string-keyed open-addressing hash map; keys are borrowed ---- */

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

static uint64_t str_hash(const char *s)
{
	return XXH3_64bits(s, strlen(s));
}

static int map_put(struct strmap *m, const char *key, uint32_t val)
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

static uint32_t map_get(const struct strmap *m, const char *key)
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

static void map_free(struct strmap *m)
{
	free(m->slots);
	memset(m, 0, sizeof(*m));
}

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

static void problem(struct scan *sc, const char *path, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void problem(struct scan *sc, const char *path, int err, const char *fmt, ...)
{
	struct scan_result *r = sc->res;
	struct scan_problem *p;
	char msg[ST_MSG_MAX + PATH_MAX];
	int n;
	va_list ap;

	if (wd_grow(&r->problems, &sc->cap_problems, r->n_problems, sizeof(*p))) {
		sc->nomem = 1;
		return;
	}
	n = snprintf(msg, sizeof(msg), "%s: ", path);
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	p = &r->problems[r->n_problems];
	p->path = strdup(path);
	p->message = strdup(msg);
	p->err = err;
	if (!p->path || !p->message) {
		free(p->path);
		free(p->message);
		sc->nomem = 1;
		return;
	}
	r->n_problems++;
	{
		char ep[LOG_ESCAPE_MAX], em[LOG_ESCAPE_MAX];

		log_info("scan", "\"problem\" path=\"%s\" error=\"%s\"",
			 log_escape(path, ep, sizeof(ep), LOG_ESC_QUOTES),
			 log_escape(msg, em, sizeof(em), LOG_ESC_QUOTES));
	}
}

/* Reports why @name in directory @dfd could not be stat()ed or opened. */
static void path_problem(struct scan *sc, int dfd, const char *path, const char *name, int e)
{
	struct stat lsb;

	switch (e) {
	case ENOENT:
		if (fstatat(dfd, name, &lsb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lsb.st_mode))
			problem(sc, path, -e, "dangling symlink (its target does not exist)");
		else
			problem(sc, path, -e, "vanished during the scan");
		break;
	case ELOOP:
		problem(sc, path, -e, "symlink loop (too many levels of symbolic links)");
		break;
	case EACCES:
	case EPERM:
		problem(sc, path, -e, "permission denied");
		break;
	default:
		problem(sc, path, -e, "%s", strerror(e));
	}
}

static char *join(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	bool slash = !(a == 1 && dir[0] == '/');
	char *p = malloc(a + b + 2);

	if (!p)
		return NULL;
	memcpy(p, dir, a);
	if (slash)
		p[a++] = '/';
	memcpy(p + a, name, b + 1);
	return p;
}

/* Adds (@dev, @ino) to the walked set. 1: it was there already; 0: added; -ENOMEM. */
static int seen_add(struct scan *sc, uint64_t dev, uint64_t ino)
{
	size_t i, mask;
	uint64_t h;

	if ((sc->n_seen + 1) * 2 > sc->cap_seen) {
		size_t cap = sc->cap_seen ? sc->cap_seen * 2 : 1024;
		struct devino *n = calloc(cap, sizeof(*n));

		if (!n)
			return -ENOMEM;
		for (size_t j = 0; j < sc->cap_seen; j++) {
			struct devino v = sc->seen[j];

			if (!v.dev && !v.ino)
				continue;
			h = XXH3_64bits(&v, sizeof(v));
			for (i = h & (cap - 1); n[i].dev || n[i].ino; i = (i + 1) & (cap - 1))
				;
			n[i] = v;
		}
		free(sc->seen);
		sc->seen = n;
		sc->cap_seen = cap;
	}
	mask = sc->cap_seen - 1;
	{
		struct devino v = { dev, ino };

		h = XXH3_64bits(&v, sizeof(v));
		for (i = h & mask; sc->seen[i].dev || sc->seen[i].ino; i = (i + 1) & mask)
			if (sc->seen[i].dev == dev && sc->seen[i].ino == ino)
				return 1;
		sc->seen[i] = v;
	}
	sc->n_seen++;
	return 0;
}

/*
 * The name of the pseudo filesystem directory @fd lies on, or NULL for a real one. A walk
 * never enters them: /proc alone lists every process's files and loops back to / through
 * /proc/N/root, and reading files in /sys or debugfs has side effects.
 */
static const char *pseudo_fs(const struct scan *sc, int fd, const struct stat *sb)
{
	static const struct {
		unsigned long magic;
		const char *name;
	} fs[] = {
		{ PROC_SUPER_MAGIC, "proc" }, { SYSFS_MAGIC, "sysfs" },
		{ CGROUP_SUPER_MAGIC, "cgroup" }, { CGROUP2_SUPER_MAGIC, "cgroup2" },
		{ DEBUGFS_MAGIC, "debugfs" }, { TRACEFS_MAGIC, "tracefs" },
		{ SECURITYFS_MAGIC, "securityfs" }, { SELINUX_MAGIC, "selinuxfs" },
		{ BPF_FS_MAGIC, "bpf" }, { DEVPTS_SUPER_MAGIC, "devpts" },
		{ PSTOREFS_MAGIC, "pstore" }, { EFIVARFS_MAGIC, "efivarfs" },
		{ NSFS_MAGIC, "nsfs" }, { BINFMTFS_MAGIC, "binfmt_misc" },
		{ AUTOFS_SUPER_MAGIC, "autofs" }, { 0x62656570, "configfs" },
		{ 0x65735543, "fusectl" }, { 0x19800202, "mqueue" },
	};
	struct statfs f;

	if (sc->devtmpfs && sb->st_dev == sc->devtmpfs)
		return "devtmpfs"; /* tmpfs's magic: told apart by being /dev's device */
	if (fstatfs(fd, &f) < 0)
		return NULL;
	for (size_t i = 0; i < ARRAY_SIZE(fs); i++)
		if ((unsigned long)f.f_type == fs[i].magic)
			return fs[i].name;
	return NULL;
}

/* @path is @root or lies below it (both resolved, no trailing slash but "/"). */
static bool path_under(const char *path, const char *root)
{
	size_t n = strlen(root);

	if (n == 1 && root[0] == '/')
		return true;
	return !strncmp(path, root, n) && (path[n] == '/' || path[n] == '\0');
}

/*
 * Whether the symlink at @path may be followed: its target, resolved, must lie under an
 * allowed root (scan_options.allowed_roots), or for a directory without those, under one
 * of the scan's own roots. A symlink is never a way out of the trees the operator chose.
 */
static bool link_allowed(const struct scan *sc, const char *path, bool dir)
{
	char real[PATH_MAX];

	if (!sc->allowed && !dir)
		return true;
	if (!realpath(path, real))
		return false;
	if (sc->allowed) {
		for (size_t i = 0; i < sc->n_allowed; i++)
			if (path_under(real, sc->allowed[i]))
				return true;
		return false;
	}
	for (size_t i = 0; i < sc->n_roots; i++)
		if (sc->all_roots[i].root[0] && path_under(real, sc->all_roots[i].root))
			return true;
	return false;
}

static int add_dir(struct root_scan *rs, const char *path, uint32_t parent, uint32_t *out)
{
	struct dir *d;

	if (wd_grow(&rs->dirs, &rs->cap_dirs, rs->n_dirs, sizeof(*d)))
		return -ENOMEM;
	d = &rs->dirs[rs->n_dirs];
	memset(d, 0, sizeof(*d));
	d->path = strdup(path);
	if (!d->path)
		return -ENOMEM;
	d->parent = parent;
	d->first = (uint32_t)rs->n_entries;
	d->model_index = NONE;
	d->owner = NONE;
	*out = (uint32_t)rs->n_dirs++;
	return map_put(&rs->dir_map, d->path, *out);
}

static int add_entry(struct root_scan *rs, char *path, uint32_t dir, int kind,
		     const struct stat *sb)
{
	struct entry *e;

	if (wd_grow(&rs->entries, &rs->cap_entries, rs->n_entries, sizeof(*e))) {
		free(path);
		return -ENOMEM;
	}
	e = &rs->entries[rs->n_entries];
	memset(e, 0, sizeof(*e));
	e->path = path;
	e->base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	e->dir = dir;
	e->kind = kind;
	model_fp_of(sb, &e->fp);
	rs->dirs[dir].n++;
	if (kind == MODEL_FILE_MODEL_INDEX)
		rs->dirs[dir].model_index = (uint32_t)rs->n_entries;
	if (kind == MODEL_FILE_ST)
		rs->sc->res->n_files++;
	rs->n_entries++;
	return map_put(&rs->entry_map, path, (uint32_t)(rs->n_entries - 1));
}

/*
 * Walks directory @di, open as @dfd (consumed), at @depth. Its files are appended as one
 * run of entries before any subdirectory is entered. Returns 0 or -ENOMEM; every other
 * failure is a problem and the walk goes on.
 */
static int walk(struct root_scan *rs, int dfd, uint32_t di, int depth)
{
	struct scan *sc = rs->sc;
	char **subs = NULL;
	size_t n_subs = 0, cap_subs = 0;
	struct dirent *de;
	DIR *d;
	int rc = 0, ret;

	d = fdopendir(dfd);
	if (!d) {
		problem(sc, rs->dirs[di].path, -errno, "cannot list: %s", strerror(errno));
		close(dfd);
		return 0;
	}
	rs->dirs[di].first = (uint32_t)rs->n_entries;
	for (;;) {
		const char *name;
		struct stat sb;
		int kind;
		char *path;

		errno = 0;
		de = readdir(d);
		if (!de) {
			if (errno)
				problem(sc, rs->dirs[di].path, -errno, "readdir: %s",
					strerror(errno));
			break;
		}
		name = de->d_name;
		if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
			continue;
		if (++rs->n_listed > sc->max_entries) {
			problem(sc, rs->root, -E2BIG, "more than %llu directory entries under this "
				"root: the walk stopped at %s, and nothing under the root is removed "
				"from the catalog this time", (unsigned long long)sc->max_entries,
				rs->dirs[di].path);
			rs->partial = true;
			break;
		}
		kind = model_name_kind(name);
		if (de->d_type == DT_DIR) {
			if (wd_grow(&subs, &cap_subs, n_subs, sizeof(*subs)) ||
			    !(subs[n_subs] = strdup(name))) {
				rc = -ENOMEM;
				break;
			}
			n_subs++;
			continue;
		}
		if (de->d_type != DT_LNK && de->d_type != DT_UNKNOWN &&
		    (de->d_type != DT_REG || kind < 0))
			continue;
		path = join(rs->dirs[di].path, name);
		if (!path) {
			rc = -ENOMEM;
			break;
		}
		if (fstatat(dirfd(d), name, &sb, 0) < 0) {
			/* Only a name that should be a model file is worth a problem. */
			if (kind >= 0 || errno == ELOOP || errno == EACCES)
				path_problem(sc, dirfd(d), path, name, errno);
			free(path);
			continue;
		}
		if ((S_ISDIR(sb.st_mode) || (S_ISREG(sb.st_mode) && kind >= 0)) &&
		    de->d_type != DT_DIR && de->d_type != DT_REG) {
			struct stat lsb;

			/* A symlink (or a name of unknown type): where does it lead? */
			if (fstatat(dirfd(d), name, &lsb, AT_SYMLINK_NOFOLLOW) == 0 &&
			    S_ISLNK(lsb.st_mode) && !link_allowed(sc, path, S_ISDIR(sb.st_mode))) {
				problem(sc, path, -EPERM, "a symlink to a %s outside the model "
					"roots: not followed", S_ISDIR(sb.st_mode) ? "directory" :
					"file");
				free(path);
				continue;
			}
		}
		if (S_ISDIR(sb.st_mode)) {
			free(path);
			if (wd_grow(&subs, &cap_subs, n_subs, sizeof(*subs)) ||
			    !(subs[n_subs] = strdup(name))) {
				rc = -ENOMEM;
				break;
			}
			n_subs++;
			continue;
		}
		if (!S_ISREG(sb.st_mode) || kind < 0) {
			free(path);
			continue;
		}
		rc = add_entry(rs, path, di, kind, &sb);
		if (rc)
			break;
	}
	for (size_t i = 0; !rc && !rs->partial && i < n_subs; i++) {
		char *path = join(rs->dirs[di].path, subs[i]);
		const char *pseudo;
		struct stat sb;
		uint32_t ci;
		int fd;

		if (!path) {
			rc = -ENOMEM;
			break;
		}
		fd = openat(dirfd(d), subs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0) {
			path_problem(sc, dirfd(d), path, subs[i], errno);
			free(path);
			continue;
		}
		if (fstat(fd, &sb) < 0) {
			problem(sc, path, -errno, "fstat: %s", strerror(errno));
			close(fd);
			free(path);
			continue;
		}
		if ((pseudo = pseudo_fs(sc, fd, &sb))) {
			problem(sc, path, -EXDEV, "on a %s pseudo filesystem: not walked", pseudo);
			close(fd);
			free(path);
			continue;
		}
		/* Over the whole scan, not only the current path: a bind mount or a symlink to
		 * a sibling would otherwise have the same tree walked again and again. */
		ret = seen_add(sc, (uint64_t)sb.st_dev, (uint64_t)sb.st_ino);
		if (ret) {
			if (ret == 1)
				problem(sc, path, -ELOOP, "a directory already walked (a symlink "
					"loop, or a second path to it): not walked again");
			close(fd);
			free(path);
			if (ret < 0) {
				rc = ret;
				break;
			}
			continue;
		}
		if ((unsigned)depth + 1 > sc->max_depth) {
			problem(sc, path, -ELOOP, "more than %u directories deep: not walked",
				sc->max_depth);
			close(fd);
			free(path);
			continue;
		}
		rc = add_dir(rs, path, di, &ci);
		free(path);
		if (rc) {
			close(fd);
			break;
		}
		rc = walk(rs, fd, ci, depth + 1);
	}
	for (size_t i = 0; i < n_subs; i++)
		free(subs[i]);
	free(subs);
	closedir(d);
	return rc;
}

/* Resolves @root, walks it, and loads the catalog's view of it. 1: skip this root. */
static int walk_root(struct root_scan *rs)
{
	struct scan *sc = rs->sc;
	struct stat sb;
	uint32_t di;
	int fd, rc;

	/* O_NONBLOCK: a FIFO given as the root must not block the walk; it is refused below. */
	fd = open(rs->root, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		problem(sc, rs->root, -errno, "cannot open the root: %s", strerror(errno));
		return 1;
	}
	if (fstat(fd, &sb) < 0) {
		problem(sc, rs->root, -errno, "fstat: %s", strerror(errno));
		close(fd);
		return 1;
	}
	if (S_ISDIR(sb.st_mode)) {
		const char *pseudo = pseudo_fs(sc, fd, &sb);

		if (pseudo) {
			problem(sc, rs->root, -EXDEV, "on a %s pseudo filesystem: not scanned",
				pseudo);
			close(fd);
			return 1;
		}
		rc = seen_add(sc, (uint64_t)sb.st_dev, (uint64_t)sb.st_ino);
		if (rc) {
			close(fd);
			return rc < 0 ? rc : 1; /* the same tree as an earlier root */
		}
		rc = add_dir(rs, rs->root, NONE, &di);
		if (rc) {
			close(fd);
			return rc;
		}
		return walk(rs, fd, di, 0);
	}
	close(fd);
	if (!S_ISREG(sb.st_mode) || model_name_kind(rs->root) != MODEL_FILE_ST) {
		problem(sc, rs->root, -EINVAL, "a root must be a directory or a .safetensors file");
		return 1;
	}
	/* A single file: the model is that file alone. */
	{
		char parent[PATH_MAX];
		char *path = strdup(rs->root);
		char *slash;

		snprintf(parent, sizeof(parent), "%s", rs->root);
		slash = strrchr(parent, '/');
		if (slash)
			*(slash == parent ? slash + 1 : slash) = '\0';
		rs->is_file = true;
		if (!path)
			return -ENOMEM;
		rc = add_dir(rs, parent, NONE, &di);
		if (rc) {
			free(path);
			return rc;
		}
		return add_entry(rs, path, di, MODEL_FILE_ST, &sb);
	}
}

/* ---- on whose authority ---- */

/*
 * Marks what scan_options.cred could not read itself: directories it cannot list and
 * model files it cannot open. One problem per top-most refusal (the names inside a
 * directory it may not list are not its to learn).
 */
static int check_access(struct root_scan *rs)
{
	struct scan *sc = rs->sc;
	size_t n = rs->n_dirs + rs->n_entries;
	const char **paths = calloc(n + 1, sizeof(*paths));
	bool *is_dir = calloc(n + 1, sizeof(*is_dir)), *ok = calloc(n + 1, sizeof(*ok));
	int ret;

	if (!paths || !is_dir || !ok) {
		free(paths);
		free(is_dir);
		free(ok);
		return -ENOMEM;
	}
	for (size_t i = 0; i < rs->n_dirs; i++) {
		paths[i] = rs->dirs[i].path;
		is_dir[i] = true;
	}
	for (size_t i = 0; i < rs->n_entries; i++)
		paths[rs->n_dirs + i] = rs->entries[i].path;
	ret = wd_cred_may_read(sc->opt->cred, paths, is_dir, n, ok);
	if (ret == -ENOMEM) {
		free(paths);
		free(is_dir);
		free(ok);
		return ret;
	}
	if (ret)
		problem(sc, rs->root, ret, "cannot check the access of uid %u (%s): nothing "
			"under this root is read on its behalf", (unsigned)sc->opt->cred->uid,
			ret == -EPERM ? "the daemon lacks CAP_SETUID/CAP_SETGID" : strerror(-ret));
	/* Parents precede children in dirs[]. */
	for (size_t i = 0; i < rs->n_dirs; i++) {
		struct dir *d = &rs->dirs[i];
		bool up = d->parent != NONE && rs->dirs[d->parent].denied;

		/* A single-file root does not list its directory: the file's own check (which
		 * needs search permission on every parent) is the one that counts. */
		d->denied = up || (!ok[i] && !rs->is_file);
		if (d->denied && !up && !ret)
			problem(sc, d->path, -EACCES, "permission denied for uid %u: not read on "
				"its behalf", (unsigned)sc->opt->cred->uid);
	}
	for (size_t i = 0; i < rs->n_entries; i++) {
		struct entry *e = &rs->entries[i];
		bool up = rs->dirs[e->dir].denied;

		e->denied = up || !ok[rs->n_dirs + i];
		if (e->denied && !up && !ret)
			problem(sc, e->path, -EACCES, "permission denied for uid %u: not read or "
				"published on its behalf", (unsigned)sc->opt->cred->uid);
	}
	free(paths);
	free(is_dir);
	free(ok);
	return 0;
}

/* ---- grouping ---- */

static void mix(uint64_t *sig, const void *p, size_t n)
{
	*sig = XXH3_64bits_withSeed(p, n, *sig);
}

static void mix_file(uint64_t *sig, char tag, const char *path, const struct model_fp *fp)
{
	struct model_fp z = { 0 };

	mix(sig, &tag, 1);
	mix(sig, path, strlen(path) + 1);
	mix(sig, fp ? fp : &z, sizeof(*fp));
}

static struct pending *new_model(struct root_scan *rs, enum model_format format, const char *path)
{
	char name[512];
	struct pending *p;

	if (wd_grow(&rs->models, &rs->cap_models, rs->n_models, sizeof(*p)))
		return NULL;
	p = &rs->models[rs->n_models];
	memset(p, 0, sizeof(*p));
	model_default_name(format, path, name, sizeof(name));
	if (model_init(&p->m, format, name, path))
		return NULL;
	rs->n_models++;
	p->sig = SIG_SEED;
	mix(&p->sig, &(uint8_t){ (uint8_t)format }, 1);
	mix(&p->sig, path, strlen(path) + 1);
	return p;
}

static int add_component(struct pending *p, const char *name)
{
	if (model_add_component(&p->m, name) < 0)
		return -ENOMEM;
	mix(&p->sig, "c", 1);
	mix(&p->sig, name, strlen(name) + 1);
	return 0;
}

static int claim(struct pending *p, struct entry *e)
{
	int i = model_add_file(&p->m, e->kind, e->path, &e->fp);

	if (i < 0)
		return i;
	e->claimed = true;
	p->denied |= e->denied;
	mix_file(&p->sig, 'f', e->path, &e->fp);
	return i;
}

struct names {
	char **v;
	size_t n;
	bool failed; /* the JSON could not be used; its file says why */
};

static void names_free(struct names *n)
{
	for (size_t i = 0; i < n->n; i++)
		free(n->v[i]);
	free(n->v);
	memset(n, 0, sizeof(*n));
}

static int names_copy(struct names *out, char *const *v, size_t n)
{
	out->v = calloc(n ? n : 1, sizeof(char *));
	if (!out->v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		out->v[i] = strdup(v[i]);
		if (!out->v[i])
			return -ENOMEM;
		out->n++;
	}
	return 0;
}

/* Splits the catalog's one-name-per-line list. */
static int names_split(struct names *out, const char *s)
{
	size_t n = *s ? 1 : 0;

	for (const char *p = s; *p; p++)
		n += *p == '\n';
	out->v = calloc(n ? n : 1, sizeof(char *));
	if (!out->v)
		return -ENOMEM;
	while (*s) {
		size_t l = strcspn(s, "\n");

		out->v[out->n] = strndup(s, l);
		if (!out->v[out->n])
			return -ENOMEM;
		out->n++;
		s += l + (s[l] == '\n');
	}
	return 0;
}

/*
 * The names the layout JSON at file @fi of @p lists: the catalog's copy when the file is
 * unchanged there, else read now.
 */
static int json_names(struct root_scan *rs, struct pending *p, int fi, struct names *out)
{
	struct model_file *f = &p->m.files[fi];
	uint32_t ri = map_get(&rs->file_rows, f->path);
	int rc;

	memset(out, 0, sizeof(*out));
	if (p->denied) {
		/* Not read on behalf of a client that could not read it (the model is kept
		 * as the catalog has it, see plan_reads()). */
		out->failed = true;
		return 0;
	}
	if (ri != NONE) {
		const struct catalog_fp_row *row = &rs->scope.files[ri];

		if (row->valid && row->json_info && row->kind == (int)f->kind &&
		    model_fp_equal(&row->fp, &f->fp))
			return names_split(out, row->json_info);
	}
	rc = model_file_load(f);
	rs->sc->res->n_parsed++;
	if (rc == -ENOMEM)
		return rc;
	if (rc) {
		out->failed = true;
		return 0;
	}
	if (f->kind == MODEL_FILE_INDEX)
		return names_copy(out, f->index.shards, f->index.n_shards);
	return names_copy(out, f->names, f->n_names);
}

/* HF shard file names: NAME-00001-of-00004.safetensors. */
static bool shard_like(const char *base)
{
	const char *of = strstr(base, "-of-");
	const char *p;
	size_t d;

	if (!of)
		return false;
	for (p = of; p > base && p[-1] >= '0' && p[-1] <= '9'; p--)
		;
	if (p == of || p == base || p[-1] != '-')
		return false;
	d = strspn(of + 4, "0123456789");
	return d && !strcmp(of + 4 + d, ".safetensors");
}

/* Adds the index entry @ei and its shards to the last component of @p. */
static int build_index(struct root_scan *rs, struct pending *p, uint32_t ei)
{
	struct entry *ie = &rs->entries[ei];
	char path[PATH_MAX];
	struct names nm;
	int fi, rc;

	fi = claim(p, ie);
	if (fi < 0)
		return fi;
	rc = json_names(rs, p, fi, &nm);
	if (rc) {
		names_free(&nm);
		return rc;
	}
	if (nm.failed) {
		/* The index is unreadable: its shards are still its, not single models. */
		const struct dir *d = &rs->dirs[ie->dir];

		for (uint32_t i = d->first; !rc && i < d->first + d->n; i++) {
			struct entry *e = &rs->entries[i];

			if (e->kind == MODEL_FILE_ST && !e->claimed && shard_like(e->base))
				rc = claim(p, e) < 0 ? -ENOMEM : 0;
		}
		return rc;
	}
	for (size_t s = 0; !rc && s < nm.n; s++) {
		uint32_t si;

		rc = model_shard_path(ie->path, nm.v[s], path, sizeof(path));
		if (rc) {
			/* model_index_parse() refused such names; the catalog's copy is stale. */
			rc = model_fail(&p->m, "%s: bad shard name \"%s\"", ie->path, nm.v[s]);
			continue;
		}
		si = map_get(&rs->entry_map, path);
		if (si != NONE && rs->entries[si].kind == MODEL_FILE_ST) {
			rc = claim(p, &rs->entries[si]) < 0 ? -ENOMEM : 0;
		} else {
			rc = model_add_missing(&p->m, path) < 0 ? -ENOMEM : 0;
			mix_file(&p->sig, 'm', path, NULL);
		}
	}
	names_free(&nm);
	return rc;
}

static int build_diffusers(struct root_scan *rs, uint32_t di)
{
	const struct dir *d = &rs->dirs[di];
	struct pending *p = new_model(rs, MODEL_DIFFUSERS, d->path);
	struct names nm;
	int fi, rc;

	if (!p)
		return -ENOMEM;
	fi = claim(p, &rs->entries[d->model_index]);
	if (fi < 0)
		return fi;
	rc = json_names(rs, p, fi, &nm);
	if (!rc && nm.failed)
		rc = model_fail(&p->m, "%s", p->m.files[fi].err.message);
	for (size_t c = 0; !rc && c < nm.n; c++) {
		char *sub = join(d->path, nm.v[c]);
		uint32_t si = sub ? map_get(&rs->dir_map, sub) : NONE;
		const char **names;
		size_t *pick, np;
		bool is_index;
		const struct dir *sd;

		free(sub);
		if (!sub) {
			rc = -ENOMEM;
			break;
		}
		if (si == NONE)
			continue; /* not there, or a folder without files (scheduler) */
		sd = &rs->dirs[si];
		names = calloc(sd->n + 1, sizeof(*names));
		pick = calloc(sd->n + 1, sizeof(*pick));
		if (!names || !pick) {
			free(names);
			free(pick);
			rc = -ENOMEM;
			break;
		}
		for (uint32_t i = 0; i < sd->n; i++)
			names[i] = rs->entries[sd->first + i].base;
		np = model_choose(names, sd->n, pick, &is_index);
		if (np)
			rc = add_component(p, nm.v[c]);
		for (size_t i = 0; !rc && i < np; i++) {
			uint32_t ei = sd->first + (uint32_t)pick[i];

			if (is_index)
				rc = build_index(rs, p, ei);
			else
				rc = claim(p, &rs->entries[ei]) < 0 ? -ENOMEM : 0;
		}
		free(names);
		free(pick);
	}
	names_free(&nm);
	return rc;
}

static int cmp_pending(const void *a, const void *b)
{
	return strcmp(((const struct pending *)a)->m.path, ((const struct pending *)b)->m.path);
}

static int group(struct root_scan *rs)
{
	int rc = 0;

	/* Parents precede children in dirs[], so ownership flows down in one pass. */
	for (size_t i = 0; i < rs->n_dirs; i++) {
		struct dir *d = &rs->dirs[i];
		uint32_t up = d->parent != NONE ? rs->dirs[d->parent].owner : NONE;

		d->owner = up != NONE ? up : d->model_index != NONE ? (uint32_t)i : NONE;
	}
	for (size_t i = 0; !rc && i < rs->n_dirs; i++)
		if (rs->dirs[i].owner == i && !rs->is_file)
			rc = build_diffusers(rs, (uint32_t)i);
	for (size_t i = 0; !rc && i < rs->n_entries; i++) {
		struct entry *e = &rs->entries[i];
		struct pending *p;

		if (e->kind != MODEL_FILE_INDEX || rs->dirs[e->dir].owner != NONE)
			continue;
		p = new_model(rs, MODEL_SHARDED, e->path);
		rc = p ? add_component(p, "") : -ENOMEM;
		if (!rc)
			rc = build_index(rs, p, (uint32_t)i);
	}
	for (size_t i = 0; !rc && i < rs->n_entries; i++) {
		struct entry *e = &rs->entries[i];
		struct pending *p;

		if (e->kind != MODEL_FILE_ST || e->claimed ||
		    (rs->dirs[e->dir].owner != NONE && !rs->is_file))
			continue;
		p = new_model(rs, MODEL_SINGLE, e->path);
		rc = p ? add_component(p, "") : -ENOMEM;
		if (!rc)
			rc = claim(p, e) < 0 ? -ENOMEM : 0;
	}
	if (!rc && rs->n_models)
		qsort(rs->models, rs->n_models, sizeof(*rs->models), cmp_pending);
	return rc;
}

/* ---- reading in parallel ---- */

struct pool {
	struct model_file **files;
	size_t n;
	atomic_size_t next;
	atomic_size_t done;
	const struct scan_options *opt;
	pthread_mutex_t mu;
	pthread_cond_t cv;
};

static void *reader(void *arg)
{
	struct pool *pl = arg;
	size_t i;

	while ((i = atomic_fetch_add(&pl->next, 1)) < pl->n) {
		if (pl->opt && pl->opt->before_read)
			pl->opt->before_read(pl->files[i]->path, pl->opt->hook_arg);
		model_file_load(pl->files[i]);
		if (atomic_fetch_add(&pl->done, 1) + 1 == pl->n) {
			pthread_mutex_lock(&pl->mu);
			pthread_cond_signal(&pl->cv);
			pthread_mutex_unlock(&pl->mu);
		}
	}
	return NULL;
}

unsigned scan_default_threads(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n = cpus > 0 ? (unsigned)cpus * 2 : 2;

	return n < MAX_THREADS ? n : MAX_THREADS;
}

static void progress(struct scan *sc, uint64_t done, uint64_t total)
{
	if (sc->opt && sc->opt->progress)
		sc->opt->progress(done, total, sc->opt->progress_arg);
}

/* Reads @n files with a small thread pool, reporting progress from this thread. */
static void read_files(struct scan *sc, struct model_file **files, size_t n, uint64_t base,
		       uint64_t total)
{
	struct pool pl = { .files = files, .n = n, .opt = sc->opt };
	pthread_t tids[MAX_THREADS];
	unsigned want = sc->opt && sc->opt->threads ? sc->opt->threads : scan_default_threads();
	unsigned nt = 0;

	if (want > MAX_THREADS)
		want = MAX_THREADS;
	if (want > n)
		want = (unsigned)n;
	atomic_init(&pl.next, 0);
	atomic_init(&pl.done, 0);
	pthread_mutex_init(&pl.mu, NULL);
	pthread_cond_init(&pl.cv, NULL);
	for (; nt < want; nt++)
		if (pthread_create(&tids[nt], NULL, reader, &pl))
			break;
	if (!nt) {
		reader(&pl); /* no thread could start: read here */
	} else {
		pthread_mutex_lock(&pl.mu);
		while (atomic_load(&pl.done) < n) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 100000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&pl.cv, &pl.mu, &ts);
			pthread_mutex_unlock(&pl.mu);
			progress(sc, base + atomic_load(&pl.done), total);
			pthread_mutex_lock(&pl.mu);
		}
		pthread_mutex_unlock(&pl.mu);
		for (unsigned i = 0; i < nt; i++)
			pthread_join(tids[i], NULL);
	}
	pthread_cond_destroy(&pl.cv);
	pthread_mutex_destroy(&pl.mu);
	sc->res->n_parsed += n;
}

/* ---- the diff ---- */

static int load_scope(struct root_scan *rs)
{
	int rc = catalog_scope_load(rs->sc->cat, rs->root, &rs->scope);

	if (rc)
		return rc;
	rs->row_kept = calloc(rs->scope.n_files + 1, sizeof(bool));
	rs->model_seen = calloc(rs->scope.n_models + 1, sizeof(bool));
	if (!rs->row_kept || !rs->model_seen)
		return -ENOMEM;
	for (size_t i = 0; i < rs->scope.n_files; i++)
		if (map_put(&rs->file_rows, rs->scope.files[i].path, (uint32_t)i))
			return -ENOMEM;
	for (size_t i = 0; i < rs->scope.n_models; i++)
		if (map_put(&rs->model_rows, rs->scope.models[i].path, (uint32_t)i))
			return -ENOMEM;
	return 0;
}

static bool storable(const struct model_file *f)
{
	return f->loaded && !f->missing && (f->rc == 0 || f->rc == -EINVAL);
}

static void root_free(struct root_scan *rs)
{
	for (size_t i = 0; i < rs->n_entries; i++)
		free(rs->entries[i].path);
	for (size_t i = 0; i < rs->n_dirs; i++)
		free(rs->dirs[i].path);
	for (size_t i = 0; i < rs->n_models; i++)
		model_free(&rs->models[i].m);
	free(rs->entries);
	free(rs->dirs);
	free(rs->models);
	free(rs->row_kept);
	free(rs->model_seen);
	map_free(&rs->entry_map);
	map_free(&rs->dir_map);
	map_free(&rs->file_rows);
	map_free(&rs->model_rows);
	catalog_scope_free(&rs->scope);
}

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

/* Decides, for one root, what to read. */
static int plan_reads(struct root_scan *rs, struct plan *pl)
{
	for (size_t i = 0; i < rs->n_models; i++) {
		struct pending *p = &rs->models[i];
		uint32_t mi = map_get(&rs->model_rows, p->m.path);

		p->row = mi != NONE ? &rs->scope.models[mi] : NULL;
		p->rebuild = !p->row || p->row->sig != p->sig;
		if (mi != NONE)
			rs->model_seen[mi] = true;
		if (p->denied) {
			/* Neither added nor changed on behalf of who could not read it. */
			p->rebuild = false;
			p->drop = !p->row;
			continue;
		}
		for (size_t f = 0; f < p->m.n_files; f++) {
			struct model_file *mf = &p->m.files[f];

			if (mf->kind == MODEL_FILE_ST && !p->rebuild)
				rs->sc->res->n_reused++;
			if (!p->rebuild || mf->loaded || mf->kind == MODEL_FILE_MODEL_INDEX)
				continue;
			if (wd_grow(&pl->to_read, &pl->cap_to_read, pl->n_to_read, sizeof(mf)))
				return -ENOMEM;
			pl->to_read[pl->n_to_read++] = mf;
		}
	}
	return 0;
}

/* @msg without its leading "@path: " (problem() puts the path in front itself). */
static const char *after_path(const char *msg, const char *path)
{
	size_t n = strlen(path);

	if (!strncmp(msg, path, n) && msg[n] == ':' && msg[n + 1] == ' ')
		return msg + n + 2;
	return msg;
}

/* After the reads: finishes the re-read models and fills the plan's writes. */
static int plan_writes(struct root_scan *rs, struct plan *pl)
{
	struct scan *sc = rs->sc;

	for (size_t i = 0; i < rs->n_models; i++) {
		struct pending *p = &rs->models[i];

		if (p->denied) {
			/* The catalog keeps what it had of this model and its files. */
			for (size_t f = 0; f < p->m.n_files; f++) {
				uint32_t ri = map_get(&rs->file_rows, p->m.files[f].path);

				if (ri != NONE)
					rs->row_kept[ri] = true;
			}
			continue;
		}
		for (size_t f = 0; f < p->m.n_files; f++) {
			struct model_file *mf = &p->m.files[f];

			if (!mf->loaded || mf->missing || !mf->rc || mf->rc == -EINVAL ||
			    mf->rc == -ENOMEM)
				continue;
			if (mf->rc == -ENOENT)
				problem(sc, mf->path, mf->rc, "vanished during the scan (listed, "
					"then gone when opened)");
			else if (mf->rc == -EACCES || mf->rc == -EPERM)
				problem(sc, mf->path, mf->rc, "permission denied");
			else
				problem(sc, mf->path, mf->rc, "%s",
					after_path(mf->err.message, mf->path));
		}
		if (p->m.format == MODEL_SINGLE && p->m.n_files == 1 && p->m.files[0].loaded &&
		    !storable(&p->m.files[0])) {
			/* A single file that cannot be read is a problem, not a model. */
			if (p->m.files[0].rc == -ENOMEM)
				return -ENOMEM;
			p->drop = true;
			if (p->row)
				rs->model_seen[p->row - rs->scope.models] = false;
			continue;
		}
		for (size_t f = 0; f < p->m.n_files; f++) {
			struct model_file *mf = &p->m.files[f];
			uint32_t ri = map_get(&rs->file_rows, mf->path);
			const struct catalog_fp_row *row = ri != NONE ? &rs->scope.files[ri] : NULL;

			if (mf->loaded && mf->rc == -ENOMEM)
				return -ENOMEM;
			if (mf->loaded && !storable(mf))
				continue; /* its row, if any, is stale: deleted below */
			if (row) {
				rs->row_kept[ri] = true;
				mf->db_id = row->id;
			}
			if (mf->loaded && (!row || !model_fp_equal(&row->fp, &mf->fp) ||
					   row->valid != (mf->rc == 0))) {
				if (wd_grow(&pl->put_files, &pl->cap_put_files, pl->n_put_files,
					 sizeof(mf)))
					return -ENOMEM;
				pl->put_files[pl->n_put_files++] = mf;
			}
		}
		if (!p->rebuild)
			continue;
		if (model_finish(&p->m))
			return -ENOMEM;
		if (wd_grow(&pl->put_models, &pl->cap_put_models, pl->n_put_models,
			 sizeof(*pl->put_models)))
			return -ENOMEM;
		pl->put_models[pl->n_put_models++] = (struct catalog_put_model){
			.m = &p->m, .id = p->row ? p->row->id : 0, .sig = p->sig, .root = rs->root,
		};
	}
	/* A walk cut short by a bound did not see everything: remove nothing. */
	for (size_t i = 0; i < rs->scope.n_files && !rs->partial; i++) {
		if (rs->row_kept[i])
			continue;
		if (wd_grow(&pl->del_files, &pl->cap_del_files, pl->n_del_files, sizeof(int64_t)))
			return -ENOMEM;
		pl->del_files[pl->n_del_files++] = rs->scope.files[i].id;
	}
	for (size_t i = 0; i < rs->scope.n_models && !rs->partial; i++) {
		if (rs->model_seen[i])
			continue;
		if (wd_grow(&pl->del_models, &pl->cap_del_models, pl->n_del_models, sizeof(int64_t)))
			return -ENOMEM;
		pl->del_models[pl->n_del_models++] = rs->scope.models[i].id;
	}
	if (!rs->scope.root_known)
		pl->roots_new = true;
	return 0;
}

static int add_change(struct scan *sc, size_t *cap, int kind, const char *name, const char *path,
		      bool valid, const char *error)
{
	struct scan_result *r = sc->res;
	struct scan_change *c;

	if (wd_grow(&r->changes, cap, r->n_changes, sizeof(*c)))
		return -ENOMEM;
	c = &r->changes[r->n_changes++];
	memset(c, 0, sizeof(*c));
	c->kind = kind;
	c->valid = valid;
	c->name = strdup(name);
	c->path = strdup(path);
	c->error = error ? strdup(error) : NULL;
	if (!c->name || !c->path || (error && !c->error))
		return -ENOMEM;
	if (kind == SCAN_ADDED)
		r->n_added++;
	else if (kind == SCAN_UPDATED)
		r->n_updated++;
	else
		r->n_removed++;
	return 0;
}

/* Counts the models and lists the changes, once the catalog names are final. */
static int report(struct scan *sc, struct root_scan *rs, size_t *cap)
{
	int rc = 0;

	for (size_t i = 0; !rc && i < rs->n_models; i++) {
		struct pending *p = &rs->models[i];
		bool valid;

		if (p->drop)
			continue; /* before p->row: a dropped model may have none */
		valid = p->rebuild ? p->m.valid : p->row->valid;
		sc->res->n_models++;
		sc->res->n_invalid += !valid;
		if (p->rebuild)
			rc = add_change(sc, cap, p->row ? SCAN_UPDATED : SCAN_ADDED,
					p->row ? p->row->name : p->m.name, p->m.path, valid,
					p->m.error);
	}
	for (size_t i = 0; !rc && !rs->partial && i < rs->scope.n_models; i++)
		if (!rs->model_seen[i])
			rc = add_change(sc, cap, SCAN_REMOVED, rs->scope.models[i].name,
					rs->scope.models[i].path, true, NULL);
	return rc;
}

static void plan_free(struct plan *pl)
{
	free(pl->roots);
	free(pl->del_models);
	free(pl->del_files);
	free(pl->put_files);
	free(pl->put_models);
	free(pl->to_read);
}

/* Resolves the roots and drops any root that lies inside another one. */
static int prepare_roots(struct scan *sc, const char *const *roots, size_t n,
			 struct root_scan *rss, size_t *n_out)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		char buf[PATH_MAX];
		bool dup = false;

		for (size_t j = 0; j < i && !dup; j++)
			dup = !strcmp(roots[i], roots[j]);
		if (dup)
			continue;
		if (!realpath(roots[i], buf)) {
			problem(sc, roots[i], -errno, "cannot resolve the root: %s",
				strerror(errno));
			continue;
		}
		snprintf(rss[k].root, sizeof(rss[k].root), "%s", buf);
		rss[k].sc = sc;
		k++;
	}
	for (size_t i = 0; i < k; i++) {
		for (size_t j = 0; j < k; j++) {
			size_t lj = strlen(rss[j].root);
			const char *ri = rss[i].root;

			if (i == j || !rss[j].root[0] || !ri[0])
				continue;
			/* Inside (or equal to, keeping the first): drop i. */
			if (!strncmp(ri, rss[j].root, lj) &&
			    (ri[lj] == '/' || (lj == 1 && ri[1]) || (!ri[lj] && j < i))) {
				rss[i].root[0] = '\0';
				break;
			}
		}
	}
	*n_out = k;
	return 0;
}

int scan_roots(struct catalog *cat, const char *const *roots, size_t n,
	       const struct scan_options *opt, struct scan_result *res)
{
	struct scan sc = { .cat = cat, .opt = opt, .res = res };
	struct root_scan *rss;
	struct stat dev_sb, root_sb;
	struct statfs dev_fs;
	struct plan pl = { 0 };
	uint64_t t0 = wd_now_ns(), reused;
	size_t nr = 0, cap_changes = 0;
	int rc = 0;

	memset(res, 0, sizeof(*res));
	rss = calloc(n ? n : 1, sizeof(*rss));
	pl.roots = calloc(n ? n : 1, sizeof(*pl.roots));
	if (!rss || !pl.roots) {
		free(rss);
		free(pl.roots);
		return -ENOMEM;
	}
	sc.max_entries = opt && opt->max_entries ? opt->max_entries : SCAN_MAX_ENTRIES;
	sc.max_depth = opt && opt->max_depth ? opt->max_depth : SCAN_MAX_DEPTH;
	/* devtmpfs has tmpfs's magic: it is told apart as the device /dev lives on. */
	if (stat("/dev", &dev_sb) == 0 && stat("/", &root_sb) == 0 &&
	    dev_sb.st_dev != root_sb.st_dev && statfs("/dev", &dev_fs) == 0 &&
	    (unsigned long)dev_fs.f_type == TMPFS_MAGIC)
		sc.devtmpfs = dev_sb.st_dev;
	if (opt && opt->allowed_roots) {
		sc.allowed = calloc(opt->n_allowed_roots + 1, sizeof(*sc.allowed));
		if (!sc.allowed)
			rc = -ENOMEM;
		for (size_t i = 0; !rc && i < opt->n_allowed_roots; i++) {
			char buf[PATH_MAX];

			/* A root that does not resolve allows nothing. */
			if (realpath(opt->allowed_roots[i], buf) &&
			    !(sc.allowed[sc.n_allowed++] = strdup(buf)))
				rc = -ENOMEM;
		}
	}
	prepare_roots(&sc, roots, n, rss, &nr);
	sc.all_roots = rss;
	sc.n_roots = nr;
	for (size_t i = 0; !rc && i < nr; i++) {
		struct root_scan *rs = &rss[i];
		int w;

		if (!rs->root[0])
			continue;
		w = walk_root(rs);
		if (w == 1) {
			rs->root[0] = '\0'; /* unusable root: leave its catalog part alone */
			continue;
		}
		rc = w;
		if (!rc && opt && opt->cred)
			rc = check_access(rs);
		if (!rc)
			rc = load_scope(rs);
		if (!rc)
			rc = group(rs);
		if (!rc)
			rc = plan_reads(rs, &pl);
		if (!rc)
			pl.roots[pl.n_roots++] = rs->root;
	}
	reused = res->n_reused;
	if (!rc && pl.n_to_read)
		read_files(&sc, pl.to_read, pl.n_to_read, reused, res->n_files);
	for (size_t i = 0; !rc && i < nr; i++)
		if (rss[i].root[0])
			rc = plan_writes(&rss[i], &pl);
	if (!rc && (pl.roots_new || pl.n_del_models || pl.n_del_files || pl.n_put_files ||
		    pl.n_put_models)) {
		struct catalog_changes ch = {
			.roots = pl.roots,
			.n_roots = pl.n_roots,
			.del_models = pl.del_models,
			.n_del_models = pl.n_del_models,
			.del_files = pl.del_files,
			.n_del_files = pl.n_del_files,
			.put_files = pl.put_files,
			.n_put_files = pl.n_put_files,
			.put_models = pl.put_models,
			.n_put_models = pl.n_put_models,
		};

		rc = catalog_apply(cat, &ch);
		res->wrote = rc == 0;
	}
	for (size_t i = 0; !rc && i < nr; i++)
		if (rss[i].root[0])
			rc = report(&sc, &rss[i], &cap_changes);
	if (!rc && sc.nomem)
		rc = -ENOMEM;
	progress(&sc, res->n_files, res->n_files);
	for (size_t i = 0; i < n; i++)
		root_free(&rss[i]);
	free(rss);
	plan_free(&pl);
	for (size_t i = 0; i < sc.n_allowed; i++)
		free(sc.allowed[i]);
	free(sc.allowed);
	free(sc.seen);
	res->elapsed_ns = wd_now_ns() - t0;
	log_info("scan", "\"scan done\" roots=%zu files=%llu parsed=%llu reused=%llu models=%llu "
		 "problems=%zu wrote=%d ms=%.1f rc=%d", n, (unsigned long long)res->n_files,
		 (unsigned long long)res->n_parsed, (unsigned long long)res->n_reused,
		 (unsigned long long)res->n_models, res->n_problems, res->wrote,
		 (double)res->elapsed_ns / 1e6, rc);
	return rc;
}

void scan_result_free(struct scan_result *res)
{
	for (size_t i = 0; i < res->n_problems; i++) {
		free(res->problems[i].path);
		free(res->problems[i].message);
	}
	for (size_t i = 0; i < res->n_changes; i++) {
		free(res->changes[i].name);
		free(res->changes[i].path);
		free(res->changes[i].error);
	}
	free(res->problems);
	free(res->changes);
	memset(res, 0, sizeof(*res));
}
