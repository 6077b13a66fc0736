/*
 * The CUDA implementation of the device tier (gpu/device.h), through the dlopen'ed driver
 * (gpu/cuda.h). Builds without the CUDA headers get gpu/cuda_none.c instead.
 *
 * The driver is loaded once per process, on first use, and never unloaded: a context, a
 * stream or a mapping may outlive any one caller, and unloading libcuda under them would
 * crash. A failed load is not remembered, so a later call can retry (tests that point
 * $WEIGHTD_LIBCUDA elsewhere, a driver installed while the daemon runs).
 *
 * Contexts: each device uses its primary context (the one the CUDA runtime, hence PyTorch,
 * uses too), retained at open and released at close. Operations run in the calling thread's
 * current context, which the caller sets with ctx_enter() and restores with ctx_leave()
 * (gpu/device.h): the hot path (a copy, an event) then costs no context switch, and a
 * library inside PyTorch leaves the framework's current device as it found it. open() and
 * close() make their own context current only around their own calls and restore the
 * caller's.
 *
 * VRAM: VMM allocations (cuMemCreate) requested with POSIX file-descriptor handles, so that
 * the fd from cuMemExportToShareableHandle can be sent to a client, which imports and maps
 * it in its own address space. The allocation handle lives in gpu_vram.priv.
 */
#include "gpu/device.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef CONFIG_HAVE_CUDA_H

_Static_assert(sizeof(CUmemGenericAllocationHandle) <= sizeof(void *),
	       "a VMM allocation handle must fit in gpu_vram.priv");
_Static_assert(sizeof(CUstream) == sizeof(struct gpu_stream *) &&
	       sizeof(CUevent) == sizeof(struct gpu_event *),
	       "streams and events are passed as their CUDA handles");

static struct gpu_driver drv;
static bool drv_loaded;
static pthread_mutex_t drv_lock = PTHREAD_MUTEX_INITIALIZER;

struct gpu_dev {
	int ordinal;
	CUdevice dev;
	CUcontext ctx;
	uint64_t gran;
	CUmemAllocationProp prop;
	CUmodule mod;		/* the conversion kernels, loaded on first use (NULL: not yet) */
	CUfunction to_f16, to_bf16;
};

/*
 * The conversion kernels, in PTX: the driver JIT-compiles them for whatever GPU it runs
 * (sm_50 and later), so no nvcc is needed at build time. One thread per element, in a grid-
 * stride loop over n (u64). Both reproduce core/format/convert.c bit for bit:
 *   F16   cvt.rn.f16.f32 (IEEE round to nearest even: overflow to infinity, subnormals
 *         kept) for every value but NaN; a NaN becomes sign | 0x7e00 | the top 9 payload
 *         bits, as on the host (the instruction would give a canonical NaN instead).
 *   BF16  integer rounding, (x + 0x7fff + ((x >> 16) & 1)) >> 16, and a NaN keeps its top
 *         bits with the quiet bit set ((x >> 16) | 0x40). Integer ops rather than
 *         cvt.rn.bf16.f32 (sm_80+, PTX 7.0, canonical NaN): the same result on every GPU.
 */
static const char convert_ptx[] =
	".version 6.0\n"
	".target sm_50\n"
	".address_size 64\n"
	"\n"
	".visible .entry wd_f32_to_f16(.param .u64 p_dst, .param .u64 p_src, .param .u64 p_n)\n"
	"{\n"
	"	.reg .pred %p<3>;\n"
	"	.reg .b16 %h<2>;\n"
	"	.reg .b32 %r<10>;\n"
	"	.reg .f32 %f<2>;\n"
	"	.reg .b64 %rd<12>;\n"
	"	ld.param.u64 %rd1, [p_dst];\n"
	"	ld.param.u64 %rd2, [p_src];\n"
	"	ld.param.u64 %rd3, [p_n];\n"
	"	cvta.to.global.u64 %rd1, %rd1;\n"
	"	cvta.to.global.u64 %rd2, %rd2;\n"
	"	mov.u32 %r1, %ctaid.x;\n"
	"	mov.u32 %r2, %ntid.x;\n"
	"	mov.u32 %r3, %tid.x;\n"
	"	mul.wide.u32 %rd4, %r1, %r2;\n"
	"	cvt.u64.u32 %rd5, %r3;\n"
	"	add.u64 %rd4, %rd4, %rd5;\n"
	"	mov.u32 %r4, %nctaid.x;\n"
	"	mul.wide.u32 %rd6, %r4, %r2;\n"
	"H_LOOP:\n"
	"	setp.ge.u64 %p1, %rd4, %rd3;\n"
	"	@%p1 bra H_DONE;\n"
	"	shl.b64 %rd7, %rd4, 2;\n"
	"	add.u64 %rd8, %rd2, %rd7;\n"
	"	ld.global.u32 %r5, [%rd8];\n"
	"	and.b32 %r6, %r5, 0x7fffffff;\n"
	"	setp.gt.u32 %p2, %r6, 0x7f800000;\n"
	"	@%p2 bra H_NAN;\n"
	"	mov.b32 %f1, %r5;\n"
	"	cvt.rn.f16.f32 %h1, %f1;\n"
	"	bra.uni H_STORE;\n"
	"H_NAN:\n"
	"	shr.u32 %r7, %r5, 16;\n"
	"	and.b32 %r7, %r7, 0x8000;\n"
	"	shr.u32 %r8, %r6, 13;\n"
	"	and.b32 %r8, %r8, 0x1ff;\n"
	"	or.b32 %r7, %r7, %r8;\n"
	"	or.b32 %r7, %r7, 0x7e00;\n"
	"	cvt.u16.u32 %h1, %r7;\n"
	"H_STORE:\n"
	"	shl.b64 %rd9, %rd4, 1;\n"
	"	add.u64 %rd10, %rd1, %rd9;\n"
	"	st.global.b16 [%rd10], %h1;\n"
	"	add.u64 %rd4, %rd4, %rd6;\n"
	"	bra.uni H_LOOP;\n"
	"H_DONE:\n"
	"	ret;\n"
	"}\n"
	"\n"
	".visible .entry wd_f32_to_bf16(.param .u64 p_dst, .param .u64 p_src, .param .u64 p_n)\n"
	"{\n"
	"	.reg .pred %p<3>;\n"
	"	.reg .b16 %h<2>;\n"
	"	.reg .b32 %r<12>;\n"
	"	.reg .b64 %rd<12>;\n"
	"	ld.param.u64 %rd1, [p_dst];\n"
	"	ld.param.u64 %rd2, [p_src];\n"
	"	ld.param.u64 %rd3, [p_n];\n"
	"	cvta.to.global.u64 %rd1, %rd1;\n"
	"	cvta.to.global.u64 %rd2, %rd2;\n"
	"	mov.u32 %r1, %ctaid.x;\n"
	"	mov.u32 %r2, %ntid.x;\n"
	"	mov.u32 %r3, %tid.x;\n"
	"	mul.wide.u32 %rd4, %r1, %r2;\n"
	"	cvt.u64.u32 %rd5, %r3;\n"
	"	add.u64 %rd4, %rd4, %rd5;\n"
	"	mov.u32 %r4, %nctaid.x;\n"
	"	mul.wide.u32 %rd6, %r4, %r2;\n"
	"B_LOOP:\n"
	"	setp.ge.u64 %p1, %rd4, %rd3;\n"
	"	@%p1 bra B_DONE;\n"
	"	shl.b64 %rd7, %rd4, 2;\n"
	"	add.u64 %rd8, %rd2, %rd7;\n"
	"	ld.global.u32 %r5, [%rd8];\n"
	"	and.b32 %r6, %r5, 0x7fffffff;\n"
	"	setp.gt.u32 %p2, %r6, 0x7f800000;\n"
	"	shr.u32 %r7, %r5, 16;\n"
	"	or.b32 %r8, %r7, 0x40;\n"
	"	and.b32 %r9, %r7, 1;\n"
	"	add.u32 %r10, %r5, 0x7fff;\n"
	"	add.u32 %r10, %r10, %r9;\n"
	"	shr.u32 %r10, %r10, 16;\n"
	"	selp.b32 %r11, %r8, %r10, %p2;\n"
	"	cvt.u16.u32 %h1, %r11;\n"
	"	shl.b64 %rd9, %rd4, 1;\n"
	"	add.u64 %rd10, %rd1, %rd9;\n"
	"	st.global.b16 [%rd10], %h1;\n"
	"	add.u64 %rd4, %rd4, %rd6;\n"
	"	bra.uni B_LOOP;\n"
	"B_DONE:\n"
	"	ret;\n"
	"}\n";

#define CONVERT_BLOCK 256u
#define CONVERT_MAX_BLOCKS 4096u	/* the grid-stride loop covers the rest */

static int load_driver(char *why, size_t why_size)
{
	int rc = 0;

	pthread_mutex_lock(&drv_lock);
	if (!drv_loaded) {
		rc = gpu_driver_open(&drv, why, why_size);
		drv_loaded = rc == 0;
	}
	pthread_mutex_unlock(&drv_lock);
	return rc;
}

#define CU(call, what)                                                              \
	do {                                                                        \
		CUresult res_ = (call);                                             \
		if (res_ != CUDA_SUCCESS)                                           \
			return gpu_cu_err(&drv, res_, what, why, why_size);         \
	} while (0)

/* The calling thread's current context, saved, and @dev's made current. */
static int cuda_ctx_enter(struct gpu_dev *dev, void **saved, char *why, size_t why_size)
{
	CUcontext cur = NULL;

	CU(drv.cuCtxGetCurrent(&cur), "cuCtxGetCurrent");
	*saved = cur;
	if (cur != dev->ctx)
		CU(drv.cuCtxSetCurrent(dev->ctx), "cuCtxSetCurrent");
	return 0;
}

static void cuda_ctx_leave(struct gpu_dev *dev, void *saved)
{
	CUcontext cur = NULL;

	if (drv.cuCtxGetCurrent(&cur) != CUDA_SUCCESS || cur != (CUcontext)saved)
		drv.cuCtxSetCurrent((CUcontext)saved);
}

static int cuda_count(char *why, size_t why_size)
{
	int n = 0, rc = load_driver(why, why_size);

	if (rc)
		return rc;
	CU(drv.cuDeviceGetCount(&n), "cuDeviceGetCount");
	return n;
}

static int cuda_open(int ordinal, struct gpu_dev **out, char *why, size_t why_size)
{
	struct gpu_dev *dev;
	size_t gran = 0;
	CUresult res;
	int rc = load_driver(why, why_size);

	if (rc)
		return rc;
	dev = calloc(1, sizeof(*dev));
	if (!dev) {
		snprintf(why, why_size, "cuda:%d: out of memory", ordinal);
		return -ENOMEM;
	}
	dev->ordinal = ordinal;
	res = drv.cuDeviceGet(&dev->dev, ordinal);
	if (res != CUDA_SUCCESS) {
		rc = gpu_cu_err(&drv, res, "cuDeviceGet", why, why_size);
		free(dev);
		return rc;
	}
	res = drv.cuDevicePrimaryCtxRetain(&dev->ctx, dev->dev);
	if (res != CUDA_SUCCESS) {
		rc = gpu_cu_err(&drv, res, "cuDevicePrimaryCtxRetain", why, why_size);
		free(dev);
		return rc;
	}
	dev->prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	dev->prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	dev->prop.location.id = ordinal;
	dev->prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
	/* Needs no context: the caller's current one stays as it is. */
	res = drv.cuMemGetAllocationGranularity(&gran, &dev->prop,
						CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
	if (res != CUDA_SUCCESS || !gran) {
		rc = res != CUDA_SUCCESS ?
			gpu_cu_err(&drv, res, "cuMemGetAllocationGranularity", why, why_size) :
			-EIO;
		if (!gran && res == CUDA_SUCCESS)
			snprintf(why, why_size, "cuda:%d reports allocation granularity 0", ordinal);
		drv.cuDevicePrimaryCtxRelease(dev->dev);
		free(dev);
		return rc;
	}
	dev->gran = gran;
	*out = dev;
	return 0;
}

static void cuda_close(struct gpu_dev *dev)
{
	void *saved;

	if (!dev)
		return;
	if (dev->mod && !cuda_ctx_enter(dev, &saved, NULL, 0)) {
		drv.cuModuleUnload(dev->mod);
		cuda_ctx_leave(dev, saved);
	}
	drv.cuDevicePrimaryCtxRelease(dev->dev);
	free(dev);
}

static int cuda_info(struct gpu_dev *dev, struct gpu_device *info, char *why, size_t why_size)
{
	size_t total = 0;

	memset(info, 0, sizeof(*info));
	info->ordinal = dev->ordinal;
	CU(drv.cuDeviceGetName(info->name, sizeof(info->name), dev->dev), "cuDeviceGetName");
	CU(drv.cuDeviceTotalMem(&total, dev->dev), "cuDeviceTotalMem");
	CU(drv.cuDeviceGetPCIBusId(info->pci_bus_id, sizeof(info->pci_bus_id), dev->dev),
	   "cuDeviceGetPCIBusId");
	snprintf(info->id, sizeof(info->id), "%s", info->pci_bus_id);
	info->total_bytes = total;
	return 0;
}

static int cuda_find(const char *id, int *ordinal, char *why, size_t why_size)
{
	CUdevice d;
	CUresult res;
	int rc = load_driver(why, why_size);

	if (rc)
		return rc;
	res = drv.cuDeviceGetByPCIBusId(&d, id);
	if (res != CUDA_SUCCESS) {
		rc = gpu_cu_err(&drv, res, "cuDeviceGetByPCIBusId", why, why_size);
		/* INVALID_VALUE/INVALID_DEVICE: a bus id this process does not see. */
		return rc == -EINVAL ? -ENODEV : rc;
	}
	/* A CUdevice is the ordinal of the device in this process. */
	*ordinal = (int)d;
	return 0;
}

static int cuda_caps(struct gpu_dev *dev, struct gpu_caps *caps, char *why, size_t why_size)
{
	int vmm = 0, fd = 0, mode = 0;

	CU(drv.cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
				    dev->dev), "cuDeviceGetAttribute(VMM)");
	CU(drv.cuDeviceGetAttribute(&fd,
				    CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
				    dev->dev), "cuDeviceGetAttribute(POSIX fd handles)");
	CU(drv.cuDeviceGetAttribute(&mode, CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, dev->dev),
	   "cuDeviceGetAttribute(compute mode)");
	caps->vmm = vmm != 0;
	caps->posix_fd = fd != 0;
	caps->compute_mode = mode;
	return 0;
}

static int cuda_mem_info(struct gpu_dev *dev, uint64_t *free_b, uint64_t *total_b, char *why,
			 size_t why_size)
{
	size_t f = 0, t = 0;

	CU(drv.cuMemGetInfo(&f, &t), "cuMemGetInfo");
	*free_b = f;
	*total_b = t;
	return 0;
}

static uint64_t cuda_granularity(struct gpu_dev *dev)
{
	return dev->gran;
}

/* Reserves a VA range for @h, maps it and grants this device read-write access. */
static int map_handle(struct gpu_dev *dev, CUmemGenericAllocationHandle h, uint64_t size,
		      CUdeviceptr *out, char *why, size_t why_size)
{
	CUmemAccessDesc access = {
		.location = { .type = CU_MEM_LOCATION_TYPE_DEVICE, .id = dev->ordinal },
		.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
	};
	CUdeviceptr ptr = 0;
	CUresult res;
	int rc;

	res = drv.cuMemAddressReserve(&ptr, size, dev->gran, 0, 0);
	if (res != CUDA_SUCCESS)
		return gpu_cu_err(&drv, res, "cuMemAddressReserve", why, why_size);
	res = drv.cuMemMap(ptr, size, 0, h, 0);
	if (res != CUDA_SUCCESS) {
		rc = gpu_cu_err(&drv, res, "cuMemMap", why, why_size);
		drv.cuMemAddressFree(ptr, size);
		return rc;
	}
	res = drv.cuMemSetAccess(ptr, size, &access, 1);
	if (res != CUDA_SUCCESS) {
		rc = gpu_cu_err(&drv, res, "cuMemSetAccess", why, why_size);
		drv.cuMemUnmap(ptr, size);
		drv.cuMemAddressFree(ptr, size);
		return rc;
	}
	*out = ptr;
	return 0;
}

static int cuda_vram_alloc(struct gpu_dev *dev, uint64_t size, struct gpu_vram *out, char *why,
			   size_t why_size)
{
	CUmemGenericAllocationHandle h;
	CUdeviceptr ptr;
	CUresult res;
	uint64_t rounded;
	int fd = -1, rc;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	if (!size || size > UINT64_MAX - dev->gran) {
		snprintf(why, why_size, "vram_alloc on cuda:%d: bad size %" PRIu64, dev->ordinal,
			 size);
		return -EINVAL;
	}
	rounded = (size + dev->gran - 1) / dev->gran * dev->gran;
	res = drv.cuMemCreate(&h, rounded, &dev->prop, 0);
	if (res != CUDA_SUCCESS)
		return gpu_cu_err(&drv, res, "cuMemCreate", why, why_size);
	res = drv.cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
					       0);
	if (res != CUDA_SUCCESS) {
		rc = gpu_cu_err(&drv, res, "cuMemExportToShareableHandle", why, why_size);
		drv.cuMemRelease(h);
		return rc;
	}
	rc = map_handle(dev, h, rounded, &ptr, why, why_size);
	if (rc) {
		close(fd);
		drv.cuMemRelease(h);
		return rc;
	}
	out->size = rounded;
	out->dptr = ptr;
	out->fd = fd;
	out->priv = (void *)(uintptr_t)h;
	return 0;
}

static int cuda_vram_import(struct gpu_dev *dev, int fd, uint64_t size, struct gpu_vram *out,
			    char *why, size_t why_size)
{
	CUmemGenericAllocationHandle h;
	CUdeviceptr ptr;
	CUresult res;
	int rc;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	if (fd < 0 || !size || size % dev->gran) {
		snprintf(why, why_size, "vram_import of fd %d, %" PRIu64 " bytes on cuda:%d: the "
			 "size must be a multiple of %" PRIu64, fd, size, dev->ordinal, dev->gran);
		return fd < 0 ? -EBADF : -EINVAL;
	}
	/* The driver takes the fd by value, cast to a pointer, and does not close it. */
	res = drv.cuMemImportFromShareableHandle(&h, (void *)(uintptr_t)fd,
						 CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
	if (res != CUDA_SUCCESS)
		return gpu_cu_err(&drv, res, "cuMemImportFromShareableHandle", why, why_size);
	rc = map_handle(dev, h, size, &ptr, why, why_size);
	if (rc) {
		drv.cuMemRelease(h);
		return rc;
	}
	out->size = size;
	out->dptr = ptr;
	out->priv = (void *)(uintptr_t)h;
	return 0;
}

static void cuda_vram_free(struct gpu_dev *dev, struct gpu_vram *v)
{
	if (v->dptr) {
		drv.cuMemUnmap(v->dptr, v->size);
		drv.cuMemAddressFree(v->dptr, v->size);
		drv.cuMemRelease((CUmemGenericAllocationHandle)(uintptr_t)v->priv);
	}
	if (v->fd >= 0)
		close(v->fd);
	memset(v, 0, sizeof(*v));
	v->fd = -1;
}

static int cuda_host_register(struct gpu_dev *dev, void *p, size_t n, char *why,
			      size_t why_size)
{
	/* PORTABLE: one registration serves every context; a second one of the same range
	 * fails with CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, which gpu_cu_err() turns into
	 * -EEXIST (gpu_host_register_once()). */
	CU(drv.cuMemHostRegister(p, n, CU_MEMHOSTREGISTER_PORTABLE), "cuMemHostRegister");
	return 0;
}

static void cuda_host_unregister(struct gpu_dev *dev, void *p)
{
	drv.cuMemHostUnregister(p);
}

static int cuda_host_alloc(struct gpu_dev *dev, size_t n, void **p, char *why, size_t why_size)
{
	CU(drv.cuMemHostAlloc(p, n, CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc");
	return 0;
}

static void cuda_host_free(struct gpu_dev *dev, void *p)
{
	drv.cuMemFreeHost(p);
}

static int cuda_stream_create(struct gpu_dev *dev, struct gpu_stream **s, char *why,
			      size_t why_size)
{
	CUstream cs;

	/* Non-blocking: no implicit ordering with the legacy default stream other code uses. */
	CU(drv.cuStreamCreate(&cs, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
	*s = (struct gpu_stream *)cs;
	return 0;
}

static void cuda_stream_destroy(struct gpu_dev *dev, struct gpu_stream *s)
{
	if (!s)
		return;
	/* The device tier's contract (and the emulator's): queued work runs before it goes. */
	drv.cuStreamSynchronize((CUstream)s);
	drv.cuStreamDestroy((CUstream)s);
}

static int cuda_copy_h2d(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst,
			 const void *src, size_t n, char *why, size_t why_size)
{
	if (!n)
		return 0;
	CU(drv.cuMemcpyHtoDAsync((CUdeviceptr)dst, src, n, (CUstream)s), "cuMemcpyHtoDAsync");
	return 0;
}

static int cuda_copy_d2h(struct gpu_dev *dev, void *dst, uint64_t src, size_t n, char *why,
			 size_t why_size)
{
	if (!n)
		return 0;
	CU(drv.cuMemcpyDtoH(dst, (CUdeviceptr)src, n), "cuMemcpyDtoH");
	return 0;
}

static int cuda_event_record(struct gpu_dev *dev, struct gpu_stream *s, struct gpu_event **ev,
			     char *why, size_t why_size)
{
	CUevent e;
	CUresult res;
	int rc;

	/* Blocking sync: event_wait() sleeps in the driver instead of spinning a core for the
	 * whole copy (cuEventSynchronize on a default event busy-waits). */
	CU(drv.cuEventCreate(&e, GPU_EVENT_FLAGS), "cuEventCreate");
	res = drv.cuEventRecord(e, (CUstream)s);
	if (res != CUDA_SUCCESS) {
		rc = gpu_cu_err(&drv, res, "cuEventRecord", why, why_size);
		drv.cuEventDestroy(e);
		return rc;
	}
	*ev = (struct gpu_event *)e;
	return 0;
}

static int cuda_event_query(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			    size_t why_size)
{
	CUresult res = drv.cuEventQuery((CUevent)ev);

	if (res == CUDA_ERROR_NOT_READY)
		return -EAGAIN;
	return gpu_cu_err(&drv, res, "cuEventQuery", why, why_size);
}

static int cuda_event_wait(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			   size_t why_size)
{
	CU(drv.cuEventSynchronize((CUevent)ev), "cuEventSynchronize");
	return 0;
}

static void cuda_event_destroy(struct gpu_dev *dev, struct gpu_event *ev)
{
	if (ev)
		drv.cuEventDestroy((CUevent)ev);
}

/* Loads the conversion kernels into the device's context, once. */
static int load_kernels(struct gpu_dev *dev, char *why, size_t why_size)
{
	CUmodule mod;
	CUresult res;

	if (dev->mod)
		return 0;
	CU(drv.cuModuleLoadData(&mod, convert_ptx), "cuModuleLoadData (conversion kernels)");
	res = drv.cuModuleGetFunction(&dev->to_f16, mod, "wd_f32_to_f16");
	if (res == CUDA_SUCCESS)
		res = drv.cuModuleGetFunction(&dev->to_bf16, mod, "wd_f32_to_bf16");
	if (res != CUDA_SUCCESS) {
		drv.cuModuleUnload(mod);
		return gpu_cu_err(&drv, res, "cuModuleGetFunction", why, why_size);
	}
	dev->mod = mod;
	return 0;
}

static int cuda_convert_f32(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst,
			    uint64_t src, uint64_t n, unsigned int to, char *why, size_t why_size)
{
	CUdeviceptr d = (CUdeviceptr)dst, sp = (CUdeviceptr)src;
	uint64_t count = n, blocks;
	void *params[] = { &d, &sp, &count };
	int rc;

	if (to != GPU_DTYPE_F16 && to != GPU_DTYPE_BF16) {
		snprintf(why, why_size, "convert_f32: unsupported target dtype %u", to);
		return -EINVAL;
	}
	if (src % 4 || dst % 2 || n > UINT64_MAX / 4 ||
	    (dst < src + 4 * n && src < dst + 2 * n)) {
		snprintf(why, why_size, "convert_f32 of %" PRIu64 " elements from 0x%" PRIx64
			 " to 0x%" PRIx64 ": misaligned or overlapping", n, src, dst);
		return -EINVAL;
	}
	if (!n)
		return 0;
	rc = load_kernels(dev, why, why_size);
	if (rc)
		return rc;
	blocks = (n + CONVERT_BLOCK - 1) / CONVERT_BLOCK;
	if (blocks > CONVERT_MAX_BLOCKS)
		blocks = CONVERT_MAX_BLOCKS;
	CU(drv.cuLaunchKernel(to == GPU_DTYPE_F16 ? dev->to_f16 : dev->to_bf16,
			      (unsigned int)blocks, 1, 1, CONVERT_BLOCK, 1, 1, 0, (CUstream)s, params,
			      NULL), "cuLaunchKernel (F32 conversion)");
	return 0;
}

const struct gpu_ops gpu_cuda_ops = {
	.kind = "cuda",
	.count = cuda_count,
	.open = cuda_open,
	.close = cuda_close,
	.ctx_enter = cuda_ctx_enter,
	.ctx_leave = cuda_ctx_leave,
	.find = cuda_find,
	.caps = cuda_caps,
	.info = cuda_info,
	.mem_info = cuda_mem_info,
	.granularity = cuda_granularity,
	.vram_alloc = cuda_vram_alloc,
	.vram_import = cuda_vram_import,
	.vram_free = cuda_vram_free,
	.host_register = cuda_host_register,
	.host_unregister = cuda_host_unregister,
	.host_alloc = cuda_host_alloc,
	.host_free = cuda_host_free,
	.stream_create = cuda_stream_create,
	.stream_destroy = cuda_stream_destroy,
	.copy_h2d = cuda_copy_h2d,
	.copy_d2h = cuda_copy_d2h,
	.event_record = cuda_event_record,
	.event_query = cuda_event_query,
	.event_wait = cuda_event_wait,
	.event_destroy = cuda_event_destroy,
	.convert_f32 = cuda_convert_f32,
};

const char *gpu_cuda_convert_ptx(void)
{
	return convert_ptx;
}

#endif /* CONFIG_HAVE_CUDA_H: without it, gpu/cuda_none.c stands in */
