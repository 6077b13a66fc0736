/*
 * safetensors reader and validator.
 *
 * A safetensors file is: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
 * (an object, starting with '{', optionally right-padded with spaces), then the data.
 * Every rule of DESIGN.md's "safetensors, exactly" is enforced here, and each rejection
 * carries a stable code (st_code_name() gives its stable string), a message naming the
 * rule, the tensor when there is one, and the byte offset in the file when there is one.
 *
 * Resource bounds: a header larger than ST_MAX_HEADER is refused before anything past the
 * first 8 bytes is read; the parser allocates in proportion to the header it was given.
 *
 * Two readings of the rules worth knowing: a shape with a zero dimension has no elements,
 * so it is never a size_overflow whatever its other dimensions; and an integer in the
 * header above 2^63 - 1 is invalid_json (jansson's integer range), as no offset or
 * dimension of a real file comes near it.
 */
#ifndef WD_CORE_ST_H
#define WD_CORE_ST_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <sys/types.h>

#define ST_MAX_HEADER 100000000ull /* N above this is refused */
#define ST_MAX_RANK 16		   /* ranks above this are refused (ST_ERR_RANK) */
#define ST_MSG_MAX 512

enum st_dtype {
	ST_BOOL,
	ST_U8,
	ST_I8,
	ST_U16,
	ST_I16,
	ST_U32,
	ST_I32,
	ST_U64,
	ST_I64,
	ST_F16,
	ST_BF16,
	ST_F32,
	ST_F64,
	ST_C64,
	ST_F8_E4M3,
	ST_F8_E5M2,
	ST_F8_E8M0,
	ST_F8_E4M3FNUZ,
	ST_F8_E5M2FNUZ,
	ST_F6_E2M3,
	ST_F6_E3M2,
	ST_F4,
	ST_DTYPE_COUNT
};

enum st_kind { ST_KIND_BOOL, ST_KIND_UINT, ST_KIND_INT, ST_KIND_FLOAT, ST_KIND_COMPLEX };

struct st_dtype_info {
	const char *name; /* as spelled in the header: "BF16" */
	uint8_t bits;	  /* bits per element: 4, 6, 8, 16, 32, 64 */
	uint8_t kind;	  /* enum st_kind */
};

/* Returns the description of @dt; @dt must be < ST_DTYPE_COUNT. */
const struct st_dtype_info *st_dtype_info(enum st_dtype dt);
/* Looks up a dtype by its header spelling (exact, case-sensitive). -1 when unknown. */
int st_dtype_from_name(const char *name);

/*
 * Stable rejection codes. The numbers and the names returned by st_code_name() are part
 * of weightctl's JSON output and the client ABI: append only.
 */
enum st_code {
	ST_OK = 0,
	ST_ERR_IO,		/* "io": open, stat or read failed */
	ST_ERR_NOMEM,		/* "nomem" */
	ST_ERR_TOO_SMALL,	/* "file_too_small": fewer than 8 bytes */
	ST_ERR_HEADER_TOO_LARGE,/* "header_too_large": N > 100,000,000 */
	ST_ERR_HEADER_BOUNDS,	/* "header_out_of_bounds": 8 + N > file size */
	ST_ERR_HEADER_START,	/* "header_not_object_start": first byte is not '{' */
	ST_ERR_UTF8,		/* "invalid_utf8" */
	ST_ERR_JSON,		/* "invalid_json": syntax, trailing bytes, NUL */
	ST_ERR_DUPLICATE_KEY,	/* "duplicate_key" */
	ST_ERR_NOT_OBJECT,	/* "header_not_object" */
	ST_ERR_ENTRY,		/* "invalid_entry": not an object, missing/unknown field */
	ST_ERR_DTYPE,		/* "invalid_dtype": not a string or unknown */
	ST_ERR_SHAPE,		/* "invalid_shape": not an array of non-negative integers */
	ST_ERR_RANK,		/* "rank_too_large": rank > ST_MAX_RANK */
	ST_ERR_OFFSETS,		/* "invalid_offsets": not [begin,end] integers, begin > end */
	ST_ERR_METADATA,	/* "invalid_metadata": __metadata__ not a string->string map */
	ST_ERR_OVERFLOW,	/* "size_overflow": element count x bits overflows 64 bits */
	ST_ERR_PARTIAL_BYTE,	/* "partial_byte": element count x bits not a multiple of 8 */
	ST_ERR_SIZE_MISMATCH,	/* "size_mismatch": end - begin != nelem x bits / 8 */
	ST_ERR_DATA_START,	/* "data_not_at_zero": lowest begin is not 0 */
	ST_ERR_GAP,		/* "data_gap": a hole between two tensors */
	ST_ERR_OVERLAP,		/* "data_overlap": two tensors share bytes */
	ST_ERR_FILE_SIZE,	/* "file_size_mismatch": 8 + N + last end != file size */
	ST_CODE_COUNT
};

/* The stable snake_case name of @code ("duplicate_key"); "unknown" when out of range. */
const char *st_code_name(int code);

/*
 * One rejection. @offset is a byte offset in the file (UINT64_MAX when none applies):
 * 0 for the length field; jansson's error position (8 + its offset) for JSON errors; the
 * entry's key in the header for rules about one entry's fields (dtype, shape, offsets,
 * overflow, partial byte, __metadata__), or 8 when that key is written with escapes; the
 * tensor's data (8 + N + begin) for size_mismatch, data_not_at_zero and data_overlap; the
 * first unclaimed byte for data_gap and the end of the tensors for file_size_mismatch.
 * @tensor is the tensor's name ("" when none applies), cut to fit at a UTF-8 boundary.
 * @message is one line of valid UTF-8 that names the file, the rule, the tensor and the
 * offset, e.g. `m.safetensors: invalid_dtype: tensor "w": unknown dtype "F12" (header entry
 * at byte 9)`; control characters and invalid UTF-8 in names are escaped as \xNN.
 */
struct st_error {
	int code; /* enum st_code */
	uint64_t offset;
	char tensor[256];
	char message[ST_MSG_MAX];
};

/*
 * Fills @err (when not NULL) with a rejection in the format every st_ function uses:
 *   <path>: <code name>: tensor "<name>": <detail> (<where> at byte <offset>)
 * @tensor may be NULL or "" (no tensor part); @offset UINT64_MAX leaves out the byte part,
 * whose label @where says what lives there ("header", "header entry", "data"). Long paths,
 * names and details are shortened so that the offset part always fits; control characters
 * and quotes in @path and @tensor are escaped so that the message stays one line.
 * Returns @rc unchanged, so callers write `return st_error_set(err, -EINVAL, ...)`.
 */
int st_error_set(struct st_error *err, int rc, int code, const char *path, const char *tensor,
		 uint64_t offset, const char *where, const char *fmt, ...)
	__attribute__((format(printf, 8, 9)));

/*
 * How much of jansson's error text @text to show: all of it but a trailing " near '...'",
 * which quotes the file's own bytes (docs/security.md: no message quotes a file's bytes;
 * the byte offset says where instead).
 */
static inline int st_json_error_len(const char *text)
{
	const char *near = strstr(text, " near '");

	return (int)(near ? (size_t)(near - text) : strlen(text));
}

struct st_tensor {
	char *name;	   /* NUL-terminated, valid UTF-8 (jansson checked it) */
	enum st_dtype dtype;
	uint32_t rank;
	uint64_t shape[ST_MAX_RANK];
	uint64_t begin;	   /* data_offsets, relative to the data start (8 + N) */
	uint64_t end;
	uint64_t nelem;	   /* product of shape; 1 for a scalar */
};

struct st_kv {
	char *key;
	char *value;
};

/*
 * A validated header. Tensors are sorted by data offset (begin, then end), which is
 * also file order; st_find() looks one up by name.
 */
struct st_file {
	char *path;		/* as given to st_open(); NULL after st_parse_header() */
	uint64_t file_size;
	uint64_t header_len;	/* N */
	uint64_t data_start;	/* 8 + N */
	uint64_t header_hash;	/* xxh3-64 of the first 8 + N bytes */
	uint32_t n_tensors;
	struct st_tensor *tensors;
	uint32_t *by_name;	/* indices into tensors, sorted by name (for st_find) */
	uint32_t n_meta;
	struct st_kv *meta;	/* __metadata__, in header order */
};

/*
 * Validates the header of a file of @file_size bytes whose first @len bytes are @buf
 * (@len must be at least 8 + N for success; fewer is ST_ERR_HEADER_BOUNDS when the file
 * itself is that short, and ST_ERR_IO, still -EINVAL, when only the buffer is: the caller
 * read too little). @path is used only in messages (NULL: "(buffer)"). On success fills
 * @out, which the caller releases with st_file_free(), and returns 0. On rejection returns
 * -EINVAL and fills @err (when not NULL); on allocation failure returns -ENOMEM with
 * ST_ERR_NOMEM. @out is left empty on any failure. Reads no byte past 8 + N, allocates in
 * proportion to N, and checks N against ST_MAX_HEADER and @file_size first.
 */
int st_parse_header(const char *path, const void *buf, size_t len, uint64_t file_size,
		    struct st_file *out, struct st_error *err);

/*
 * Opens @path, reads only its header and validates it as st_parse_header() does. Reads
 * 8 bytes first and refuses a header over ST_MAX_HEADER or past the end of the file
 * before allocating. Returns 0, -EINVAL (a rejection, @err filled), -ENOMEM, or a
 * negative errno from open/fstat/pread (with ST_ERR_IO in @err): -EISDIR for a directory,
 * -EIO when the file shrank while the header was read. Anything but a regular file (a
 * FIFO, a device) is refused with -EINVAL and ST_ERR_IO without reading from it; @path is
 * opened with O_NONBLOCK so that a FIFO cannot block the open.
 */
int st_open(const char *path, struct st_file *out, struct st_error *err);

/* Same as st_open() on an already open file descriptor (not closed, not moved). */
int st_open_fd(int fd, const char *path, struct st_file *out, struct st_error *err);

/*
 * pread() of @len bytes at @off, looping over short reads and EINTR. Returns the bytes read
 * (fewer than @len only at end of file) or a negative errno.
 */
ssize_t st_pread_full(int fd, void *buf, size_t len, uint64_t off);

/* Releases what st_open()/st_parse_header() allocated; @f may be zeroed or NULL. */
void st_file_free(struct st_file *f);

/* The tensor named @name, or NULL; a binary search over by_name. */
const struct st_tensor *st_find(const struct st_file *f, const char *name);

/* The value of __metadata__ key @key, or NULL. */
const char *st_meta_get(const struct st_file *f, const char *key);

/* Bytes of tensor @t's data (end - begin). */
static inline uint64_t st_tensor_nbytes(const struct st_tensor *t)
{
	return t->end - t->begin;
}

/* Total bytes of tensor data (last end), and total element count (parameters). */
uint64_t st_data_bytes(const struct st_file *f);
uint64_t st_param_count(const struct st_file *f);

/* Formats "[a, b, c]" into @buf (always NUL-terminated). */
void st_shape_str(const struct st_tensor *t, char *buf, size_t size);

/*
 * Deep validation: reads every tensor's bytes, computes an xxh3-64 per tensor and counts
 * NaN and Inf in float tensors. Counted: F16, BF16, F32, F64 (IEEE); C64 per part (a
 * complex element with a NaN real and a NaN imaginary part counts 2); F8_E4M3 (NaN is
 * S.1111.111, no Inf); F8_E5M2 (IEEE-like); F8_E4M3FNUZ and F8_E5M2FNUZ (NaN is 0x80, no
 * Inf); F8_E8M0 (NaN is 0xff, no Inf). F6, F4 and the integer types hold neither.
 */
#define ST_DEEP_CHUNK (4u << 20) /* bytes per pread in st_deep_check() */

struct st_deep_tensor {
	uint64_t xxh3; /* XXH3_64bits() of the tensor's bytes (seed 0) */
	uint64_t nan;
	uint64_t inf;
};

/*
 * Reads the data region of @f from @fd (the file the header came from, as st_open() saw
 * it) front to back in ST_DEEP_CHUNK preads, whatever the tensors' alignment, and fills
 * @out (an array of f->n_tensors, in f->tensors order). Returns 0; a negative errno from
 * fstat/pread (ST_ERR_IO in @err, with the data offset that failed); -EINVAL with
 * ST_ERR_FILE_SIZE when the file's size changed since the header was read; -ENOMEM.
 */
int st_deep_check(int fd, const struct st_file *f, struct st_deep_tensor *out,
		  struct st_error *err);

/* st_deep_check() that calls @progress (when not NULL) after each chunk with the data
 * bytes read so far and the total, for a progress bar. */
int st_deep_check_progress(int fd, const struct st_file *f, struct st_deep_tensor *out,
			   struct st_error *err,
			   void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg);

#endif
