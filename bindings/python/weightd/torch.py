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

from . import safe as _safe
from ._frameworks import from_device_tensor, from_numpy_view

__all__ = ["load_file", "load", "safe_open", "from_numpy_view", "from_device_tensor"]


def safe_open(filename, framework="pt", device="cpu", socket=None, *, backend="mmap"):
    """safetensors.torch's safe_open: weightd.safe_open with framework "pt"."""
    return _safe.safe_open(filename, framework=framework, device=device, socket=socket,
                           backend=backend)


def load_file(filename, device="cpu", socket=None, *, backend="mmap"):
    """safetensors.torch.load_file: dict name -> torch tensor."""
    return _safe.load_file(filename, device=device, framework="pt", socket=socket,
                           backend=backend)


def load(data):
    """safetensors.torch.load: dict name -> torch tensor (writable copies) of the safetensors
    file in the bytes @data."""
    return _safe.load(data, framework="pt")
