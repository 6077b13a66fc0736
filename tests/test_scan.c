/*
 * Discovery on real trees: a scenario table that changes one tree step by step (add,
 * rewrite, remove, break and repair a sharded checkpoint, symlink loops, dangling links,
 * files that vanish mid-scan, variant preference) and checks after every rescan what was
 * read, what changed in the catalog, and what problems were reported. Further tests: the
 * generator's demo set, permission denied (as an unprivileged user), nested roots and
 * name collisions, progress reporting.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/helpers_tmp.h"
#include "core/catalog/catalog.h"
#include "core/base/common.h"
#include "core/format/gen.h"
#include "core/catalog/scan.h"
#include "core/format/st_write.h"
#include "core/base/statedir.h"

static char tmp_root[1024];

static void fmt(char *buf, size_t size, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t size, const char *f, ...)
{
	va_list ap;
	int n;

	va_start(ap, f);
	n = vsnprintf(buf, size, f, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= size)
		fail_msg("path too long: %s", buf);
}

static void parent_mkdir(const char *path)
{
	char buf[4096];

	fmt(buf, sizeof(buf), "%s", path);
	*strrchr(buf, '/') = '\0';
	assert_int_equal(mkdir_p(buf, 0755), 0);
}

/* DIR/REL gets F16 vector tensors named by the comma-separated @names. */
static void write_st(const char *dir, const char *rel, const char *names, uint64_t dim)
{
	struct st_write_tensor t[32];
	char path[4096], buf[1024], *save = NULL;
	size_t n = 0;
	int rc;

	fmt(path, sizeof(path), "%s/%s", dir, rel);
	parent_mkdir(path);
	fmt(buf, sizeof(buf), "%s", names);
	for (char *s = strtok_r(buf, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
		memset(&t[n], 0, sizeof(t[n]));
		t[n].name = s;
		t[n].dtype = ST_F16;
		t[n].rank = 1;
		t[n].shape[0] = dim;
		n++;
	}
	rc = st_write_file(path, t, n, NULL, 0, 11);
	if (rc)
		fail_msg("st_write_file(%s) = %d", path, rc);
}

static void write_text(const char *dir, const char *rel, const char *text)
{
	char path[4096];
	FILE *f;

	fmt(path, sizeof(path), "%s/%s", dir, rel);
	parent_mkdir(path);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

static void rm(const char *dir, const char *rel)
{
	char cmd[4200];

	fmt(cmd, sizeof(cmd), "rm -rf '%s/%s'", dir, rel);
	assert_int_equal(system(cmd), 0);
}

static void symlink_at(const char *target, const char *dir, const char *rel)
{
	char path[4096];

	fmt(path, sizeof(path), "%s/%s", dir, rel);
	assert_int_equal(symlink(target, path), 0);
}

static void problems_str(const struct scan_result *r, char *buf, size_t size)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < r->n_problems && o < size; i++)
		o += (size_t)snprintf(buf + o, size - o, "\n    [%d] %s", r->problems[i].err,
				      r->problems[i].message);
}

static const struct scan_problem *find_problem(const struct scan_result *r, int err,
					       const char *path_part)
{
	for (size_t i = 0; i < r->n_problems; i++)
		if (r->problems[i].err == err && strstr(r->problems[i].path, path_part))
			return &r->problems[i];
	return NULL;
}

static int count_tensors(const struct catalog_tensor *t, void *arg)
{
	if (t->data_start <= 8 || t->end < t->begin || t->dtype != ST_F16)
		return -EBADMSG;
	++*(int *)arg;
	return 0;
}

/* ---- the scenario ---- */

struct world {
	char models[4096];
	char state[4096];
	struct catalog *cat;
};

static struct world W;

#define INDEX_2                                                                            \
	"{\"metadata\": {\"total_size\": 32}, \"weight_map\": {"                          \
	"\"a\": \"model-00001-of-00002.safetensors\","                                    \
	"\"b\": \"model-00001-of-00002.safetensors\","                                    \
	"\"c\": \"model-00002-of-00002.safetensors\","                                    \
	"\"d\": \"model-00002-of-00002.safetensors\"}}"

static void mut_initial(const char *d)
{
	write_st(d, "a.safetensors", "w1,w2", 4);
	write_st(d, "llm/model-00001-of-00002.safetensors", "a,b", 4);
	write_st(d, "llm/model-00002-of-00002.safetensors", "c,d", 4);
	write_text(d, "llm/model.safetensors.index.json", INDEX_2);
	write_text(d, "llm/config.json", "{}");
	write_text(d, "sd/model_index.json",
		   "{\"_class_name\": \"StableDiffusionPipeline\","
		   "\"unet\": [\"diffusers\", \"UNet2DConditionModel\"],"
		   "\"vae\": [\"diffusers\", \"AutoencoderKL\"],"
		   "\"text_encoder\": [\"transformers\", \"CLIPTextModel\"],"
		   "\"scheduler\": [\"diffusers\", \"PNDMScheduler\"]}");
	write_st(d, "sd/unet/diffusion_pytorch_model.safetensors", "u1,u2", 8);
	write_st(d, "sd/vae/diffusion_pytorch_model.fp16.safetensors", "v1", 2);
	write_st(d, "sd/text_encoder/model.safetensors", "t1", 2);
	write_text(d, "sd/scheduler/scheduler_config.json", "{}");
}

static void mut_none(const char *d)
{
	(void)d;
}

static void mut_rewrite(const char *d)
{
	write_st(d, "a.safetensors", "w1,w2,w3,w4", 4);
}

static void mut_add(const char *d)
{
	write_st(d, "extra/b.safetensors", "x", 16);
}

static void mut_remove(const char *d)
{
	rm(d, "extra");
}

static void mut_drop_shard(const char *d)
{
	rm(d, "llm/model-00002-of-00002.safetensors");
}

static void mut_restore_shard(const char *d)
{
	write_st(d, "llm/model-00002-of-00002.safetensors", "c,d", 4);
}

static void mut_disagree(const char *d)
{
	write_text(d, "llm/model.safetensors.index.json",
		   "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
		   "\"b\": \"model-00001-of-00002.safetensors\","
		   "\"c\": \"model-00001-of-00002.safetensors\","
		   "\"d\": \"model-00002-of-00002.safetensors\"}}");
}

static void mut_links(const char *d)
{
	/* A directory symlink to an ancestor, and a model-named link to nothing. */
	symlink_at("../..", d, "sd/unet/loop");
	symlink_at("does-not-exist.safetensors", d, "ghost.safetensors");
}

static void mut_add_c(const char *d)
{
	write_st(d, "c.safetensors", "c", 2);
}

static void mut_vae_plain(const char *d)
{
	write_st(d, "sd/vae/diffusion_pytorch_model.safetensors", "v1,v2", 2);
}

static void mut_rm_sd(const char *d)
{
	rm(d, "sd");
}

/* Unlinks the file just before the reader opens it: a file vanishing mid-scan. */
static void hook_vanish(const char *path, void *arg)
{
	(void)arg;
	if (strstr(path, "/c.safetensors"))
		unlink(path);
}

static void chk_initial(void)
{
	struct catalog_model_list l;
	struct catalog_model m;
	char path[4096];
	int n = 0;

	assert_int_equal(catalog_list_models(W.cat, &l), 0);
	if (l.n != 3 || strcmp(l.models[0].name, "a") || strcmp(l.models[1].name, "llm") ||
	    strcmp(l.models[2].name, "sd"))
		fail_msg("models: %zu (%s, ...)", l.n, l.n ? l.models[0].name : "-");
	assert_int_equal(l.models[0].format, MODEL_SINGLE);
	assert_int_equal(l.models[1].format, MODEL_SHARDED);
	assert_int_equal(l.models[2].format, MODEL_DIFFUSERS);
	assert_int_equal(l.models[2].n_components, 3);
	assert_string_equal(l.models[2].components[0].name, "text_encoder");
	assert_string_equal(l.models[2].components[1].name, "unet");
	assert_string_equal(l.models[2].components[2].name, "vae");
	assert_int_equal(l.models[1].bytes, 32);
	assert_int_equal(l.models[1].components[0].dtype_bytes[ST_F16], 32);
	catalog_model_list_free(&l);

	/* By path: the index, the directory's files, a shard. */
	fmt(path, sizeof(path), "%s/llm/model-00002-of-00002.safetensors", W.models);
	assert_int_equal(catalog_get_model(W.cat, path, &m), 0);
	assert_string_equal(m.name, "llm");
	assert_int_equal(m.n_components, 1);
	assert_int_equal(m.components[0].n_files, 2);
	assert_non_null(m.components[0].index_path);
	assert_int_equal(catalog_model_tensors(W.cat, m.id, count_tensors, &n), 0);
	assert_int_equal(n, 4);
	catalog_model_free(&m);
}

static void expect_model(const char *name, bool valid, uint64_t n_tensors, const char *error_part)
{
	struct catalog_model m;
	int rc = catalog_get_model(W.cat, name, &m);

	if (rc)
		fail_msg("catalog_get_model(%s) = %d", name, rc);
	if (m.valid != valid || m.n_tensors != n_tensors ||
	    (error_part && (!m.error || !strstr(m.error, error_part))))
		fail_msg("model %s: valid %d tensors %llu error %s; want valid %d tensors %llu "
			 "error containing %s", name, m.valid, (unsigned long long)m.n_tensors,
			 m.error ? m.error : "(none)", valid, (unsigned long long)n_tensors,
			 error_part ? error_part : "(none)");
	catalog_model_free(&m);
}

/* A header whose one entry is not a tensor description. */
static void mut_bad(const char *d)
{
	char path[4096];
	FILE *f;

	fmt(path, sizeof(path), "%s/bad.safetensors", d);
	f = fopen(path, "wb");
	assert_non_null(f);
	fwrite("\x10\0\0\0\0\0\0\0{\"a\":{\"x\":1}}   ", 1, 24, f);
	assert_int_equal(fclose(f), 0);
}

/* The invalid file is a model, invalid, with the parser's error kept per file. */
static void chk_bad(void)
{
	struct catalog_model m;
	const struct catalog_file *f;

	expect_model("bad", false, 0, "bad.safetensors");
	assert_int_equal(catalog_get_model(W.cat, "bad", &m), 0);
	assert_int_equal(m.n_components, 1);
	assert_int_equal(m.components[0].n_files, 1);
	f = &m.components[0].files[0];
	if (f->valid || f->error_code != ST_ERR_ENTRY || !f->error_tensor ||
	    strcmp(f->error_tensor, "a") || !f->error_message)
		fail_msg("file: valid %d code %d (%s) tensor %s offset %llu message %s", f->valid,
			 f->error_code, st_code_name(f->error_code),
			 f->error_tensor ? f->error_tensor : "(none)",
			 (unsigned long long)f->error_offset,
			 f->error_message ? f->error_message : "(none)");
	catalog_model_free(&m);
}

static void chk_rewrite(void)
{
	expect_model("a", true, 4, NULL);
}

static void chk_add(void)
{
	expect_model("b", true, 1, NULL);
}

static void chk_remove(void)
{
	struct catalog_model m;
	char path[4096];

	assert_int_equal(catalog_get_model(W.cat, "b", &m), -ENOENT);
	fmt(path, sizeof(path), "%s/extra/b.safetensors", W.models);
	assert_int_equal(catalog_get_model(W.cat, path, &m), -ENOENT);
}

static void chk_drop_shard(void)
{
	expect_model("llm", false, 2, "model-00002-of-00002.safetensors");
}

static void chk_restore(void)
{
	expect_model("llm", true, 4, NULL);
}

static void chk_disagree(void)
{
	expect_model("llm", false, 4, "tensor \"c\"");
}

static void chk_links(void)
{
	/* The loop was not followed: the diffusers model still has its three components. */
	expect_model("sd", true, 4, NULL);
}

static void chk_vae_plain(void)
{
	struct catalog_model m;

	assert_int_equal(catalog_get_model(W.cat, "sd", &m), 0);
	assert_int_equal(m.n_components, 3);
	if (!strstr(m.components[2].files[0].path, "vae/diffusion_pytorch_model.safetensors"))
		fail_msg("vae uses %s", m.components[2].files[0].path);
	assert_int_equal(m.components[2].n_tensors, 2);
	catalog_model_free(&m);
}

static void chk_rm_sd(void)
{
	struct catalog_scope s;
	char root[4096];

	fmt(root, sizeof(root), "%s/sd", W.models);
	assert_int_equal(catalog_scope_load(W.cat, root, &s), 0);
	if (s.n_files || s.n_models)
		fail_msg("%zu files and %zu models left under %s", s.n_files, s.n_models, root);
	catalog_scope_free(&s);
}

struct step {
	const char *label;
	void (*mutate)(const char *dir);
	void (*hook)(const char *path, void *arg);
	uint64_t models, invalid;
	int64_t parsed; /* -1: not checked */
	uint64_t added, updated, removed;
	size_t problems;
	bool wrote;
	void (*check)(void);
	int problem_err[3]; /* errors that must be among the problems */
};

static const struct step steps[] = {
	/* a + llm index + 2 shards + model_index.json + unet + vae + text_encoder */
	{ "initial", mut_initial, NULL, 3, 0, 8, 3, 0, 0, 0, true, chk_initial, { 0 } },
	{ "unchanged", mut_none, NULL, 3, 0, 0, 0, 0, 0, 0, false, NULL, { 0 } },
	{ "rewrite-single", mut_rewrite, NULL, 3, 0, 1, 0, 1, 0, 0, true, chk_rewrite, { 0 } },
	{ "add-file", mut_add, NULL, 4, 0, 1, 1, 0, 0, 0, true, chk_add, { 0 } },
	{ "remove-file", mut_remove, NULL, 3, 0, 0, 0, 0, 1, 0, true, chk_remove, { 0 } },
	/* A changed model is read whole: index + the remaining shard. */
	{ "missing-shard", mut_drop_shard, NULL, 3, 1, 2, 0, 1, 0, 0, true, chk_drop_shard,
	  { 0 } },
	{ "restore-shard", mut_restore_shard, NULL, 3, 0, 3, 0, 1, 0, 0, true, chk_restore,
	  { 0 } },
	{ "index-disagrees", mut_disagree, NULL, 3, 1, 3, 0, 1, 0, 0, true, chk_disagree, { 0 } },
	{ "unchanged-again", mut_none, NULL, 3, 1, 0, 0, 0, 0, 0, false, NULL, { 0 } },
	{ "symlink-loop-and-dangling", mut_links, NULL, 3, 1, 0, 0, 0, 0, 2, false, chk_links,
	  { -ELOOP, -ENOENT } },
	{ "vanishes-mid-scan", mut_add_c, hook_vanish, 3, 1, 1, 0, 0, 0, 3, false, NULL,
	  { -ENOENT } },
	{ "variant-preference", mut_vae_plain, NULL, 3, 1, 3, 0, 1, 0, 2, true, chk_vae_plain,
	  { 0 } },
	{ "remove-diffusers", mut_rm_sd, NULL, 2, 1, 0, 0, 0, 1, 1, true, chk_rm_sd, { 0 } },
	{ "invalid-file", mut_bad, NULL, 3, 2, 1, 1, 0, 0, 1, true, chk_bad, { 0 } },
	{ "unchanged-final", mut_none, NULL, 3, 2, 0, 0, 0, 0, 1, false, NULL, { 0 } },
};

static void test_scenario(void **state)
{
	(void)state;
	fmt(W.models, sizeof(W.models), "%s/scenario/models", tmp_root);
	fmt(W.state, sizeof(W.state), "%s/scenario/state", tmp_root);
	assert_int_equal(mkdir_p(W.models, 0755), 0);
	assert_int_equal(catalog_open(W.state, &W.cat), 0);
	for (size_t i = 0; i < ARRAY_SIZE(steps); i++) {
		const struct step *s = &steps[i];
		struct scan_options opt = { .before_read = s->hook };
		const char *roots[] = { W.models };
		struct scan_result r;
		char probs[4096];
		int rc;

		s->mutate(W.models);
		rc = scan_roots(W.cat, roots, 1, &opt, &r);
		problems_str(&r, probs, sizeof(probs));
		if (getenv("TEST_VERBOSE"))
			print_message("%-26s rc %d models %llu invalid %llu parsed %llu "
				      "reused %llu +%llu ~%llu -%llu wrote %d %.2f ms%s\n",
				      s->label, rc, (unsigned long long)r.n_models,
				      (unsigned long long)r.n_invalid,
				      (unsigned long long)r.n_parsed,
				      (unsigned long long)r.n_reused, (unsigned long long)r.n_added,
				      (unsigned long long)r.n_updated,
				      (unsigned long long)r.n_removed, r.wrote,
				      (double)r.elapsed_ns / 1e6, probs);
		if (rc || r.n_models != s->models || r.n_invalid != s->invalid ||
		    (s->parsed >= 0 && r.n_parsed != (uint64_t)s->parsed) ||
		    r.n_added != s->added || r.n_updated != s->updated ||
		    r.n_removed != s->removed || r.n_problems != s->problems || r.wrote != s->wrote)
			fail_msg("step %s: rc %d models %llu invalid %llu parsed %llu reused %llu "
				 "added %llu updated %llu removed %llu problems %zu wrote %d; want "
				 "models %llu invalid %llu parsed %lld added %llu updated %llu "
				 "removed %llu problems %zu wrote %d; problems:%s",
				 s->label, rc, (unsigned long long)r.n_models,
				 (unsigned long long)r.n_invalid, (unsigned long long)r.n_parsed,
				 (unsigned long long)r.n_reused, (unsigned long long)r.n_added,
				 (unsigned long long)r.n_updated, (unsigned long long)r.n_removed,
				 r.n_problems, r.wrote, (unsigned long long)s->models,
				 (unsigned long long)s->invalid, (long long)s->parsed,
				 (unsigned long long)s->added, (unsigned long long)s->updated,
				 (unsigned long long)s->removed, s->problems, s->wrote, probs);
		for (size_t k = 0; k < ARRAY_SIZE(s->problem_err) && s->problem_err[k]; k++)
			if (!find_problem(&r, s->problem_err[k], W.models))
				fail_msg("step %s: no problem with error %d; problems:%s", s->label,
					 s->problem_err[k], probs);
		if (s->check)
			s->check();
		scan_result_free(&r);
	}
	catalog_close(W.cat);
	W.cat = NULL;
}

/* The generator's demo set: a diffusers SD folder, a sharded LLaMA and a lone VAE. */
static void test_demo_preset(void **state)
{
	static const struct {
		const char *name;
		int format;
		const char *arch;
	} want[] = {
		{ "llama-tiny", MODEL_SHARDED, "llama" },
		{ "sd-tiny", MODEL_DIFFUSERS, "sd1" },
		{ "vae-tiny", MODEL_SINGLE, "vae" },
	};
	char models[4096], st[4096];
	struct catalog_model_list l;
	struct catalog *cat;
	struct scan_result r;
	const char *roots[1];

	(void)state;
	fmt(models, sizeof(models), "%s/demo/models", tmp_root);
	fmt(st, sizeof(st), "%s/demo/state", tmp_root);
	assert_int_equal(gen_preset("demo", models, NULL), 0);
	assert_int_equal(catalog_open(st, &cat), 0);
	roots[0] = models;
	assert_int_equal(scan_roots(cat, roots, 1, NULL, &r), 0);
	assert_int_equal(r.n_problems, 0);
	scan_result_free(&r);
	assert_int_equal(catalog_list_models(cat, &l), 0);
	assert_int_equal(l.n, ARRAY_SIZE(want));
	for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
		const struct catalog_model *m = &l.models[i];

		if (strcmp(m->name, want[i].name) || m->format != want[i].format ||
		    strcmp(m->arch, want[i].arch) || !m->valid)
			fail_msg("model %zu: %s %s %s valid %d (%s); want %s %s %s", i, m->name,
				 model_format_name(m->format), m->arch, m->valid,
				 m->error ? m->error : "", want[i].name,
				 model_format_name(want[i].format), want[i].arch);
	}
	catalog_model_list_free(&l);
	/* An unchanged rescan reads nothing and writes nothing. */
	assert_int_equal(scan_roots(cat, roots, 1, NULL, &r), 0);
	if (r.n_parsed || r.wrote || r.n_reused != r.n_files)
		fail_msg("rescan parsed %llu reused %llu of %llu wrote %d",
			 (unsigned long long)r.n_parsed, (unsigned long long)r.n_reused,
			 (unsigned long long)r.n_files, r.wrote);
	scan_result_free(&r);
	catalog_close(cat);
}

/*
 * Scans @models into @state and checks that the locked directory and the locked file
 * are EACCES problems while the readable model is found. Runs as the current user.
 */
static int scan_locked(const char *models, const char *state)
{
	const char *roots[] = { models };
	struct catalog *cat;
	struct scan_result r;
	int rc;

	rc = catalog_open(state, &cat);
	if (rc) {
		fprintf(stderr, "catalog_open = %d\n", rc);
		return 10;
	}
	rc = scan_roots(cat, roots, 1, NULL, &r);
	if (rc || r.n_models != 1 || !find_problem(&r, -EACCES, "/locked") ||
	    !find_problem(&r, -EACCES, "/secret.safetensors")) {
		char probs[4096];

		problems_str(&r, probs, sizeof(probs));
		fprintf(stderr, "scan rc %d models %llu problems:%s\n", rc,
			(unsigned long long)r.n_models, probs);
		rc = 11;
	}
	scan_result_free(&r);
	catalog_close(cat);
	return rc;
}

static void test_permission_denied(void **state)
{
	char base[] = "/tmp/wd-scan-perm.XXXXXX";
	char models[4096], st[4096], path[4096], cmd[4200];
	int status;
	pid_t pid;

	(void)state;
	/* Under /tmp itself, so that an unprivileged user can reach it. */
	assert_non_null(mkdtemp(base));
	assert_int_equal(chmod(base, 0755), 0);
	fmt(models, sizeof(models), "%s/models", base);
	fmt(st, sizeof(st), "%s/state", base);
	write_st(models, "ok.safetensors", "a", 2);
	write_st(models, "locked/hidden.safetensors", "a", 2);
	write_st(models, "secret.safetensors", "a", 2);
	assert_int_equal(mkdir_p(st, 0777), 0);
	assert_int_equal(chmod(st, 0777), 0);
	fmt(path, sizeof(path), "%s/locked", models);
	assert_int_equal(chmod(path, 0), 0);
	fmt(path, sizeof(path), "%s/secret.safetensors", models);
	assert_int_equal(chmod(path, 0), 0);

	if (geteuid() != 0) {
		assert_int_equal(scan_locked(models, st), 0);
	} else {
		/* Root bypasses permission checks: scan as "nobody" in a child instead. */
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			if (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
				_exit(77);
			_exit(scan_locked(models, st));
		}
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status));
		if (WEXITSTATUS(status) == 77) {
			print_message("SKIP permission test: cannot drop privileges to uid "
				      "65534\n");
			fmt(cmd, sizeof(cmd), "chmod -R u+rwx '%s'; rm -rf '%s'", base, base);
			assert_int_equal(system(cmd), 0);
			skip();
		}
		if (WEXITSTATUS(status) != 0)
			fail_msg("the unprivileged scan failed with %d", WEXITSTATUS(status));
	}
	fmt(cmd, sizeof(cmd), "chmod -R u+rwx '%s'; rm -rf '%s'", base, base);
	assert_int_equal(system(cmd), 0);
}

/* Nested roots are scanned once; same default names get distinct, stable names. */
static void test_nested_roots_and_names(void **state)
{
	char models[4096], st[4096], inner[4096];
	struct catalog_model_list l;
	struct catalog *cat;
	struct scan_result r;
	char first_names[2][256];

	(void)state;
	fmt(models, sizeof(models), "%s/nested/models", tmp_root);
	fmt(st, sizeof(st), "%s/nested/state", tmp_root);
	fmt(inner, sizeof(inner), "%s/b", models);
	write_st(models, "a/x/model.safetensors", "p", 2);
	write_st(models, "b/x/model.safetensors", "q", 2);
	assert_int_equal(catalog_open(st, &cat), 0);
	{
		const char *roots[] = { inner, models, models };

		assert_int_equal(scan_roots(cat, roots, 3, NULL, &r), 0);
	}
	assert_int_equal(r.n_models, 2);
	assert_int_equal(r.n_added, 2);
	scan_result_free(&r);
	assert_int_equal(catalog_list_models(cat, &l), 0);
	assert_int_equal(l.n, 2);
	/* One keeps "x", the other gets "x-" and a hash of its path. */
	if (strcmp(l.models[0].name, "x") || strncmp(l.models[1].name, "x-", 2))
		fail_msg("names %s, %s", l.models[0].name, l.models[1].name);
	for (size_t i = 0; i < 2; i++)
		fmt(first_names[i], sizeof(first_names[i]), "%s", l.models[i].name);
	catalog_model_list_free(&l);
	/* Scanning only the inner root keeps the names and touches nothing outside it. */
	{
		const char *roots[] = { inner };

		assert_int_equal(scan_roots(cat, roots, 1, NULL, &r), 0);
		assert_int_equal(r.n_models, 1);
		assert_int_equal(r.n_removed, 0);
		scan_result_free(&r);
	}
	assert_int_equal(catalog_list_models(cat, &l), 0);
	assert_int_equal(l.n, 2);
	for (size_t i = 0; i < 2; i++)
		assert_string_equal(l.models[i].name, first_names[i]);
	catalog_model_list_free(&l);
	catalog_close(cat);
}

struct progress_log {
	unsigned calls;
	uint64_t last_done, last_total;
	bool backwards;
};

static void on_progress(uint64_t done, uint64_t total, void *arg)
{
	struct progress_log *p = arg;

	if (done < p->last_done || done > total)
		p->backwards = true;
	p->calls++;
	p->last_done = done;
	p->last_total = total;
}

static void test_progress_and_threads(void **state)
{
	static const unsigned threads[] = { 1, 3, 0 };
	char models[4096], st[4096];

	(void)state;
	fmt(models, sizeof(models), "%s/progress/models", tmp_root);
	for (int i = 0; i < 40; i++) {
		char rel[64];

		fmt(rel, sizeof(rel), "d%d/m%d.safetensors", i % 4, i);
		write_st(models, rel, "a,b", 2);
	}
	for (size_t t = 0; t < ARRAY_SIZE(threads); t++) {
		struct progress_log p = { 0 };
		struct scan_options opt = { .threads = threads[t], .progress = on_progress,
					    .progress_arg = &p };
		const char *roots[] = { models };
		struct catalog *cat;
		struct scan_result r;

		fmt(st, sizeof(st), "%s/progress/state-%zu", tmp_root, t);
		assert_int_equal(catalog_open(st, &cat), 0);
		assert_int_equal(scan_roots(cat, roots, 1, &opt, &r), 0);
		if (r.n_models != 40 || r.n_parsed != 40 || !p.calls || p.backwards ||
		    p.last_done != 40 || p.last_total != 40)
			fail_msg("threads %u: models %llu parsed %llu progress calls %u "
				 "last %llu/%llu backwards %d", threads[t],
				 (unsigned long long)r.n_models,
				 (unsigned long long)r.n_parsed, p.calls,
				 (unsigned long long)p.last_done, (unsigned long long)p.last_total,
				 p.backwards);
		scan_result_free(&r);
		catalog_close(cat);
	}
}

struct root_case {
	const char *label;
	const char *root; /* relative to the test's directory */
	uint64_t models;
	int problem_err;  /* 0: no problem expected */
	bool wrote;
};

/* Unusual roots: missing, empty, a lone file, a file that is no model, given twice. */
static void test_roots_table(void **state)
{
	static const struct root_case cases[] = {
		{ "missing", "no/such/dir", 0, -ENOENT, false },
		{ "empty-dir", "empty", 0, 0, true },
		{ "empty-dir-again", "empty", 0, 0, false },
		{ "lone-file", "files/one.safetensors", 1, 0, true },
		{ "lone-file-again", "files/one.safetensors", 1, 0, false },
		{ "not-a-model-file", "files/config.json", 0, -EINVAL, false },
		{ "dir-holding-the-file", "files", 2, 0, true },
	};
	char base[4096], st[4096], root[4200];
	struct catalog *cat;

	(void)state;
	fmt(base, sizeof(base), "%s/roots", tmp_root);
	fmt(st, sizeof(st), "%s/roots-state", tmp_root);
	fmt(root, sizeof(root), "%s/empty", base);
	assert_int_equal(mkdir_p(root, 0755), 0);
	write_st(base, "files/one.safetensors", "a", 2);
	write_st(base, "files/two.safetensors", "a", 2);
	write_text(base, "files/config.json", "{}");
	assert_int_equal(catalog_open(st, &cat), 0);
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct root_case *c = &cases[i];
		const char *roots[] = { root, root };
		struct scan_result r;
		char probs[4096];
		int rc;

		fmt(root, sizeof(root), "%s/%s", base, c->root);
		rc = scan_roots(cat, roots, 2, NULL, &r);
		problems_str(&r, probs, sizeof(probs));
		if (rc || r.n_models != c->models || r.wrote != c->wrote ||
		    r.n_problems != (c->problem_err ? 1u : 0u) ||
		    (c->problem_err && r.problems[0].err != c->problem_err))
			fail_msg("case %s: rc %d models %llu wrote %d; want models %llu wrote %d "
				 "problem %d; problems:%s", c->label, rc,
				 (unsigned long long)r.n_models, r.wrote,
				 (unsigned long long)c->models, c->wrote, c->problem_err, probs);
		scan_result_free(&r);
	}
	catalog_close(cat);
}


/* ---- hostile trees (issue 12; docs/security.md) ------------------------------------- */

enum { NO_UID = 0 };

struct hostile_row {
	const char *label;
	void (*build)(const char *root, const char *outside);
	const char *scan;	   /* the root to scan, relative to the row's dir; NULL: "m" */
	bool allowed;		   /* allowed_roots = { the row's "m" } (what the daemon passes) */
	uid_t cred_uid;		   /* scan on behalf of this uid (NO_UID: the caller's own) */
	uint64_t max_entries;
	unsigned max_depth;
	bool full_scan_first;	   /* scan once without limits and credentials before */
	uint64_t models;	   /* models the (last) scan reports */
	const char *problem;	   /* a problem message must hold this; NULL: no problem */
};

static void h_link_to_slash(const char *m, const char *out)
{
	(void)out;
	write_st(m, "a.safetensors", "w", 2);
	symlink_at("/", m, "up");
}

static void h_sibling_links(const char *m, const char *out)
{
	(void)out;
	write_st(m, "d1/a.safetensors", "w", 2);
	symlink_at("d1", m, "l1");
	symlink_at("d1", m, "l2");
}

static void h_twenty(const char *m, const char *out)
{
	char rel[64];

	(void)out;
	for (int i = 0; i < 20; i++) {
		fmt(rel, sizeof(rel), "f%02d.safetensors", i);
		write_st(m, rel, "w", 2);
	}
}

static void h_deep(const char *m, const char *out)
{
	(void)out;
	write_st(m, "1/2/3/4/5/6/deep.safetensors", "w", 2);
	write_st(m, "top.safetensors", "w", 2);
}

/*
 * The part of a model under @m that lives outside the roots: writes the safetensors file
 * @file (tensors @names) under @out, and links @link, under @m, to @target under @out. The
 * three "... symlinked out" rows differ only in the layout around that link.
 */
static void plant_outside(const char *m, const char *out, const char *file, const char *names,
			  const char *target, const char *link)
{
	char path[4096];

	write_st(out, file, names, 2);
	fmt(path, sizeof(path), "%s/%s", out, target);
	symlink_at(path, m, link);
}

static void h_file_link_out(const char *m, const char *out)
{
	write_st(m, "ok.safetensors", "w", 2);
	plant_outside(m, out, "secret.safetensors", "s", "secret.safetensors",
		      "leak.safetensors");
}

static void h_component_link_out(const char *m, const char *out)
{
	write_text(m, "pipe/model_index.json",
		   "{\"_class_name\": \"StableDiffusionPipeline\", \"unet\": [\"diffusers\", "
		   "\"UNet2DConditionModel\"], \"vae\": [\"diffusers\", \"AutoencoderKL\"]}");
	write_st(m, "pipe/vae/diffusion_pytorch_model.safetensors", "v", 2);
	plant_outside(m, out, "unet/diffusion_pytorch_model.safetensors", "u", "unet",
		      "pipe/unet");
}

static void h_shard_link_out(const char *m, const char *out)
{
	write_text(m, "ll/model.safetensors.index.json",
		   "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", "
		   "\"b\": \"model-00002-of-00002.safetensors\"}}");
	write_st(m, "ll/model-00001-of-00002.safetensors", "a", 2);
	plant_outside(m, out, "shard2.safetensors", "b", "shard2.safetensors",
		      "ll/model-00002-of-00002.safetensors");
}

/* The Hugging Face hub cache: snapshot files are symlinks into the repo's blobs/. */
static void h_hf_hub(const char *m, const char *out)
{
	(void)out;
	write_st(m, "models--org--name/blobs/0123456789abcdef0123456789abcdef01234567", "w", 2);
	write_text(m, "models--org--name/refs/main", "a1b2c3");
	write_st(m, "models--org--name/snapshots/a1b2c3/placeholder", "x", 1);
	rm(m, "models--org--name/snapshots/a1b2c3/placeholder");
	symlink_at("../../blobs/0123456789abcdef0123456789abcdef01234567", m,
		   "models--org--name/snapshots/a1b2c3/model.safetensors");
}

static void h_locked(const char *m, const char *out)
{
	char path[4096];

	(void)out;
	write_st(m, "ok.safetensors", "a", 2);
	write_st(m, "locked/hidden.safetensors", "a", 2);
	write_st(m, "secret.safetensors", "a", 2);
	fmt(path, sizeof(path), "%s/locked", m);
	assert_int_equal(chmod(path, 0700), 0);
	fmt(path, sizeof(path), "%s/secret.safetensors", m);
	assert_int_equal(chmod(path, 0600), 0);
}

/* Runs one row; 0 or 1 after printing why. In a child: a runaway walk is killed. */
static int hostile_child(const struct hostile_row *h, const char *dir)
{
	char m[4096], out[4096], st[4096], scan_root[4096], probs[8192];
	const char *allowed[1] = { m };
	gid_t no_groups[1] = { 0 };
	struct wd_cred cred = { .uid = h->cred_uid, .gid = h->cred_uid, .groups = no_groups,
				.n_groups = 0 };
	struct scan_options o = { .max_entries = h->max_entries, .max_depth = h->max_depth };
	const char *roots[1] = { scan_root };
	struct catalog *cat;
	struct scan_result r;
	bool bad;
	int rc;

	fmt(m, sizeof(m), "%s/m", dir);
	fmt(out, sizeof(out), "%s/outside", dir);
	fmt(st, sizeof(st), "%s/state", dir);
	fmt(scan_root, sizeof(scan_root), "%s", h->scan ? h->scan : m);
	assert_int_equal(mkdir_p(m, 0755), 0);
	assert_int_equal(mkdir_p(out, 0755), 0);
	if (h->build)
		h->build(m, out);
	if (catalog_open(st, &cat))
		return printf("%s: cannot open the catalog\n", h->label), 1;
	if (h->full_scan_first) {
		rc = scan_roots(cat, roots, 1, NULL, &r);
		scan_result_free(&r);
		if (rc)
			return printf("%s: the first scan failed: %d\n", h->label, rc), 1;
	}
	if (h->allowed) {
		o.allowed_roots = allowed;
		o.n_allowed_roots = 1;
	}
	if (h->cred_uid != NO_UID)
		o.cred = &cred;
	rc = scan_roots(cat, roots, 1, &o, &r);
	problems_str(&r, probs, sizeof(probs));
	bad = rc || r.n_models != h->models || r.n_removed ||
	      (h->problem ? !strstr(probs, h->problem) : r.n_problems != 0) ||
	      (double)r.elapsed_ns / 1e9 > 5;
	if (bad)
		printf("%s: rc %d models %llu (want %llu) removed %llu, %.3f s; want %s%s; "
		       "problems:%s\n", h->label, rc, (unsigned long long)r.n_models,
		       (unsigned long long)h->models, (unsigned long long)r.n_removed,
		       (double)r.elapsed_ns / 1e9, h->problem ? "a problem with " : "no problem",
		       h->problem ? h->problem : "", probs);
	scan_result_free(&r);
	catalog_close(cat);
	return bad;
}

static void test_hostile_trees(void **state)
{
	static const struct hostile_row rows[] = {
		{ "scan of /proc", NULL, "/proc", false, NO_UID, 0, 0, false, 0,
		  "on a proc pseudo filesystem" },
		{ "scan of /sys", NULL, "/sys", false, NO_UID, 0, 0, false, 0,
		  "on a sysfs pseudo filesystem" },
		{ "symlink to /", h_link_to_slash, NULL, false, NO_UID, 0, 0, false, 1,
		  "a symlink to a directory outside the model roots" },
		{ "two symlinks to one sibling", h_sibling_links, NULL, false, NO_UID, 0, 0, false,
		  1, "a directory already walked" },
		{ "entry bound, nothing removed", h_twenty, NULL, false, NO_UID, 5, 0, true, 5,
		  "more than 5 directory entries" },
		{ "depth bound", h_deep, NULL, false, NO_UID, 0, 3, false, 1,
		  "more than 3 directories deep" },
		{ "single file symlinked out", h_file_link_out, NULL, true, NO_UID, 0, 0, false, 1,
		  "a symlink to a file outside the model roots" },
		{ "diffusers component symlinked out", h_component_link_out, NULL, true, NO_UID, 0,
		  0, false, 1, "a symlink to a directory outside the model roots" },
		{ "weight_map shard symlinked out", h_shard_link_out, NULL, true, NO_UID, 0, 0,
		  false, 1, "a symlink to a file outside the model roots" },
		{ "Hugging Face hub cache layout", h_hf_hub, NULL, true, NO_UID, 0, 0, false, 1,
		  NULL },
		{ "files the client cannot read", h_locked, NULL, true, 54321, 0, 0, false, 1,
		  "permission denied for uid 54321" },
		{ "unreadable models already published are kept", h_locked, NULL, true, 54321, 0,
		  0, true, 3, "permission denied for uid 54321" },
	};
	char dir[4096];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		const struct hostile_row *h = &rows[i];
		int status;
		pid_t pid;

		if (h->cred_uid != NO_UID && geteuid() != 0) {
			print_message("row \"%s\" skipped: needs root to check as another uid\n",
				      h->label);
			continue;
		}
		if (h->cred_uid != NO_UID) {
			/* Under /tmp itself, so that every parent is searchable by that uid. */
			fmt(dir, sizeof(dir), "/tmp/wd-scan-cred.XXXXXX");
			assert_non_null(mkdtemp(dir));
			assert_int_equal(chmod(dir, 0755), 0);
		} else {
			fmt(dir, sizeof(dir), "%s/hostile-%zu", tmp_root, i);
			assert_int_equal(mkdir_p(dir, 0755), 0);
		}
		fflush(NULL);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			alarm(20); /* a runaway walk fails the row instead of the whole run */
			int bad = hostile_child(h, dir);

			fflush(NULL);
			_exit(bad);
		}
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (h->cred_uid != NO_UID)
			assert_int_equal(td_rmtree(dir), 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			fail_msg("row \"%s\": %s", h->label, WIFEXITED(status) ? "failed (above)" :
				 "killed (a walk that did not end within 20 s)");
	}
}

static int setup(void **state)
{
	(void)state;
	return td_tmpdir(tmp_root, sizeof(tmp_root), "test_scan");
}

static int teardown(void **state)
{
	(void)state;
	return td_rmtree(tmp_root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scenario),
		cmocka_unit_test(test_demo_preset),
		cmocka_unit_test(test_permission_denied),
		cmocka_unit_test(test_nested_roots_and_names),
		cmocka_unit_test(test_progress_and_threads),
		cmocka_unit_test(test_roots_table),
		cmocka_unit_test(test_hostile_trees),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
