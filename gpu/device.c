/* gpu_ops_pick(): which implementation of gpu/device.h this process uses. */
#include "gpu/device.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

const struct gpu_ops *gpu_ops_pick(char *why, size_t why_size)
{
	const char *emu = getenv("WEIGHTD_GPU_EMULATE");
	int n;

	/*
	 * An emulation request wins even on a GPU machine (tests of the device tier's logic
	 * must not silently run on real hardware), and a malformed one is an error rather
	 * than a fall-through to CUDA, so that a typo cannot turn into a different setup.
	 */
	if (emu && *emu) {
		n = gpu_emu_ops.count(why, why_size);
		return n > 0 ? &gpu_emu_ops : NULL;
	}
	n = gpu_cuda_ops.count(why, why_size);
	if (n < 0)
		return NULL;
	if (n == 0) {
		snprintf(why, why_size, "no CUDA device: the driver reports 0 GPUs");
		return NULL;
	}
	return &gpu_cuda_ops;
}

int gpu_host_register_once(const struct gpu_ops *ops, struct gpu_dev *dev, void *p, size_t n,
			   bool *mine, char *why, size_t why_size)
{
	int rc = ops->host_register(dev, p, n, why, why_size);

	*mine = rc == 0;
	if (rc == -EEXIST) {
		/* PORTABLE: the existing registration covers every context of the process. */
		if (why_size)
			why[0] = '\0';
		return 0;
	}
	return rc;
}
