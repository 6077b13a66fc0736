/*
 * The Prometheus endpoint (core/daemon/metrics.h), and the daemon side of the metrics block's
 * recording (the shards' thread-private sums, the per-tier load histograms). The STATS
 * counters come from shm/stats.h's table, the one `weightctl stats` prints too; rendering
 * walks it, so a metric cannot get a value without its HELP and TYPE lines, nor a name that
 * stats does not use.
 */
#include "core/daemon/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/daemon/alert.h"
#include "core/base/common.h"
#include "core/tier/hostcache.h"
#include "core/base/log.h"
#include "core/daemon/internal.h"
#include "shm/barrier.h"
#include "shm/regmetrics.h"
#include "shm/stats.h"

#define MOD "metrics"
#define RENDER_CAP 65536	/* enough for the host tier; doubled while it does not fit */
#define RENDER_MAX (64u << 20)
/*
 * Connection limits of the HTTP server, so that a few slow clients cannot hold every slot
 * (slowloris): one source address gets at most METRICS_PER_IP_CONNECTIONS of the
 * METRICS_CONNECTIONS connections, and a connection idle for METRICS_IDLE_TIMEOUT_S is
 * closed. A scrape is one short request, so Prometheus needs one or two of them.
 */
#define METRICS_CONNECTIONS 64u
#define METRICS_PER_IP_CONNECTIONS 4u
#define METRICS_IDLE_TIMEOUT_S 3u

#ifndef WD_VERSION
#define WD_VERSION "unknown"
#endif

struct metrics_server {
	struct daemon *d;
	struct MHD_Daemon *mhd;
};

/*
 * The STATS counters are exported from shm/stats.h's table, the one `weightctl stats` prints:
 * "weightd_" NAME, with "_total" after a counter's name.
 */

/* ---- recording ------------------------------------------------------------------------ */

unsigned int metrics_error_class(int err)
{
	switch (-err) {
	case EBADMSG:
	case EILSEQ:
	case EOVERFLOW:
		return WD_ERRC_VALIDATION;
	case EIO:
	case ENOENT:
	case ESTALE:
	case ENODATA:
	case EISDIR:
	case ENOTDIR:
	case EACCES:
	case ETIMEDOUT:
		return WD_ERRC_IO;
	case EFBIG:
	case ENOSPC:
	case EDQUOT:
	case EBUSY:
		return WD_ERRC_ADMISSION;
	case EINVAL:
	case EPROTO:
	case ENAMETOOLONG:
	case ENOTUNIQ:
	case EBADR:
	case E2BIG:
	case EBADRQC:
		return WD_ERRC_PROTOCOL;
	case ENODEV:
	case ENOTSUP:
	case ENXIO:
		return WD_ERRC_DEVICE;
	default:
		return WD_ERRC_OTHER;
	}
}

/*
 * A shard's private sums between two flushes. Thread-local so that the hot path writes only
 * memory no other thread touches; metrics_flush_local() runs on the same thread.
 */
struct local_sums {
	bool dirty;
	struct wd_hist rtt;
	uint64_t errors[WD_ERRC_COUNT];
};
static __thread struct local_sums local;

void metrics_note_rtt(uint64_t ns, uint32_t n)
{
	local.rtt.bucket[wd_hist_bucket(ns)] += n;
	local.rtt.sum_ns += ns * n;
	local.rtt.count += n;
	local.dirty = true;
}

void metrics_note_error(int err)
{
	local.errors[metrics_error_class(err)]++;
	local.dirty = true;
}

void metrics_flush_local(struct registry *reg)
{
	struct wd_reg_metrics *m;

	if (!local.dirty)
		return;
	m = registry_metrics(reg);
	regm_hist_merge(&m->rtt, &local.rtt);
	for (unsigned int i = 0; i < WD_ERRC_COUNT; i++)
		if (local.errors[i])
			regm_add(&m->errors[i], local.errors[i]);
	memset(&local, 0, sizeof(local));
}

void metrics_note_load(struct registry *reg, uint32_t tier, uint64_t ns)
{
	if (tier < WD_TIER_MAX)
		regm_observe(&registry_metrics(reg)->load[tier], ns);
}

void metrics_note_device_error(struct registry *reg)
{
	regm_add(&registry_metrics(reg)->errors[WD_ERRC_DEVICE], 1);
}

/* ---- the endpoint -------------------------------------------------------------------- */

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

/* The metrics block and the components' last loads, read like any client reads them. */
static void snapshot_block(struct daemon *d, struct metrics_snapshot *s)
{
	const struct wd_reg_metrics *m = registry_view_metrics(&d->view);
	/* Pairs with the store_release of the counts in registry_publish(). */
	uint32_t n_comps = load_acquire(&((const struct wd_reg_hdr *)d->view.base)->comp_count);
	size_t cap = 0;

	if (!m)
		return;
	s->have_block = true;
	regm_hist_read(&m->rtt, &s->rtt);
	for (unsigned int t = 0; t < WD_TIER_MAX; t++)
		regm_hist_read(&m->load[t], &s->load[t]);
	for (unsigned int i = 0; i < WD_ERRC_COUNT; i++)
		s->errors[i] = READ_ONCE(m->errors[i]);
	for (unsigned int i = 0; i < WD_ALERT_COUNT; i++) {
		s->alerts_total[i] = READ_ONCE(m->alerts_total[i]);
		s->alerts_active[i] = READ_ONCE(m->alerts_active[i]);
	}
	for (unsigned int i = 0; i <= WD_METRICS_NUMA; i++)
		s->numa_bytes[i] = READ_ONCE(m->numa_bytes[i]);
	s->free_extents = READ_ONCE(m->free_extents);
	s->largest_free = READ_ONCE(m->largest_free);
	s->free_bytes = READ_ONCE(m->free_bytes);
	for (uint32_t id = 0; id < n_comps; id++) {
		struct wd_reg_component c;
		struct wd_reg_model mo;
		struct metrics_comp_load *l;

		if (registry_read_component(&d->view, id, &c) || !c.last_load_bytes ||
		    registry_read_model(&d->view, c.model, &mo))
			continue;
		if (s->n_loads == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			struct metrics_comp_load *n = realloc(s->loads, ncap * sizeof(*n));

			if (!n)
				break;
			s->loads = n;
			cap = ncap;
		}
		l = &s->loads[s->n_loads++];
		memcpy(l->model, mo.name, sizeof(l->model));
		l->model[sizeof(l->model) - 1] = '\0';
		memcpy(l->component, c.name, sizeof(l->component));
		l->component[sizeof(l->component) - 1] = '\0';
		l->tier = c.last_load_tier;
		l->bytes = c.last_load_bytes;
		l->ns = c.last_load_ns;
	}
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
	hostcache_stats(d->hc, s->stat);
	snapshot_block(d, s);
}

void metrics_snapshot_free(struct metrics_snapshot *s)
{
	free(s->loads);
	s->loads = NULL;
	s->n_loads = 0;
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

static const char *const err_class_names[WD_ERRC_COUNT] = WD_ERRC_NAMES;

/* "host" or "cuda:N" for a tier label. */
static const char *tier_label(uint32_t t, char *b, size_t n)
{
	if (t == WD_TIER_HOST)
		snprintf(b, n, "host");
	else
		snprintf(b, n, "cuda:%u", t - 1);
	return b;
}

/*
 * One histogram's samples. The buckets are made cumulative here and _count is the +Inf
 * bucket, so the output is consistent even when the words were read mid-update.
 */
static bool put_hist(char *buf, size_t cap, size_t *off, const char *name, const char *labels,
		     const struct wd_hist *h)
{
	uint64_t cum = 0;
	bool ok = true;

	for (unsigned int i = 0; ok && i < WD_HIST_BUCKETS; i++) {
		cum += h->bucket[i];
		if (i == WD_HIST_BUCKETS - 1)
			ok = put(buf, cap, off, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name,
				 labels, *labels ? "," : "", cum);
		else
			ok = put(buf, cap, off, "%s_bucket{%s%sle=\"%.6g\"} %" PRIu64 "\n", name,
				 labels, *labels ? "," : "",
				 (double)((uint64_t)WD_HIST_BASE_NS << i) / 1e9, cum);
	}
	return ok && put(buf, cap, off, "%s_sum%s%s%s %.9f\n%s_count%s%s%s %" PRIu64 "\n", name,
			 *labels ? "{" : "", labels, *labels ? "}" : "",
			 (double)h->sum_ns / 1e9, name, *labels ? "{" : "", labels,
			 *labels ? "}" : "", cum);
}

/* Writes @in as a Prometheus label value (backslash, quote and newline escaped). */
static const char *label_esc(const char *in, char *b, size_t n)
{
	size_t o = 0;

	for (; *in && o + 3 < n; in++) {
		if (*in == '\\' || *in == '"') {
			b[o++] = '\\';
			b[o++] = *in;
		} else if (*in == '\n') {
			b[o++] = '\\';
			b[o++] = 'n';
		} else {
			b[o++] = *in;
		}
	}
	b[o] = '\0';
	return b;
}

/* The metrics block: histograms, error classes, alerts, NUMA bytes, fragmentation, loads. */
static bool render_block(const struct metrics_snapshot *s, char *buf, size_t cap, size_t *off)
{
	char tl[16], lab[64], e1[2 * WD_NAME_MAX], e2[2 * WD_NAME_MAX];
	bool ok;

	ok = put(buf, cap, off, "# HELP weightd_load_duration_seconds Completed loads' durations "
		 "(start of the first read to resident), by tier.\n"
		 "# TYPE weightd_load_duration_seconds histogram\n");
	for (uint32_t t = 0; ok && t < WD_TIER_MAX; t++) {
		uint64_t n = 0;

		/* The host tier always; a GPU tier once it has completed a load. */
		for (unsigned int i = 0; i < WD_HIST_BUCKETS; i++)
			n += s->load[t].bucket[i];
		if (t != WD_TIER_HOST && !n)
			continue;
		snprintf(lab, sizeof(lab), "tier=\"%s\"", tier_label(t, tl, sizeof(tl)));
		ok = put_hist(buf, cap, off, "weightd_load_duration_seconds", lab, &s->load[t]);
	}
	ok = ok && put(buf, cap, off, "# HELP weightd_ring_roundtrip_seconds Requests answered "
		       "inline by a shard: from the shard reading its batch's first entry to "
		       "publishing the completions.\n"
		       "# TYPE weightd_ring_roundtrip_seconds histogram\n") &&
	     put_hist(buf, cap, off, "weightd_ring_roundtrip_seconds", "", &s->rtt) &&
	     put(buf, cap, off, "# HELP weightd_errors_total Failed completions by class.\n"
		 "# TYPE weightd_errors_total counter\n");
	for (unsigned int i = 0; ok && i < WD_ERRC_COUNT; i++)
		ok = put(buf, cap, off, "weightd_errors_total{class=\"%s\"} %" PRIu64 "\n",
			 err_class_names[i], s->errors[i]);
	ok = ok && put(buf, cap, off, "# HELP weightd_alerts_total Alerts raised, by kind.\n"
		       "# TYPE weightd_alerts_total counter\n");
	for (unsigned int i = 0; ok && i < WD_ALERT_COUNT; i++)
		ok = put(buf, cap, off, "weightd_alerts_total{kind=\"%s\"} %" PRIu64 "\n",
			 alert_kind_name(i), s->alerts_total[i]);
	ok = ok && put(buf, cap, off, "# HELP weightd_alerts_active Alerts active now, by kind.\n"
		       "# TYPE weightd_alerts_active gauge\n");
	for (unsigned int i = 0; ok && i < WD_ALERT_COUNT; i++)
		ok = put(buf, cap, off, "weightd_alerts_active{kind=\"%s\"} %" PRIu64 "\n",
			 alert_kind_name(i), s->alerts_active[i]);
	ok = ok && put(buf, cap, off, "# HELP weightd_host_numa_bytes Host cache bytes by the NUMA "
		       "node placement bound them to (unbound: no binding).\n"
		       "# TYPE weightd_host_numa_bytes gauge\n");
	for (unsigned int i = 0; ok && i <= WD_METRICS_NUMA; i++) {
		if (i < WD_METRICS_NUMA && !s->numa_bytes[i] && i)
			continue;
		if (i == WD_METRICS_NUMA)
			ok = put(buf, cap, off, "weightd_host_numa_bytes{node=\"unbound\"} %" PRIu64
				 "\n", s->numa_bytes[i]);
		else
			ok = put(buf, cap, off, "weightd_host_numa_bytes{node=\"%u\"} %" PRIu64 "\n",
				 i, s->numa_bytes[i]);
	}
	ok = ok && put(buf, cap, off, "# HELP weightd_host_free_extents Free extents in the host "
		       "cache arena.\n# TYPE weightd_host_free_extents gauge\n"
		       "weightd_host_free_extents %" PRIu64 "\n"
		       "# HELP weightd_host_largest_free_extent_bytes The largest free extent.\n"
		       "# TYPE weightd_host_largest_free_extent_bytes gauge\n"
		       "weightd_host_largest_free_extent_bytes %" PRIu64 "\n"
		       "# HELP weightd_host_budget_use_ratio Host cache bytes used over the budget.\n"
		       "# TYPE weightd_host_budget_use_ratio gauge\n"
		       "weightd_host_budget_use_ratio %.6f\n", s->free_extents, s->largest_free,
		       s->stat[WD_STAT_HOST_BUDGET] ? (double)s->stat[WD_STAT_HOST_BYTES] /
		       (double)s->stat[WD_STAT_HOST_BUDGET] : 0.0);
	if (!ok || !s->n_loads)
		return ok;
	ok = put(buf, cap, off, "# HELP weightd_component_last_load_bytes Bytes the component's "
		 "last completed load read.\n# TYPE weightd_component_last_load_bytes gauge\n");
	for (size_t i = 0; ok && i < s->n_loads; i++)
		ok = put(buf, cap, off, "weightd_component_last_load_bytes{model=\"%s\","
			 "component=\"%s\",tier=\"%s\"} %" PRIu64 "\n",
			 label_esc(s->loads[i].model, e1, sizeof(e1)),
			 label_esc(s->loads[i].component, e2, sizeof(e2)),
			 tier_label(s->loads[i].tier, tl, sizeof(tl)), s->loads[i].bytes);
	ok = ok && put(buf, cap, off, "# HELP weightd_component_last_load_seconds Duration of the "
		       "component's last completed load.\n"
		       "# TYPE weightd_component_last_load_seconds gauge\n");
	for (size_t i = 0; ok && i < s->n_loads; i++)
		ok = put(buf, cap, off, "weightd_component_last_load_seconds{model=\"%s\","
			 "component=\"%s\",tier=\"%s\"} %.6f\n",
			 label_esc(s->loads[i].model, e1, sizeof(e1)),
			 label_esc(s->loads[i].component, e2, sizeof(e2)),
			 tier_label(s->loads[i].tier, tl, sizeof(tl)),
			 (double)s->loads[i].ns / 1e9);
	return ok;
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
	for (size_t i = 0; ok && i < WD_STAT_COUNT; i++) {
		const struct wd_stat_info *m = &wd_stat_info[i];
		const char *total = m->counter ? "_total" : "";

		if (!m->name)
			continue;
		ok = put(buf, cap, &off, "# HELP weightd_%s%s %s\n# TYPE weightd_%s%s %s\n"
			 "weightd_%s%s %" PRIu64 "\n", m->name, total, m->help, m->name, total,
			 m->counter ? "counter" : "gauge", m->name, total, s->stat[i]);
	}
	if (ok && s->have_block)
		ok = render_block(s, buf, cap, &off);
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
	metrics_snapshot(m->d, &s);
	/* The per-component lines grow with the models loaded: retry with a doubled buffer. */
	for (size_t cap = RENDER_CAP;; cap *= 2) {
		buf = malloc(cap);
		if (!buf) {
			metrics_snapshot_free(&s);
			return MHD_NO;
		}
		n = metrics_render(&s, buf, cap);
		if (n >= 0)
			break;
		free(buf);
		if (cap >= RENDER_MAX) {
			metrics_snapshot_free(&s);
			log_error(MOD, "\"exposition larger than the buffer\" cap=%zu", cap);
			return MHD_NO;
		}
	}
	metrics_snapshot_free(&s);
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
				  MHD_OPTION_CONNECTION_LIMIT, METRICS_CONNECTIONS,
				  MHD_OPTION_PER_IP_CONNECTION_LIMIT, METRICS_PER_IP_CONNECTIONS,
				  MHD_OPTION_CONNECTION_TIMEOUT, METRICS_IDLE_TIMEOUT_S,
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
