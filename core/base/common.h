/* Small helpers every layer uses. Nothing here allocates or does I/O. */
#ifndef WD_CORE_COMMON_H
#define WD_CORE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "config-host.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define WD_CACHELINE 64
#define WD_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Monotonic and wall clocks in nanoseconds. */
uint64_t wd_now_ns(void);
uint64_t wd_wall_ns(void);

/*
 * Parses a byte count with an optional K, M, G or T suffix (binary units; "KiB", "KB" and
 * "K" are the same): "64G", "512MiB", "1048576". Returns 0 or -EINVAL (-ERANGE on
 * overflow). core/base/units.c.
 */
int wd_parse_bytes(const char *s, uint64_t *out);

#endif
