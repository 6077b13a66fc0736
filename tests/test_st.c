/*
 * The safetensors header validator, rule by rule.
 *
 * The main table has, for every rule of DESIGN.md's "safetensors, exactly", rows that
 * break it and rows that come close without breaking it. Each row is a hand-written JSON
 * header, an 8-byte length computed from it (or forced), space padding and zero data
 * bytes; it is checked in memory with st_parse_header() and again as a real file with
 * st_open(), for the exact code, tensor and byte offset, and for a message that names the
 * file, the rule, the tensor and the offset. Further tests cover the 22 dtypes, the
 * accessors, the length-field limits on sparse files, and the reference-written corpus.
 */
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <iconv.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "core/base/common.h"
#include "core/format/st.h"

/* How a row's expected byte offset is found. */
enum off_kind {
	OFF_NONE, /* no offset applies */
	OFF_ABS,  /* exactly .off */
	OFF_DATA, /* the data start (8 + N) + .off */
	OFF_KEY,  /* the file offset of the header key .key (a quoted string) */
	OFF_HDR,  /* somewhere inside the header: jansson's error position */
};

struct hcase {
	const char *id;
	int rule;	  /* the rule the row exercises (an enum st_code) */
	const char *hdr;  /* the JSON text, or the whole file when .raw */
	size_t hdr_len;	  /* bytes of .hdr (sizeof - 1, so NULs inside count) */
	size_t pad;	  /* spaces after the JSON, counted in N */
	size_t data;	  /* zero bytes after the header */
	bool raw;
	bool set_n;	  /* write .n as the length field instead of the real N */
	uint64_t n;
	int want;	  /* ST_OK or the expected code */
	const char *tensor; /* expected st_error.tensor; NULL for none */
	int off_kind;
	uint64_t off;
	const char *key;
	uint32_t n_tensors; /* for accepted rows */
};

#define H(s) .hdr = (s), .hdr_len = sizeof(s) - 1
/* One tensor entry: E("w", "F32", "[2]", 0, 8). */
#define E(name, dt, shape, b, e)                                                             \
	"\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"
#define OBJ(...) "{" __VA_ARGS__ "}"
#define REJECT_KEY(code, t) .want = (code), .tensor = (t), .off_kind = OFF_KEY, .key = "\"" t "\""

static const struct hcase cases[] = {
	/* file_too_small: fewer than the 8 bytes of the length field. */
	{ "small_ok", ST_ERR_TOO_SMALL, H("{}") },
	{ "small_empty", ST_ERR_TOO_SMALL, H(""), .raw = true, .want = ST_ERR_TOO_SMALL,
	  .off_kind = OFF_ABS, .off = 0 },
	{ "small_7", ST_ERR_TOO_SMALL, H("\x02\0\0\0\0\0\0"), .raw = true,
	  .want = ST_ERR_TOO_SMALL, .off_kind = OFF_ABS, .off = 0 },
	/* header_too_large: N above 100,000,000 (the length field, byte 0). */
	{ "large_ok_padded", ST_ERR_HEADER_TOO_LARGE, H("{}"), .pad = 1000 },
	{ "large_1e8+1", ST_ERR_HEADER_TOO_LARGE, H("{}"), .set_n = true, .n = 100000001,
	  .want = ST_ERR_HEADER_TOO_LARGE, .off_kind = OFF_ABS, .off = 0 },
	{ "large_u64max", ST_ERR_HEADER_TOO_LARGE, H("{}"), .set_n = true, .n = UINT64_MAX,
	  .want = ST_ERR_HEADER_TOO_LARGE, .off_kind = OFF_ABS, .off = 0 },
	/* header_out_of_bounds: 8 + N past the end of the file. */
	{ "bounds_ok_exact", ST_ERR_HEADER_BOUNDS, H(OBJ(E("w", "U8", "[2]", 0, 2))), .data = 2,
	  .n_tensors = 1 },
	{ "bounds_1e8", ST_ERR_HEADER_BOUNDS, H("{}"), .set_n = true, .n = 100000000,
	  .want = ST_ERR_HEADER_BOUNDS, .off_kind = OFF_ABS, .off = 8 },
	{ "bounds_n+1", ST_ERR_HEADER_BOUNDS, H("{}"), .set_n = true, .n = 3,
	  .want = ST_ERR_HEADER_BOUNDS, .off_kind = OFF_ABS, .off = 8 },
	/* header_not_object_start: the first header byte must be '{'. */
	{ "start_ok", ST_ERR_HEADER_START, H("{}") },
	{ "start_space", ST_ERR_HEADER_START, H(" {}"), .want = ST_ERR_HEADER_START,
	  .off_kind = OFF_ABS, .off = 8 },
	{ "start_array", ST_ERR_HEADER_START, H("[]"), .want = ST_ERR_HEADER_START,
	  .off_kind = OFF_ABS, .off = 8 },
	{ "start_string", ST_ERR_HEADER_START, H("\"{}\""), .want = ST_ERR_HEADER_START,
	  .off_kind = OFF_ABS, .off = 8 },
	{ "start_empty", ST_ERR_HEADER_START, H(""), .want = ST_ERR_HEADER_START,
	  .off_kind = OFF_ABS, .off = 8 },
	{ "start_bom", ST_ERR_HEADER_START, H("\xef\xbb\xbf{}"), .want = ST_ERR_HEADER_START,
	  .off_kind = OFF_ABS, .off = 8 },
	/* invalid_utf8: jansson checks every byte. */
	{ "utf8_ok", ST_ERR_UTF8,
	  H("{\"__metadata__\":{\"\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87\":\"\xe2\x82\xac\"},"
	    E("\xe6\x9d\x83\xe9\x87\x8d", "U8", "[1]", 0, 1) "}"),
	  .data = 1, .n_tensors = 1 },
	{ "utf8_bad_byte", ST_ERR_UTF8, H("{\"__metadata__\":{\"k\":\"\xff\"}}"),
	  .want = ST_ERR_UTF8, .off_kind = OFF_HDR },
	{ "utf8_overlong", ST_ERR_UTF8, H("{\"\xc0\xaf\":1}"), .want = ST_ERR_UTF8,
	  .off_kind = OFF_HDR },
	{ "utf8_surrogate", ST_ERR_UTF8, H("{\"\xed\xa0\x80\":1}"), .want = ST_ERR_UTF8,
	  .off_kind = OFF_HDR },
	{ "utf8_cut", ST_ERR_UTF8, H("{\"\xe2\x82\":1}"), .want = ST_ERR_UTF8,
	  .off_kind = OFF_HDR },
	/* invalid_json: syntax, trailing bytes other than spaces, NUL. */
	{ "json_ok_spaces", ST_ERR_JSON, H("{}"), .pad = 6 },
	{ "json_ok_inner_ws", ST_ERR_JSON,
	  H("{\n\t\"w\" : {\"dtype\": \"U8\", \"shape\": [ 1 ],\r\n\"data_offsets\": [0, 1]}\n}"),
	  .pad = 3, .data = 1, .n_tensors = 1 },
	{ "json_syntax", ST_ERR_JSON, H("{\"a\":}"), .want = ST_ERR_JSON, .off_kind = OFF_HDR },
	{ "json_trailing_garbage", ST_ERR_JSON, H("{} x"), .want = ST_ERR_JSON,
	  .off_kind = OFF_HDR },
	{ "json_second_object", ST_ERR_JSON, H("{}{}"), .want = ST_ERR_JSON,
	  .off_kind = OFF_HDR },
	{ "json_trailing_newline", ST_ERR_JSON, H("{}\n"), .pad = 2, .want = ST_ERR_JSON,
	  .off_kind = OFF_ABS, .off = 8 + 2 },
	{ "json_trailing_tab", ST_ERR_JSON, H("{} \t "), .want = ST_ERR_JSON,
	  .off_kind = OFF_ABS, .off = 8 + 3 },
	{ "json_trailing_nul", ST_ERR_JSON, H("{}\0"), .want = ST_ERR_JSON,
	  .off_kind = OFF_HDR },
	{ "json_nul_inside", ST_ERR_JSON, H("{\0}"), .want = ST_ERR_JSON, .off_kind = OFF_HDR },
	{ "json_nul_in_string", ST_ERR_JSON, H("{\"a\0b\":1}"), .want = ST_ERR_JSON,
	  .off_kind = OFF_HDR },
	{ "json_escaped_nul_key", ST_ERR_JSON, H("{\"a\\u0000b\":1}"), .want = ST_ERR_JSON,
	  .off_kind = OFF_HDR },
	{ "json_escaped_nul_value", ST_ERR_JSON, H("{\"__metadata__\":{\"k\":\"\\u0000\"}}"),
	  .want = ST_ERR_JSON, .off_kind = OFF_HDR },
	{ "json_truncated", ST_ERR_JSON, H("{\"w\":{\"dtype\":"), .want = ST_ERR_JSON,
	  .off_kind = OFF_HDR },
	{ "json_unclosed", ST_ERR_JSON, H("{"), .pad = 4, .want = ST_ERR_JSON,
	  .off_kind = OFF_HDR },
	{ "json_int_too_big", ST_ERR_JSON, H(OBJ(E("w", "U8", "[1]", 0, 99999999999999999999))),
	  .want = ST_ERR_JSON, .off_kind = OFF_HDR },
	/* duplicate_key, at the top level and inside __metadata__. */
	{ "dup_ok", ST_ERR_DUPLICATE_KEY,
	  H(OBJ(E("w", "U8", "[1]", 0, 1) "," E("W", "U8", "[1]", 1, 2))), .data = 2,
	  .n_tensors = 2 },
	{ "dup_tensor", ST_ERR_DUPLICATE_KEY,
	  H(OBJ(E("w", "U8", "[1]", 0, 1) "," E("w", "U8", "[1]", 1, 2))), .data = 2,
	  .want = ST_ERR_DUPLICATE_KEY, .off_kind = OFF_HDR },
	{ "dup_metadata", ST_ERR_DUPLICATE_KEY, H("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}"),
	  .want = ST_ERR_DUPLICATE_KEY, .off_kind = OFF_HDR },
	{ "dup_field", ST_ERR_DUPLICATE_KEY,
	  H("{\"w\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}"),
	  .data = 1, .want = ST_ERR_DUPLICATE_KEY, .off_kind = OFF_HDR },
	/* invalid_entry: an object with exactly dtype, shape and data_offsets. */
	{ "entry_ok", ST_ERR_ENTRY, H(OBJ(E("w", "U8", "[1]", 0, 1))), .data = 1,
	  .n_tensors = 1 },
	{ "entry_array", ST_ERR_ENTRY, H("{\"w\":[]}"), REJECT_KEY(ST_ERR_ENTRY, "w") },
	{ "entry_string", ST_ERR_ENTRY, H("{\"w\":\"F32\"}"), REJECT_KEY(ST_ERR_ENTRY, "w") },
	{ "entry_null", ST_ERR_ENTRY, H("{\"w\":null}"), REJECT_KEY(ST_ERR_ENTRY, "w") },
	{ "entry_empty", ST_ERR_ENTRY, H("{\"w\":{}}"), REJECT_KEY(ST_ERR_ENTRY, "w") },
	{ "entry_missing_offsets", ST_ERR_ENTRY, H("{\"w\":{\"dtype\":\"U8\",\"shape\":[]}}"),
	  REJECT_KEY(ST_ERR_ENTRY, "w") },
	{ "entry_unknown_field", ST_ERR_ENTRY,
	  H("{\"w\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1],\"x\":1}}"), .data = 1,
	  REJECT_KEY(ST_ERR_ENTRY, "w") },
	{ "entry_second_bad", ST_ERR_ENTRY, H(OBJ(E("a", "U8", "[1]", 0, 1) ",\"b\":7")),
	  .data = 1, REJECT_KEY(ST_ERR_ENTRY, "b") },
	/* invalid_dtype: a known dtype string, spelled exactly. */
	{ "dtype_ok", ST_ERR_DTYPE, H(OBJ(E("w", "F8_E5M2FNUZ", "[1]", 0, 1))), .data = 1,
	  .n_tensors = 1 },
	{ "dtype_unknown", ST_ERR_DTYPE, H(OBJ(E("w", "F12", "[1]", 0, 1))), .data = 1,
	  REJECT_KEY(ST_ERR_DTYPE, "w") },
	{ "dtype_lowercase", ST_ERR_DTYPE, H(OBJ(E("w", "f32", "[1]", 0, 4))), .data = 4,
	  REJECT_KEY(ST_ERR_DTYPE, "w") },
	{ "dtype_empty", ST_ERR_DTYPE, H(OBJ(E("w", "", "[1]", 0, 4))), .data = 4,
	  REJECT_KEY(ST_ERR_DTYPE, "w") },
	{ "dtype_number", ST_ERR_DTYPE,
	  H("{\"w\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,1]}}"), .data = 1,
	  REJECT_KEY(ST_ERR_DTYPE, "w") },
	/* invalid_shape: an array of non-negative integers. */
	{ "shape_ok_scalar", ST_ERR_SHAPE, H(OBJ(E("s", "F32", "[]", 0, 4))), .data = 4,
	  .n_tensors = 1 },
	{ "shape_ok_zero_dim", ST_ERR_SHAPE, H(OBJ(E("z", "I32", "[0,7]", 0, 0))),
	  .n_tensors = 1 },
	{ "shape_negative", ST_ERR_SHAPE, H(OBJ(E("w", "U8", "[-1]", 0, 0))),
	  REJECT_KEY(ST_ERR_SHAPE, "w") },
	{ "shape_real", ST_ERR_SHAPE, H(OBJ(E("w", "U8", "[1.0]", 0, 1))), .data = 1,
	  REJECT_KEY(ST_ERR_SHAPE, "w") },
	{ "shape_string_dim", ST_ERR_SHAPE, H(OBJ(E("w", "U8", "[\"1\"]", 0, 1))), .data = 1,
	  REJECT_KEY(ST_ERR_SHAPE, "w") },
	{ "shape_bool_dim", ST_ERR_SHAPE, H(OBJ(E("w", "U8", "[true]", 0, 1))), .data = 1,
	  REJECT_KEY(ST_ERR_SHAPE, "w") },
	{ "shape_nested", ST_ERR_SHAPE, H(OBJ(E("w", "U8", "[[1]]", 0, 1))), .data = 1,
	  REJECT_KEY(ST_ERR_SHAPE, "w") },
	{ "shape_not_array", ST_ERR_SHAPE, H(OBJ(E("w", "U8", "1", 0, 1))), .data = 1,
	  REJECT_KEY(ST_ERR_SHAPE, "w") },
	/* rank_too_large: at most 16 dimensions. */
	{ "rank_16", ST_ERR_RANK, H(OBJ(E("w", "F32", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]", 0, 4))),
	  .data = 4, .n_tensors = 1 },
	{ "rank_17", ST_ERR_RANK,
	  H(OBJ(E("w", "F32", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]", 0, 4))), .data = 4,
	  REJECT_KEY(ST_ERR_RANK, "w") },
	/* invalid_offsets: [begin, end], non-negative integers, begin <= end. */
	{ "offsets_ok", ST_ERR_OFFSETS, H(OBJ(E("w", "U16", "[2]", 0, 4))), .data = 4,
	  .n_tensors = 1 },
	{ "offsets_one", ST_ERR_OFFSETS,
	  H("{\"w\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0]}}"), .data = 1,
	  REJECT_KEY(ST_ERR_OFFSETS, "w") },
	{ "offsets_three", ST_ERR_OFFSETS,
	  H("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,1]}}"), .data = 1,
	  REJECT_KEY(ST_ERR_OFFSETS, "w") },
	{ "offsets_reversed", ST_ERR_OFFSETS, H(OBJ(E("w", "U8", "[0]", 4, 0))), .data = 4,
	  REJECT_KEY(ST_ERR_OFFSETS, "w") },
	{ "offsets_real", ST_ERR_OFFSETS, H(OBJ(E("w", "U8", "[4]", 0.0, 4))), .data = 4,
	  REJECT_KEY(ST_ERR_OFFSETS, "w") },
	{ "offsets_real_end", ST_ERR_OFFSETS, H(OBJ(E("w", "U8", "[4]", 0, 4e0))), .data = 4,
	  REJECT_KEY(ST_ERR_OFFSETS, "w") },
	{ "offsets_negative", ST_ERR_OFFSETS, H(OBJ(E("w", "U8", "[1]", -1, 0))),
	  REJECT_KEY(ST_ERR_OFFSETS, "w") },
	{ "offsets_string", ST_ERR_OFFSETS,
	  H("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":\"0,1\"}}"), .data = 1,
	  REJECT_KEY(ST_ERR_OFFSETS, "w") },
	{ "offsets_null", ST_ERR_OFFSETS,
	  H("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,null]}}"), .data = 1,
	  REJECT_KEY(ST_ERR_OFFSETS, "w") },
	/* invalid_metadata: __metadata__ maps strings to strings. */
	{ "meta_ok", ST_ERR_METADATA, H("{\"__metadata__\":{\"format\":\"pt\",\"\":\"\"}}") },
	{ "meta_ok_empty", ST_ERR_METADATA, H("{\"__metadata__\":{}}") },
	{ "meta_number", ST_ERR_METADATA, H("{\"__metadata__\":{\"k\":1}}"),
	  .want = ST_ERR_METADATA, .off_kind = OFF_KEY, .key = "\"__metadata__\"" },
	{ "meta_nested", ST_ERR_METADATA, H("{\"__metadata__\":{\"k\":{\"a\":\"b\"}}}"),
	  .want = ST_ERR_METADATA, .off_kind = OFF_KEY, .key = "\"__metadata__\"" },
	{ "meta_array", ST_ERR_METADATA, H("{\"__metadata__\":[]}"), .want = ST_ERR_METADATA,
	  .off_kind = OFF_KEY, .key = "\"__metadata__\"" },
	{ "meta_null", ST_ERR_METADATA,
	  H(OBJ(E("w", "U8", "[1]", 0, 1) ",\"__metadata__\":null")), .data = 1,
	  .want = ST_ERR_METADATA, .off_kind = OFF_KEY, .key = "\"__metadata__\"" },
	/* size_overflow: nelem x bits must fit in 64 bits. */
	{ "overflow_ok_zero_dim", ST_ERR_OVERFLOW,
	  H(OBJ(E("z", "F64", "[4294967296,4294967296,0]", 0, 0))), .n_tensors = 1 },
	{ "overflow_ok_max", ST_ERR_OVERFLOW, H(OBJ(E("w", "U8", "[2305843009213693951]", 0, 1))),
	  .data = 1, .want = ST_ERR_SIZE_MISMATCH, .tensor = "w", .off_kind = OFF_DATA,
	  .off = 0 },
	{ "overflow_nelem", ST_ERR_OVERFLOW, H(OBJ(E("w", "U8", "[4294967296,4294967296]", 0, 1))),
	  .data = 1, REJECT_KEY(ST_ERR_OVERFLOW, "w") },
	{ "overflow_bits", ST_ERR_OVERFLOW, H(OBJ(E("w", "F64", "[288230376151711744]", 0, 1))),
	  .data = 1, REJECT_KEY(ST_ERR_OVERFLOW, "w") },
	/* partial_byte: nelem x bits a whole number of bytes. */
	{ "partial_ok_f4", ST_ERR_PARTIAL_BYTE, H(OBJ(E("w", "F4", "[2]", 0, 1))), .data = 1,
	  .n_tensors = 1 },
	{ "partial_ok_f6", ST_ERR_PARTIAL_BYTE, H(OBJ(E("w", "F6_E2M3", "[4]", 0, 3))), .data = 3,
	  .n_tensors = 1 },
	{ "partial_f4_3", ST_ERR_PARTIAL_BYTE, H(OBJ(E("w", "F4", "[3]", 0, 2))), .data = 2,
	  REJECT_KEY(ST_ERR_PARTIAL_BYTE, "w") },
	{ "partial_f6_2x3", ST_ERR_PARTIAL_BYTE, H(OBJ(E("w", "F6_E3M2", "[2,3]", 0, 5))),
	  .data = 5, REJECT_KEY(ST_ERR_PARTIAL_BYTE, "w") },
	{ "partial_f6_scalar", ST_ERR_PARTIAL_BYTE, H(OBJ(E("w", "F6_E3M2", "[]", 0, 1))),
	  .data = 1, REJECT_KEY(ST_ERR_PARTIAL_BYTE, "w") },
	/* size_mismatch: end - begin == nelem x bits / 8 (offset: the tensor's data). */
	{ "size_ok", ST_ERR_SIZE_MISMATCH,
	  H(OBJ(E("a", "U8", "[3]", 0, 3) "," E("b", "F16", "[2]", 3, 7))), .data = 7,
	  .n_tensors = 2 },
	{ "size_short", ST_ERR_SIZE_MISMATCH, H(OBJ(E("w", "F32", "[2]", 0, 7))), .data = 7,
	  .want = ST_ERR_SIZE_MISMATCH, .tensor = "w", .off_kind = OFF_DATA, .off = 0 },
	{ "size_second", ST_ERR_SIZE_MISMATCH,
	  H(OBJ(E("a", "U8", "[3]", 0, 3) "," E("b", "F16", "[2]", 3, 6))), .data = 6,
	  .want = ST_ERR_SIZE_MISMATCH, .tensor = "b", .off_kind = OFF_DATA, .off = 3 },
	{ "size_scalar_zero", ST_ERR_SIZE_MISMATCH, H(OBJ(E("s", "I64", "[]", 0, 0))),
	  .want = ST_ERR_SIZE_MISMATCH, .tensor = "s", .off_kind = OFF_DATA, .off = 0 },
	/* data_not_at_zero: the lowest begin is 0. */
	{ "start0_ok", ST_ERR_DATA_START,
	  H(OBJ(E("b", "U8", "[4]", 4, 8) "," E("a", "U8", "[4]", 0, 4))), .data = 8,
	  .n_tensors = 2 },
	{ "start0_at_4", ST_ERR_DATA_START, H(OBJ(E("w", "F32", "[1]", 4, 8))), .data = 8,
	  .want = ST_ERR_DATA_START, .tensor = "w", .off_kind = OFF_DATA, .off = 4 },
	{ "start0_empty_at_4", ST_ERR_DATA_START, H(OBJ(E("z", "F32", "[0]", 4, 4))), .data = 4,
	  .want = ST_ERR_DATA_START, .tensor = "z", .off_kind = OFF_DATA, .off = 4 },
	/* data_gap: no hole between tensors. */
	{ "gap_ok_zero_size_between", ST_ERR_GAP,
	  H(OBJ(E("a", "U8", "[4]", 0, 4) "," E("z", "U8", "[0]", 4, 4) ","
		    E("b", "U8", "[4]", 4, 8) "," E("y", "U8", "[0]", 8, 8))),
	  .data = 8, .n_tensors = 4 },
	{ "gap_2", ST_ERR_GAP, H(OBJ(E("a", "U8", "[4]", 0, 4) "," E("b", "U8", "[4]", 6, 10))),
	  .data = 10, .want = ST_ERR_GAP, .tensor = "b", .off_kind = OFF_DATA, .off = 4 },
	{ "gap_zero_size", ST_ERR_GAP,
	  H(OBJ(E("a", "U8", "[4]", 0, 4) "," E("z", "U8", "[0]", 5, 5))), .data = 5,
	  .want = ST_ERR_GAP, .tensor = "z", .off_kind = OFF_DATA, .off = 4 },
	/* data_overlap: no byte in two tensors. */
	{ "overlap_ok_zero_size_same_offset", ST_ERR_OVERLAP,
	  H(OBJ(E("z1", "U8", "[0]", 0, 0) "," E("z2", "U8", "[0]", 0, 0) ","
		    E("a", "U8", "[2]", 0, 2))),
	  .data = 2, .n_tensors = 3 },
	{ "overlap_partial", ST_ERR_OVERLAP,
	  H(OBJ(E("a", "U8", "[4]", 0, 4) "," E("b", "U8", "[4]", 2, 6))), .data = 6,
	  .want = ST_ERR_OVERLAP, .tensor = "b", .off_kind = OFF_DATA, .off = 2 },
	{ "overlap_same_range", ST_ERR_OVERLAP,
	  H(OBJ(E("b", "U8", "[4]", 0, 4) "," E("a", "U8", "[4]", 0, 4))), .data = 4,
	  .want = ST_ERR_OVERLAP, .tensor = "b", .off_kind = OFF_DATA, .off = 0 },
	{ "overlap_zero_size_inside", ST_ERR_OVERLAP,
	  H(OBJ(E("a", "U8", "[8]", 0, 8) "," E("z", "U8", "[0]", 4, 4))), .data = 8,
	  .want = ST_ERR_OVERLAP, .tensor = "z", .off_kind = OFF_DATA, .off = 4 },
	/* file_size_mismatch: 8 + N + last end == file size. */
	{ "fsize_ok", ST_ERR_FILE_SIZE, H(OBJ(E("w", "F32", "[1]", 0, 4))), .data = 4,
	  .n_tensors = 1 },
	{ "fsize_extended", ST_ERR_FILE_SIZE, H(OBJ(E("w", "F32", "[1]", 0, 4))), .data = 5,
	  .want = ST_ERR_FILE_SIZE, .off_kind = OFF_DATA, .off = 4 },
	{ "fsize_truncated", ST_ERR_FILE_SIZE, H(OBJ(E("w", "F32", "[1]", 0, 4))), .data = 3,
	  .want = ST_ERR_FILE_SIZE, .off_kind = OFF_DATA, .off = 4 },
	{ "fsize_no_tensors_extra", ST_ERR_FILE_SIZE, H("{}"), .pad = 2, .data = 1,
	  .want = ST_ERR_FILE_SIZE, .off_kind = OFF_DATA, .off = 0 },
	{ "fsize_only_empty_tensors", ST_ERR_FILE_SIZE, H(OBJ(E("z", "U8", "[0]", 0, 0))),
	  .n_tensors = 1 },
	/* Not a rule of their own: layouts the format allows and readers get wrong. */
	{ "ok_misaligned_data", ST_OK,
	  H(OBJ(E("a", "U8", "[3]", 0, 3) "," E("b", "F64", "[1]", 3, 11))), .pad = 1,
	  .data = 11, .n_tensors = 2 },
	{ "ok_metadata_last", ST_OK,
	  H(OBJ(E("w", "U8", "[1]", 0, 1) ",\"__metadata__\":{\"w\":\"x\"}")), .data = 1,
	  .n_tensors = 1 },
	{ "entry_key_after_metadata_value", ST_ERR_ENTRY,
	  H("{\"__metadata__\":{\"k\":\"w\"},\"w\":{\"dtype\":\"U8\",\"shape\":[1],"
	    "\"data_offsets\":[0,1],\"x\":0}}"),
	  .data = 1, .want = ST_ERR_ENTRY, .tensor = "w", .off_kind = OFF_ABS, .off = 8 + 26 },
	{ "ok_empty_name", ST_OK, H(OBJ(E("", "BOOL", "[1]", 0, 1))), .data = 1,
	  .n_tensors = 1 },
};

struct file_buf {
	uint8_t *bytes;
	size_t len;
	uint64_t n; /* the header length, as the header really is */
};

/* Lays out one row as a whole file: length field, header, spaces, zero data. */
static struct file_buf build(const struct hcase *c)
{
	struct file_buf b = { 0 };
	size_t hl = c->hdr_len;
	uint64_t n = hl + c->pad, field = c->set_n ? c->n : n;

	if (c->raw) {
		b.len = hl;
		b.bytes = malloc(hl ? hl : 1);
		assert_non_null(b.bytes);
		memcpy(b.bytes, c->hdr, hl);
		return b;
	}
	b.len = 8 + n + c->data;
	b.n = n;
	b.bytes = calloc(1, b.len);
	assert_non_null(b.bytes);
	for (int i = 0; i < 8; i++)
		b.bytes[i] = (uint8_t)(field >> (8 * i));
	memcpy(b.bytes + 8, c->hdr, hl);
	memset(b.bytes + 8 + hl, ' ', c->pad);
	return b;
}

static uint64_t expected_offset(const struct hcase *c, const struct file_buf *b)
{
	const char *hit;

	switch (c->off_kind) {
	case OFF_ABS:
		return c->off;
	case OFF_DATA:
		return 8 + b->n + c->off;
	case OFF_KEY:
		hit = memmem(c->hdr, c->hdr_len, c->key, strlen(c->key));
		assert_non_null(hit);
		return 8 + (uint64_t)(hit - c->hdr);
	default:
		return UINT64_MAX;
	}
}

/* True when @s is valid UTF-8 (glibc's iconv checks it) with no control characters. */
static bool printable_utf8(const char *s)
{
	iconv_t cd = iconv_open("UTF-8", "UTF-8");
	char out[ST_MSG_MAX * 2], *in = (char *)s, *o = out;
	size_t inleft = strlen(s), outleft = sizeof(out);
	bool ok;

	assert_true(cd != (iconv_t)-1);
	ok = iconv(cd, &in, &inleft, &o, &outleft) != (size_t)-1 && inleft == 0;
	iconv_close(cd);
	for (; *s; s++)
		ok &= (unsigned char)*s >= 0x20 && *s != 0x7f;
	return ok;
}

/*
 * Checks one result against its row: the code, and for a rejection the tensor, the offset
 * and a message naming the path, the rule, the tensor and the offset.
 */
static void check_result(const struct hcase *c, const struct file_buf *b, const char *path,
			 int rc, const struct st_file *f, const struct st_error *err)
{
	uint64_t want_off = expected_offset(c, b);
	const char *want_tensor = c->tensor ? c->tensor : "";
	char needle[ST_MSG_MAX];

	if (c->want == ST_OK) {
		if (rc != 0 || err->code != ST_OK)
			fail_msg("row %s (%s): expected acceptance, got rc %d: %s", c->id, path, rc,
				 err->message);
		if (f->n_tensors != c->n_tensors || f->header_len != b->n ||
		    f->data_start != 8 + b->n || f->file_size != b->len ||
		    st_data_bytes(f) != c->data)
			fail_msg("row %s: n_tensors %u (want %u) header_len %llu (want %llu) "
				 "file_size %llu (want %zu) data bytes %llu (want %zu)",
				 c->id, f->n_tensors, c->n_tensors,
				 (unsigned long long)f->header_len, (unsigned long long)b->n,
				 (unsigned long long)f->file_size, b->len,
				 (unsigned long long)st_data_bytes(f), c->data);
		return;
	}
	if (rc != -EINVAL || err->code != c->want)
		fail_msg("row %s: expected %s, got rc %d code %s: %s", c->id,
			 st_code_name(c->want), rc, st_code_name(err->code), err->message);
	if (f->tensors || f->n_tensors || f->meta)
		fail_msg("row %s: rejected but the st_file is not empty", c->id);
	if (strcmp(err->tensor, want_tensor))
		fail_msg("row %s: tensor \"%s\", want \"%s\": %s", c->id, err->tensor, want_tensor,
			 err->message);
	if (c->off_kind == OFF_HDR) {
		if (err->offset < 8 || err->offset > 8 + b->n)
			fail_msg("row %s: offset %llu is not inside the header [8, %llu]: %s",
				 c->id, (unsigned long long)err->offset,
				 (unsigned long long)(8 + b->n), err->message);
		want_off = err->offset;
	} else if (err->offset != want_off) {
		fail_msg("row %s: offset %llu, want %llu: %s", c->id,
			 (unsigned long long)err->offset, (unsigned long long)want_off,
			 err->message);
	}
	snprintf(needle, sizeof(needle), "%s: %s: ", path, st_code_name(c->want));
	if (strncmp(err->message, needle, strlen(needle)))
		fail_msg("row %s: message does not start with \"%s\": %s", c->id, needle,
			 err->message);
	if (want_tensor[0]) {
		snprintf(needle, sizeof(needle), "tensor \"%s\"", want_tensor);
		if (!strstr(err->message, needle))
			fail_msg("row %s: message lacks %s: %s", c->id, needle, err->message);
	}
	if (want_off != UINT64_MAX) {
		snprintf(needle, sizeof(needle), " at byte %llu)", (unsigned long long)want_off);
		if (!strstr(err->message, needle))
			fail_msg("row %s: message lacks \"%s\": %s", c->id, needle, err->message);
	}
	if (!printable_utf8(err->message))
		fail_msg("row %s: message is not one line of valid UTF-8: %s", c->id,
			 err->message);
}

static void test_rules_in_memory(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct hcase *c = &cases[i];
		struct file_buf b = build(c);
		char path[128];
		struct st_file f;
		struct st_error err;
		int rc;

		snprintf(path, sizeof(path), "mem/%s.safetensors", c->id);
		rc = st_parse_header(path, b.bytes, b.len, b.len, &f, &err);
		if (getenv("ST_TEST_VERBOSE"))
			print_message("%-34s %s\n", c->id, rc ? err.message : "accepted");
		check_result(c, &b, path, rc, &f, &err);
		st_file_free(&f);
		free(b.bytes);
	}
}

/* A private temporary directory for the file tests, removed at the end of main(). */
static char tmp_dirname[256];

static const char *tmp_dir(void)
{
	if (!tmp_dirname[0]) {
		const char *base = getenv("TMPDIR");

		snprintf(tmp_dirname, sizeof(tmp_dirname), "%s/test_st.XXXXXX",
			 base && *base ? base : "/tmp");
		assert_non_null(mkdtemp(tmp_dirname));
	}
	return tmp_dirname;
}

static void write_file(const char *path, const void *bytes, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, bytes, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

static void test_rules_on_files(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct hcase *c = &cases[i];
		struct file_buf b = build(c);
		char path[512];
		struct st_file f;
		struct st_error err;
		int rc;

		snprintf(path, sizeof(path), "%s/%s.safetensors", tmp_dir(), c->id);
		write_file(path, b.bytes, b.len);
		rc = st_open(path, &f, &err);
		check_result(c, &b, path, rc, &f, &err);
		if (rc == 0 && (!f.path || strcmp(f.path, path)))
			fail_msg("row %s: st_file.path \"%s\", want \"%s\"", c->id,
				 f.path ? f.path : "(null)", path);
		st_file_free(&f);
		unlink(path);
		free(b.bytes);
	}
}

/* Every rule has a row that breaks it and a row that passes close to it. */
static void test_every_rule_covered(void **state)
{
	for (int code = ST_ERR_TOO_SMALL; code < ST_CODE_COUNT; code++) {
		bool pass = false, reject = false;

		/*
		 * header_not_object cannot be produced: a header that starts with '{' and
		 * parses is an object. The check stays in st.c to keep the walk safe.
		 */
		if (code == ST_ERR_NOT_OBJECT)
			continue;
		for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
			pass |= cases[i].rule == code && cases[i].want == ST_OK;
			reject |= cases[i].want == code;
		}
		if (!pass || !reject)
			fail_msg("rule %s: %s row missing", st_code_name(code),
				 pass ? "rejecting" : "passing");
	}
}

struct dtype_row {
	const char *dtype;
	const char *shape;
	uint64_t nelem;
	uint64_t bytes; /* UINT64_MAX: rejected as partial_byte */
	uint8_t bits;
	uint8_t kind;
};

static const struct dtype_row dtype_rows[] = {
	{ "BOOL", "[4]", 4, 4, 8, ST_KIND_BOOL },
	{ "U8", "[4]", 4, 4, 8, ST_KIND_UINT },
	{ "I8", "[4]", 4, 4, 8, ST_KIND_INT },
	{ "U16", "[4]", 4, 8, 16, ST_KIND_UINT },
	{ "I16", "[4]", 4, 8, 16, ST_KIND_INT },
	{ "U32", "[4]", 4, 16, 32, ST_KIND_UINT },
	{ "I32", "[4]", 4, 16, 32, ST_KIND_INT },
	{ "U64", "[4]", 4, 32, 64, ST_KIND_UINT },
	{ "I64", "[4]", 4, 32, 64, ST_KIND_INT },
	{ "F16", "[4]", 4, 8, 16, ST_KIND_FLOAT },
	{ "BF16", "[4]", 4, 8, 16, ST_KIND_FLOAT },
	{ "F32", "[4]", 4, 16, 32, ST_KIND_FLOAT },
	{ "F64", "[4]", 4, 32, 64, ST_KIND_FLOAT },
	{ "C64", "[4]", 4, 32, 64, ST_KIND_COMPLEX },
	{ "F8_E4M3", "[4]", 4, 4, 8, ST_KIND_FLOAT },
	{ "F8_E5M2", "[4]", 4, 4, 8, ST_KIND_FLOAT },
	{ "F8_E8M0", "[4]", 4, 4, 8, ST_KIND_FLOAT },
	{ "F8_E4M3FNUZ", "[4]", 4, 4, 8, ST_KIND_FLOAT },
	{ "F8_E5M2FNUZ", "[4]", 4, 4, 8, ST_KIND_FLOAT },
	{ "F6_E2M3", "[4]", 4, 3, 6, ST_KIND_FLOAT },
	{ "F6_E3M2", "[4]", 4, 3, 6, ST_KIND_FLOAT },
	{ "F4", "[4]", 4, 2, 4, ST_KIND_FLOAT },
	{ "F4", "[2]", 2, 1, 4, ST_KIND_FLOAT },
	{ "F4", "[3]", 3, UINT64_MAX, 4, ST_KIND_FLOAT },
	{ "F4", "[2,3,5]", 30, 15, 4, ST_KIND_FLOAT },
	{ "F6_E2M3", "[1]", 1, UINT64_MAX, 6, ST_KIND_FLOAT },
	{ "F6_E3M2", "[8,3]", 24, 18, 6, ST_KIND_FLOAT },
	{ "C64", "[]", 1, 8, 64, ST_KIND_COMPLEX },
};

/* Each dtype, with its byte size as the header must state it. */
static void test_dtypes(void **state)
{
	bool seen[ST_DTYPE_COUNT] = { false };

	for (size_t i = 0; i < ARRAY_SIZE(dtype_rows); i++) {
		const struct dtype_row *r = &dtype_rows[i];
		uint64_t bytes = r->bytes == UINT64_MAX ? 1 : r->bytes;
		char hdr[256];
		uint8_t buf[512] = { 0 };
		int n = snprintf(hdr, sizeof(hdr),
				 "{\"t\":{\"dtype\":\"%s\",\"shape\":%s,"
				 "\"data_offsets\":[0,%llu]}}",
				 r->dtype, r->shape, (unsigned long long)bytes);
		int dt = st_dtype_from_name(r->dtype);
		struct st_file f;
		struct st_error err;
		int rc;

		assert_true(dt >= 0);
		seen[dt] = true;
		assert_string_equal(st_dtype_info((enum st_dtype)dt)->name, r->dtype);
		if (st_dtype_info((enum st_dtype)dt)->bits != r->bits ||
		    st_dtype_info((enum st_dtype)dt)->kind != r->kind)
			fail_msg("%s: table says %u bits kind %u, want %u bits kind %u", r->dtype,
				 st_dtype_info((enum st_dtype)dt)->bits,
				 st_dtype_info((enum st_dtype)dt)->kind, r->bits, r->kind);
		buf[0] = (uint8_t)n;
		memcpy(buf + 8, hdr, (size_t)n);
		rc = st_parse_header("dtypes", buf, 8 + (size_t)n + bytes, 8 + (uint64_t)n + bytes,
				     &f, &err);
		if (r->bytes == UINT64_MAX) {
			if (rc != -EINVAL || err.code != ST_ERR_PARTIAL_BYTE)
				fail_msg("%s %s: want partial_byte, got %d: %s", r->dtype, r->shape,
					 rc, err.message);
			continue;
		}
		if (rc)
			fail_msg("%s %s: rejected: %s", r->dtype, r->shape, err.message);
		if (f.tensors[0].dtype != (enum st_dtype)dt || f.tensors[0].nelem != r->nelem ||
		    st_tensor_nbytes(&f.tensors[0]) != r->bytes)
			fail_msg("%s %s: dtype %d nelem %llu bytes %llu, want %d %llu %llu",
				 r->dtype, r->shape, f.tensors[0].dtype,
				 (unsigned long long)f.tensors[0].nelem,
				 (unsigned long long)st_tensor_nbytes(&f.tensors[0]), dt,
				 (unsigned long long)r->nelem, (unsigned long long)r->bytes);
		st_file_free(&f);
	}
	for (int dt = 0; dt < ST_DTYPE_COUNT; dt++)
		if (!seen[dt])
			fail_msg("dtype %s has no row", st_dtype_info((enum st_dtype)dt)->name);
	assert_int_equal(st_dtype_from_name("F8_E4M3FN"), -1);
	assert_int_equal(st_dtype_from_name("bf16"), -1);
	assert_int_equal(st_dtype_from_name(""), -1);
}

/* The fields and accessors of an accepted header, on a layout with every oddity at once. */
static void test_accessors(void **state)
{
	static const char hdr[] =
		"{\"__metadata__\":{\"format\":\"pt\",\"empty\":\"\"},"
		E("scalar", "F32", "[]", 3, 7) "," E("bytes", "U8", "[3]", 0, 3) ","
		E("empty", "I32", "[0,7]", 7, 7) "," E("mat", "BF16", "[2,3]", 7, 19) "}";
	const size_t pad = 3, data = 19, n = sizeof(hdr) - 1 + pad;
	uint8_t buf[512] = { 0 };
	static const char *const by_offset[] = { "bytes", "scalar", "empty", "mat" };
	const struct st_tensor *t;
	struct st_file f;
	struct st_error err;
	char shape[64];

	buf[0] = (uint8_t)n;
	buf[1] = (uint8_t)(n >> 8);
	memcpy(buf + 8, hdr, sizeof(hdr) - 1);
	memset(buf + 8 + sizeof(hdr) - 1, ' ', pad);
	if (st_parse_header(NULL, buf, 8 + n + data, 8 + n + data, &f, &err))
		fail_msg("rejected: %s", err.message);
	assert_null(f.path);
	assert_int_equal(f.header_len, n);
	assert_int_equal(f.data_start, 8 + n);
	assert_int_equal(f.header_hash, XXH3_64bits(buf, 8 + n));
	assert_int_equal(f.n_tensors, 4);
	for (size_t i = 0; i < ARRAY_SIZE(by_offset); i++)
		if (strcmp(f.tensors[i].name, by_offset[i]))
			fail_msg("tensors[%zu] is \"%s\", want \"%s\" (file order)", i,
				 f.tensors[i].name, by_offset[i]);
	for (size_t i = 0; i < ARRAY_SIZE(by_offset); i++) {
		t = st_find(&f, by_offset[i]);
		if (!t || strcmp(t->name, by_offset[i]))
			fail_msg("st_find(\"%s\") gave %s", by_offset[i], t ? t->name : "NULL");
	}
	assert_null(st_find(&f, "missing"));
	assert_null(st_find(&f, ""));
	assert_null(st_find(&f, "__metadata__"));

	t = st_find(&f, "scalar");
	assert_int_equal(t->rank, 0);
	assert_int_equal(t->nelem, 1);
	assert_int_equal(t->begin, 3);
	assert_int_equal(st_tensor_nbytes(t), 4);
	st_shape_str(t, shape, sizeof(shape));
	assert_string_equal(shape, "[]");
	t = st_find(&f, "empty");
	assert_int_equal(t->nelem, 0);
	st_shape_str(t, shape, sizeof(shape));
	assert_string_equal(shape, "[0, 7]");
	t = st_find(&f, "mat");
	st_shape_str(t, shape, sizeof(shape));
	assert_string_equal(shape, "[2, 3]");
	st_shape_str(t, shape, 4);
	assert_string_equal(shape, "[2,");
	st_shape_str(t, shape, 1);
	assert_string_equal(shape, "");

	assert_int_equal(f.n_meta, 2);
	assert_string_equal(f.meta[0].key, "format");
	assert_string_equal(st_meta_get(&f, "format"), "pt");
	assert_string_equal(st_meta_get(&f, "empty"), "");
	assert_null(st_meta_get(&f, "missing"));
	assert_int_equal(st_data_bytes(&f), 19);
	assert_int_equal(st_param_count(&f), 1 + 3 + 0 + 6);
	st_file_free(&f);
	st_file_free(&f); /* freeing twice is safe: the first call zeroed it */
	st_file_free(NULL);
}

/* Names that must not break the one-line message, and that are too long for it. */
static void test_message_escaping(void **state)
{
	char hdr[3000], name[1100];
	uint8_t *buf;
	struct st_file f;
	struct st_error err;
	int n;

	memset(name, 'n', 1000);
	name[1000] = '\0';
	n = snprintf(hdr, sizeof(hdr), "{\"%s\":{\"dtype\":\"F12\",\"shape\":[],"
		     "\"data_offsets\":[0,0]}}", name);
	buf = calloc(1, 8 + (size_t)n);
	assert_non_null(buf);
	buf[0] = (uint8_t)n;
	buf[1] = (uint8_t)(n >> 8);
	memcpy(buf + 8, hdr, (size_t)n);
	assert_int_equal(st_parse_header("long", buf, 8 + (size_t)n, 8 + (uint64_t)n, &f, &err),
			 -EINVAL);
	assert_int_equal(err.code, ST_ERR_DTYPE);
	assert_int_equal(strlen(err.tensor), sizeof(err.tensor) - 1);
	assert_int_equal(err.offset, 9);
	if (!strstr(err.message, "(header entry at byte 9)") || strncmp(err.message, "long: ", 6))
		fail_msg("long name: the path or the offset was cut: %s", err.message);
	free(buf);

	n = snprintf(hdr, sizeof(hdr),
		     "{\"a\\nb\\\"c\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}");
	buf = calloc(1, 8 + (size_t)n + 4);
	assert_non_null(buf);
	buf[0] = (uint8_t)n;
	memcpy(buf + 8, hdr, (size_t)n);
	assert_int_equal(st_parse_header("ctl\npath", buf, 8 + (size_t)n + 4,
					 8 + (uint64_t)n + 4, &f, &err),
			 -EINVAL);
	assert_int_equal(err.code, ST_ERR_SIZE_MISMATCH);
	assert_string_equal(err.tensor, "a\nb\"c");
	if (strchr(err.message, '\n') || !strstr(err.message, "tensor \"a\\x0ab\\\"c\"") ||
	    strncmp(err.message, "ctl\\x0apath: size_mismatch: ", 28))
		fail_msg("control characters not escaped: %s", err.message);
	free(buf);
}

/* The example message of the design, character for character. */
static void test_message_format(void **state)
{
	static const char hdr[] = OBJ(E("w", "F12", "[1]", 0, 1));
	uint8_t buf[128] = { sizeof(hdr) - 1 };
	struct st_file f;
	struct st_error err;

	memcpy(buf + 8, hdr, sizeof(hdr) - 1);
	st_parse_header("m.safetensors", buf, 8 + sizeof(hdr), 8 + sizeof(hdr), &f, &err);
	assert_string_equal(err.message, "m.safetensors: invalid_dtype: tensor \"w\": unknown "
					 "dtype \"F12\" (header entry at byte 9)");
	for (int code = 0; code < ST_CODE_COUNT; code++)
		assert_string_not_equal(st_code_name(code), "unknown");
	assert_string_equal(st_code_name(ST_CODE_COUNT), "unknown");
	assert_string_equal(st_code_name(-1), "unknown");
	assert_string_equal(st_code_name(ST_ERR_HEADER_BOUNDS), "header_out_of_bounds");
	/* The checker the table relies on must itself tell bad messages apart. */
	assert_true(printable_utf8("caf\xc3\xa9 \xe2\x82\xac"));
	assert_false(printable_utf8("a\xff"));
	assert_false(printable_utf8("\xed\xa0\x80"));
	assert_false(printable_utf8("a\nb"));
}

/* A file whose first 8 bytes hold @n and whose size is @size (sparse past what is written). */
static void make_sparse(const char *path, uint64_t n, const void *hdr, size_t hdr_len,
			uint64_t size)
{
	uint8_t field[8];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	for (int i = 0; i < 8; i++)
		field[i] = (uint8_t)(n >> (8 * i));
	assert_int_equal(pwrite(fd, field, 8, 0), 8);
	if (hdr_len)
		assert_int_equal(pwrite(fd, hdr, hdr_len, 8), (ssize_t)hdr_len);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	assert_int_equal(close(fd), 0);
}

/*
 * The ST_MAX_HEADER boundary on real files: one byte over is refused from the length
 * field alone (a sparse file, so the file really is big enough); exactly the limit is
 * read and accepted (a "{}" padded with spaces, the largest header there can be).
 */
/*
 * No rejection quotes a file's bytes (docs/security.md): a symlink to /etc/shadow in a
 * scanned directory once leaked its first 8 bytes as "header length 3619251681095544690".
 * One row per check that reads a file's bytes before it knows they are a safetensors file.
 */
static void test_no_bytes_quoted(void **state)
{
	static const struct {
		const char *name;
		const char *bytes; /* the file's content */
		size_t len;
		const char *secret; /* what must not appear, besides the bytes themselves */
	} rows[] = {
		{ "text as a length", "root:$y$j9T$secretsecret", 24, "root:" },
		{ "small length past the end", "\x05\x0d\x00\x00\x00\x00\x00\x00{abc", 12,
		  "3333" },
		{ "header not an object", "\x08\x00\x00\x00\x00\x00\x00\x00Zsecret!", 16,
		  "0x5a" },
		{ "invalid JSON near a token",
		  "\x0e\x00\x00\x00\x00\x00\x00\x00{\"a\": secret9}", 22, "secret9" },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		char path[512], value[32];
		struct st_file f;
		struct st_error err;
		uint64_t len;
		int fd;

		snprintf(path, sizeof(path), "%s/quoted-%zu.safetensors", tmp_dir(), i);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		assert_true(fd >= 0);
		assert_int_equal(write(fd, rows[i].bytes, rows[i].len), (ssize_t)rows[i].len);
		close(fd);
		assert_int_equal(st_open(path, &f, &err), -EINVAL);
		/* The first 8 bytes read as the length, in decimal, must not appear either
		 * (when long enough not to match an offset by chance). */
		memcpy(&len, rows[i].bytes, 8);
		snprintf(value, sizeof(value), "%llu", (unsigned long long)le64toh(len));
		if (strstr(err.message, rows[i].secret) || strstr(err.message, "secret") ||
		    (le64toh(len) >= 1000 && strstr(err.message, value))) {
			fprintf(stderr, "%s: the message quotes the file: %s\n", rows[i].name,
				err.message);
			fail();
		}
	}
}

static void test_header_limit(void **state)
{
	char path[512];
	struct st_file f;
	struct st_error err;
	char *spaces;
	int fd;

	snprintf(path, sizeof(path), "%s/limit.safetensors", tmp_dir());
	make_sparse(path, ST_MAX_HEADER + 1, "{}", 2, 8 + ST_MAX_HEADER + 1);
	assert_int_equal(st_open(path, &f, &err), -EINVAL);
	assert_int_equal(err.code, ST_ERR_HEADER_TOO_LARGE);
	/* The length field is the file's own bytes: the message never quotes it. */
	assert_null(strstr(err.message, "100000001"));
	assert_non_null(strstr(err.message, "exceeds the limit"));

	make_sparse(path, ST_MAX_HEADER, "{}", 2, 8 + 1000);
	assert_int_equal(st_open(path, &f, &err), -EINVAL);
	assert_int_equal(err.code, ST_ERR_HEADER_BOUNDS);

	make_sparse(path, ST_MAX_HEADER, "{}", 2, 8 + ST_MAX_HEADER);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	spaces = malloc(1 << 20);
	assert_non_null(spaces);
	memset(spaces, ' ', 1 << 20);
	for (uint64_t off = 8 + 2; off < 8 + ST_MAX_HEADER; off += 1 << 20) {
		uint64_t left = 8 + ST_MAX_HEADER - off;
		size_t len = left < (1 << 20) ? (size_t)left : 1 << 20;

		assert_int_equal(pwrite(fd, spaces, len, (off_t)off), (ssize_t)len);
	}
	free(spaces);
	assert_int_equal(close(fd), 0);
	if (st_open(path, &f, &err))
		fail_msg("a header of exactly %llu bytes was refused: %s", ST_MAX_HEADER,
			 err.message);
	assert_int_equal(f.header_len, ST_MAX_HEADER);
	assert_int_equal(f.n_tensors, 0);
	st_file_free(&f);

	/* One byte more on disk: the tensors (none) no longer end at the end of the file. */
	assert_int_equal(truncate(path, 8 + ST_MAX_HEADER + 1), 0);
	assert_int_equal(st_open(path, &f, &err), -EINVAL);
	assert_int_equal(err.code, ST_ERR_FILE_SIZE);
	unlink(path);
}

/* What only st_open() sees: missing files, directories, FIFOs, a caller's short buffer. */
static void test_open_errors(void **state)
{
	char path[512];
	struct st_file f;
	struct st_error err;
	uint8_t buf[16] = { 2, 0, 0, 0, 0, 0, 0, 0, '{', '}' };

	snprintf(path, sizeof(path), "%s/missing.safetensors", tmp_dir());
	assert_int_equal(st_open(path, &f, &err), -ENOENT);
	assert_int_equal(err.code, ST_ERR_IO);
	if (!strstr(err.message, path) || !strstr(err.message, ": io: "))
		fail_msg("missing file: %s", err.message);

	assert_int_equal(st_open(tmp_dir(), &f, &err), -EISDIR);
	assert_int_equal(err.code, ST_ERR_IO);

	snprintf(path, sizeof(path), "%s/fifo.safetensors", tmp_dir());
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(st_open(path, &f, &err), -EINVAL);
	assert_int_equal(err.code, ST_ERR_IO);
	unlink(path);

	assert_int_equal(st_open_fd(-1, "badfd", &f, &err), -EBADF);
	assert_int_equal(err.code, ST_ERR_IO);

	/* A buffer shorter than the header the file says it has: the caller's mistake. */
	assert_int_equal(st_parse_header("short", buf, 9, 10, &f, &err), -EINVAL);
	assert_int_equal(err.code, ST_ERR_IO);
	assert_int_equal(st_parse_header("short", buf, 4, 10, &f, &err), -EINVAL);
	assert_int_equal(err.code, ST_ERR_IO);
	assert_int_equal(st_parse_header("ok", buf, 10, 10, &f, &err), 0);
	st_file_free(&f);
}

/* The corpus directory: $WD_CORPUS, else ../shared/corpus next to the repository. */
static const char *corpus_dir(void)
{
	static char dir[1024];
	const char *env = getenv("WD_CORPUS"), *root = getenv("WD_ROOT");

	if (env && *env)
		snprintf(dir, sizeof(dir), "%s", env);
	else
		snprintf(dir, sizeof(dir), "%s/../shared/corpus", root && *root ? root : ".");
	return dir;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* Checks one corpus file against what the reference reader listed for it. */
static void check_corpus_file(const char *dir, const char *base)
{
	char path[2048], list[2048], line[1024], shape[256];
	struct st_file f;
	struct st_error err;
	unsigned lines = 0;
	FILE *fp;
	int fd;

	snprintf(path, sizeof(path), "%s/%s.safetensors", dir, base);
	snprintf(list, sizeof(list), "%s/%s.tensors.txt", dir, base);
	if (st_open(path, &f, &err))
		fail_msg("corpus %s rejected: %s", base, err.message);
	fp = fopen(list, "r");
	if (!fp)
		fail_msg("corpus %s: cannot open %s", base, list);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	while (fgets(line, sizeof(line), fp)) {
		char *save, *name = strtok_r(line, "\t\n", &save);
		char *dtype = strtok_r(NULL, "\t\n", &save), *shp = strtok_r(NULL, "\t\n", &save);
		char *size = strtok_r(NULL, "\t\n", &save), *hash = strtok_r(NULL, "\t\n", &save);
		const struct st_tensor *t;
		uint8_t *bytes;
		uint64_t nbytes;

		if (!name || !hash)
			fail_msg("corpus %s: malformed line %u of %s", base, lines + 1, list);
		lines++;
		t = st_find(&f, name);
		if (!t)
			fail_msg("corpus %s: tensor \"%s\" not found", base, name);
		st_shape_str(t, shape, sizeof(shape));
		nbytes = st_tensor_nbytes(t);
		if (strcmp(st_dtype_info(t->dtype)->name, dtype) || strcmp(shape, shp) ||
		    nbytes != strtoull(size, NULL, 10))
			fail_msg("corpus %s: \"%s\" is %s %s %llu bytes, reference says %s %s %s",
				 base, name, st_dtype_info(t->dtype)->name, shape,
				 (unsigned long long)nbytes, dtype, shp, size);
		bytes = malloc(nbytes ? nbytes : 1);
		assert_non_null(bytes);
		assert_int_equal(pread(fd, bytes, nbytes, (off_t)(f.data_start + t->begin)),
				 (ssize_t)nbytes);
		if (fnv1a(bytes, nbytes) != strtoull(hash, NULL, 16))
			fail_msg("corpus %s: \"%s\" bytes hash to %016llx, reference %s", base,
				 name, (unsigned long long)fnv1a(bytes, nbytes), hash);
		free(bytes);
	}
	if (lines != f.n_tensors)
		fail_msg("corpus %s: %u tensors, the reference lists %u", base, f.n_tensors, lines);
	fclose(fp);
	close(fd);
	st_file_free(&f);
}

static void test_corpus(void **state)
{
	const char *dir = corpus_dir();
	struct dirent *de;
	unsigned files = 0;
	DIR *d = opendir(dir);

	assert_non_null(d);
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);
		char base[256];

		if (len <= 12 || strcmp(de->d_name + len - 12, ".safetensors") || len - 12 >= 256)
			continue;
		memcpy(base, de->d_name, len - 12);
		base[len - 12] = '\0';
		check_corpus_file(dir, base);
		files++;
	}
	closedir(d);
	print_message("corpus: %u files from %s matched the reference\n", files, dir);
	assert_true(files > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_rule_covered),
		cmocka_unit_test(test_rules_in_memory),
		cmocka_unit_test(test_rules_on_files),
		cmocka_unit_test(test_dtypes),
		cmocka_unit_test(test_accessors),
		cmocka_unit_test(test_message_escaping),
		cmocka_unit_test(test_message_format),
		cmocka_unit_test(test_no_bytes_quoted),
		cmocka_unit_test(test_header_limit),
		cmocka_unit_test(test_open_errors),
	};
	const struct CMUnitTest corpus[] = {
		cmocka_unit_test(test_corpus),
	};
	struct stat sb;
	int failed = cmocka_run_group_tests(tests, NULL, NULL);

	if (tmp_dirname[0])
		rmdir(tmp_dirname); /* empty unless a failed test left its file to look at */
	if (failed)
		return 1;
	/*
	 * The corpus lives outside the repository; without it the rest has still run, and
	 * the program says so and exits 77 rather than passing silently.
	 */
	if (stat(corpus_dir(), &sb) || !S_ISDIR(sb.st_mode)) {
		printf("SKIP: corpus test: reference corpus %s not found (set WD_CORPUS); the "
		       "other tests passed\n",
		       corpus_dir());
		return 77;
	}
	return cmocka_run_group_tests(corpus, NULL, NULL) ? 1 : 0;
}
