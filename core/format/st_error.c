/*
 * safetensors error reports (st.h's struct st_error): the stable code names, and the one
 * formatter every rejection goes through, which escapes what comes from outside (path,
 * tensor name, header bytes) so that a message stays one line of valid UTF-8.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "core/format/st.h"
#include "core/format/st_internal.h"

static const char *const code_names[ST_CODE_COUNT] = {
	[ST_OK] = "ok",
	[ST_ERR_IO] = "io",
	[ST_ERR_NOMEM] = "nomem",
	[ST_ERR_TOO_SMALL] = "file_too_small",
	[ST_ERR_HEADER_TOO_LARGE] = "header_too_large",
	[ST_ERR_HEADER_BOUNDS] = "header_out_of_bounds",
	[ST_ERR_HEADER_START] = "header_not_object_start",
	[ST_ERR_UTF8] = "invalid_utf8",
	[ST_ERR_JSON] = "invalid_json",
	[ST_ERR_DUPLICATE_KEY] = "duplicate_key",
	[ST_ERR_NOT_OBJECT] = "header_not_object",
	[ST_ERR_ENTRY] = "invalid_entry",
	[ST_ERR_DTYPE] = "invalid_dtype",
	[ST_ERR_SHAPE] = "invalid_shape",
	[ST_ERR_RANK] = "rank_too_large",
	[ST_ERR_OFFSETS] = "invalid_offsets",
	[ST_ERR_METADATA] = "invalid_metadata",
	[ST_ERR_OVERFLOW] = "size_overflow",
	[ST_ERR_PARTIAL_BYTE] = "partial_byte",
	[ST_ERR_SIZE_MISMATCH] = "size_mismatch",
	[ST_ERR_DATA_START] = "data_not_at_zero",
	[ST_ERR_GAP] = "data_gap",
	[ST_ERR_OVERLAP] = "data_overlap",
	[ST_ERR_FILE_SIZE] = "file_size_mismatch",
};

const char *st_code_name(int code)
{
	if (code < 0 || code >= ST_CODE_COUNT || !code_names[code])
		return "unknown";
	return code_names[code];
}

/*
 * The length of the well-formed UTF-8 sequence at @s (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF), or 0 when @s does not start one.
 */
static size_t utf8_len(const unsigned char *s)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xbf;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	/* The second byte's range is narrower after the leads that could go out of bounds. */
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

/*
 * Copies @s into @dst (capacity @cap) so that it prints as one line of valid UTF-8: control
 * bytes and bytes that are not part of a well-formed UTF-8 sequence become \xNN, and with
 * @quoted also '"' and '\' are escaped (the text goes between quotes). At most @max bytes
 * are written; a longer string is cut between characters and ends in "...".
 */
void st_escape(char *dst, size_t cap, const char *s, size_t max, bool quoted)
{
	size_t o = 0, safe = 0; /* safe: a length after which "..." still fits in max */

	if (max > cap - 1)
		max = cap - 1;
	for (size_t i = 0; s[i];) {
		unsigned char c = (unsigned char)s[i];
		size_t adv = utf8_len((const unsigned char *)s + i), n = adv; /* in, out bytes */
		char piece[8];

		if (c < 0x20 || c == 0x7f || !adv) {
			snprintf(piece, sizeof(piece), "\\x%02x", c);
			adv = 1;
			n = 4;
		} else if (quoted && (c == '"' || c == '\\')) {
			piece[0] = '\\';
			piece[1] = (char)c;
			n = 2;
		} else {
			memcpy(piece, s + i, n);
		}
		if (o + n > max) {
			memcpy(dst + safe, "...", 3);
			o = safe + 3;
			break;
		}
		memcpy(dst + o, piece, n);
		o += n;
		i += adv;
		if (o + 3 <= max)
			safe = o;
	}
	dst[o] = '\0';
}

/* Copies a tensor name into st_error.tensor, cutting only at a UTF-8 character boundary. */
static void copy_name(char *dst, size_t cap, const char *name)
{
	size_t n = strlen(name);

	if (n >= cap) {
		n = cap - 1;
		while (n > 0 && ((unsigned char)name[n] & 0xc0) == 0x80)
			n--;
	}
	memcpy(dst, name, n);
	dst[n] = '\0';
}

int st_verror(struct st_error *err, int rc, int code, const char *path, const char *tensor,
	      uint64_t offset, const char *where, const char *fmt, va_list ap)
{
	char epath[200], ename[136] = "", tail[64] = "", raw[ST_MSG_MAX], detail[ST_MSG_MAX];
	size_t room;
	int head;

	if (!err)
		return rc;
	err->code = code;
	err->offset = offset;
	copy_name(err->tensor, sizeof(err->tensor), tensor ? tensor : "");

	/*
	 * Every part is escaped: the path and name come from outside, and the detail may
	 * quote header bytes (jansson's error text does). The parts are sized so that the
	 * path (<200), code (<32), name (<136) and tail (<64) leave room for some detail,
	 * and only the detail is shortened to fit, so the byte offset is never cut off.
	 */
	st_escape(epath, sizeof(epath), path ? path : "(buffer)", sizeof(epath) - 1, false);
	if (tensor && tensor[0])
		st_escape(ename, sizeof(ename), tensor, sizeof(ename) - 1, true);
	if (offset != UINT64_MAX)
		snprintf(tail, sizeof(tail), " (%s at byte %llu)", where ? where : "file",
			 (unsigned long long)offset);
	head = snprintf(err->message, sizeof(err->message), "%s: %s: ", epath, st_code_name(code));
	if (ename[0])
		head += snprintf(err->message + head, sizeof(err->message) - (size_t)head,
				 "tensor \"%s\": ", ename);
	room = sizeof(err->message) - 1 - (size_t)head - strlen(tail);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	st_escape(detail, sizeof(detail), raw, room, false);
	snprintf(err->message + head, sizeof(err->message) - (size_t)head, "%s%s", detail, tail);
	return rc;
}

int st_error_set(struct st_error *err, int rc, int code, const char *path, const char *tensor,
		 uint64_t offset, const char *where, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	rc = st_verror(err, rc, code, path, tensor, offset, where, fmt, ap);
	va_end(ap);
	return rc;
}

