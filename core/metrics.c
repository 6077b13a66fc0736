/*
 * The Prometheus endpoint (core/metrics.h). The metric table below is the one place that
 * names what is exported; rendering walks it, so a metric cannot get a value without its
 * HELP and TYPE lines.
 */
#include "core/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/hostcache.h"
#include "core/log.h"
#include "core/ops.h"
#include "shm/barrier.h"

#define MOD "metrics"
#define RENDER_CAP 16384	/* the whole exposition is about 5 KiB */

#ifndef WD_VERSION
#define WD_VERSION "unknown"
#endif

struct metrics_server {
	struct daemon *d;
	struct MHD_Daemon *mhd;
};

enum source { SRC_STAT, SRC_CTR };

/* One exported metric: its name, kind, help text and where its value comes from. */
struct metric {
	const char *name;
	bool counter;		/* else a gauge */
	enum source src;
	unsigned int idx;	/* enum wd_stat or enum wd_ctr */
	const char *help;
};

static const struct metric metrics[] = {
	{ "weightd_clients", false, SRC_STAT, WD_STAT_CLIENTS, "Clients attached now." },
	{ "weightd_ring_segments", false, SRC_STAT, WD_STAT_RING_SEGS,
	  "Client ring segments the daemon still maps." },
	{ "weightd_requests_total", true, SRC_STAT, WD_STAT_REQUESTS,
	  "Requests served, all clients." },
	{ "weightd_request_errors_total", true, SRC_STAT, WD_STAT_ERRORS,
	  "Requests that completed with an error." },
	{ "weightd_pins", false, SRC_STAT, WD_STAT_PINS, "Pins held by all attached clients." },
	{ "weightd_models", false, SRC_STAT, WD_STAT_MODELS,
	  "Models published in the registry." },
	{ "weightd_host_budget_bytes", false, SRC_STAT, WD_STAT_HOST_BUDGET,
	  "Size of the host cache in bytes." },
	{ "weightd_host_bytes_used", false, SRC_STAT, WD_STAT_HOST_BYTES,
	  "Bytes of the host cache held by entries." },
	{ "weightd_host_entries", false, SRC_STAT, WD_STAT_HOST_ENTRIES,
	  "Host cache entries, loading ones included." },
	{ "weightd_host_hits_total", true, SRC_STAT, WD_STAT_HOST_HITS,
	  "Component requests answered from the host cache." },
	{ "weightd_host_misses_total", true, SRC_STAT, WD_STAT_HOST_MISSES,
	  "Component requests that had to wait for a load." },
	{ "weightd_host_evictions_total", true, SRC_STAT, WD_STAT_HOST_EVICTIONS,
	  "Host cache entries evicted." },
	{ "weightd_host_evicted_bytes_total", true, SRC_STAT, WD_STAT_HOST_EVICT_BYTES,
	  "Bytes released by evictions." },
	{ "weightd_host_prefetches_total", true, SRC_STAT, WD_STAT_HOST_PREFETCHES,
	  "Entries loaded because of co-access statistics." },
	{ "weightd_host_prefetch_hits_total", true, SRC_STAT, WD_STAT_HOST_PREFETCH_HITS,
	  "Prefetched entries requested afterwards." },
	{ "weightd_host_loads_total", true, SRC_STAT, WD_STAT_HOST_LOADS,
	  "Host cache loads started (each reads its files once)." },
	{ "weightd_host_disk_read_bytes_total", true, SRC_STAT, WD_STAT_HOST_READ_BYTES,
	  "Bytes read from disk by host cache loads." },
	{ "weightd_host_coalesced_total", true, SRC_STAT, WD_STAT_HOST_COALESCED,
	  "Requests that joined a load already running." },
	{ "weightd_host_dedup_bytes", false, SRC_STAT, WD_STAT_HOST_DEDUP_BYTES,
	  "Bytes not stored twice because identical content is shared." },
	{ "weightd_host_refused_total", true, SRC_STAT, WD_STAT_HOST_REFUSED,
	  "Host cache admissions refused (too big, no space)." },
	{ "weightd_host_failed_loads_total", true, SRC_STAT, WD_STAT_HOST_FAILED,
	  "Host cache loads that failed or were cancelled." },
	{ "weightd_component_loads_total", true, SRC_CTR, WD_CTR_LOADS,
	  "Component loads completed, any tier." },
	{ "weightd_loaded_bytes_total", true, SRC_CTR, WD_CTR_LOAD_BYTES,
	  "Bytes loaded into any tier." },
};

int metrics_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[INET6_ADDRSTRLEN + 1] = "127.0.0.1";
	const char *port = s;
	bool v6 = false;
	unsigned long p;
	char *end;

	if (!s || !*s)
		return -EINVAL;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');

		if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host))
			return -EINVAL;
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = '\0';
		port = close + 2;
		v6 = true;
	} else if (strchr(s, ':')) {
		const char *colon = strrchr(s, ':');

		if ((size_t)(colon - s) >= sizeof(host))
			return -EINVAL;
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		port = colon + 1;
	}
	/* strtoul() accepts blanks and signs: insist on digits only. */
	if (*port < '0' || *port > '9')
		return -EINVAL;
	errno = 0;
	p = strtoul(port, &end, 10);
	if (errno || *end || p == 0 || p > 65535)
		return -EINVAL;
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
			return -EINVAL;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)p);
		*len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;

		if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
			return -EINVAL;
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)p);
		*len = sizeof(*a);
	}
	return 0;
}

void metrics_snapshot(struct daemon *d, struct metrics_snapshot *s)
{
	memset(s, 0, sizeof(*s));
	/* Registry counters are atomic words; the shards flush theirs before every park. */
	for (unsigned int i = 0; i < WD_CTR_COUNT; i++)
		s->ctr[i] = registry_counter(&d->view, i);
	s->stat[WD_STAT_CLIENTS] = s->ctr[WD_CTR_CLIENTS];
	s->stat[WD_STAT_PINS] = s->ctr[WD_CTR_PINS];
	s->stat[WD_STAT_RING_SEGS] = s->ctr[WD_CTR_RING_SEGS];
	s->stat[WD_STAT_REQUESTS] = s->ctr[WD_CTR_REQUESTS];
	s->stat[WD_STAT_ERRORS] = s->ctr[WD_CTR_ERRORS];
	/* Pairs with the store_release that publishes a model (registry_publish). */
	s->stat[WD_STAT_MODELS] =
		load_acquire(&((const struct wd_reg_hdr *)d->view.base)->model_count);
	s->stat[WD_STAT_HOST_BUDGET] = d->cfg.host_budget;
	s->uptime_ns = wd_now_ns() - d->start_ns;
	s->stat[WD_STAT_UPTIME_NS] = s->uptime_ns;
	/* The host tier's counters, consistent with each other: taken under the cache lock. */
	hostcache_stats(d, s->stat);
}

/* Appends to @buf at *@off; false once @cap is exhausted. */
static bool put(char *buf, size_t cap, size_t *off, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf + *off, cap - *off, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= cap - *off)
		return false;
	*off += (size_t)n;
	return true;
}

int metrics_render(const struct metrics_snapshot *s, char *buf, size_t cap)
{
	size_t off = 0;
	bool ok;

	if (!cap)
		return -ENOSPC;
	buf[0] = '\0';
	ok = put(buf, cap, &off, "# HELP weightd_up Whether the weightd daemon answers (always 1 "
		 "when scraped).\n# TYPE weightd_up gauge\nweightd_up 1\n") &&
	     put(buf, cap, &off, "# HELP weightd_build_info Build of the running daemon.\n"
		 "# TYPE weightd_build_info gauge\nweightd_build_info{version=\"%s\","
		 "microhttpd=\"%s\"} 1\n", WD_VERSION, MHD_get_version()) &&
	     put(buf, cap, &off, "# HELP weightd_uptime_seconds Seconds since the daemon "
		 "started.\n# TYPE weightd_uptime_seconds gauge\nweightd_uptime_seconds %.3f\n",
		 (double)s->uptime_ns / 1e9);
	for (size_t i = 0; ok && i < ARRAY_SIZE(metrics); i++) {
		const struct metric *m = &metrics[i];
		uint64_t v = m->src == SRC_STAT ? s->stat[m->idx] : s->ctr[m->idx];

		ok = put(buf, cap, &off, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", m->name,
			 m->help, m->name, m->counter ? "counter" : "gauge", m->name, v);
	}
	return ok ? (int)off : -ENOSPC;
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status, char *body,
			     size_t len, enum MHD_ResponseMemoryMode mode, const char *type)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
	enum MHD_Result ret;

	if (!r) {
		if (mode == MHD_RESPMEM_MUST_FREE)
			free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* The access handler, on the server's thread: one call per request (no request body). */
static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_size, void **req_cls)
{
	static char not_found[] = "not found: the metrics are at /metrics\n";
	static char bad_method[] = "only GET and HEAD are supported\n";
	struct metrics_server *m = cls;
	struct metrics_snapshot s;
	char *buf;
	int n;

	(void)version;
	(void)upload;
	(void)upload_size;
	(void)req_cls;
	if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
		return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, bad_method,
			     sizeof(bad_method) - 1, MHD_RESPMEM_PERSISTENT, "text/plain");
	if (strcmp(url, "/metrics"))
		return reply(conn, MHD_HTTP_NOT_FOUND, not_found, sizeof(not_found) - 1,
			     MHD_RESPMEM_PERSISTENT, "text/plain");
	buf = malloc(RENDER_CAP);
	if (!buf)
		return MHD_NO;
	metrics_snapshot(m->d, &s);
	n = metrics_render(&s, buf, RENDER_CAP);
	if (n < 0) {
		free(buf);
		log_error(MOD, "\"exposition larger than the buffer\" cap=%d", RENDER_CAP);
		return MHD_NO;
	}
	return reply(conn, MHD_HTTP_OK, buf, (size_t)n, MHD_RESPMEM_MUST_FREE,
		     METRICS_CONTENT_TYPE);
}

/* libmicrohttpd's error messages go to our log instead of its default stderr printf. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[256];
	size_t n;

	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == '"'))
		msg[--n] = '\0';
	log_warn(MOD, "\"microhttpd: %s\"", msg);
}

int metrics_start(struct daemon *d, const char *listen, struct metrics_server **out)
{
	struct sockaddr_storage ss;
	struct metrics_server *m;
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
	socklen_t len;
	int ret = metrics_parse_listen(listen, &ss, &len);

	if (ret) {
		log_error(MOD, "\"bad listen address\" listen=\"%s\"", listen ? listen : "");
		return ret;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->d = d;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	errno = 0;
	/* The port argument is ignored when MHD_OPTION_SOCK_ADDR gives the address. */
	m->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handle, m,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				  MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
				  MHD_OPTION_CONNECTION_LIMIT, 32u,
				  MHD_OPTION_CONNECTION_TIMEOUT, 10u,
				  MHD_OPTION_END);
	if (!m->mhd) {
		ret = errno ? -errno : -EIO;
		free(m);
		log_error(MOD, "\"cannot start the metrics server\" listen=%s err=%d", listen,
			  ret);
		return ret;
	}
	log_info(MOD, "\"serving /metrics\" listen=%s", listen);
	*out = m;
	return 0;
}

void metrics_stop(struct metrics_server *m)
{
	if (!m)
		return;
	MHD_stop_daemon(m->mhd);
	free(m);
}
