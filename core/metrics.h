/*
 * The daemon's Prometheus endpoint: an opt-in HTTP server (libmicrohttpd, one internal polling
 * thread) that answers GET /metrics with the text exposition format (version 0.0.4) and 404 on
 * every other path. Each scrape takes the same snapshot the STATS op answers with: the
 * registry's counters (atomic reads) and the host tier's counters under the cache lock
 * (hostcache_stats()). The server only reads; it never takes state_lock or clients_lock, so a
 * slow scraper cannot stall the serving threads.
 */
#ifndef WD_CORE_METRICS_H
#define WD_CORE_METRICS_H

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
};

/*
 * Parses a listen address: "PORT" (127.0.0.1, loopback by default), "A.B.C.D:PORT" or
 * "[IPV6]:PORT"; PORT is 1..65535 in decimal. Fills @ss and *@len for bind(2).
 * Returns 0 or -EINVAL (empty, no port, bad address, port out of range, trailing bytes).
 */
int metrics_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/* Fills @s from the running daemon @d (its registry view and host tier). */
void metrics_snapshot(struct daemon *d, struct metrics_snapshot *s);

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
