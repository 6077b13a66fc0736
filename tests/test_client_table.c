/*
 * weightd_tensor_table(): the bulk listing a binding uses to view every tensor of a pin,
 * against a forged daemon whose registry this test writes itself (shm/registry.h's writer),
 * so that the registry can say anything a hostile or corrupt one could: tensors placed past
 * the end of the host cache, offsets that wrap around, unknown dtypes. One table of cases,
 * each the call's arguments and everything it must answer; the extents and offsets are
 * checked against the host-cache mapping the library made.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "weightd.h"

#include "core/base/common.h"
#include "core/format/st.h"
#include "shm/abi.h"
#include "shm/attach.h"
#include "shm/registry.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "tests/helpers_tmp.h"

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			print_error("%s:%d: check failed: %s\n  ", __FILE__, __LINE__, #cond); \
			print_error(__VA_ARGS__);                                          \
			print_error("\n  last error: %s\n", weightd_last_error());         \
			fail();                                                            \
		}                                                                          \
	} while (0)

#define HOST_SIZE (64u * 1024)
#define PAGE 4096u
#define CLIENT_ID 9u

/* One forged tensor: where the registry says it is. */
struct ftensor {
	const char *model, *component, *name;
	uint8_t dtype, rank;
	uint64_t shape[2];
	uint64_t nbytes;
	bool resident;
	uint64_t host_offset;
};

/*
 * The forged registry, in registry order. Model "other" comes first so that listing "m"
 * skips records of another model; "m" has two components; the last five models are
 * hostile: a tensor past the end of the host cache, one whose offset + size wraps around
 * 2^64, one with a dtype number no safetensors dtype has, and two whose shape does not make
 * the bytes the record says.
 */
static const struct ftensor tensors[] = {
	{ "other", "", "o", ST_U8, 1, { 4 }, 4, true, 100 },
	{ "m", "a", "w0", ST_F16, 2, { 2, 3 }, 12, true, 8200 },
	{ "m", "a", "w1", ST_F32, 1, { 4 }, 16, true, 8212 },
	{ "m", "a", "scalar", ST_F32, 0, { 0 }, 4, true, 8228 },
	{ "m", "a", "empty", ST_F32, 2, { 0, 5 }, 0, true, 0 },
	{ "m", "a", "cold", ST_F16, 1, { 8 }, 16, false, 0 },
	{ "m", "b", "w0", ST_I64, 1, { 2 }, 16, true, 12288 },
	{ "edge", "", "last", ST_F32, 1, { 4 }, 16, true, HOST_SIZE - 16 },
	{ "bad", "", "past", ST_F32, 1, { 4 }, 16, true, HOST_SIZE - 8 },
	{ "wrap", "", "huge", ST_F32, 1, { 4 }, 16, true, UINT64_MAX - 4 },
	{ "odd", "", "what", 200, 1, { 4 }, 16, true, 64 },
	{ "liar", "", "short", ST_F32, 1, { 4 }, 8, true, 64 },
	{ "liar2", "", "vast", ST_F32, 2, { 1ull << 62, 4 }, 16, true, 64 },
};

struct forged {
	char dir[256];
	char sock[108];
	struct registry *reg;
	struct shm_segment ring, host;
	int listen_fd, conn;
	struct weightd *w;
};

static int find_or_add_model(struct registry *reg, const char *name, uint32_t *id)
{
	struct registry_view v;
	int ret = registry_add_model(reg, name, NULL, 0, id);

	if (ret != -EEXIST)
		return ret;
	/* Already added: the writer's segment is readable in-process through a view. */
	ret = registry_view_init(&v, registry_segment(reg)->base, registry_segment(reg)->size);
	if (ret)
		return ret;
	registry_publish(reg);
	return registry_find_model(&v, name, id, NULL);
}

static int find_or_add_component(struct registry *reg, uint32_t model, const char *name,
				 uint32_t *id)
{
	struct registry_view v;
	int ret = registry_add_component(reg, model, name, 0, id);

	if (ret != -EEXIST)
		return ret;
	ret = registry_view_init(&v, registry_segment(reg)->base, registry_segment(reg)->size);
	if (ret)
		return ret;
	registry_publish(reg);
	return registry_find_component(&v, model, name, id, NULL);
}

static void forge_registry(struct forged *f)
{
	const struct registry_limits lim = { .max_models = 16, .max_components = 16,
					     .max_tensors = 64 };

	CHECK(registry_create(&lim, &f->reg) == 0, "registry_create");
	for (size_t i = 0; i < ARRAY_SIZE(tensors); i++) {
		const struct ftensor *t = &tensors[i];
		uint32_t mid, cid, tid;

		CHECK(find_or_add_model(f->reg, t->model, &mid) == 0, "model %s", t->model);
		CHECK(find_or_add_component(f->reg, mid, t->component, &cid) == 0,
		      "component %s/%s", t->model, t->component);
		struct registry_tensor_info ti = { .component = cid, .name = t->name,
						   .dtype = t->dtype, .rank = t->rank,
						   .shape = t->shape, .nbytes = t->nbytes };

		CHECK(registry_add_tensor(f->reg, &ti, &tid) == 0, "tensor %s", t->name);
		if (t->resident)
			CHECK(registry_set_tensor_location(f->reg, tid, 1u << WD_TIER_HOST,
							   t->host_offset) == 0, "location %s",
			      t->name);
	}
	registry_publish(f->reg);
}

/* The daemon's side of one attach: the hello, then a reply carrying the forged segments. */
static void *serve_hello(void *arg)
{
	struct forged *f = arg;
	struct wd_hello hello;
	struct wd_hello_reply rep = {
		.magic = WD_REPLY_MAGIC, .version = WD_ABI_VERSION, .reply_size = sizeof(rep),
		.client_id = CLIENT_ID, .n_fds = 3, .ring_seg_size = f->ring.size,
		.registry_seg_size = registry_segment(f->reg)->size, .host_seg_size = f->host.size,
	};
	int nfds = 0, fds[3];

	f->conn = accept(f->listen_fd, NULL, NULL);
	if (f->conn < 0 || attach_recv(f->conn, &hello, sizeof(hello), NULL, &nfds) <= 0)
		return NULL;
	fds[0] = f->ring.fd;
	fds[1] = registry_client_fd(f->reg);
	fds[2] = shm_segment_ro_fd(&f->host);
	attach_send(f->conn, &rep, sizeof(rep), fds, 3);
	close(fds[1]);
	close(fds[2]);
	return NULL;
}

static int setup(void **state)
{
	static struct forged f;
	const struct ring_seg_params prm = { .sq_entries = 64, .cq_entries = 64,
					     .client_id = CLIENT_ID };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct weightd_attach_opts o = { .attach_timeout_ms = 2000, .client_name = "table" };
	struct ring sq, cq;
	pthread_t th;
	int64_t rsize = ring_seg_size(&prm, NULL);

	memset(&f, 0, sizeof(f));
	f.listen_fd = f.conn = -1;
	if (td_tmpdir(f.dir, sizeof(f.dir), "test_client_table"))
		return -1;
	snprintf(f.sock, sizeof(f.sock), "%.90s/sock", f.dir);
	forge_registry(&f);
	CHECK(rsize > 0 && shm_segment_create("test-ring", (size_t)rsize, 0, &f.ring) == 0 &&
		      ring_seg_format(f.ring.base, f.ring.size, &prm, &sq, &cq) == 0,
	      "ring segment of %lld bytes", (long long)rsize);
	CHECK(shm_segment_create("test-host", HOST_SIZE, 0, &f.host) == 0, "host segment");
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f.sock);
	f.listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	CHECK(f.listen_fd >= 0 && !bind(f.listen_fd, (struct sockaddr *)&sa, sizeof(sa)) &&
		      !listen(f.listen_fd, 1), "forged daemon socket %s", f.sock);
	pthread_create(&th, NULL, serve_hello, &f);
	CHECK(weightd_attach(f.sock, &o, &f.w) == 0, "attach to the forged daemon at %s", f.sock);
	pthread_join(th, NULL);
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	struct forged *f = *state;

	weightd_detach(f->w);
	if (f->conn >= 0)
		close(f->conn);
	if (f->listen_fd >= 0)
		close(f->listen_fd);
	shm_segment_close(&f->ring);
	shm_segment_close(&f->host);
	registry_destroy(f->reg);
	td_rmtree(f->dir);
	return 0;
}

/* What one listed tensor must look like. */
struct want_loc {
	const char *name;
	uint32_t dtype, rank;
	uint64_t shape0, nbytes, host_offset;	/* host_offset: where its bytes are */
};

static void test_table_cases(void **state)
{
	static const struct {
		const char *what, *model, *component;
		uint32_t max;
		size_t names_size;
		int ret;
		const char *msg;		/* in weightd_last_error() when ret < 0 */
		uint32_t n, absent, n_components;
		uint64_t host_offset, size;	/* the page-aligned extent */
		uint64_t names_len;		/* the name bytes needed, for -ENOBUFS */
		struct want_loc loc[6];
	} rows[] = {
		{ .what = "one component: the cold tensor left out, the empty one at offset 0",
		  .model = "m", .component = "a", .max = 16, .names_size = 256, .n = 4,
		  .absent = 1, .n_components = 1, .host_offset = 8192, .size = 8232 - 8192,
		  .loc = { { "w0", ST_F16, 2, 2, 12, 8200 }, { "w1", ST_F32, 1, 4, 16, 8212 },
			   { "scalar", ST_F32, 0, 0, 4, 8228 }, { "empty", ST_F32, 2, 0, 0, 0 } } },
		{ .what = "the whole model: both components, a name in each",
		  .model = "m", .max = 16, .names_size = 256, .n = 5, .absent = 1,
		  .n_components = 2, .host_offset = 8192, .size = 12304 - 8192,
		  .loc = { { "w0", ST_F16, 2, 2, 12, 8200 }, { "w1", ST_F32, 1, 4, 16, 8212 },
			   { "scalar", ST_F32, 0, 0, 4, 8228 }, { "empty", ST_F32, 2, 0, 0, 0 },
			   { "w0", ST_I64, 1, 2, 16, 12288 } } },
		{ .what = "the other component alone", .model = "m", .component = "b", .max = 16,
		  .names_size = 256, .n = 1, .n_components = 1, .host_offset = 12288, .size = 16,
		  .loc = { { "w0", ST_I64, 1, 2, 16, 12288 } } },
		{ .what = "a tensor ending exactly at the end of the host cache", .model = "edge",
		  .max = 16, .names_size = 256, .n = 1, .n_components = 1,
		  .host_offset = HOST_SIZE - PAGE, .size = PAGE,
		  .loc = { { "last", ST_F32, 1, 4, 16, HOST_SIZE - 16 } } },
		{ .what = "a tensor 8 bytes past the end", .model = "bad", .max = 16,
		  .names_size = 256, .ret = -EFAULT,
		  .msg = "tensor past: host offset 65528 + 16 bytes lies outside the host cache" },
		{ .what = "an offset + size that wraps around 2^64", .model = "wrap", .max = 16,
		  .names_size = 256, .ret = -EFAULT,
		  .msg = "tensor huge: host offset 18446744073709551611" },
		{ .what = "an unknown dtype number", .model = "odd", .max = 16, .names_size = 256,
		  .ret = -EBADMSG, .msg = "dtype 200" },
		{ .what = "a shape and dtype that make fewer bytes than the record says",
		  .model = "liar", .max = 16, .names_size = 256, .ret = -EBADMSG,
		  .msg = "tensor short: shape and dtype 11 make 16 bytes, the registry says 8" },
		{ .what = "a shape whose byte count overflows 64 bits", .model = "liar2", .max = 16,
		  .names_size = 256, .ret = -EBADMSG, .msg = "tensor vast: shape and dtype" },
		{ .what = "too few records: the count needed comes back", .model = "m", .max = 2,
		  .names_size = 256, .ret = -ENOBUFS, .msg = "5 tensors", .n = 5,
		  .names_len = 3 + 3 + 7 + 6 + 3 },
		{ .what = "too few name bytes: the bytes needed come back", .model = "m",
		  .component = "a", .max = 16, .names_size = 10, .ret = -ENOBUFS,
		  .msg = "room for 16 and 10", .n = 4, .names_len = 3 + 3 + 7 + 6 },
		{ .what = "no such model", .model = "nope", .max = 16, .names_size = 256,
		  .ret = -ENOENT, .msg = "not in the registry" },
		{ .what = "no such component", .model = "m", .component = "c", .max = 16,
		  .names_size = 256, .ret = -ENOENT, .msg = "no such component" },
	};
	struct forged *f = *state;
	const char *host = NULL;
	struct weightd_tensor_info probe = { .resident = 1, .nbytes = 1 };

	/* The library's own mapping of the host cache, for checking the bases. */
	host = weightd_tensor_data(f->w, &probe);
	CHECK(host, "weightd_tensor_data() of host offset 0");
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct weightd_tensor_loc out[16];
		struct weightd_tensor_table tab;
		char names[256];
		int ret;

		memset(out, 0xa5, sizeof(out));
		ret = weightd_tensor_table(f->w, rows[i].model, rows[i].component, out,
					   rows[i].max, names, rows[i].names_size, &tab);
		CHECK(ret == rows[i].ret, "row %zu (%s): %d, want %d", i, rows[i].what, ret,
		      rows[i].ret);
		if (ret < 0) {
			CHECK(strstr(weightd_last_error(), rows[i].msg), "row %zu (%s): '%s' lacks "
			      "'%s'", i, rows[i].what, weightd_last_error(), rows[i].msg);
			if (ret == -ENOBUFS)
				CHECK(tab.n == rows[i].n && tab.names_len == rows[i].names_len,
				      "row %zu (%s): needs %u records and %llu name bytes, want "
				      "%u and %llu", i, rows[i].what, tab.n,
				      (unsigned long long)tab.names_len, rows[i].n,
				      (unsigned long long)rows[i].names_len);
			continue;
		}
		CHECK(tab.n == rows[i].n && tab.absent == rows[i].absent &&
			      tab.n_components == rows[i].n_components,
		      "row %zu (%s): n %u absent %u components %u, want %u %u %u", i,
		      rows[i].what, tab.n, tab.absent, tab.n_components, rows[i].n,
		      rows[i].absent, rows[i].n_components);
		CHECK(tab.host_offset == rows[i].host_offset && tab.nbytes == rows[i].size &&
			      (const char *)tab.base == host + rows[i].host_offset &&
			      tab.host_fd >= 0,
		      "row %zu (%s): extent at %llu, %llu bytes (base %p, host %p, fd %d), want "
		      "%llu, %llu", i, rows[i].what, (unsigned long long)tab.host_offset,
		      (unsigned long long)tab.nbytes, tab.base, (const void *)host, tab.host_fd,
		      (unsigned long long)rows[i].host_offset, (unsigned long long)rows[i].size);
		for (uint32_t k = 0; k < tab.n; k++) {
			const struct want_loc *wl = &rows[i].loc[k];
			const struct weightd_tensor_loc *l = &out[k];
			uint64_t at = l->nbytes ? tab.host_offset + l->offset : 0;

			CHECK(l->name_off + l->name_len < sizeof(names) &&
				      names[l->name_off + l->name_len] == '\0' &&
				      l->name_len == strlen(wl->name) &&
				      !memcmp(names + l->name_off, wl->name, l->name_len),
			      "row %zu (%s) record %u: name at %u (%u bytes) '%.*s', want '%s'", i,
			      rows[i].what, k, l->name_off, l->name_len, (int)l->name_len,
			      names + l->name_off, wl->name);
			CHECK(l->dtype == wl->dtype && l->rank == wl->rank &&
				      (!wl->rank || l->shape[0] == wl->shape0) &&
				      l->nbytes == wl->nbytes && at == wl->host_offset &&
				      l->offset + l->nbytes <= tab.nbytes,
			      "row %zu (%s) %s: dtype %u rank %u shape0 %llu nbytes %llu at %llu "
			      "(offset %llu), want %u %u %llu %llu at %llu", i, rows[i].what,
			      wl->name, l->dtype, l->rank, (unsigned long long)l->shape[0],
			      (unsigned long long)l->nbytes, (unsigned long long)at,
			      (unsigned long long)l->offset, wl->dtype, wl->rank,
			      (unsigned long long)wl->shape0, (unsigned long long)wl->nbytes,
			      (unsigned long long)wl->host_offset);
			for (uint32_t d = l->rank; d < 16; d++)
				CHECK(l->shape[d] == 0, "row %zu %s: shape[%u] = %llu past rank %u",
				      i, wl->name, d, (unsigned long long)l->shape[d], l->rank);
		}
	}
}

static void test_bad_arguments(void **state)
{
	struct forged *f = *state;
	struct weightd_tensor_loc out[1];
	struct weightd_tensor_table tab;
	char names[8];
	static const struct {
		const char *what;
		bool null_w, null_out, null_names, null_tab;
	} rows[] = {
		{ "NULL handle", true, false, false, false },
		{ "NULL records with room", false, true, false, false },
		{ "NULL names with room", false, false, true, false },
		{ "NULL table", false, false, false, true },
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		int ret = weightd_tensor_table(rows[i].null_w ? NULL : f->w, "m", NULL,
					       rows[i].null_out ? NULL : out, 1,
					       rows[i].null_names ? NULL : names, sizeof(names),
					       rows[i].null_tab ? NULL : &tab);

		CHECK(ret == -EINVAL, "row %zu (%s): %d, want -EINVAL", i, rows[i].what, ret);
	}
	/* No room at all is a valid question: how much is needed. */
	CHECK(weightd_tensor_table(f->w, "m", "b", NULL, 0, NULL, 0, &tab) == -ENOBUFS &&
		      tab.n == 1 && tab.names_len == 3,
	      "sizing call: n %u, names_len %llu", tab.n, (unsigned long long)tab.names_len);
}

/* The shared record of tensor @name of model @model, found through a view of the writer's
 * segment (the test may write it directly, as a corrupt daemon or a forger could). */
static struct wd_reg_tensor *shared_record(struct forged *f, const char *model,
					   const char *name, uint32_t *id)
{
	const struct shm_segment *seg = registry_segment(f->reg);
	struct registry_view v;
	uint32_t mid;

	CHECK(registry_view_init(&v, seg->base, seg->size) == 0 &&
		      registry_find_model(&v, model, &mid, NULL) == 0 &&
		      registry_find_tensor(&v, mid, WD_ID_NONE, name, id, NULL) == 0,
	      "record of %s/%s", model, name);
	return (struct wd_reg_tensor *)((char *)seg->base + v.tensor_off) + *id;
}

/*
 * The table reads each record in place under its seqlock and checks only the fields it uses
 * (no checksum). Records rewritten behind the writer's back -- so their checksums are stale,
 * as a corrupt segment's would be, or recomputed, as a forger's would be -- must still never
 * yield bytes outside the host cache or a shape that does not make the bytes listed.
 */
static void test_forged_in_place(void **state)
{
	enum field { F_OFFSET, F_RANK, F_DTYPE, F_NBYTES, F_NAME, F_SEQ_ODD, F_SANE_MOVE };
	static const struct {
		const char *what;
		enum field field;
		uint64_t value;
		int ret;
		const char *msg;
	} rows[] = {
		{ "offset moved past the end", F_OFFSET, HOST_SIZE - 8, -EFAULT,
		  "lies outside the host cache" },
		{ "offset that wraps", F_OFFSET, UINT64_MAX - 3, -EFAULT, "outside the host cache" },
		{ "rank above 16", F_RANK, WD_SHAPE_MAX + 1, -EBADMSG, "reading tensor" },
		{ "dtype beyond the table", F_DTYPE, 250, -EBADMSG, "dtype 250" },
		{ "nbytes larger than the shape makes", F_NBYTES, 32, -EBADMSG,
		  "make 16 bytes, the registry says 32" },
		{ "a name with no NUL in its field", F_NAME, 'x', -EBADMSG, "reading tensor" },
		{ "a record left under rewrite (odd sequence)", F_SEQ_ODD, 1, -EAGAIN,
		  "reading tensor" },
		{ "moved to another place inside the cache, checksum stale", F_SANE_MOVE, 4096, 0,
		  "" },
	};
	struct forged *f = *state;
	uint32_t id;
	struct wd_reg_tensor *rec = shared_record(f, "edge", "last", &id);
	struct wd_reg_tensor saved = *rec;

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct weightd_tensor_loc out[2];
		struct weightd_tensor_table tab;
		char names[64];
		int ret;

		switch (rows[i].field) {
		case F_OFFSET:
		case F_SANE_MOVE:
			rec->host_offset = rows[i].value;
			break;
		case F_RANK:
			rec->rank = (uint8_t)rows[i].value;
			break;
		case F_DTYPE:
			rec->dtype = (uint8_t)rows[i].value;
			break;
		case F_NBYTES:
			rec->nbytes = rows[i].value;
			break;
		case F_NAME:
			memset(rec->name, (int)rows[i].value, sizeof(rec->name));
			break;
		case F_SEQ_ODD:
			rec->seq |= 1;
			break;
		}
		ret = weightd_tensor_table(f->w, "edge", NULL, out, 2, names, sizeof(names), &tab);
		*rec = saved;
		CHECK(ret == rows[i].ret, "row %zu (%s): %d, want %d", i, rows[i].what, ret,
		      rows[i].ret);
		if (ret < 0) {
			CHECK(strstr(weightd_last_error(), rows[i].msg), "row %zu (%s): '%s' lacks "
			      "'%s'", i, rows[i].what, weightd_last_error(), rows[i].msg);
			continue;
		}
		CHECK(tab.n == 1 && tab.host_offset + out[0].offset == rows[i].value &&
			      out[0].offset + out[0].nbytes <= tab.nbytes &&
			      tab.host_offset + tab.nbytes <= HOST_SIZE,
		      "row %zu (%s): n %u, tensor at %llu + %llu, extent %llu + %llu", i,
		      rows[i].what, tab.n, (unsigned long long)(tab.host_offset + out[0].offset),
		      (unsigned long long)out[0].nbytes, (unsigned long long)tab.host_offset,
		      (unsigned long long)tab.nbytes);
	}
}

/* registry_read_tensor_loc() reads what registry_read_tensor() copies, for every record. */
static void test_loc_matches_record(void **state)
{
	struct forged *f = *state;
	const struct shm_segment *seg = registry_segment(f->reg);
	struct registry_view v;
	uint32_t id;

	CHECK(registry_view_init(&v, seg->base, seg->size) == 0, "view");
	for (id = 0; id < ARRAY_SIZE(tensors); id++) {
		struct registry_tensor_loc l;
		struct wd_reg_tensor t;

		CHECK(registry_read_tensor(&v, id, &t) == 0 &&
			      registry_read_tensor_loc(&v, id, &l) == 0, "record %u", id);
		CHECK(l.model == t.model && l.component == t.component && l.dtype == t.dtype &&
			      l.rank == t.rank && l.resident == t.resident &&
			      l.nbytes == t.nbytes && l.host_offset == t.host_offset &&
			      !memcmp(l.shape, t.shape, sizeof(uint64_t) * t.rank) &&
			      l.name_len == strlen(t.name) && !strcmp(l.name, t.name),
		      "record %u (%s): loc %s rank %u dtype %u nbytes %llu at %llu", id, t.name,
		      l.name, l.rank, l.dtype, (unsigned long long)l.nbytes,
		      (unsigned long long)l.host_offset);
	}
	CHECK(registry_read_tensor_loc(&v, id, &(struct registry_tensor_loc){ 0 }) == -ENOENT,
	      "record %u is not published", id);
}

struct flipper {
	struct registry *reg;
	uint32_t id;
	uint64_t off;		/* the record's host offset, kept by every rewrite */
	atomic_bool stop, started;
	unsigned long flips;
};

/* Rewrites a record's form between two consistent states, F32 x 4 = 16 and F16 x 4 = 8. */
static void *flip_form(void *arg)
{
	struct flipper *fl = arg;

	atomic_store(&fl->started, true);
	while (!atomic_load(&fl->stop)) {
		bool f16 = fl->flips++ & 1;

		registry_set_tensor_host(fl->reg, fl->id, true, fl->off, f16 ? ST_F16 : ST_F32,
					 f16 ? 8 : 16);
	}
	return NULL;
}

/*
 * A record rewritten while the table reads it: every call sees one whole version (the
 * seqlock), never the dtype of one with the size of the other, which the shape check
 * would report as -EBADMSG.
 */
static void test_concurrent_rewrite(void **state)
{
	struct forged *f = *state;
	struct flipper fl = { .reg = f->reg };
	unsigned int seen[2] = { 0, 0 };
	pthread_t th;

	fl.off = shared_record(f, "edge", "last", &fl.id)->host_offset;
	atomic_init(&fl.stop, false);
	atomic_init(&fl.started, false);
	CHECK(pthread_create(&th, NULL, flip_form, &fl) == 0, "writer thread");
	while (!atomic_load(&fl.started))
		sched_yield();
	/* Until both versions were seen a hundred times (a bound keeps a stalled run finite). */
	for (int i = 0; i < 1000000 && (seen[0] < 100 || seen[1] < 100); i++) {
		struct weightd_tensor_loc out[1];
		struct weightd_tensor_table tab;
		char names[16];
		int ret = weightd_tensor_table(f->w, "edge", NULL, out, 1, names, sizeof(names),
					       &tab);

		if (ret) {
			atomic_store(&fl.stop, true);
			pthread_join(th, NULL);
		}
		CHECK(ret == 0, "read %d while the record is rewritten: %d", i, ret);
		CHECK((out[0].dtype == ST_F32 && out[0].nbytes == 16) ||
			      (out[0].dtype == ST_F16 && out[0].nbytes == 8),
		      "read %d: dtype %u with %llu bytes", i, out[0].dtype,
		      (unsigned long long)out[0].nbytes);
		seen[out[0].dtype == ST_F16]++;
	}
	atomic_store(&fl.stop, true);
	pthread_join(th, NULL);
	registry_set_tensor_host(f->reg, fl.id, true, fl.off, ST_F32, 16);
	print_message("%lu rewrites; the table saw F32 %u times, F16 %u times\n", fl.flips,
		      seen[0], seen[1]);
	CHECK(seen[0] && seen[1], "the reads never overlapped the rewrites: F32 %u, F16 %u",
	      seen[0], seen[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table_cases),
		cmocka_unit_test(test_bad_arguments),
		cmocka_unit_test(test_forged_in_place),
		cmocka_unit_test(test_loc_matches_record),
		cmocka_unit_test(test_concurrent_rewrite),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
