"""weightd.numpy: safetensors.numpy's load_file and load over the daemon."""

from . import safe as _safe

__all__ = ["load_file", "load", "safe_open"]


def safe_open(filename, framework="np", device="cpu", socket=None, *, backend="mmap"):
    """safetensors.numpy's safe_open: weightd.safe_open with framework "np"."""
    return _safe.safe_open(filename, framework=framework, device=device, socket=socket,
                           backend=backend)


def load_file(filename, socket=None, *, backend="mmap"):
    """safetensors.numpy.load_file: dict name -> numpy array (copy-on-write views)."""
    return _safe.load_file(filename, device="cpu", framework="np", socket=socket,
                           backend=backend)


def load(data):
    """safetensors.numpy.load: dict name -> read-only numpy array over the bytes @data."""
    return _safe.load(data, framework="np")
