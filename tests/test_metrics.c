/*
 * core/daemon/metrics.c without a daemon: the listen-address parser (a table of accepted and
 * refused forms) and the exposition renderer (every sample has its HELP and TYPE lines,
 * counters end in _total, values come from the right snapshot slot, a small buffer is
 * refused), the registry metrics block's histogram buckets and error classes (tables), and
 * the block's exposition (histograms cumulative with _count equal to the +Inf bucket, labels
 * escaped). tests/test_metrics.sh and tests/test_prometheus.sh cover the HTTP server.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/base/common.h"
#include "core/daemon/metrics.h"
#include "shm/stats.h"

struct listen_row {
	const char *in;
	int ret;
	int family;
	const char *addr;	/* inet_ntop() form */
	unsigned int port;
};

static const struct listen_row listen_rows[] = {
	{ "9464", 0, AF_INET, "127.0.0.1", 9464 },
	{ "1", 0, AF_INET, "127.0.0.1", 1 },
	{ "65535", 0, AF_INET, "127.0.0.1", 65535 },
	{ "127.0.0.1:9464", 0, AF_INET, "127.0.0.1", 9464 },
	{ "0.0.0.0:80", 0, AF_INET, "0.0.0.0", 80 },
	{ "10.1.2.3:8080", 0, AF_INET, "10.1.2.3", 8080 },
	{ "[::1]:9464", 0, AF_INET6, "::1", 9464 },
	{ "[::]:9464", 0, AF_INET6, "::", 9464 },
	{ "[fe80::1]:1234", 0, AF_INET6, "fe80::1", 1234 },
	{ "", -EINVAL, 0, NULL, 0 },
	{ "0", -EINVAL, 0, NULL, 0 },
	{ "65536", -EINVAL, 0, NULL, 0 },
	{ "99999999999999999999999", -EINVAL, 0, NULL, 0 },
	{ "-1", -EINVAL, 0, NULL, 0 },
	{ "+80", -EINVAL, 0, NULL, 0 },
	{ " 80", -EINVAL, 0, NULL, 0 },
	{ "80 ", -EINVAL, 0, NULL, 0 },
	{ "80x", -EINVAL, 0, NULL, 0 },
	{ ":9464", -EINVAL, 0, NULL, 0 },
	{ "127.0.0.1:", -EINVAL, 0, NULL, 0 },
	{ "127.0.0.1", -EINVAL, 0, NULL, 0 },
	{ "localhost:9464", -EINVAL, 0, NULL, 0 },
	{ "256.0.0.1:80", -EINVAL, 0, NULL, 0 },
	{ "::1:9464", -EINVAL, 0, NULL, 0 },
	{ "[::1]", -EINVAL, 0, NULL, 0 },
	{ "[::1]9464", -EINVAL, 0, NULL, 0 },
	{ "[::1:9464", -EINVAL, 0, NULL, 0 },
	{ "[127.0.0.1]:80", -EINVAL, 0, NULL, 0 },
	{ "[]:80", -EINVAL, 0, NULL, 0 },
};

static void test_parse_listen(void **state)
{
	int failures = 0;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(listen_rows); i++) {
		const struct listen_row *r = &listen_rows[i];
		struct sockaddr_storage ss;
		socklen_t len = 0;
		char addr[INET6_ADDRSTRLEN] = "";
		unsigned int port = 0;
		int ret = metrics_parse_listen(r->in, &ss, &len);

		if (!ret && ss.ss_family == AF_INET) {
			const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;

			inet_ntop(AF_INET, &a->sin_addr, addr, sizeof(addr));
			port = ntohs(a->sin_port);
		} else if (!ret && ss.ss_family == AF_INET6) {
			const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;

			inet_ntop(AF_INET6, &a->sin6_addr, addr, sizeof(addr));
			port = ntohs(a->sin6_port);
		}
		if (ret != r->ret || (!ret && (ss.ss_family != r->family ||
					       strcmp(addr, r->addr) || port != r->port ||
					       len != (r->family == AF_INET ?
						       sizeof(struct sockaddr_in) :
						       sizeof(struct sockaddr_in6))))) {
			print_error("row \"%s\": ret=%d (want %d) family=%d (want %d) addr=%s "
				    "(want %s) port=%u (want %u) len=%u\n", r->in, ret, r->ret,
				    ret ? -1 : ss.ss_family, r->family, addr,
				    r->addr ? r->addr : "-", port, r->port, (unsigned int)len);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

/* The sample value of @name in @text, or -1 when there is no such sample line. */
static long long sample(const char *text, const char *name)
{
	size_t n = strlen(name);

	for (const char *l = text; *l;) {
		const char *end = strchrnul(l, '\n');

		if (!strncmp(l, name, n) && (l[n] == ' ' || l[n] == '{')) {
			const char *v = end;

			while (v > l && v[-1] != ' ')
				v--;
			return strtoll(v, NULL, 10);
		}
		l = *end ? end + 1 : end;
	}
	return -1;
}

struct value_row {
	const char *name;
	const char *type;
	long long want;
};

static void test_render(void **state)
{
	static const struct value_row rows[] = {
		{ "weightd_up", "gauge", 1 },
		{ "weightd_clients", "gauge", 3 },
		{ "weightd_ring_segments", "gauge", 4 },
		{ "weightd_requests_total", "counter", 1000 },
		{ "weightd_request_errors_total", "counter", 7 },
		{ "weightd_pins", "gauge", 2 },
		{ "weightd_models", "gauge", 5 },
		{ "weightd_host_budget_bytes", "gauge", 1 << 30 },
		{ "weightd_host_bytes_used", "gauge", 4096 },
		{ "weightd_host_hits_total", "counter", 11 },
		{ "weightd_host_misses_total", "counter", 12 },
		{ "weightd_host_evictions_total", "counter", 13 },
		{ "weightd_host_prefetch_hits_total", "counter", 14 },
		{ "weightd_host_loads_total", "counter", 15 },
		{ "weightd_host_disk_read_bytes_total", "counter", 16 },
		{ "weightd_host_disk_read_direct_bytes_total", "counter", 19 },
	};
	struct metrics_snapshot s = { 0 };
	char buf[16384], small[64], want[160];
	int n, failures = 0, samples = 0, types = 0;

	(void)state;
	s.stat[WD_STAT_CLIENTS] = 3;
	s.stat[WD_STAT_RING_SEGS] = 4;
	s.stat[WD_STAT_REQUESTS] = 1000;
	s.stat[WD_STAT_ERRORS] = 7;
	s.stat[WD_STAT_PINS] = 2;
	s.stat[WD_STAT_MODELS] = 5;
	s.stat[WD_STAT_HOST_BUDGET] = 1 << 30;
	s.stat[WD_STAT_HOST_BYTES] = 4096;
	s.stat[WD_STAT_HOST_HITS] = 11;
	s.stat[WD_STAT_HOST_MISSES] = 12;
	s.stat[WD_STAT_HOST_EVICTIONS] = 13;
	s.stat[WD_STAT_HOST_PREFETCH_HITS] = 14;
	s.stat[WD_STAT_HOST_LOADS] = 15;
	s.stat[WD_STAT_HOST_READ_BYTES] = 16;
	s.stat[WD_STAT_HOST_READ_DIRECT_BYTES] = 19;
	s.uptime_ns = 2500000000ull;
	n = metrics_render(&s, buf, sizeof(buf));
	assert_true(n > 0);
	assert_int_equal((size_t)n, strlen(buf));
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		const struct value_row *r = &rows[i];
		long long got = sample(buf, r->name);

		snprintf(want, sizeof(want), "\n# TYPE %s %s\n", r->name, r->type);
		if (got != r->want || !strstr(buf, want)) {
			print_error("row %s: value %lld (want %lld), TYPE line %s\n", r->name, got,
				    r->want, strstr(buf, want) ? "present" : "missing");
			failures++;
		}
	}
	/* Every counter of the set (shm/stats.h) is exported under its stats name. */
	for (size_t i = 0; i < WD_STAT_COUNT; i++) {
		const struct wd_stat_info *si = &wd_stat_info[i];

		if (!si->name)
			continue;
		snprintf(want, sizeof(want), "\nweightd_%s%s %llu\n", si->name,
			 si->counter ? "_total" : "", (unsigned long long)s.stat[i]);
		if (!strstr(buf, want))
			failures++, print_error("stat %zu (%s): no line '%s'\n", i, si->name,
						want + 1);
	}
	if (!strstr(buf, "\nweightd_uptime_seconds 2.500\n"))
		failures++, print_error("uptime sample missing or wrong\n");
	/* Each sample follows its TYPE line; counters, and only they, end in _total. */
	for (char *l = buf, *next; *l; l = next) {
		char name[128], type[16];

		next = strchrnul(l, '\n');
		next += *next == '\n';
		if (sscanf(l, "# TYPE %127s %15s", name, type) == 2) {
			size_t len = strlen(name);
			bool total = len > 6 && !strcmp(name + len - 6, "_total");

			types++;
			if (total != !strcmp(type, "counter") ||
			    strncmp(next, name, len) || (next[len] != ' ' && next[len] != '{')) {
				print_error("TYPE %s %s: bad suffix or no sample after it\n", name,
					    type);
				failures++;
			}
		} else if (*l != '#') {
			samples++;
		}
	}
	if (samples != types || types < (int)ARRAY_SIZE(rows)) {
		print_error("%d samples, %d TYPE lines\n%s", samples, types, buf);
		failures++;
	}
	assert_int_equal(failures, 0);
	assert_int_equal(metrics_render(&s, small, sizeof(small)), -ENOSPC);
	assert_int_equal(metrics_render(&s, buf, (size_t)n), -ENOSPC);
	assert_int_equal(metrics_render(&s, buf, (size_t)n + 1), n);
}

/* One row per boundary: a value exactly on a bucket's upper bound belongs to it (le). */
static void test_hist_bucket(void **state)
{
	static const struct {
		uint64_t ns;
		unsigned int bucket;
	} rows[] = {
		{ 0, 0 }, { 1, 0 }, { 1000, 0 }, { 1001, 1 }, { 2000, 1 }, { 2001, 2 },
		{ 4000, 2 }, { 1000000, 10 }, { 1024000, 10 }, { 1024001, 11 },
		{ 64000000000ull, 26 }, { 67108864000ull, 26 }, { 67108864001ull, 27 },
		{ UINT64_MAX, WD_HIST_BUCKETS - 1 },
	};
	int failures = 0;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		unsigned int b = wd_hist_bucket(rows[i].ns);

		if (b != rows[i].bucket) {
			print_error("%" PRIu64 " ns: bucket %u, want %u\n", rows[i].ns, b,
				    rows[i].bucket);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void test_error_class(void **state)
{
	static const struct {
		int err;
		unsigned int cls;
	} rows[] = {
		{ -EBADMSG, WD_ERRC_VALIDATION }, { -EILSEQ, WD_ERRC_VALIDATION },
		{ -EIO, WD_ERRC_IO }, { -ENOENT, WD_ERRC_IO }, { -ESTALE, WD_ERRC_IO },
		{ -EFBIG, WD_ERRC_ADMISSION }, { -ENOSPC, WD_ERRC_ADMISSION },
		{ -EBUSY, WD_ERRC_ADMISSION }, { -EINVAL, WD_ERRC_PROTOCOL },
		{ -EPROTO, WD_ERRC_PROTOCOL }, { -ENAMETOOLONG, WD_ERRC_PROTOCOL },
		{ -ENODEV, WD_ERRC_DEVICE }, { -ENOTSUP, WD_ERRC_DEVICE },
		{ -ECANCELED, WD_ERRC_OTHER }, { -ENOMEM, WD_ERRC_OTHER }, { -EPERM, WD_ERRC_OTHER },
	};
	int failures = 0;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		unsigned int c = metrics_error_class(rows[i].err);

		if (c != rows[i].cls) {
			print_error("%s: class %u, want %u\n", strerror(-rows[i].err), c,
				    rows[i].cls);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

/* The value of the sample line that starts with @prefix (labels included), or -1. */
static double sample_f(const char *buf, const char *prefix)
{
	char want[256];
	const char *p;

	snprintf(want, sizeof(want), "\n%s ", prefix);
	p = strstr(buf, want);
	return p ? strtod(p + strlen(want), NULL) : -1;
}

static void test_render_block(void **state)
{
	static const struct {
		const char *prefix;
		double want;
	} rows[] = {
		{ "weightd_load_duration_seconds_bucket{tier=\"host\",le=\"1e-06\"}", 0 },
		{ "weightd_load_duration_seconds_bucket{tier=\"host\",le=\"0.001024\"}", 2 },
		{ "weightd_load_duration_seconds_bucket{tier=\"host\",le=\"0.002048\"}", 2 },
		{ "weightd_load_duration_seconds_bucket{tier=\"host\",le=\"1.04858\"}", 3 },
		{ "weightd_load_duration_seconds_bucket{tier=\"host\",le=\"+Inf\"}", 4 },
		{ "weightd_load_duration_seconds_count{tier=\"host\"}", 4 },
		{ "weightd_load_duration_seconds_sum{tier=\"host\"}", 100.5 },
		{ "weightd_load_duration_seconds_count{tier=\"cuda:1\"}", 1 },
		{ "weightd_ring_roundtrip_seconds_bucket{le=\"2e-06\"}", 5 },
		{ "weightd_ring_roundtrip_seconds_count", 5 },
		{ "weightd_errors_total{class=\"io\"}", 3 },
		{ "weightd_errors_total{class=\"device\"}", 4 },
		{ "weightd_alerts_total{kind=\"pin_ttl\"}", 2 },
		{ "weightd_alerts_active{kind=\"budget\"}", 1 },
		{ "weightd_host_numa_bytes{node=\"1\"}", 8192 },
		{ "weightd_host_numa_bytes{node=\"unbound\"}", 4096 },
		{ "weightd_host_free_extents", 3 },
		{ "weightd_host_largest_free_extent_bytes", 65536 },
		{ "weightd_host_budget_use_ratio", 0.25 },
		{ "weightd_component_last_load_bytes{model=\"a\\\"b\",component=\"vae\","
		  "tier=\"host\"}", 1000 },
		{ "weightd_component_last_load_seconds{model=\"a\\\"b\",component=\"vae\","
		  "tier=\"host\"}", 0.5 },
	};
	static struct metrics_snapshot s;
	struct metrics_comp_load load = { .model = "a\"b", .component = "vae", .bytes = 1000,
					  .ns = 500000000 };
	static char buf[1 << 16];
	int n, failures = 0;

	(void)state;
	memset(&s, 0, sizeof(s));
	s.stat[WD_STAT_HOST_BUDGET] = 4096;
	s.stat[WD_STAT_HOST_BYTES] = 1024;
	s.have_block = true;
	s.load[WD_TIER_HOST].bucket[10] = 2;	/* <= 1.024 ms */
	s.load[WD_TIER_HOST].bucket[20] = 1;	/* <= 1.048 s */
	s.load[WD_TIER_HOST].bucket[WD_HIST_BUCKETS - 1] = 1;	/* above 67 s */
	/* A count one ahead of the buckets (read mid-update): _count follows the buckets. */
	s.load[WD_TIER_HOST].count = 5;
	s.load[WD_TIER_HOST].sum_ns = 100500000000ull;
	s.load[WD_TIER_CUDA(1)].bucket[3] = 1;
	s.rtt.bucket[1] = 5;
	s.errors[WD_ERRC_IO] = 3;
	s.errors[WD_ERRC_DEVICE] = 4;
	s.alerts_total[WD_ALERT_PIN_TTL] = 2;
	s.alerts_active[WD_ALERT_BUDGET] = 1;
	s.numa_bytes[1] = 8192;
	s.numa_bytes[WD_METRICS_NUMA] = 4096;
	s.free_extents = 3;
	s.largest_free = 65536;
	s.loads = &load;
	s.n_loads = 1;
	n = metrics_render(&s, buf, sizeof(buf));
	assert_true(n > 0);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		double got = sample_f(buf, rows[i].prefix);

		if (got < rows[i].want - 1e-9 || got > rows[i].want + 1e-9) {
			print_error("%s: %g, want %g\n", rows[i].prefix, got, rows[i].want);
			failures++;
		}
	}
	/* Tiers with no loads are left out; each histogram has one TYPE line. */
	if (strstr(buf, "tier=\"cuda:0\"") ||
	    !strstr(buf, "\n# TYPE weightd_load_duration_seconds histogram\n") ||
	    !strstr(buf, "\n# TYPE weightd_ring_roundtrip_seconds histogram\n"))
		failures++, print_error("histogram TYPE lines or tiers wrong\n%s", buf);
	if (failures)
		print_error("%s", buf);
	assert_int_equal(failures, 0);
	/* A buffer one byte short is refused, as for the fixed part. */
	assert_int_equal(metrics_render(&s, buf, (size_t)n), -ENOSPC);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_listen),
		cmocka_unit_test(test_render),
		cmocka_unit_test(test_hist_bucket),
		cmocka_unit_test(test_error_class),
		cmocka_unit_test(test_render_block),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
