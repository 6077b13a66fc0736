/*
 * The CUDA device layer's stand-in for builds without the CUDA toolkit headers
 * (CONFIG_HAVE_CUDA_H unset, see gpu/cuda.h): gpu_cuda_ops whose every entry point answers
 * -ENOSYS with GPU_COMPILED_OUT. With the headers, gpu/cuda_dev.c defines gpu_cuda_ops and
 * this file compiles to nothing.
 */
#include "gpu/device.h"

#include <errno.h>
#include <stdio.h>

#ifndef CONFIG_HAVE_CUDA_H

/*
 * Without the toolkit headers there is no driver ABI to call: every entry point says so.
 * count() and open() are the ones callers reach first; the rest cannot be reached without
 * an open device, but answer the same way rather than crash.
 */
#define NOSYS(why, why_size) \
	(snprintf(why, why_size, "%s", GPU_COMPILED_OUT), -ENOSYS)

static int nocuda_count(char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static int nocuda_open(int ordinal, struct gpu_dev **out, char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static void nocuda_close(struct gpu_dev *dev)
{
}

static int nocuda_ctx_enter(struct gpu_dev *dev, void **saved, char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static void nocuda_ctx_leave(struct gpu_dev *dev, void *saved)
{
}

static int nocuda_find(const char *id, int *ordinal, char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static int nocuda_caps(struct gpu_dev *dev, struct gpu_caps *caps, char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static int nocuda_info(struct gpu_dev *dev, struct gpu_device *info, char *why,
		       size_t why_size)
{
	return NOSYS(why, why_size);
}

static int nocuda_mem_info(struct gpu_dev *dev, uint64_t *free_b, uint64_t *total_b,
			   char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static uint64_t nocuda_granularity(struct gpu_dev *dev)
{
	return 0;
}

static int nocuda_vram_alloc(struct gpu_dev *dev, uint64_t size, struct gpu_vram *out,
			     char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static int nocuda_vram_import(struct gpu_dev *dev, int fd, uint64_t size, struct gpu_vram *out,
			      char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static void nocuda_vram_free(struct gpu_dev *dev, struct gpu_vram *v)
{
}

static int nocuda_host_register(struct gpu_dev *dev, void *p, size_t n, char *why,
				size_t why_size)
{
	return NOSYS(why, why_size);
}

static void nocuda_host_unregister(struct gpu_dev *dev, void *p)
{
}

static int nocuda_host_alloc(struct gpu_dev *dev, size_t n, void **p, char *why,
			     size_t why_size)
{
	return NOSYS(why, why_size);
}

static void nocuda_host_free(struct gpu_dev *dev, void *p)
{
}

static int nocuda_stream_create(struct gpu_dev *dev, struct gpu_stream **s, char *why,
				size_t why_size)
{
	return NOSYS(why, why_size);
}

static void nocuda_stream_destroy(struct gpu_dev *dev, struct gpu_stream *s)
{
}

static int nocuda_copy_h2d(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst,
			   const void *src, size_t n, char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static int nocuda_copy_d2h(struct gpu_dev *dev, void *dst, uint64_t src, size_t n, char *why,
			   size_t why_size)
{
	return NOSYS(why, why_size);
}

static int nocuda_event_record(struct gpu_dev *dev, struct gpu_stream *s,
			       struct gpu_event **ev, char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

static int nocuda_event_query(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			      size_t why_size)
{
	return NOSYS(why, why_size);
}

static void nocuda_event_destroy(struct gpu_dev *dev, struct gpu_event *ev)
{
}

static int nocuda_convert_f32(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst,
			      uint64_t src, uint64_t n, unsigned int to, char *why, size_t why_size)
{
	return NOSYS(why, why_size);
}

const struct gpu_ops gpu_cuda_ops = {
	.kind = "cuda",
	.count = nocuda_count,
	.open = nocuda_open,
	.close = nocuda_close,
	.ctx_enter = nocuda_ctx_enter,
	.ctx_leave = nocuda_ctx_leave,
	.find = nocuda_find,
	.caps = nocuda_caps,
	.info = nocuda_info,
	.mem_info = nocuda_mem_info,
	.granularity = nocuda_granularity,
	.vram_alloc = nocuda_vram_alloc,
	.vram_import = nocuda_vram_import,
	.vram_free = nocuda_vram_free,
	.host_register = nocuda_host_register,
	.host_unregister = nocuda_host_unregister,
	.host_alloc = nocuda_host_alloc,
	.host_free = nocuda_host_free,
	.stream_create = nocuda_stream_create,
	.stream_destroy = nocuda_stream_destroy,
	.copy_h2d = nocuda_copy_h2d,
	.copy_d2h = nocuda_copy_d2h,
	.event_record = nocuda_event_record,
	.event_query = nocuda_event_query,
	.event_wait = nocuda_event_query,
	.event_destroy = nocuda_event_destroy,
	.convert_f32 = nocuda_convert_f32,
};

const char *gpu_cuda_convert_ptx(void)
{
	return NULL;
}

#endif /* !CONFIG_HAVE_CUDA_H */
