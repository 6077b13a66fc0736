#include "gpu/cuda.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/log.h"

/*
 * CUresult -> errno for the results a loader can meet. The names are kept here too so
 * that a message can name the error even when the driver could not be asked.
 */
static const struct {
	int res;
	int err;
	const char *name;
} cu_errors[] = {
	{ 1, EINVAL, "CUDA_ERROR_INVALID_VALUE" },
	{ 2, ENOMEM, "CUDA_ERROR_OUT_OF_MEMORY" },
	{ 3, EIO, "CUDA_ERROR_NOT_INITIALIZED" },
	{ 4, ESHUTDOWN, "CUDA_ERROR_DEINITIALIZED" },
	{ 34, EIO, "CUDA_ERROR_STUB_LIBRARY" },
	{ 35, ENOSYS, "CUDA_ERROR_INSUFFICIENT_DRIVER" },
	{ 46, EBUSY, "CUDA_ERROR_DEVICE_UNAVAILABLE" },
	{ 100, ENODEV, "CUDA_ERROR_NO_DEVICE" },
	{ 101, ENODEV, "CUDA_ERROR_INVALID_DEVICE" },
	{ 201, EINVAL, "CUDA_ERROR_INVALID_CONTEXT" },
	{ 400, EINVAL, "CUDA_ERROR_INVALID_HANDLE" },
	{ 600, EAGAIN, "CUDA_ERROR_NOT_READY" },
	{ 700, EFAULT, "CUDA_ERROR_ILLEGAL_ADDRESS" },
	{ 712, EEXIST, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED" },
	{ 713, ENOENT, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED" },
	{ 719, EIO, "CUDA_ERROR_LAUNCH_FAILED" },
	{ 800, EPERM, "CUDA_ERROR_NOT_PERMITTED" },
	{ 801, EOPNOTSUPP, "CUDA_ERROR_NOT_SUPPORTED" },
	{ 999, EIO, "CUDA_ERROR_UNKNOWN" },
};

int gpu_cu_err(const struct gpu_driver *drv, CUresult res, const char *what, char *msg,
	       size_t msg_size)
{
	const char *name = NULL, *desc = NULL;
	int err = EIO;

	if ((int)res == 0)
		return 0;
	for (size_t i = 0; i < ARRAY_SIZE(cu_errors); i++) {
		if (cu_errors[i].res == (int)res) {
			err = cu_errors[i].err;
			name = cu_errors[i].name;
		}
	}
	if (drv && drv->handle) {
		if (drv->cuGetErrorName)
			drv->cuGetErrorName(res, &name);
		if (drv->cuGetErrorString)
			drv->cuGetErrorString(res, &desc);
	}
	if (msg && msg_size) {
		char code[32];

		if (!name) {
			snprintf(code, sizeof(code), "CUresult %d", (int)res);
			name = code;
		}
		snprintf(msg, msg_size, "%s: %s%s%s", what, name, desc ? ": " : "",
			 desc ? desc : "");
	}
	return -err;
}

#ifdef CONFIG_HAVE_CUDA_H

/* Versioned entry points: the header's macros map cuMemGetInfo to cuMemGetInfo_v2 etc. */
#define SYM(field, sym) { offsetof(struct gpu_driver, field), sym }
static const struct {
	size_t off;
	const char *sym;
} symbols[] = {
	SYM(cuInit, "cuInit"),
	SYM(cuDriverGetVersion, "cuDriverGetVersion"),
	SYM(cuGetErrorName, "cuGetErrorName"),
	SYM(cuGetErrorString, "cuGetErrorString"),
	SYM(cuDeviceGetCount, "cuDeviceGetCount"),
	SYM(cuDeviceGet, "cuDeviceGet"),
	SYM(cuDeviceGetName, "cuDeviceGetName"),
	SYM(cuDeviceTotalMem, "cuDeviceTotalMem_v2"),
	SYM(cuDeviceGetPCIBusId, "cuDeviceGetPCIBusId"),
	SYM(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"),
	SYM(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"),
	SYM(cuCtxSetCurrent, "cuCtxSetCurrent"),
	SYM(cuCtxGetCurrent, "cuCtxGetCurrent"),
	SYM(cuDeviceGetAttribute, "cuDeviceGetAttribute"),
	SYM(cuDeviceGetByPCIBusId, "cuDeviceGetByPCIBusId"),
	SYM(cuMemGetInfo, "cuMemGetInfo_v2"),
	SYM(cuMemGetAllocationGranularity, "cuMemGetAllocationGranularity"),
	SYM(cuMemCreate, "cuMemCreate"),
	SYM(cuMemRelease, "cuMemRelease"),
	SYM(cuMemAddressReserve, "cuMemAddressReserve"),
	SYM(cuMemAddressFree, "cuMemAddressFree"),
	SYM(cuMemMap, "cuMemMap"),
	SYM(cuMemUnmap, "cuMemUnmap"),
	SYM(cuMemSetAccess, "cuMemSetAccess"),
	SYM(cuMemExportToShareableHandle, "cuMemExportToShareableHandle"),
	SYM(cuMemImportFromShareableHandle, "cuMemImportFromShareableHandle"),
	SYM(cuMemHostRegister, "cuMemHostRegister_v2"),
	SYM(cuMemHostUnregister, "cuMemHostUnregister"),
	SYM(cuMemHostAlloc, "cuMemHostAlloc"),
	SYM(cuMemFreeHost, "cuMemFreeHost"),
	SYM(cuStreamCreate, "cuStreamCreate"),
	SYM(cuStreamDestroy, "cuStreamDestroy_v2"),
	SYM(cuStreamSynchronize, "cuStreamSynchronize"),
	SYM(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"),
	SYM(cuMemcpyDtoH, "cuMemcpyDtoH_v2"),
	SYM(cuEventCreate, "cuEventCreate"),
	SYM(cuEventRecord, "cuEventRecord"),
	SYM(cuEventQuery, "cuEventQuery"),
	SYM(cuEventSynchronize, "cuEventSynchronize"),
	SYM(cuEventDestroy, "cuEventDestroy_v2"),
	SYM(cuModuleLoadData, "cuModuleLoadData"),
	SYM(cuModuleUnload, "cuModuleUnload"),
	SYM(cuModuleGetFunction, "cuModuleGetFunction"),
	SYM(cuLaunchKernel, "cuLaunchKernel"),
};

int gpu_driver_open(struct gpu_driver *drv, char *why, size_t why_size)
{
	const char *lib = getenv("WEIGHTD_LIBCUDA");
	CUresult res;
	int rc;

	memset(drv, 0, sizeof(*drv));
	if (!lib || !*lib)
		lib = "libcuda.so.1";
	drv->handle = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!drv->handle) {
		snprintf(why, why_size, "no CUDA driver (%s)", dlerror());
		return -ENODEV;
	}
	for (size_t i = 0; i < ARRAY_SIZE(symbols); i++) {
		void *p = dlsym(drv->handle, symbols[i].sym);

		if (!p) {
			snprintf(why, why_size, "CUDA driver %s lacks %s", lib, symbols[i].sym);
			gpu_driver_close(drv);
			return -ENOENT;
		}
		memcpy((char *)drv + symbols[i].off, &p, sizeof(p));
	}
	res = drv->cuInit(0);
	if (res != CUDA_SUCCESS) {
		rc = gpu_cu_err(drv, res, "cuInit", why, why_size);
		gpu_driver_close(drv);
		return rc == -EIO ? -ENODEV : rc;
	}
	drv->initialised = true;
	drv->cuDriverGetVersion(&drv->version);
	return 0;
}

int gpu_enumerate(const struct gpu_driver *drv, struct gpu_device *devs, int max,
		  char *why, size_t why_size)
{
	int count = 0;
	CUresult res = drv->cuDeviceGetCount(&count);

	if (res != CUDA_SUCCESS)
		return gpu_cu_err(drv, res, "cuDeviceGetCount", why, why_size);
	if (count > max)
		count = max;
	for (int i = 0; i < count; i++) {
		struct gpu_device *d = &devs[i];
		CUdevice dev;
		size_t total = 0;

		memset(d, 0, sizeof(*d));
		d->ordinal = i;
		res = drv->cuDeviceGet(&dev, i);
		if (res == CUDA_SUCCESS)
			res = drv->cuDeviceGetName(d->name, sizeof(d->name), dev);
		if (res == CUDA_SUCCESS)
			res = drv->cuDeviceTotalMem(&total, dev);
		if (res == CUDA_SUCCESS)
			res = drv->cuDeviceGetPCIBusId(d->pci_bus_id, sizeof(d->pci_bus_id), dev);
		if (res == CUDA_SUCCESS)
			snprintf(d->id, sizeof(d->id), "%s", d->pci_bus_id);
		if (res != CUDA_SUCCESS)
			return gpu_cu_err(drv, res, "cuDevice query", why, why_size);
		d->total_bytes = total;
	}
	return count;
}

#else /* !CONFIG_HAVE_CUDA_H */

int gpu_driver_open(struct gpu_driver *drv, char *why, size_t why_size)
{
	memset(drv, 0, sizeof(*drv));
	snprintf(why, why_size, "%s", GPU_COMPILED_OUT);
	return -ENOSYS;
}

int gpu_enumerate(const struct gpu_driver *drv, struct gpu_device *devs, int max,
		  char *why, size_t why_size)
{
	snprintf(why, why_size, "%s", GPU_COMPILED_OUT);
	return -ENOSYS;
}

#endif

void gpu_driver_close(struct gpu_driver *drv)
{
	/* After cuInit the handle is kept on purpose (see gpu/cuda.h): not a leak. */
	if (drv->handle && !drv->initialised)
		dlclose(drv->handle);
	memset(drv, 0, sizeof(*drv));
}
