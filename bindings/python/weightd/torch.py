"""weightd.torch: safetensors.torch's load_file/safe_open over the daemon, and the numpy ->
torch zero-copy conversion. Importing this module does not import torch; calling needs it.

CPU tensors share memory with the read-only numpy views (torch.from_numpy; numpy's DLPack
export refuses read-only arrays), so they are read-only too: writing to one is undefined
behaviour in torch's terms and faults here (the host cache is mapped PROT_READ). torch warns
about non-writable arrays once; the binding silences that warning because the read-only
mapping is the point. CUDA tensors (device="cuda:N") come from the daemon's GPU tier with no
copy: from_device_tensor() is torch.from_dlpack() of a weightd.device.DeviceTensor (kDLCUDA;
on the emulated device kDLCPU, host memory, then copied with .to(device)); a daemon without a
GPU tier, or no daemon, gives the host copy moved with .to(device).
"""

import errno
import warnings

import numpy as np

from . import dtypes
from .errors import NotSupportedError

__all__ = ["load_file", "safe_open", "from_numpy_view", "from_device_tensor"]

# A same-width signed integer numpy type for each raw or unsigned dtype: torch.from_numpy
# accepts every version's signed types; .view() then reinterprets to the real torch dtype.
_CARRIER = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def from_numpy_view(arr, st_dtype):
    """A torch tensor sharing @arr's memory, typed as safetensors dtype @st_dtype."""
    import torch

    if st_dtype in dtypes.SUBBYTE:
        raise NotSupportedError(errno.ENOTSUP, "%s has no torch dtype: read it with framework \"np\" "
                                "(packed uint8 bytes)" % st_dtype, "get_tensor")
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
    from .device import DLPACK_DTYPES
    if t.dtype in DLPACK_DTYPES:
        return torch.from_dlpack(t)
    name = dtypes.TORCH.get(t.dtype)
    target = getattr(torch, name, None) if name else None
    if target is None:
        raise NotSupportedError(errno.ENOTSUP, "this torch (%s) has no %s dtype (torch.%s)"
                                % (torch.__version__, t.dtype, name), "get_tensor")
    return torch.from_dlpack(t.raw()).view(target)


def safe_open(filename, framework="pt", device="cpu", socket=None):
    from .safe import safe_open as _so
    return _so(filename, framework=framework, device=device, socket=socket)


def load_file(filename, device="cpu", socket=None):
    """safetensors.torch.load_file: dict name -> torch tensor."""
    from .safe import load_file as _lf
    return _lf(filename, device=device, framework="pt", socket=socket)
