"""weightd: the Python binding of libweightd (ctypes and numpy; torch when installed).

    import weightd
    c = weightd.connect()                      # a Client on the per-user daemon
    with c.load("sd-tiny", component="unet") as pin:
        w = pin.tensor("conv_in.weight")       # read-only numpy view of the host cache

    from weightd import safe_open, load_file   # the safetensors surface, daemon-backed

    with c.load("sd-tiny", component="unet", tier="cuda:0") as pin:
        t = pin.tensor("conv_in.weight")       # weightd.device.DeviceTensor: data_ptr,
                                               # numpy() (host copy), torch.from_dlpack(t)

    weightd.patch()                            # safetensors' own names now go through
                                               # weightd: from_pretrained() unchanged

bindings/python/README.md documents the API, the pin/view lifetime rules and the fallback.
"""

from .client import Client, Component, Model, Pin, TensorMeta, connect
from .errors import (BudgetExceededError, BusyError, DaemonUnavailableError,
                     GPUTierUnavailableError, LibraryUnavailableError, MalformedFileError,
                     NotFoundError, NotSupportedError, ReleasedError, WeightdError,
                     WeightdFallbackWarning)
from .patching import patch, unpatch
from .safe import SafetensorError, load, load_file, safe_open
from .views import tensor_dtype

__all__ = [
    "connect", "Client", "Pin", "Model", "Component", "TensorMeta", "safe_open", "load_file",
    "tensor_dtype", "WeightdError", "LibraryUnavailableError", "DaemonUnavailableError",
    "NotFoundError", "BudgetExceededError", "NotSupportedError", "GPUTierUnavailableError",
    "BusyError", "MalformedFileError", "ReleasedError", "WeightdFallbackWarning",
    "SafetensorError", "load", "patch", "unpatch",
]
