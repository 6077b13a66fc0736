/*
 * The CUDA driver API, loaded at run time with dlopen("libcuda.so.1") and called through
 * the function pointers in struct gpu_driver. Nothing links against libcuda, so weightd
 * builds and runs on machines with no driver (and, without the toolkit headers, builds
 * with CONFIG_HAVE_CUDA_H unset and reports GPU_COMPILED_OUT).
 *
 * Every CUresult is converted once, by gpu_cu_err(), into a negative errno plus a message
 * that carries the CUDA error name.
 */
#ifndef WD_GPU_CUDA_H
#define WD_GPU_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"

#ifdef CONFIG_HAVE_CUDA_H
#include <cuda.h>
#else
typedef int CUresult;
typedef int CUdevice;
#endif

#define GPU_MAX_DEVICES 64

/*
 * What a build without the CUDA toolkit headers answers wherever the GPU tier is asked for
 * (status, LOAD --tier cuda:N, weightd --version): configure said so too.
 */
#define GPU_COMPILED_OUT "GPU tier compiled out: this build has no CUDA support " \
	"(configure found no CUDA toolkit headers)"
#ifdef CONFIG_HAVE_CUDA_H
#define GPU_TIER_BUILD "compiled in (CUDA driver loaded at run time)"
#else
#define GPU_TIER_BUILD "compiled out (no CUDA toolkit headers at build time)"
#endif

#ifdef CONFIG_HAVE_CUDA_H
/* Every event the device tier creates is waited on, so each sleeps in the driver (blocking
 * sync) rather than spinning a core, and none is timed. */
#define GPU_EVENT_FLAGS (CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC)
#endif

struct gpu_driver {
	void *handle;
	bool initialised; /* cuInit succeeded: the library is never unloaded after that */
	int version; /* cuDriverGetVersion: 12040 is 12.4 */
	CUresult (*cuInit)(unsigned int flags);
	CUresult (*cuDriverGetVersion)(int *version);
	CUresult (*cuGetErrorName)(CUresult err, const char **name);
	CUresult (*cuGetErrorString)(CUresult err, const char **str);
	CUresult (*cuDeviceGetCount)(int *count);
	CUresult (*cuDeviceGet)(CUdevice *dev, int ordinal);
	CUresult (*cuDeviceGetName)(char *name, int len, CUdevice dev);
	CUresult (*cuDeviceTotalMem)(size_t *bytes, CUdevice dev);
	CUresult (*cuDeviceGetPCIBusId)(char *bus_id, int len, CUdevice dev);
#ifdef CONFIG_HAVE_CUDA_H
	/*
	 * What the device tier (gpu/cuda_dev.c) calls. Where cuda.h maps a name to a versioned
	 * entry point (cuMemGetInfo -> cuMemGetInfo_v2), the member name is mapped the same way
	 * and the _v2 symbol is what gpu_driver_open() looks up.
	 */
	CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
	CUresult (*cuDevicePrimaryCtxRelease)(CUdevice dev);
	CUresult (*cuCtxSetCurrent)(CUcontext ctx);
	CUresult (*cuCtxGetCurrent)(CUcontext *ctx);
	CUresult (*cuDeviceGetAttribute)(int *value, CUdevice_attribute attr, CUdevice dev);
	CUresult (*cuDeviceGetByPCIBusId)(CUdevice *dev, const char *bus_id);
	CUresult (*cuMemGetInfo)(size_t *free_b, size_t *total_b);
	CUresult (*cuMemGetAllocationGranularity)(size_t *gran, const CUmemAllocationProp *prop,
						  CUmemAllocationGranularity_flags option);
	CUresult (*cuMemCreate)(CUmemGenericAllocationHandle *h, size_t size,
				const CUmemAllocationProp *prop, unsigned long long flags);
	CUresult (*cuMemRelease)(CUmemGenericAllocationHandle h);
	CUresult (*cuMemAddressReserve)(CUdeviceptr *ptr, size_t size, size_t align,
					CUdeviceptr addr, unsigned long long flags);
	CUresult (*cuMemAddressFree)(CUdeviceptr ptr, size_t size);
	CUresult (*cuMemMap)(CUdeviceptr ptr, size_t size, size_t offset,
			     CUmemGenericAllocationHandle h, unsigned long long flags);
	CUresult (*cuMemUnmap)(CUdeviceptr ptr, size_t size);
	CUresult (*cuMemSetAccess)(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
				   size_t count);
	CUresult (*cuMemExportToShareableHandle)(void *shareable, CUmemGenericAllocationHandle h,
						 CUmemAllocationHandleType type,
						 unsigned long long flags);
	CUresult (*cuMemImportFromShareableHandle)(CUmemGenericAllocationHandle *h, void *os_handle,
						   CUmemAllocationHandleType type);
	CUresult (*cuMemHostRegister)(void *p, size_t n, unsigned int flags);
	CUresult (*cuMemHostUnregister)(void *p);
	CUresult (*cuMemHostAlloc)(void **p, size_t n, unsigned int flags);
	CUresult (*cuMemFreeHost)(void *p);
	CUresult (*cuStreamCreate)(CUstream *s, unsigned int flags);
	CUresult (*cuStreamDestroy)(CUstream s);
	CUresult (*cuStreamSynchronize)(CUstream s);
	CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr dst, const void *src, size_t n, CUstream s);
	CUresult (*cuMemcpyDtoH)(void *dst, CUdeviceptr src, size_t n);
	CUresult (*cuEventCreate)(CUevent *ev, unsigned int flags);
	CUresult (*cuEventRecord)(CUevent ev, CUstream s);
	CUresult (*cuEventQuery)(CUevent ev);
	CUresult (*cuEventSynchronize)(CUevent ev);
	CUresult (*cuEventDestroy)(CUevent ev);
	/* The conversion kernels (gpu_ops.convert_f32): PTX text JIT-compiled by the driver. */
	CUresult (*cuModuleLoadData)(CUmodule *mod, const void *image);
	CUresult (*cuModuleUnload)(CUmodule mod);
	CUresult (*cuModuleGetFunction)(CUfunction *f, CUmodule mod, const char *name);
	CUresult (*cuLaunchKernel)(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
				   unsigned int bx, unsigned int by, unsigned int bz,
				   unsigned int shared, CUstream s, void **params, void **extra);
#endif
};

struct gpu_device {
	int ordinal;
	char name[128];
	char pci_bus_id[32]; /* "0000:3b:00.0" */
	char id[32];	     /* names the device the same way in every process, which its
			      * ordinal does not: the PCI bus id (emulated: "emulated-N", N the
			      * device's index before WEIGHTD_GPU_EMULATE_VISIBLE) */
	uint64_t total_bytes;
};

/*
 * Loads the driver and calls cuInit(0). @why receives a one-line reason on failure.
 * Returns 0; -ENOSYS when built without CUDA headers; -ENODEV when libcuda.so.1 cannot
 * be loaded ("no CUDA driver") or cuInit reports no device; -ENOENT when a required
 * symbol is missing (driver too old); or gpu_cu_err()'s errno for a failing cuInit.
 * @drv is left closed on failure. $WEIGHTD_LIBCUDA overrides the library name (tests).
 */
int gpu_driver_open(struct gpu_driver *drv, char *why, size_t why_size);
/*
 * Forgets @drv. The library is dlclose'd only when cuInit never succeeded through it: after
 * cuInit the driver's threads and state live in the process, and unloading it under them
 * (then loading it again) is undefined, so an initialised driver stays loaded for the life of
 * the process.
 */
void gpu_driver_close(struct gpu_driver *drv);

/*
 * Converts @res into a negative errno and, when @msg is not NULL, writes
 * "<what>: <CUDA_ERROR_NAME>: <description>" into it. CUDA_SUCCESS gives 0.
 * @drv may be NULL or closed: the name then comes from weightd's own table.
 */
int gpu_cu_err(const struct gpu_driver *drv, CUresult res, const char *what, char *msg,
	       size_t msg_size);

/* Fills up to @max devices. Returns the count or a negative errno (via gpu_cu_err). */
int gpu_enumerate(const struct gpu_driver *drv, struct gpu_device *devs, int max,
		  char *why, size_t why_size);

#endif
