"""weightd.numpy: safetensors.numpy's load_file and load over the daemon."""

__all__ = ["load_file", "load", "safe_open"]


def safe_open(filename, framework="np", device="cpu", socket=None, *, backend="mmap"):
    from .safe import safe_open as _so
    return _so(filename, framework=framework, device=device, socket=socket, backend=backend)


def load_file(filename, socket=None, *, backend="mmap"):
    """safetensors.numpy.load_file: dict name -> numpy array (copy-on-write views)."""
    from .safe import load_file as _lf
    return _lf(filename, device="cpu", framework="np", socket=socket, backend=backend)


def load(data):
    """safetensors.numpy.load: dict name -> read-only numpy array over the bytes @data."""
    from .safe import load as _load
    return _load(data, framework="np")
