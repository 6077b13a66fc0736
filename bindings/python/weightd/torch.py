"""weightd.torch: safetensors.torch's load_file/safe_open over the daemon, and the numpy ->
torch zero-copy conversion. Importing this module does not import torch; calling needs it.

CPU tensors from safe_open()/load_file() share memory with the numpy views (torch.from_numpy)
of a private, copy-on-write mapping of the shared cache (or of the file): no copy, and their
data_ptr() lies inside that mapping. They are writable, like the safetensors package's: a
write copies the page it touches into this process (MAP_PRIVATE), so other processes, later
loads and the file never see it; clone() gives an independent copy as usual. (Read-only views
of Pin.tensor() would fault on a write; torch.from_numpy of them warns, and that warning is
silenced here.) F4 is torch.float4_e2m1fn_x2 (two values per byte, last dimension halved),
as the package gives it; F6 has no torch dtype. CUDA tensors (device="cuda:N") come from the daemon's GPU tier with no
copy: from_device_tensor() is torch.from_dlpack() of a weightd.device.DeviceTensor (kDLCUDA;
on the emulated device kDLCPU, host memory, then copied with .to(device)); a daemon without a
GPU tier, or no daemon, gives the host copy moved with .to(device).
"""

import errno
import warnings

import numpy as np

from . import dtypes
from .errors import NotSupportedError

__all__ = ["load_file", "load", "safe_open", "from_numpy_view", "from_device_tensor"]

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
    from .device import DLPACK_DTYPES
    if t.dtype in DLPACK_DTYPES:
        return torch.from_dlpack(t)
    name = dtypes.TORCH.get(t.dtype)
    target = getattr(torch, name, None) if name else None
    if target is None:
        raise NotSupportedError(errno.ENOTSUP, "this torch (%s) has no %s dtype (torch.%s)"
                                % (torch.__version__, t.dtype, name), "get_tensor")
    return torch.from_dlpack(t.raw()).view(target)


def safe_open(filename, framework="pt", device="cpu", socket=None, *, backend="mmap"):
    from .safe import safe_open as _so
    return _so(filename, framework=framework, device=device, socket=socket, backend=backend)


def load_file(filename, device="cpu", socket=None, *, backend="mmap"):
    """safetensors.torch.load_file: dict name -> torch tensor."""
    from .safe import load_file as _lf
    return _lf(filename, device=device, framework="pt", socket=socket, backend=backend)


def load(data):
    """safetensors.torch.load: dict name -> torch tensor (writable copies) of the safetensors
    file in the bytes @data."""
    from .safe import load as _load
    return _load(data, framework="pt")
