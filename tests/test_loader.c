/*
 * The io_uring loader, end to end on real files: every tensor of every file of the reference
 * corpus and of generated files (misaligned data, zero-size tensors, scalars, tensors larger
 * than the read size, a sharded component) lands in the arena byte for byte, in each layout
 * and I/O mode; files truncated, rewritten or replaced during a load fail it; partial loads,
 * dtype conversion, verification, cancellation, concurrent and shared loads.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <cmocka.h>

#include "core/base/common.h"
#include "core/format/convert.h"
#include "core/format/gen.h"
#include "core/format/st.h"
#include "core/format/st_write.h"
#include "uring/arena.h"
#include "uring/loader.h"
#include "uring/residency.h"

#define CHUNK (64u << 10)	/* small, so that modest files take many reads */

static char root[1024];
static struct arena *arena;
static struct loader *loader;

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static const char *in_root(char *buf, const char *rel)
{
	snprintf(buf, 2048, "%s/%s", root, rel);
	return buf;
}

/* Tensors that exercise every placement corner: odd sizes, empty, scalar, multi-chunk. */
static const struct st_write_tensor odd_tensors[] = {
	{ "a.u8", ST_U8, 1, { 3 }, NULL },
	{ "b.f16", ST_F16, 1, { 5 }, NULL },
	{ "c.f32", ST_F32, 2, { 7, 1 }, NULL },
	{ "d.bf16", ST_BF16, 1, { 33 }, NULL },
	{ "e.u8", ST_U8, 1, { 1001 }, NULL },
	{ "scalar", ST_F32, 0, { 0 }, NULL },
	{ "zero", ST_I32, 2, { 0, 7 }, NULL },
	{ "big.f16", ST_F16, 1, { 300001 }, NULL },
	{ "big.f32", ST_F32, 2, { 1000, 101 }, NULL },
	{ "tail.u8", ST_U8, 1, { 1 }, NULL },
};

static int write_victim(const char *path, uint64_t seed)
{
	static const struct st_write_tensor t[] = {
		{ "head", ST_U8, 1, { 5 }, NULL },
		{ "w", ST_F16, 1, { 1u << 20 }, NULL },
	};

	return st_write_file(path, t, ARRAY_SIZE(t), NULL, 0, seed);
}

static int setup(void **state)
{
	struct arena_options ao = { .budget = 256u << 20, .flags = ARENA_F_RELEASE };
	struct loader_options lo = { .qd = 8, .chunk = CHUNK, .n_staging = 4 };
	struct gen_options go = { .size = 6u << 20, .shards = 3 };
	const char *tmp = getenv("TMPDIR");
	char p[2048];

	(void)state;
	snprintf(root, sizeof(root), "%s/test_loader.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(root))
		return -1;
	if (st_write_file(in_root(p, "odd.safetensors"), odd_tensors, ARRAY_SIZE(odd_tensors),
			  NULL, 0, 7))
		return -1;
	if (gen_preset("llama", in_root(p, "llama"), &go))
		return -1;
	if (arena_create(&ao, &arena) || loader_create(arena, &lo, &loader))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	loader_destroy(loader);
	arena_destroy(arena);
	return nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/*
 * Drops @path from the page cache (written back first), so that a load reads it O_DIRECT.
 * Returns false when the kernel kept pages anyway (then a caller's O_DIRECT check is moot).
 */
static bool make_cold(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	uint64_t cached = 1;

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &sb), 0);
	fdatasync(fd);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	assert_int_equal(residency_bytes(fd, 0, (uint64_t)sb.st_size, &cached), 0);
	close(fd);
	return cached == 0;
}

/* Bytes of @path in the page cache now. */
static uint64_t cached_bytes(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint64_t n = 0;
	struct stat sb;

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &sb), 0);
	assert_int_equal(residency_bytes(fd, 0, (uint64_t)sb.st_size, &n), 0);
	close(fd);
	return n;
}

/* Reads [off, off + len) of @path buffered, so that the page cache holds it. */
static void make_warm(const char *path, uint64_t off, uint64_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf = malloc(1u << 20);

	assert_true(fd >= 0 && buf);
	/* No readahead: the page cache must hold this range and nothing beyond it. */
	posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
	for (uint64_t o = off; o < off + len; o += 1u << 20) {
		size_t n = off + len - o < (1u << 20) ? off + len - o : (1u << 20);

		assert_true(pread(fd, buf, n, (off_t)o) >= 0);
	}
	free(buf);
	close(fd);
}

/* Every planned tensor's arena bytes against an independent pread of the file. */
static void check_bytes(const struct load_plan *p, const struct load_spec *spec, uint64_t ext,
			const char *row)
{
	for (uint32_t i = 0; i < p->n_tensors; i++) {
		const struct load_tensor *T = &p->tensors[i];
		char *want = malloc(T->src_bytes + 1);
		int fd = open(spec->files[T->file].path, O_RDONLY | O_CLOEXEC);
		const char *got = arena_ptr(arena, ext + T->off);

		assert_non_null(want);
		assert_true(fd >= 0);
		assert_int_equal(pread(fd, want, T->src_bytes, (off_t)T->src_off),
				 (ssize_t)T->src_bytes);
		close(fd);
		if (T->nbytes != T->src_bytes || memcmp(want, got, T->src_bytes)) {
			fprintf(stderr, "%s: tensor %s of %s (file offset %lu, %lu bytes, extent "
				"offset %lu) differs from the file\n", row, T->name,
				spec->files[T->file].path, T->src_off, T->src_bytes, T->off);
			fail();
		}
		if (!(p->flags & LOAD_F_FILE_LAYOUT) && (ext + T->off) % ARENA_TENSOR_ALIGN) {
			fprintf(stderr, "%s: tensor %s at arena offset %lu is not 64-byte aligned\n",
				row, T->name, ext + T->off);
			fail();
		}
		free(want);
	}
}

/* Plans, allocates, loads and checks one component; returns the plan's direct file count. */
static uint32_t load_check(const char *row, const struct load_spec *spec, int want_rc)
{
	char msg[LOADER_MSG_MAX];
	struct load_plan *p;
	uint64_t ext = 0;
	uint32_t direct;
	int rc;

	rc = loader_plan(spec, CHUNK, &p, msg, sizeof(msg));
	if (rc) {
		fprintf(stderr, "%s: loader_plan = %d: %s\n", row, rc, msg);
		fail();
	}
	if (p->bytes)
		assert_int_equal(arena_alloc(arena, p->bytes, &ext), 0);
	rc = loader_run(loader, p, ext, NULL, msg, sizeof(msg));
	if (rc != want_rc) {
		fprintf(stderr, "%s: load = %d (want %d): %s\n", row, rc, want_rc, msg);
		fail();
	}
	if (!rc)
		check_bytes(p, spec, ext, row);
	/* Overhead: the aligned layout pads each tensor to 64 bytes, and a tensor of 1 MiB or
	 * more of an O_DIRECT file by less than 4 KiB (0.4%) to sit in place. */
	if (!(p->flags & LOAD_F_FILE_LAYOUT)) {
		uint64_t allow = 64ull * p->n_tensors;

		for (uint32_t i = 0; i < p->n_tensors; i++)
			allow += p->tensors[i].src_bytes >= (1u << 20) ? 4096 : 0;
		assert_true(p->bytes <= p->tensor_bytes + allow);
	}
	direct = p->n_direct;
	if (p->bytes)
		assert_int_equal(arena_free(arena, ext, p->bytes), 0);
	loader_plan_free(p);
	return direct;
}

static size_t list_st(const char *dir, char paths[][2048], size_t max)
{
	struct dirent *de;
	size_t n = 0;
	DIR *d = opendir(dir);

	if (!d)
		return 0;
	while ((de = readdir(d)) && n < max) {
		size_t len = strlen(de->d_name);

		if (len > 12 && !strcmp(de->d_name + len - 12, ".safetensors"))
			snprintf(paths[n++], 2048, "%s/%s", dir, de->d_name);
	}
	closedir(d);
	return n;
}

/* cold: the files are dropped from the page cache first, so that they are read O_DIRECT. */
static const struct {
	const char *name;
	unsigned int flags;
	bool cold;
} modes[] = {
	{ "aligned+direct", LOAD_F_VERIFY, true },
	{ "aligned, warm", 0, false },
	{ "aligned+buffered", LOAD_F_NO_DIRECT, false },
	{ "file+direct", LOAD_F_FILE_LAYOUT, true },
	{ "file, warm", LOAD_F_FILE_LAYOUT, false },
	{ "file+buffered", LOAD_F_FILE_LAYOUT | LOAD_F_NO_DIRECT, false },
};

/* Each file of the reference corpus and each generated file, alone, in each mode. */
static void test_every_file_every_mode(void **state)
{
	static char paths[64][2048];
	const char *corpus = getenv("WD_CORPUS");
	size_t n, n_corpus;
	uint32_t direct = 0;
	char dir[2048];

	(void)state;
	n_corpus = list_st(corpus && *corpus ? corpus : "/work/shared/corpus", paths, 48);
	if (!n_corpus)
		fprintf(stderr, "note: no reference corpus found; generated files only\n");
	n = n_corpus;
	in_root(paths[n++], "odd.safetensors");
	n += list_st(in_root(dir, "llama"), &paths[n], 64 - n);
	assert_true(n >= 3);
	for (size_t i = 0; i < n; i++) {
		for (size_t m = 0; m < ARRAY_SIZE(modes); m++) {
			struct load_file_spec fs = { .path = paths[i] };
			struct load_spec spec = { .name = paths[i], .n_files = 1, .files = &fs,
						  .flags = modes[m].flags };
			char row[2300];

			snprintf(row, sizeof(row), "%s [%s]", paths[i], modes[m].name);
			if (modes[m].cold)
				make_cold(paths[i]);
			direct += load_check(row, &spec, 0);
		}
	}
	if (!direct)
		fprintf(stderr, "SKIP O_DIRECT: %s refuses O_DIRECT; only buffered reads ran\n",
			root);
}

/* A sharded checkpoint as one component: its shards load together, in flight at once. */
static void test_sharded_component(void **state)
{
	struct load_file_spec fs[8];
	static char paths[8][2048];
	size_t n;
	char dir[2048];

	(void)state;
	n = list_st(in_root(dir, "llama"), paths, 8);
	assert_int_equal(n, 3);
	for (size_t i = 0; i < n; i++)
		fs[i] = (struct load_file_spec){ .path = paths[i] };
	for (size_t m = 0; m < ARRAY_SIZE(modes); m++) {
		struct load_spec spec = { .name = "llama", .n_files = n, .files = fs,
					  .flags = modes[m].flags };

		for (size_t i = 0; modes[m].cold && i < n; i++)
			make_cold(paths[i]);
		load_check(modes[m].name, &spec, 0);
	}
}

/* ---- buffered fallback on a file system that refuses O_DIRECT (ramfs) --------------- */

static int ramfs_child(const char *src)
{
	struct arena_options ao = { .budget = 32u << 20 };
	struct loader_options lo = { .qd = 4, .chunk = CHUNK, .n_staging = 2 };
	char dir[2048], dst[2300], msg[LOADER_MSG_MAX];
	struct load_file_spec fs = { .path = dst };
	struct load_spec spec = { .name = "ramfs", .n_files = 1, .files = &fs };
	struct load_plan *p;
	struct arena *a;
	struct loader *l;
	uint64_t ext;
	char buf[65536];
	ssize_t r;
	int in, out, rc;

	snprintf(dir, sizeof(dir), "%s/ramfs", root);
	if (unshare(CLONE_NEWNS) || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
	    mkdir(dir, 0700) || mount("ramfs", dir, "ramfs", 0, NULL)) {
		printf("SKIP buffered fallback: cannot mount a ramfs here (%s)\n", strerror(errno));
		return 77;
	}
	snprintf(dst, sizeof(dst), "%s/odd.safetensors", dir);
	in = open(src, O_RDONLY);
	out = open(dst, O_WRONLY | O_CREAT, 0600);
	while ((r = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)r) != r)
			return 1;
	close(in);
	close(out);
	if (arena_create(&ao, &a) || loader_create(a, &lo, &l))
		return 1;
	rc = loader_plan(&spec, CHUNK, &p, msg, sizeof(msg));
	if (rc || p->n_direct != 0) {
		printf("plan rc=%d n_direct=%u (ramfs must refuse O_DIRECT): %s\n", rc,
		       rc ? 0 : p->n_direct, msg);
		return 1;
	}
	if (arena_alloc(a, p->bytes, &ext) || loader_run(l, p, ext, NULL, msg, sizeof(msg))) {
		printf("load failed: %s\n", msg);
		return 1;
	}
	in = open(dst, O_RDONLY);
	for (uint32_t i = 0; i < p->n_tensors; i++) {
		const struct load_tensor *T = &p->tensors[i];
		char *want = malloc(T->src_bytes + 1);

		if (pread(in, want, T->src_bytes, (off_t)T->src_off) != (ssize_t)T->src_bytes ||
		    memcmp(want, arena_ptr(a, ext + T->off), T->src_bytes)) {
			printf("tensor %s differs after a buffered-fallback load\n", T->name);
			return 1;
		}
		free(want);
	}
	close(in);
	loader_plan_free(p);
	loader_destroy(l);
	arena_destroy(a);
	umount(dir);
	return 0;
}

static void test_buffered_fallback(void **state)
{
	char src[2048];
	int status;
	pid_t pid;

	(void)state;
	in_root(src, "odd.safetensors");
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(ramfs_child(src));
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == 77)
		skip();
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- files that change during their load -------------------------------------------- */

enum tamper { TAMPER_TRUNCATE, TAMPER_REWRITE, TAMPER_REPLACE, TAMPER_REWRITE_TOUCH };

/*
 * Rewrites bytes of @path in place and sets its mtime back to what it was, as
 * `touch -d` would: size, inode and mtime are all unchanged afterwards; only the ctime
 * (which no user can set) moved.
 */
static void rewrite_keep_mtime(const char *path, off_t off)
{
	struct stat sb;
	struct timespec ts[2];
	int fd;

	assert_int_equal(stat(path, &sb), 0);
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "torn!", 5, off), 5);
	ts[0] = sb.st_atim;
	ts[1] = sb.st_mtim;
	assert_int_equal(futimens(fd, ts), 0);
	close(fd);
}

struct tamper_ctx {
	const char *path;
	enum tamper how;
	int calls;
};

/* Runs between reads on the loader thread: changes the file after the first one. */
static void tamper(void *arg, uint64_t done, uint64_t total)
{
	struct tamper_ctx *c = arg;
	char tmp[2100];
	int fd;

	(void)done;
	(void)total;
	if (c->calls++)
		return;
	switch (c->how) {
	case TAMPER_TRUNCATE:
		assert_int_equal(truncate(c->path, 100000), 0);
		break;
	case TAMPER_REWRITE:
		fd = open(c->path, O_WRONLY);
		assert_true(fd >= 0);
		assert_int_equal(pwrite(fd, "torn!", 5, 1500000), 5);
		close(fd);
		break;
	case TAMPER_REWRITE_TOUCH:
		rewrite_keep_mtime(c->path, 1500000);
		break;
	case TAMPER_REPLACE:
		snprintf(tmp, sizeof(tmp), "%s.new", c->path);
		assert_int_equal(write_victim(tmp, 99), 0);
		assert_int_equal(rename(tmp, c->path), 0);
		break;
	}
}

static void test_file_changed_during_load(void **state)
{
	static const struct {
		const char *name;
		enum tamper how;
		unsigned int flags;
		const char *expect;
	} rows[] = {
		{ "truncate, direct", TAMPER_TRUNCATE, 0, "was truncated during the load" },
		{ "truncate, buffered", TAMPER_TRUNCATE, LOAD_F_NO_DIRECT,
		  "was truncated during the load" },
		{ "truncate, file layout", TAMPER_TRUNCATE, LOAD_F_FILE_LAYOUT,
		  "was truncated during the load" },
		{ "rewrite, direct", TAMPER_REWRITE, 0, "changed during the load" },
		{ "rewrite, buffered", TAMPER_REWRITE, LOAD_F_NO_DIRECT, "changed during the load" },
		{ "replace, buffered", TAMPER_REPLACE, LOAD_F_NO_DIRECT, "replaced or removed" },
		/* Torn bytes: size, inode and mtime as before; the ctime tells. */
		{ "rewrite + mtime restored, direct", TAMPER_REWRITE_TOUCH, 0,
		  "changed during the load" },
		{ "rewrite + mtime restored, buffered", TAMPER_REWRITE_TOUCH, LOAD_F_NO_DIRECT,
		  "changed during the load" },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		char path[2048], msg[LOADER_MSG_MAX];
		struct load_file_spec fs = { .path = path };
		struct load_spec spec = { .name = "victim", .n_files = 1, .files = &fs,
					  .flags = rows[i].flags };
		struct tamper_ctx ctx = { .path = path, .how = rows[i].how };
		struct load_callbacks cb = { .progress = tamper, .arg = &ctx };
		struct load_plan *p;
		uint64_t ext;
		int rc;

		in_root(path, "victim.safetensors");
		assert_int_equal(write_victim(path, 1), 0);
		if (!(rows[i].flags & LOAD_F_NO_DIRECT))
			make_cold(path);
		assert_int_equal(loader_plan(&spec, CHUNK, &p, msg, sizeof(msg)), 0);
		assert_int_equal(arena_alloc(arena, p->bytes, &ext), 0);
		rc = loader_run(loader, p, ext, &cb, msg, sizeof(msg));
		if (rc != -ESTALE || !strstr(msg, rows[i].expect) || !strstr(msg, path)) {
			fprintf(stderr, "%s: rc=%d msg=\"%s\", want -ESTALE and \"%s\" naming the "
				"file\n", rows[i].name, rc, msg, rows[i].expect);
			fail();
		}
		assert_int_equal(arena_free(arena, ext, p->bytes), 0);
		loader_plan_free(p);
	}
}

/* A fingerprint from the catalog that no longer matches refuses the plan at once. */
static void test_stale_fingerprint(void **state)
{
	char path[2048], msg[LOADER_MSG_MAX];
	struct model_fp fp;
	struct load_file_spec fs = { .path = path, .expect_fp = &fp };
	struct load_spec spec = { .name = "stale", .n_files = 1, .files = &fs };
	struct load_plan *p;
	struct stat sb;

	(void)state;
	in_root(path, "stale.safetensors");
	assert_int_equal(write_victim(path, 3), 0);
	assert_int_equal(stat(path, &sb), 0);
	model_fp_of(&sb, &fp);
	assert_int_equal(loader_plan(&spec, CHUNK, &p, msg, sizeof(msg)), 0);
	loader_plan_free(p);
	fp.size++;
	assert_int_equal(loader_plan(&spec, CHUNK, &p, msg, sizeof(msg)), -ESTALE);
	assert_non_null(strstr(msg, "changed since it was scanned"));
	assert_null(p);
	/* Rewritten in place after the scan with the mtime put back: still refused. */
	fp.size--;
	rewrite_keep_mtime(path, 100);
	assert_int_equal(loader_plan(&spec, CHUNK, &p, msg, sizeof(msg)), -ESTALE);
	assert_non_null(strstr(msg, "changed since it was scanned"));
	assert_null(p);
}

/* ---- selection, conversion, verification --------------------------------------------- */

static void test_partial(void **state)
{
	static const char *const two[] = { "e.u8", "big.f32" };
	static const char *const missing[] = { "nope" };
	static const struct {
		const char *prefix;
		const char *const *names;
		size_t n_names;
		uint32_t want;
		int rc;
	} rows[] = {
		{ "big.", NULL, 0, 2, 0 },
		{ NULL, two, 2, 2, 0 },
		{ "a.", two, 2, 3, 0 },
		{ "zz", NULL, 0, 0, 0 },
		{ NULL, missing, 1, 0, -ENOENT },
	};
	char path[2048], msg[LOADER_MSG_MAX];

	(void)state;
	in_root(path, "odd.safetensors");
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct load_file_spec fs = { .path = path };
		struct load_spec spec = { .name = "odd", .n_files = 1, .files = &fs,
					  .prefix = rows[i].prefix, .names = rows[i].names,
					  .n_names = rows[i].n_names,
					  .flags = LOAD_F_FILE_LAYOUT };
		struct load_plan *p = NULL;
		int rc = loader_plan(&spec, CHUNK, &p, msg, sizeof(msg));

		if (rc != rows[i].rc || (!rc && p->n_tensors != rows[i].want)) {
			fprintf(stderr, "row %zu: rc=%d tensors=%u, want rc=%d tensors=%u: %s\n", i,
				rc, p ? p->n_tensors : 0, rows[i].rc, rows[i].want, msg);
			fail();
		}
		if (rc)
			continue;
		/* A subset never uses the file layout: it would hold the unselected bytes. */
		assert_false(p->flags & LOAD_F_FILE_LAYOUT);
		loader_plan_free(p);
		if (rows[i].want)
			load_check("partial", &spec, 0);
	}
}

static float f32_of(uint32_t b)
{
	float f;

	memcpy(&f, &b, 4);
	return f;
}

/* Single values: rounding, overflow, subnormals, NaN, signed zero. */
static void test_convert_values(void **state)
{
	static const struct {
		uint32_t in;
		uint16_t f16, bf16;
	} rows[] = {
		{ 0x3f800000, 0x3c00, 0x3f80 },	/* 1.0 */
		{ 0x80000000, 0x8000, 0x8000 },	/* -0.0 */
		{ 0x477fe000, 0x7bff, 0x4780 },	/* 65504: largest F16 */
		{ 0x477fefff, 0x7bff, 0x4780 },	/* just below the tie: stays */
		{ 0x477ff000, 0x7c00, 0x4780 },	/* 65520: tie to even -> inf */
		{ 0x7f800000, 0x7c00, 0x7f80 },	/* +inf */
		{ 0xff800000, 0xfc00, 0xff80 },	/* -inf */
		{ 0x7fc00000, 0x7e00, 0x7fc0 },	/* qNaN */
		{ 0x7f800001, 0x7e00, 0x7fc0 },	/* sNaN: quietened, still NaN */
		{ 0xffc12345, 0xfe09, 0xffc1 },	/* negative NaN with payload */
		{ 0x38800000, 0x0400, 0x3880 },	/* 2^-14: smallest normal F16 */
		{ 0x33800000, 0x0001, 0x3380 },	/* 2^-24: smallest subnormal F16 */
		{ 0x33000000, 0x0000, 0x3300 },	/* 2^-25: tie to even -> 0 */
		{ 0x33000001, 0x0001, 0x3300 },	/* just above the tie -> 1 */
		{ 0x3f801000, 0x3c00, 0x3f80 },	/* 1 + 2^-11: F16 tie to even (down) */
		{ 0x3f803000, 0x3c02, 0x3f80 },	/* 1 + 3*2^-11: F16 tie to even (up) */
		{ 0x3f808000, 0x3c04, 0x3f80 },	/* 1 + 2^-8: BF16 tie to even (down) */
		{ 0x3f818000, 0x3c0c, 0x3f82 },	/* 1 + 3*2^-8: BF16 tie to even (up) */
		{ 0x7f7fffff, 0x7c00, 0x7f80 },	/* FLT_MAX: inf in both */
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		uint16_t h = convert_f32_to_f16(rows[i].in), b = convert_f32_to_bf16(rows[i].in);

		if (h != rows[i].f16 || b != rows[i].bf16) {
			fprintf(stderr, "f32 %08x (%g): f16 %04x want %04x, bf16 %04x want %04x\n",
				rows[i].in, (double)f32_of(rows[i].in), h, rows[i].f16, b,
				rows[i].bf16);
			fail();
		}
	}
	/* Every NaN stays NaN: sweep the payloads. */
	for (uint32_t m = 1; m < (1u << 23); m += 4099) {
		uint16_t h = convert_f32_to_f16(0x7f800000u | m), b = convert_f32_to_bf16(0x7f800000u | m);

		assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff));
		assert_true((b & 0x7f80) == 0x7f80 && (b & 0x7f));
	}
	assert_int_equal(convert_run(ST_F16, ST_F32, NULL, NULL, 0), -EINVAL);
}

/* A load with conversion: every F32 tensor equals the per-element conversion of the file. */
static void test_convert_load(void **state)
{
	static const enum st_dtype to[] = { ST_F16, ST_BF16 };
	char path[2048], msg[LOADER_MSG_MAX];

	(void)state;
	in_root(path, "odd.safetensors");
	for (size_t k = 0; k < ARRAY_SIZE(to); k++) {
		struct load_file_spec fs = { .path = path };
		struct load_spec spec = { .name = "odd", .n_files = 1, .files = &fs,
					  .convert_to = to[k], .flags = LOAD_F_CONVERT };
		struct load_plan *p;
		uint64_t ext, conv = 0;
		int fd = open(path, O_RDONLY);

		assert_int_equal(loader_plan(&spec, CHUNK, &p, msg, sizeof(msg)), 0);
		assert_int_equal(arena_alloc(arena, p->bytes, &ext), 0);
		assert_int_equal(loader_run(loader, p, ext, NULL, msg, sizeof(msg)), 0);
		for (uint32_t i = 0; i < p->n_tensors; i++) {
			const struct load_tensor *T = &p->tensors[i];
			unsigned char *src = malloc(T->src_bytes + 1);
			const unsigned char *got = arena_ptr(arena, ext + T->off);

			assert_int_equal(pread(fd, src, T->src_bytes, (off_t)T->src_off),
					 (ssize_t)T->src_bytes);
			if (T->src_dtype != ST_F32) {
				assert_int_equal(T->dtype, T->src_dtype);
				assert_memory_equal(src, got, T->src_bytes);
				free(src);
				continue;
			}
			assert_int_equal(T->dtype, to[k]);
			assert_int_equal(T->nbytes, T->src_bytes / 2);
			for (uint64_t e = 0; e < T->src_bytes / 4; e++) {
				uint32_t x;
				uint16_t want, have;

				memcpy(&x, src + 4 * e, 4);
				want = to[k] == ST_F16 ? convert_f32_to_f16(x) : convert_f32_to_bf16(x);
				memcpy(&have, got + 2 * e, 2);
				if (want != have) {
					fprintf(stderr, "tensor %s element %lu: %04x, want %04x\n",
						T->name, e, have, want);
					fail();
				}
			}
			conv++;
			free(src);
		}
		assert_int_equal(conv, 3);
		close(fd);
		assert_int_equal(arena_free(arena, ext, p->bytes), 0);
		loader_plan_free(p);
	}
}

/* Verification against the deep reader's hashes: equal passes, one wrong hash fails. */
static void test_verify(void **state)
{
	char path[2048];
	struct st_file st = { 0 };
	struct st_error err;
	struct st_deep_tensor *d;
	uint64_t *h;
	int fd;

	(void)state;
	in_root(path, "odd.safetensors");
	assert_int_equal(st_open(path, &st, &err), 0);
	d = calloc(st.n_tensors, sizeof(*d));
	h = calloc(st.n_tensors, sizeof(*h));
	fd = open(path, O_RDONLY);
	assert_int_equal(st_deep_check(fd, &st, d, &err), 0);
	close(fd);
	for (uint32_t i = 0; i < st.n_tensors; i++)
		h[i] = d[i].xxh3;
	for (int bad = 0; bad < 2; bad++) {
		struct load_file_spec fs = { .path = path, .expect_xxh3 = h };
		struct load_spec spec = { .name = "odd", .n_files = 1, .files = &fs,
					  .flags = LOAD_F_VERIFY };

		if (bad)
			h[st.n_tensors - 1] ^= 1;
		load_check(bad ? "verify, wrong hash" : "verify", &spec, bad ? -EBADMSG : 0);
	}
	free(d);
	free(h);
	st_file_free(&st);
}

/* ---- handles: cancellation, concurrency, sharing ------------------------------------ */

static void cancel_after_first(void *arg, uint64_t done, uint64_t total)
{
	struct load_handle **slot = arg;
	/* Pairs with the release store in test_cancel(): the first completion may come
	 * before the submitter stored the handle, and then there is nothing to cancel yet. */
	struct load_handle *h = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

	(void)done;
	(void)total;
	if (h)
		load_cancel(h);
}

static void test_cancel(void **state)
{
	char path[2048], msg[LOADER_MSG_MAX];
	struct load_file_spec fs = { .path = path };
	struct load_spec spec = { .name = "victim", .n_files = 1, .files = &fs,
				  .flags = LOAD_F_NO_DIRECT };
	struct load_handle *h = NULL;
	struct load_callbacks cb = { .progress = cancel_after_first, .arg = &h };
	struct load_plan *p;
	uint64_t ext, done, total;

	(void)state;
	in_root(path, "victim.safetensors");
	assert_int_equal(write_victim(path, 5), 0);
	assert_int_equal(loader_plan(&spec, CHUNK, &p, msg, sizeof(msg)), 0);
	assert_int_equal(arena_alloc(arena, p->bytes, &ext), 0);
	/* The callback reads h, so the handle must be stored before the first completion. */
	assert_int_equal(loader_submit(loader, p, ext, NULL, &h), 0);
	assert_int_equal(load_wait(h, -1), 0);
	load_put(h);
	h = NULL;
	{
		struct load_handle *hh;

		assert_int_equal(loader_submit(loader, p, ext, &cb, &hh), 0);
		__atomic_store_n(&h, hh, __ATOMIC_RELEASE);
		/* A load may finish before any callback sees the handle (a loaded machine). */
		if (load_wait(hh, -1) == 0) {
			__atomic_store_n(&h, NULL, __ATOMIC_RELEASE);
			load_put(hh);
			assert_int_equal(arena_free(arena, ext, p->bytes), 0);
			loader_plan_free(p);
			fprintf(stderr, "note: load finished before it could be cancelled\n");
			skip();
		}
		assert_int_equal(load_wait(hh, -1), -ECANCELED);
		assert_int_equal(load_state(hh), LOAD_CANCELLED);
		load_progress(hh, &done, &total);
		assert_true(done < total);
		load_put(hh);
	}
	assert_int_equal(arena_free(arena, ext, p->bytes), 0);
	loader_plan_free(p);
}

struct waiter {
	struct load_handle *h;
	int rc;
};

static void *wait_thread(void *arg)
{
	struct waiter *w = arg;

	w->rc = load_wait(w->h, -1);
	load_put(w->h);
	return NULL;
}

/* Three components in flight at once; one of them also waited on by two extra requesters. */
static void test_concurrent_and_shared(void **state)
{
	char paths[3][2048], msg[LOADER_MSG_MAX];
	struct load_file_spec fs[3];
	struct load_spec spec[3];
	struct load_plan *p[3];
	struct load_handle *h[3];
	struct waiter w[2];
	pthread_t th[2];
	uint64_t ext[3];

	(void)state;
	in_root(paths[0], "odd.safetensors");
	in_root(paths[1], "victim2.safetensors");
	in_root(paths[2], "victim3.safetensors");
	assert_int_equal(write_victim(paths[1], 11), 0);
	assert_int_equal(write_victim(paths[2], 12), 0);
	for (int i = 0; i < 3; i++) {
		fs[i] = (struct load_file_spec){ .path = paths[i] };
		spec[i] = (struct load_spec){ .name = paths[i], .n_files = 1, .files = &fs[i],
					      .flags = i == 1 ? LOAD_F_NO_DIRECT : 0 };
		assert_int_equal(loader_plan(&spec[i], CHUNK, &p[i], msg, sizeof(msg)), 0);
		assert_int_equal(arena_alloc(arena, p[i]->bytes, &ext[i]), 0);
	}
	for (int i = 0; i < 3; i++)
		assert_int_equal(loader_submit(loader, p[i], ext[i], NULL, &h[i]), 0);
	for (int i = 0; i < 2; i++) {
		w[i] = (struct waiter){ .h = load_get(h[2]) };
		assert_int_equal(pthread_create(&th[i], NULL, wait_thread, &w[i]), 0);
	}
	for (int i = 0; i < 3; i++) {
		assert_int_equal(load_wait(h[i], -1), 0);
		assert_int_equal(load_state(h[i]), LOAD_DONE);
		check_bytes(p[i], &spec[i], ext[i], "concurrent");
		load_put(h[i]);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(w[i].rc, 0);
	}
	for (int i = 0; i < 3; i++) {
		assert_int_equal(arena_free(arena, ext[i], p[i]->bytes), 0);
		loader_plan_free(p[i]);
	}
}

/*
 * The read path follows the page cache: a cold file is read O_DIRECT, a warm one buffered,
 * and a partly cached one both ways (plan->direct_bytes, plan->buffered_bytes), with
 * cachestat(2) and with mincore(2), in both layouts; the bytes are right every time.
 */
static void test_residency_choice(void **state)
{
	static const struct st_write_tensor t[] = {
		/* 1104 bytes puts "b", "c" and "e" at 64-byte aligned file offsets (with this
		 * header's length): O_DIRECT straight into their slots; "d" is not aligned,
		 * so it goes through staging. The test checks that both kinds are there. */
		{ "small", ST_U8, 1, { 1104 }, NULL },
		{ "b", ST_F32, 1, { 1u << 20 }, NULL },		/* 4 MiB */
		{ "mid", ST_U8, 1, { 4032 }, NULL },
		{ "c", ST_F32, 2, { 1024, 2048 }, NULL },	/* 8 MiB */
		{ "e", ST_U8, 1, { (1u << 20) + 5 }, NULL },	/* an unaligned end */
		{ "d", ST_F16, 1, { 1u << 20 }, NULL },		/* 2 MiB, unaligned */
		{ "tail", ST_U8, 1, { 7 }, NULL },
	};
	enum warmth { COLD, WARM, HEAD, STRIPES };
	static const struct {
		const char *name;
		enum warmth warmth;
	} rows[] = {
		{ "cold", COLD },
		{ "warm", WARM },
		{ "first 6 MiB cached", HEAD },
		{ "every other MiB cached", STRIPES },
	};
	static const enum residency_method methods[] = { RESIDENCY_CACHESTAT, RESIDENCY_MINCORE };
	static const unsigned int layouts[] = { 0, LOAD_F_FILE_LAYOUT };
	char path[2048];
	struct stat sb;

	(void)state;
	in_root(path, "residency.safetensors");
	assert_int_equal(st_write_file(path, t, ARRAY_SIZE(t), NULL, 0, 11), 0);
	assert_int_equal(stat(path, &sb), 0);
	for (size_t m = 0; m < ARRAY_SIZE(methods); m++) {
		for (size_t l = 0; l < ARRAY_SIZE(layouts); l++) {
			for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
				struct load_file_spec fs = { .path = path };
				struct load_spec spec = { .name = "residency", .n_files = 1,
							  .files = &fs, .flags = layouts[l] };
				char row[256], msg[LOADER_MSG_MAX];
				struct load_plan *p;
				uint64_t ext;
				bool ok;

				snprintf(row, sizeof(row), "%s, %s, %s", rows[i].name,
					 residency_method_name(methods[m]),
					 layouts[l] ? "file layout" : "aligned");
				residency_set_method(methods[m]);
				/*
				 * Another process may drop the page cache (echo 3 >
				 * /proc/sys/vm/drop_caches) between the warming and the plan: the
				 * plan is made again when the file did not keep what was warmed.
				 */
				for (int attempt = 0;; attempt++) {
					uint64_t want = rows[i].warmth == WARM ? (uint64_t)sb.st_size :
							rows[i].warmth == HEAD ? (6u << 20) :
							rows[i].warmth == STRIPES ? (7u << 20) : 0;
					uint64_t before, after;

					if (rows[i].warmth != WARM && !make_cold(path)) {
						residency_set_method(RESIDENCY_AUTO);
						skip();	/* the kernel keeps the pages */
					}
					if (rows[i].warmth == WARM)
						make_warm(path, 0, (uint64_t)sb.st_size);
					else if (rows[i].warmth == HEAD)
						make_warm(path, 0, 6u << 20);
					for (uint64_t g = 0; rows[i].warmth == STRIPES &&
					     g * (1u << 20) < (uint64_t)sb.st_size; g += 2)
						make_warm(path, g << 20, 1u << 20);
					before = cached_bytes(path);
					assert_int_equal(loader_plan(&spec, CHUNK, &p, msg,
								     sizeof(msg)), 0);
					after = cached_bytes(path);
					if ((before >= want && after >= before) || attempt == 4)
						break;
					fprintf(stderr, "%s: the page cache held %lu then %lu bytes of the "
						"file (%lu warmed): again\n", row, before, after, want);
					loader_plan_free(p);
				}
				if (!layouts[l]) {
					uint32_t in_place = 0, staged = 0;

					for (uint32_t k = 0; k < p->n_tensors; k++) {
						const struct load_tensor *T = &p->tensors[k];

						if (T->src_bytes < (1u << 20))
							continue;
						if ((T->off - T->src_off) % 4096 == 0)
							in_place++;
						else
							staged++;
					}
					if (in_place != 3 || staged != 1) {
						fprintf(stderr, "%s: %u large tensors in place, %u "
							"staged (want 3 and 1)\n", row, in_place, staged);
						fail();
					}
				}
				switch (rows[i].warmth) {
				case COLD:
					ok = p->buffered_bytes == 0 && p->direct_bytes == p->read_bytes;
					break;
				case WARM:
					ok = p->direct_bytes == 0 && p->buffered_bytes == p->read_bytes;
					break;
				case HEAD:
					ok = p->buffered_bytes >= (4u << 20) &&
					     p->direct_bytes >= (4u << 20);
					break;
				default:
					ok = p->buffered_bytes >= (4u << 20) &&
					     p->direct_bytes >= (4u << 20);
					break;
				}
				if (!ok || p->direct_bytes + p->buffered_bytes != p->read_bytes) {
					fprintf(stderr, "%s: read %lu bytes: %lu O_DIRECT, %lu buffered\n",
						row, p->read_bytes, p->direct_bytes, p->buffered_bytes);
					fail();
				}
				assert_int_equal(arena_alloc(arena, p->bytes, &ext), 0);
				if (loader_run(loader, p, ext, NULL, msg, sizeof(msg))) {
					fprintf(stderr, "%s: load failed: %s\n", row, msg);
					fail();
				}
				check_bytes(p, &spec, ext, row);
				assert_int_equal(arena_free(arena, ext, p->bytes), 0);
				loader_plan_free(p);
			}
		}
	}
	residency_set_method(RESIDENCY_AUTO);
}

/* Refusals of bad requests and of bad files, each with its errno and message. */
static void test_plan_refusals(void **state)
{
	char bad[2048], odd[2048], msg[LOADER_MSG_MAX];
	struct load_file_spec fbad = { .path = bad }, fodd = { .path = odd },
			      fnone = { .path = "/nonexistent/x.safetensors" };
	const struct {
		const char *name;
		struct load_spec spec;
		uint32_t chunk;
		int rc;
		const char *expect;
	} rows[] = {
		{ "no files", { .name = "c", .n_files = 0, .files = &fodd }, CHUNK, -EINVAL,
		  "invalid load request" },
		{ "chunk not 4 KiB", { .name = "c", .n_files = 1, .files = &fodd }, 5000, -EINVAL,
		  "invalid load request" },
		{ "conversion to I8", { .name = "c", .n_files = 1, .files = &fodd,
					.convert_to = ST_I8, .flags = LOAD_F_CONVERT }, CHUNK,
		  -EINVAL, "invalid load request" },
		{ "missing file", { .name = "c", .n_files = 1, .files = &fnone }, CHUNK, -ENOENT,
		  "/nonexistent/x.safetensors" },
		{ "invalid file", { .name = "c", .n_files = 1, .files = &fbad }, CHUNK, -EINVAL,
		  "file_too_small" },
	};
	int fd;

	(void)state;
	in_root(odd, "odd.safetensors");
	in_root(bad, "bad.safetensors");
	fd = open(bad, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_int_equal(write(fd, "abc", 3), 3);
	close(fd);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct load_plan *p = (void *)1;
		int rc = loader_plan(&rows[i].spec, rows[i].chunk, &p, msg, sizeof(msg));

		if (rc != rows[i].rc || p || !strstr(msg, rows[i].expect)) {
			fprintf(stderr, "%s: rc=%d msg=\"%s\", want %d and \"%s\"\n", rows[i].name,
				rc, msg, rows[i].rc, rows[i].expect);
			fail();
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_file_every_mode),
		cmocka_unit_test(test_sharded_component),
		cmocka_unit_test(test_buffered_fallback),
		cmocka_unit_test(test_file_changed_during_load),
		cmocka_unit_test(test_stale_fingerprint),
		cmocka_unit_test(test_partial),
		cmocka_unit_test(test_convert_values),
		cmocka_unit_test(test_convert_load),
		cmocka_unit_test(test_verify),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_concurrent_and_shared),
		cmocka_unit_test(test_plan_refusals),
		cmocka_unit_test(test_residency_choice),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
