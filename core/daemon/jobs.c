/*
 * The ops that run on the worker (core/daemon/ops.h says which): SCAN, VALIDATE, META_GET,
 * META_SET, LOOKUP by catalog path, and the LOAD jobs the tiers queue. Each posts its
 * progress and its final completion with daemon_post(); see docs/protocol.md for the
 * encodings.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/base/cred.h"
#include "core/base/file.h"
#include "core/base/log.h"
#include "core/catalog/scan.h"
#include "core/daemon/ops.h"
#include "core/daemon/tiers.h"
#include "core/format/st.h"
#include "core/tier/devcache.h"
#include "core/tier/hostcache.h"

/* Posts the final completion of @j: @res, @aux0/@aux1 and an optional message. */
static void WD_PRINTF(6, 7) finish(struct daemon *d, struct job *j, int res, uint64_t aux0,
				   uint64_t aux1, const char *fmt, ...)
{
	struct wd_cqe cqe = { .user_data = j->sqe.user_data, .res = res, .aux0 = aux0,
			      .aux1 = aux1 };
	char out[WD_DATA_SLOT_SIZE];
	va_list ap;

	if (fmt) {
		int n;

		va_start(ap, fmt);
		n = vsnprintf(out, sizeof(out), fmt, ap);
		va_end(ap);
		if (n > 0)
			cqe.data_len = (uint16_t)(n >= (int)sizeof(out) ? (int)sizeof(out) - 1 : n);
	}
	daemon_post(d, j->c, &cqe, &j->spare, out, cqe.data_len);
}

struct progress_ctx {
	struct daemon *d;
	struct job *j;
	uint64_t base;		/* added to done (validate: bytes of earlier files) */
	uint64_t total;		/* 0: use the callback's own total */
};

static void post_progress(uint64_t done, uint64_t total, void *arg)
{
	struct progress_ctx *p = arg;
	struct wd_cqe cqe = { .user_data = p->j->sqe.user_data, .flags = WD_CQE_F_PROGRESS,
			      .aux0 = p->base + done, .aux1 = p->total ? p->total : total };

	if (p->j->sqe.flags & WD_SQE_F_NO_PROGRESS)
		return;
	daemon_post(p->d, p->j->c, &cqe, NULL, NULL, 0);
}

/*
 * Scans @roots for @j's client (NULL: the daemon itself, at start or reload). Symlinks are
 * followed only into the model roots, and into @extra_root (a directory outside them that
 * root or the daemon's user asked for); files a client could not read itself are not
 * read on its behalf (docs/security.md).
 */
static void run_scan(struct daemon *d, struct job *j, const char *const *roots, size_t n,
		     const char *extra_root)
{
	struct progress_ctx pc = { .d = d, .j = j };
	struct scan_options opt = { .progress = j->c ? post_progress : NULL, .progress_arg = &pc };
	const char *allowed[DAEMON_MAX_ROOTS + 1];
	struct wd_cred cred;
	struct publish_report pr;
	struct scan_result res;
	size_t n_allowed = 0;
	int ret, added;

	for (size_t i = 0; i < d->n_roots; i++)
		allowed[n_allowed++] = d->roots[i];
	if (extra_root)
		allowed[n_allowed++] = extra_root;
	opt.allowed_roots = allowed;
	opt.n_allowed_roots = n_allowed;
	if (j->c && j->c->uid != 0 && j->c->uid != d->self_uid) {
		cred = (struct wd_cred){ .uid = j->c->uid, .gid = j->c->gid,
					 .groups = j->c->groups, .n_groups = j->c->n_groups };
		opt.cred = &cred;
	}
	ret = scan_roots(d->cat, roots, n, &opt, &res);
	if (ret) {
		log_warn("daemon", "\"scan failed\" err=%d", ret);
		if (j->c)
			finish(d, j, ret, 0, 0, "scan: %s", strerror(-ret));
		scan_result_free(&res);
		return;
	}
	added = daemon_publish(d, d->cat, &pr);
	log_info("daemon", "\"scan done\" roots=%zu models=%" PRIu64 " added=%" PRIu64
		 " updated=%" PRIu64 " removed=%" PRIu64 " problems=%zu published=%d"
		 " not_published_models=%u not_published_tensors=%" PRIu64, n,
		 res.n_models, res.n_added, res.n_updated, res.n_removed, res.n_problems, added,
		 pr.models_left, pr.tensors_left);
	if (j->c) {
		int found = res.n_models > INT32_MAX ? INT32_MAX : (int)res.n_models;
		struct registry_usage u;

		registry_usage(&d->view, &u);
		if (added < 0)
			finish(d, j, added, 0, 0, "scan: publishing the registry failed: %s",
			       strerror(-added));
		else if (pr.models_left || pr.tensors_left)
			/* Not a success: what was found cannot be served. aux0/aux1 count it. */
			finish(d, j, pr.err, pr.models_left, pr.tensors_left,
			       "scan: %u model(s) and %" PRIu64 " tensor(s) not published (%s; first: "
			       "%s); registry: %u/%u models, %u/%u tensors%s", pr.models_left,
			       pr.tensors_left, strerror(-pr.err), pr.first, u.models, u.model_cap,
			       u.tensors, u.tensor_cap, pr.err == -ENOSPC ?
			       "; restart weightd to size it from the catalog" : "");
		else if (res.n_problems)
			finish(d, j, found, res.n_added, res.n_updated + res.n_removed,
			       "scan: %zu problem(s); first: %s", res.n_problems,
			       res.problems[0].message);
		else
			finish(d, j, found, res.n_added, res.n_updated + res.n_removed, NULL);
	}
	scan_result_free(&res);
}

void ops_scan_roots(struct daemon *d)
{
	struct job j = { .c = NULL };

	if (d->n_roots)
		run_scan(d, &j, d->roots, d->n_roots, NULL);
}

/* @path (resolved) lies under one of the daemon's model roots. */
static bool under_roots(const struct daemon *d, const char *path)
{
	for (size_t i = 0; i < d->n_roots; i++) {
		char root[PATH_MAX];
		size_t n;

		if (!realpath(d->roots[i], root))
			continue;
		n = strlen(root);
		if ((n == 1 && root[0] == '/') ||
		    (!strncmp(path, root, n) && (path[n] == '/' || path[n] == '\0')))
			return true;
	}
	return false;
}

static void job_scan(struct daemon *d, struct job *j)
{
	const char *root = j->arg;

	if (j->arg_len) {
		char real[PATH_MAX];
		bool trusted = j->c->uid == 0 || j->c->uid == d->self_uid;

		if (strlen(j->arg) != j->arg_len) {
			finish(d, j, -EINVAL, 0, 0, "scan: the path contains a NUL byte");
			return;
		}
		/*
		 * The daemon reads model files only under its model roots; elsewhere only for
		 * root and for its own user, who could read those files anyway. The check is on
		 * the resolved path, so "ROOT/../etc" and symlinks count as where they lead.
		 */
		if (!realpath(root, real)) {
			if (trusted) {
				run_scan(d, j, &root, 1, NULL); /* reports why as a problem */
				return;
			}
			real[0] = '\0'; /* refused below, in the same words as any path outside */
		}
		if (!real[0] || !under_roots(d, real)) {
			if (!trusted) {
				log_info("daemon", "\"scan refused: outside the model roots\" uid=%u",
					 (unsigned)j->c->uid);
				finish(d, j, -EPERM, 0, 0, "scan: %.200s is not under the daemon's "
				       "model roots (--models); only root or uid %u may scan elsewhere",
				       root, (unsigned)d->self_uid);
				return;
			}
			run_scan(d, j, &root, 1, real);
			return;
		}
		run_scan(d, j, &root, 1, NULL);
	} else if (d->n_roots) {
		run_scan(d, j, d->roots, d->n_roots, NULL);
	} else {
		finish(d, j, -EINVAL, 0, 0, "scan: no path given and no --models roots");
	}
}

/* The model's name from the registry (the catalog is keyed by name). */
static int job_model(struct daemon *d, struct job *j, struct wd_reg_model *m, const char *op)
{
	uint32_t id;
	int ret;

	if (j->sqe.model == WD_ID_NONE) {
		finish(d, j, -EINVAL, 0, 0, "%s: the model must be given by index", op);
		return -EINVAL;
	}
	ret = ops_resolve(d, &j->sqe, NULL, 0, &id, m);
	if (ret)
		finish(d, j, ret, 0, 0, "%s: model %u: %s", op, j->sqe.model, strerror(-ret));
	return ret;
}

static int validate_file(struct daemon *d, struct job *j, const char *path, bool deep,
			 struct progress_ctx *pc, uint64_t *bytes)
{
	struct st_error err = { 0 };
	struct st_file f;
	int fd, ret;

	struct stat sb;

	fd = wd_open_regular(AT_FDCWD, path, 0, &sb);
	if (fd < 0) {
		ret = fd;
		finish(d, j, ret, 0, 0, "validate: %s: %s", path,
		       ret == -EINVAL ? "not a regular file" : strerror(-ret));
		return ret;
	}
	ret = st_open_fd(fd, path, &f, &err);
	if (!ret && deep) {
		struct st_deep_tensor *dt = calloc(f.n_tensors ? f.n_tensors : 1, sizeof(*dt));

		ret = dt ? st_deep_check_progress(fd, &f, dt, &err, post_progress, pc) : -ENOMEM;
		free(dt);
	}
	if (!ret)
		*bytes += st_data_bytes(&f);
	st_file_free(&f);
	close(fd);
	if (ret == -EINVAL)
		finish(d, j, -EBADMSG, 0, 0, "%s", err.message);
	else if (ret)
		finish(d, j, ret, 0, 0, "validate: %s: %s", err.message[0] ? err.message : path,
		       strerror(-ret));
	return ret;
}

static void job_validate(struct daemon *d, struct job *j)
{
	bool deep = j->sqe.arg[0] & WD_VALIDATE_DEEP;
	struct progress_ctx pc = { .d = d, .j = j };
	struct wd_reg_component rc = { 0 };
	struct catalog_model m;
	struct wd_reg_model rm;
	uint64_t files = 0, bytes = 0, nfiles = 0;
	int ret;

	if (j->sqe.arg[0] & ~(uint64_t)WD_VALIDATE_DEEP) {
		finish(d, j, -EINVAL, 0, 0, "validate: unknown flags in arg[0]");
		return;
	}
	if (job_model(d, j, &rm, "validate"))
		return;
	if (j->sqe.component != WD_ID_NONE &&
	    registry_read_component(&d->view, j->sqe.component, &rc)) {
		finish(d, j, -ENOENT, 0, 0, "validate: no component %u", j->sqe.component);
		return;
	}
	ret = catalog_get_model(d->cat, rm.name, &m);
	if (ret) {
		finish(d, j, ret, 0, 0, "validate: %s: %s", rm.name, strerror(-ret));
		return;
	}
	for (size_t i = 0; i < m.n_components; i++) {
		struct catalog_component *c = &m.components[i];

		if (j->sqe.component != WD_ID_NONE && strcmp(c->name, rc.name))
			continue;
		for (size_t k = 0; k < c->n_files; k++) {
			if (c->files[k].kind != MODEL_FILE_ST)
				continue;
			nfiles++;
			pc.total += deep ? c->files[k].data_bytes : 0;
		}
	}
	if (!deep)
		pc.total = nfiles;
	for (size_t i = 0; i < m.n_components; i++) {
		struct catalog_component *c = &m.components[i];

		if (j->sqe.component != WD_ID_NONE && strcmp(c->name, rc.name))
			continue;
		for (size_t k = 0; k < c->n_files; k++) {
			if (c->files[k].kind != MODEL_FILE_ST)
				continue;
			pc.base = deep ? bytes : files;
			if (validate_file(d, j, c->files[k].path, deep, &pc, &bytes))
				goto out;
			files++;
			if (!deep)
				post_progress(0, 0, &(struct progress_ctx){ .d = d, .j = j,
					      .base = files, .total = nfiles });
		}
	}
	finish(d, j, 0, files, bytes, NULL);
out:
	catalog_model_free(&m);
}

static void job_meta(struct daemon *d, struct job *j)
{
	const char *op = j->sqe.opcode == WD_OP_META_GET ? "meta get" : "meta set";
	struct wd_reg_model rm;
	char *value = NULL;
	size_t klen;
	int ret;

	if (job_model(d, j, &rm, op))
		return;
	klen = strnlen(j->arg, j->arg_len);
	if (!klen) {
		finish(d, j, -EINVAL, 0, 0, "%s: empty key", op);
		return;
	}
	if (j->sqe.opcode == WD_OP_META_GET) {
		if (klen != j->arg_len) {
			finish(d, j, -EINVAL, 0, 0, "%s: the key contains a NUL byte", op);
			return;
		}
		ret = catalog_meta_get(d->cat, rm.name, j->arg, &value);
		if (ret) {
			finish(d, j, ret, 0, 0, "%s: %s: key \"%s\": %s", op, rm.name, j->arg,
			       strerror(-ret));
			return;
		}
		size_t vlen = strlen(value);
		struct wd_cqe cqe = { .user_data = j->sqe.user_data,
				      .res = vlen > INT32_MAX ? INT32_MAX : (int32_t)vlen,
				      .data_len = (uint16_t)(vlen < WD_DATA_SLOT_SIZE ?
							     vlen : WD_DATA_SLOT_SIZE) };

		/* res is the full length: a client that sees res > data_len knows it is cut. */
		daemon_post(d, j->c, &cqe, &j->spare, value, cqe.data_len);
		free(value);
		return;
	}
	if (klen == j->arg_len) {
		finish(d, j, -EINVAL, 0, 0, "%s: payload must be \"key\\0value\"", op);
		return;
	}
	/* The value runs to arg_len; j->arg is NUL-terminated right after it. */
	if (strlen(j->arg + klen + 1) != j->arg_len - klen - 1) {
		finish(d, j, -EINVAL, 0, 0, "%s: the value contains a NUL byte", op);
		return;
	}
	/* Checked here too so that the refusal says which half is wrong; never quoted raw. */
	if (!catalog_meta_text_ok(j->arg)) {
		finish(d, j, -EILSEQ, 0, 0, "%s: %s: the key is not valid UTF-8", op, rm.name);
		return;
	}
	if (!catalog_meta_text_ok(j->arg + klen + 1)) {
		finish(d, j, -EILSEQ, 0, 0, "%s: %s: the value of key \"%s\" is not valid UTF-8",
		       op, rm.name, j->arg);
		return;
	}
	ret = catalog_meta_set(d->cat, rm.name, j->arg, j->arg + klen + 1);
	if (ret)
		finish(d, j, ret, 0, 0, "%s: %s: %s", op, rm.name, strerror(-ret));
	else
		finish(d, j, 0, 0, 0, NULL);
}

/* LOOKUP of a path: the catalog knows which model a path or one of its files belongs to. */
static void job_lookup(struct daemon *d, struct job *j)
{
	char name[WD_NAME_MAX];
	struct wd_reg_model m;
	int64_t cid;
	uint32_t id;
	int ret;

	if (strlen(j->arg) != j->arg_len) {
		finish(d, j, -EINVAL, 0, 0, "lookup: the path contains a NUL byte");
		return;
	}
	ret = catalog_resolve(d->cat, j->arg, &cid, name, sizeof(name));
	if (!ret)
		ret = registry_find_model(&d->view, name, &id, &m);
	if (ret) {
		finish(d, j, ret, 0, 0, "lookup: model \"%.200s\": %s", j->arg, strerror(-ret));
		return;
	}
	finish(d, j, (int)id, registry_generation(&d->view), m.flags, NULL);
}

void ops_run_job(struct daemon *d, struct job *j)
{
	switch (j->sqe.opcode) {
	case WD_OP_SCAN:
		job_scan(d, j);
		break;
	case WD_OP_VALIDATE:
		job_validate(d, j);
		break;
	case WD_OP_META_GET:
	case WD_OP_META_SET:
		job_meta(d, j);
		break;
	case WD_OP_LOAD:
		daemon_tier_load_job(d, j);
		break;
	case WD_OP_LOOKUP:
		job_lookup(d, j);
		break;
	default:
		finish(d, j, -EOPNOTSUPP, 0, 0, NULL);
		break;
	}
}
