/*
 * The layout a form (struct tier_form, decoded by tier_parse_form()) has on the GPU: a
 * converted copy's own compact layout, F32 tensors as F16/BF16 (dev_convert_layout()), and
 * the tensors a selection names (dev_select_layout()), out of a stored-form host entry.
 */
#include "core/tier/dev_internal.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/st.h"

/* A form's conversion (tier_form.convert, an enum st_dtype) is the dtype a device entry is
 * converted to on the GPU (gpu_ops.convert_f32): the two numberings must agree. */
static_assert(GPU_DTYPE_F16 == ST_F16 && GPU_DTYPE_BF16 == ST_BF16,
	      "GPU_DTYPE_* must equal the enum st_dtype values");

/* Whether tensor @t of a stored-form layout is converted to @conv (F32, whole elements). */
bool dev_converts(const struct hostcache_tensor *t, uint8_t conv)
{
	return conv && t->dtype == ST_F32 && t->nbytes % 4 == 0;
}

/*
 * The layout of a converted device copy of stored-form entry @l: tensors in the same order,
 * each at a TENSOR_ALIGN offset, F32 ones at half their size in dtype @conv, the others as
 * stored. After the tensors, at *@scratch_off, *@scratch bytes (a multiple of 4, at most
 * SCRATCH_MAX) where F32 bytes are staged before the GPU converts them. @out gets its own
 * tensor table (free(out->t)). Returns 0 or -ENOMEM.
 */
int dev_convert_layout(const struct hostcache_layout *l, uint8_t conv,
		       struct hostcache_layout *out, uint64_t *scratch_off, uint64_t *scratch)
{
	uint64_t off = 0, biggest = 0;

	*out = *l;
	out->base = NULL;
	out->tensor_bytes = 0;
	out->t = calloc(l->n_t ? l->n_t : 1, sizeof(*out->t));
	if (!out->t)
		return -ENOMEM;
	for (uint32_t i = 0; i < l->n_t; i++) {
		const struct hostcache_tensor *t = &l->t[i];
		bool c = dev_converts(t, conv);
		uint64_t nb = c ? t->nbytes / 2 : t->nbytes;

		off = (off + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
		out->t[i] = (struct hostcache_tensor){ .tid = t->tid, .off = off, .nbytes = nb,
						       .dtype = c ? conv : t->dtype };
		off += nb;
		out->tensor_bytes += nb;
		if (c && t->nbytes > biggest)
			biggest = t->nbytes;
	}
	out->size = off;
	*scratch_off = (off + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
	*scratch = biggest < SCRATCH_MAX ? biggest : SCRATCH_MAX;
	return 0;
}

/*
 * The tensors of stored-form entry @l that @e's selection names, into @out: the same offsets
 * in the host extent (out->base is l->base), its own table (free(out->t)). Tensor names come
 * from the registry (the daemon's own writes). A prefix must match at least one tensor; every
 * name of a list must be a tensor of the component, as on the host tier. Returns 0, -ENOENT
 * or -ENOMEM with @msg (WD_DATA_SLOT_SIZE bytes).
 */
int dev_select_layout(struct devcache *dc, const struct dentry *e,
		      const struct hostcache_layout *l, struct hostcache_layout *out, char *msg)
{
	bool *used = NULL;
	uint32_t n = 0;

	*out = *l;
	out->tensor_bytes = 0;
	out->t = calloc(l->n_t ? l->n_t : 1, sizeof(*out->t));
	if (e->sel == TIER_SEL_NAMES)
		used = calloc(e->sel_len + 1u, sizeof(*used));
	if (!out->t || (e->sel == TIER_SEL_NAMES && !used)) {
		free(out->t);
		out->t = NULL;
		free(used);
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.150s: out of memory", e->key);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < l->n_t; i++) {
		struct wd_reg_tensor rt;
		bool take = false;

		if (l->t[i].tid == NO_TID || registry_read_tensor(dc->env.view, l->t[i].tid, &rt))
			continue;
		rt.name[sizeof(rt.name) - 1] = '\0';
		if (e->sel == TIER_SEL_PREFIX) {
			take = !strncmp(rt.name, e->sel_arg, e->sel_len);
		} else {
			/* Names are NUL-separated in sel_arg (NUL-terminated after sel_len). */
			for (size_t k = 0; k < e->sel_len; k += strlen(e->sel_arg + k) + 1) {
				if (!strcmp(rt.name, e->sel_arg + k)) {
					take = true;
					used[k] = true;
				}
			}
		}
		if (take) {
			out->t[n++] = l->t[i];
			out->tensor_bytes += l->t[i].nbytes;
		}
	}
	out->n_t = n;
	for (size_t k = 0; e->sel == TIER_SEL_NAMES && k < e->sel_len;
	     k += strlen(e->sel_arg + k) + 1) {
		if (e->sel_arg[k] && !used[k]) {
			snprintf(msg, WD_DATA_SLOT_SIZE, "load: %.80s: no tensor \"%.100s\" in the "
				 "component", e->key, e->sel_arg + k);
			free(used);
			free(out->t);
			out->t = NULL;
			return -ENOENT;
		}
	}
	free(used);
	if (!n) {
		snprintf(msg, WD_DATA_SLOT_SIZE, "load: %.150s: no tensor matches the selection",
			 e->key);
		free(out->t);
		out->t = NULL;
		return -ENOENT;
	}
	return 0;
}
