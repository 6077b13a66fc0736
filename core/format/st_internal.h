/*
 * What the safetensors files of core/format share and nobody else sees: the error formatter
 * and the escaping behind st_error_set() (core/format/st_error.c).
 */
#ifndef WD_FORMAT_ST_INTERNAL_H
#define WD_FORMAT_ST_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/format/st.h"

/* st_error_set() with a va_list. */
int st_verror(struct st_error *err, int rc, int code, const char *path, const char *tensor,
	      uint64_t offset, const char *where, const char *fmt, va_list ap);

/*
 * Copies @s into @dst (capacity @cap) so that it prints as one line of valid UTF-8: control
 * bytes and bytes that are not part of a well-formed UTF-8 sequence become \xNN, and with
 * @quoted also '"' and '\' are escaped. At most @max bytes are written; a longer string is
 * cut between characters and ends in "...".
 */
void st_escape(char *dst, size_t cap, const char *s, size_t max, bool quoted);

#endif
