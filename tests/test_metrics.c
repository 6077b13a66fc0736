/*
 * core/metrics.c without a daemon: the listen-address parser (a table of accepted and
 * refused forms) and the exposition renderer (every sample has its HELP and TYPE lines,
 * counters end in _total, values come from the right snapshot slot, a small buffer is
 * refused). tests/test_metrics.sh and tests/test_prometheus.sh cover the HTTP server.
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

#include "core/common.h"
#include "core/metrics.h"

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
		{ "weightd_component_loads_total", "counter", 17 },
		{ "weightd_loaded_bytes_total", "counter", 18 },
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
	s.ctr[WD_CTR_LOADS] = 17;
	s.ctr[WD_CTR_LOAD_BYTES] = 18;
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_listen),
		cmocka_unit_test(test_render),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
