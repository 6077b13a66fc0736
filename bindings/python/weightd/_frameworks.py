"""The conversions of weightd's arrays to framework tensors, below safe.py and torch.py:
numpy views of the host cache (or of a file) to torch tensors that share their memory, and
the daemon's device tensors to torch tensors through DLPack. Importing this module does not
import torch; calling the torch conversions needs it (NotSupportedError when missing)."""

import errno
import warnings

import numpy as np

from . import dtypes
from .device import DLPACK_DTYPES
from .errors import NotSupportedError, WeightdError

__all__ = ["from_numpy_view", "from_device_tensor", "to_framework"]


# A same-width signed integer numpy type for each raw or unsigned dtype: torch.from_numpy
# accepts every version's signed types; .view() then reinterprets to the real torch dtype.
_CARRIER = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def from_numpy_view(arr, st_dtype, shape=None):
    """A torch tensor sharing @arr's memory, typed as safetensors dtype @st_dtype (@shape: the
    tensor's shape in the file, needed for the packed F4)."""
    import torch

    if st_dtype == "F4" and shape is not None and getattr(torch, "float4_e2m1fn_x2", None):
        if not shape or shape[-1] % 2:
            raise NotSupportedError(errno.ENOTSUP, "F4 tensor of shape %s: torch's "
                                    "float4_e2m1fn_x2 needs an even last dimension"
                                    % (list(shape),), "get_tensor")
        packed = tuple(shape[:-1]) + (shape[-1] // 2,)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not writable.*")
            return torch.from_numpy(arr.reshape(packed)).view(torch.float4_e2m1fn_x2)
    if st_dtype in dtypes.SUBBYTE:
        raise NotSupportedError(errno.ENOTSUP, "Dtype not understood: %s (no torch dtype; "
                                "framework \"np\" gives its packed bytes)" % st_dtype,
                                "get_tensor")
    name = dtypes.TORCH.get(st_dtype)
    target = getattr(torch, name, None) if name else None
    if target is None:
        raise NotSupportedError(errno.ENOTSUP, "this torch (%s) has no %s dtype (torch.%s)"
                                % (torch.__version__, st_dtype, name), "get_tensor")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        if st_dtype in ("BOOL", "I8", "I16", "I32", "I64", "U8", "F16", "F32", "F64", "C64"):
            return torch.from_numpy(arr)
        carrier = arr.view(_CARRIER[arr.dtype.itemsize]) if arr.ndim else \
            arr.reshape(1).view(_CARRIER[arr.dtype.itemsize]).reshape(())
        return torch.from_numpy(carrier).view(target)


def from_device_tensor(t):
    """A torch tensor over device tensor @t's memory (torch.from_dlpack, no copy): CUDA on a
    GPU, CPU on the emulated device. The F8 types, which DLPack has no code for, go through
    their raw bytes (t.raw(), uint8) reinterpreted as torch's float8 type."""
    import torch

    if t.dtype in dtypes.SUBBYTE:
        raise NotSupportedError(errno.ENOTSUP, "%s has no torch dtype: read t.numpy() "
                                "(packed uint8 bytes)" % t.dtype, "get_tensor")
    if t.dtype in DLPACK_DTYPES:
        return torch.from_dlpack(t)
    name = dtypes.TORCH.get(t.dtype)
    target = getattr(torch, name, None) if name else None
    if target is None:
        raise NotSupportedError(errno.ENOTSUP, "this torch (%s) has no %s dtype (torch.%s)"
                                % (torch.__version__, t.dtype, name), "get_tensor")
    return torch.from_dlpack(t.raw()).view(target)


def _torch():
    try:
        import torch
    except ImportError:
        raise NotSupportedError(errno.ENOTSUP, "framework \"pt\" needs torch, which is not "
                                "installed", "safe_open") from None
    return torch


def to_framework(arr, st_dtype, framework, device, shape=None):
    if getattr(arr, "__dlpack_device__", None) is not None and not hasattr(arr, "ndim"):
        # A device tensor of the daemon's GPU tier (weightd.device.DeviceTensor).
        if framework in ("np", "numpy"):
            raise WeightdError(errno.EINVAL, "framework \"np\" holds arrays in host memory; "
                               "device %r needs framework \"pt\"" % (device,), "get_tensor")
        _torch()
        t = from_device_tensor(arr)
        if t.device.type != "cuda":
            # The emulated device's memory is host memory (kDLCPU): copy it where asked.
            t = t.to(device)
        return t
    if framework in ("np", "numpy"):
        if device not in ("cpu", None):
            raise WeightdError(errno.EINVAL, "framework \"np\" holds arrays in host memory; "
                               "device %r needs framework \"pt\"" % (device,), "get_tensor")
        return arr
    _torch()
    t = from_numpy_view(arr, st_dtype, shape)
    if device not in ("cpu", None):
        t = t.to(device)
    return t
