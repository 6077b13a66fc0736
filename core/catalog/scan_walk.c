/*
 * Discovery's walk (phase 1): a root's directory tree, listed with openat()/fdopendir(),
 * stat()ing only the names of model files and following symlinks only into the trees the
 * operator chose; and the access check on behalf of scan_options.cred.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/catalog/scan_internal.h"
#include "core/base/array.h"
#include "core/base/common.h"

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
	return strmap_put(&rs->dir_map, d->path, *out);
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
	return strmap_put(&rs->entry_map, path, (uint32_t)(rs->n_entries - 1));
}

/* The names of the subdirectories one listing found: walked after the directory's files. */
struct subdirs {
	char **v;
	size_t n, cap;
};

static int subdirs_add(struct subdirs *s, const char *name)
{
	if (wd_grow(&s->v, &s->cap, s->n, sizeof(*s->v)) || !(s->v[s->n] = strdup(name)))
		return -ENOMEM;
	s->n++;
	return 0;
}

static void subdirs_free(struct subdirs *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
}

/*
 * Whether the symlink (or name of unknown type) @name in @d, which leads to @sb, leads
 * outside the trees the operator chose; if so, a problem says so. A real file or directory
 * is never refused.
 */
static bool link_refused(struct scan *sc, DIR *d, const char *name, const char *path,
			 const struct stat *sb)
{
	struct stat lsb;

	if (fstatat(dirfd(d), name, &lsb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISLNK(lsb.st_mode) ||
	    link_allowed(sc, path, S_ISDIR(sb->st_mode)))
		return false;
	scan_problem(sc, path, -EPERM, "a symlink to a %s outside the model roots: not followed",
		     S_ISDIR(sb->st_mode) ? "directory" : "file");
	return true;
}

/*
 * Takes the name @de of directory @di (listed as @d): a model file becomes an entry, a
 * directory (or a symlink to one) joins @subs, anything else is passed over. Returns 0 or
 * -ENOMEM; a name that cannot be stat()ed is a problem when it matters.
 */
static int take_name(struct root_scan *rs, DIR *d, uint32_t di, const struct dirent *de,
		     struct subdirs *subs)
{
	struct scan *sc = rs->sc;
	const char *name = de->d_name;
	int kind = model_name_kind(name);
	struct stat sb;
	char *path;

	if (de->d_type == DT_DIR)
		return subdirs_add(subs, name);
	if (de->d_type != DT_LNK && de->d_type != DT_UNKNOWN &&
	    (de->d_type != DT_REG || kind < 0))
		return 0;
	path = scan_join(rs->dirs[di].path, name);
	if (!path)
		return -ENOMEM;
	if (fstatat(dirfd(d), name, &sb, 0) < 0) {
		/* Only a name that should be a model file is worth a problem. */
		if (kind >= 0 || errno == ELOOP || errno == EACCES)
			scan_path_problem(sc, dirfd(d), path, name, errno);
		free(path);
		return 0;
	}
	/* A symlink (or a name of unknown type) to what we would take: where does it lead? */
	if ((S_ISDIR(sb.st_mode) || (S_ISREG(sb.st_mode) && kind >= 0)) &&
	    de->d_type != DT_DIR && de->d_type != DT_REG && link_refused(sc, d, name, path, &sb)) {
		free(path);
		return 0;
	}
	if (S_ISDIR(sb.st_mode)) {
		free(path);
		return subdirs_add(subs, name);
	}
	if (!S_ISREG(sb.st_mode) || kind < 0) {
		free(path);
		return 0;
	}
	return add_entry(rs, path, di, kind, &sb);
}

/*
 * Lists directory @di (open as @d): its model files are appended as one run of entries,
 * its subdirectories' names go to @subs. Stops at the scan's bound on directory entries
 * (rs->partial). Returns 0 or -ENOMEM.
 */
static int list_dir(struct root_scan *rs, DIR *d, uint32_t di, struct subdirs *subs)
{
	struct scan *sc = rs->sc;
	struct dirent *de;
	int rc = 0;

	rs->dirs[di].first = (uint32_t)rs->n_entries;
	while (!rc) {
		const char *name;

		errno = 0;
		de = readdir(d);
		if (!de) {
			if (errno)
				scan_problem(sc, rs->dirs[di].path, -errno, "readdir: %s",
					     strerror(errno));
			break;
		}
		name = de->d_name;
		if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
			continue;
		if (++rs->n_listed > sc->max_entries) {
			scan_problem(sc, rs->root, -E2BIG, "more than %llu directory entries under "
				     "this root: the walk stopped at %s, and nothing under the root "
				     "is removed from the catalog this time",
				     (unsigned long long)sc->max_entries, rs->dirs[di].path);
			rs->partial = true;
			break;
		}
		rc = take_name(rs, d, di, de, subs);
	}
	return rc;
}

/*
 * Opens the subdirectory @name of directory @di (listed as @d, at @depth) for the walk.
 * Returns 1 with *@fd and *@ci (its new dirs[] index) set when it is to be walked, 0 when
 * it is not (a problem says why: it cannot be opened, it is on a pseudo filesystem, it was
 * walked already, or it is too deep), or -ENOMEM.
 */
static int open_subdir(struct root_scan *rs, DIR *d, uint32_t di, const char *name, int depth,
		       int *fd, uint32_t *ci)
{
	struct scan *sc = rs->sc;
	char *path = scan_join(rs->dirs[di].path, name);
	const char *pseudo;
	struct stat sb;
	int rc;

	if (!path)
		return -ENOMEM;
	*fd = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0) {
		scan_path_problem(sc, dirfd(d), path, name, errno);
		free(path);
		return 0;
	}
	rc = 1;
	if (fstat(*fd, &sb) < 0) {
		scan_problem(sc, path, -errno, "fstat: %s", strerror(errno));
		rc = 0;
	} else if ((pseudo = pseudo_fs(sc, *fd, &sb))) {
		scan_problem(sc, path, -EXDEV, "on a %s pseudo filesystem: not walked", pseudo);
		rc = 0;
	} else {
		/* Over the whole scan, not only the current path: a bind mount or a symlink to
		 * a sibling would otherwise have the same tree walked again and again. */
		rc = seen_add(sc, (uint64_t)sb.st_dev, (uint64_t)sb.st_ino);
		if (rc == 1)
			scan_problem(sc, path, -ELOOP, "a directory already walked (a symlink loop, "
				     "or a second path to it): not walked again");
		rc = rc ? (rc < 0 ? rc : 0) : 1;
	}
	if (rc == 1 && (unsigned)depth + 1 > sc->max_depth) {
		scan_problem(sc, path, -ELOOP, "more than %u directories deep: not walked",
			     sc->max_depth);
		rc = 0;
	}
	if (rc == 1) {
		rc = add_dir(rs, path, di, ci);
		rc = rc ? rc : 1;
	}
	free(path);
	if (rc != 1)
		close(*fd);
	return rc;
}

/*
 * Walks directory @di, open as @dfd (consumed), at @depth. Its files are appended as one
 * run of entries before any subdirectory is entered. Returns 0 or -ENOMEM; every other
 * failure is a problem and the walk goes on.
 */
static int walk(struct root_scan *rs, int dfd, uint32_t di, int depth)
{
	struct subdirs subs = { 0 };
	DIR *d;
	int rc;

	d = fdopendir(dfd);
	if (!d) {
		scan_problem(rs->sc, rs->dirs[di].path, -errno, "cannot list: %s", strerror(errno));
		close(dfd);
		return 0;
	}
	rc = list_dir(rs, d, di, &subs);
	for (size_t i = 0; !rc && !rs->partial && i < subs.n; i++) {
		uint32_t ci;
		int fd;

		rc = open_subdir(rs, d, di, subs.v[i], depth, &fd, &ci);
		if (rc == 1)
			rc = walk(rs, fd, ci, depth + 1);
	}
	subdirs_free(&subs);
	closedir(d);
	return rc;
}

/* Opens @root and walks it (a single-file root is its one entry). 1: skip this root. */
int scan_walk_root(struct root_scan *rs)
{
	struct scan *sc = rs->sc;
	struct stat sb;
	uint32_t di;
	int fd, rc;

	/* O_NONBLOCK: a FIFO given as the root must not block the walk; it is refused below. */
	fd = open(rs->root, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		scan_problem(sc, rs->root, -errno, "cannot open the root: %s", strerror(errno));
		return 1;
	}
	if (fstat(fd, &sb) < 0) {
		scan_problem(sc, rs->root, -errno, "fstat: %s", strerror(errno));
		close(fd);
		return 1;
	}
	if (S_ISDIR(sb.st_mode)) {
		const char *pseudo = pseudo_fs(sc, fd, &sb);

		if (pseudo) {
			scan_problem(sc, rs->root, -EXDEV, "on a %s pseudo filesystem: not scanned",
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
		scan_problem(sc, rs->root, -EINVAL, "a root must be a directory or a .safetensors file");
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
int scan_check_access(struct root_scan *rs)
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
		scan_problem(sc, rs->root, ret, "cannot check the access of uid %u (%s): nothing "
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
			scan_problem(sc, d->path, -EACCES, "permission denied for uid %u: not read on "
				"its behalf", (unsigned)sc->opt->cred->uid);
	}
	for (size_t i = 0; i < rs->n_entries; i++) {
		struct entry *e = &rs->entries[i];
		bool up = rs->dirs[e->dir].denied;

		e->denied = up || !ok[rs->n_dirs + i];
		if (e->denied && !up && !ret)
			scan_problem(sc, e->path, -EACCES, "permission denied for uid %u: not read or "
				"published on its behalf", (unsigned)sc->opt->cred->uid);
	}
	free(paths);
	free(is_dir);
	free(ok);
	return 0;
}

