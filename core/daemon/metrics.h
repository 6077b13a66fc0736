/*
 * The daemon's Prometheus endpoint: an opt-in HTTP server (libmicrohttpd, one internal polling
 * thread) that answers GET /metrics with the text exposition format (version 0.0.4) and 404 on
 * every other path. Each scrape takes the same snapshot the STATS op answers with: the
 * registry's counters (atomic reads) and the host tier's counters under the cache lock
 * (hostcache_stats()); then the registry's metrics block (shm/regmetrics.h: latency
 * histograms, error classes, alerts, NUMA bytes, fragmentation) and each component's last
 * load, read as any client reads them. The server only reads; it never takes state_lock or
 * clients_lock, so a slow scraper cannot stall the serving threads.
 *
 * This module also owns the daemon side of the metrics block's recording: the shards'
 * thread-private round-trip and error sums, and the per-tier load histogram.
 */
#ifndef WD_CORE_METRICS_H
#define WD_CORE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "shm/abi.h"
#include "shm/registry.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct daemon;
struct metrics_server;

/* One scrape's values: the STATS vector and the registry's raw counters. */
struct metrics_snapshot {
	uint64_t stat[WD_STAT_COUNT];	/* enum wd_stat; the WD_STAT_MY_* entries stay 0 */
	uint64_t ctr[WD_CTR_COUNT];	/* enum wd_ctr */
	uint64_t uptime_ns;
	bool have_block;		/* the registry has a metrics block: the fields below */
	struct wd_hist rtt;
	struct wd_hist load[WD_TIER_MAX];
	uint64_t errors[WD_ERRC_COUNT];
	uint64_t alerts_total[WD_ALERT_COUNT];
	uint64_t alerts_active[WD_ALERT_COUNT];
	uint64_t numa_bytes[WD_METRICS_NUMA + 1];
	uint64_t free_extents, largest_free, free_bytes;
	struct metrics_comp_load *loads;	/* components loaded at least once (malloc) */
	size_t n_loads;
};

/* A component's last completed load, from its registry record. */
struct metrics_comp_load {
	char model[WD_NAME_MAX];
	char component[WD_NAME_MAX];
	uint32_t tier;
	uint64_t bytes, ns;
};

/* ---- recording into the registry's metrics block (shm/regmetrics.h) ------------------ */

/* The enum wd_err_class of a failed completion's negative errno @err. */
unsigned int metrics_error_class(int err);

/*
 * Shard hot path: @n requests answered inline in one batch took @ns from the shard reading
 * the batch's first entry to publishing its completions. Kept in thread-private memory (no
 * shared write, no syscall) until metrics_flush_local().
 */
void metrics_note_rtt(uint64_t ns, uint32_t n);

/* A completion failed with @err: counted by class, thread-private until the next flush. */
void metrics_note_error(int err);

/* Adds the calling thread's private round trips and errors to @reg's metrics block. */
void metrics_flush_local(struct registry *reg);

/*
 * A load on @tier completed in @ns: one observation in the tier's load histogram (the
 * component's own figures go to its record with registry_set_last_load()). Once per
 * completed load, never per request; any thread.
 */
void metrics_note_load(struct registry *reg, uint32_t tier, uint64_t ns);

/*
 * A device load failed in the GPU itself (VRAM allocation after the retry, a copy, an event):
 * one more in the "device" class, whatever errno its requesters' completions carry (those
 * are counted by class too, so the GPU's failures show even when their errno is ENOMEM or
 * EIO). Once per failed device load, never per request; any thread.
 */
void metrics_note_device_error(struct registry *reg);

/*
 * Parses a listen address: "PORT" (127.0.0.1, loopback by default), "A.B.C.D:PORT" or
 * "[IPV6]:PORT"; PORT is 1..65535 in decimal. Fills @ss and *@len for bind(2).
 * Returns 0 or -EINVAL (empty, no port, bad address, port out of range, trailing bytes).
 */
int metrics_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/*
 * Fills @s from the running daemon @d (its registry view, metrics block and host tier).
 * Release it with metrics_snapshot_free().
 */
void metrics_snapshot(struct daemon *d, struct metrics_snapshot *s);

/* Frees what metrics_snapshot() allocated in @s (the per-component loads). */
void metrics_snapshot_free(struct metrics_snapshot *s);

/*
 * Writes the exposition text of @s into @buf (@cap bytes, NUL-terminated).
 * Returns the length written (without the NUL) or -ENOSPC when @cap is too small.
 */
int metrics_render(const struct metrics_snapshot *s, char *buf, size_t cap);

/*
 * Starts the HTTP server of @d on @listen (metrics_parse_listen() syntax). Call it once the
 * registry and the host tier exist; stop it before they go.
 * Returns 0 and sets *@out; -EINVAL for a bad address; -ENOMEM; or the negative errno of
 * socket/bind/listen as libmicrohttpd left it (-EADDRINUSE for a taken port), -EIO when it
 * failed without one.
 */
int metrics_start(struct daemon *d, const char *listen, struct metrics_server **out);

/* Stops the server (joins its thread, closes its socket) and frees it; NULL is ignored. */
void metrics_stop(struct metrics_server *m);

#endif
