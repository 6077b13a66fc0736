"""weightd.numpy: safetensors.numpy's load_file over the daemon (read-only arrays)."""

__all__ = ["load_file", "safe_open"]


def safe_open(filename, framework="np", device="cpu", socket=None):
    from .safe import safe_open as _so
    return _so(filename, framework=framework, device=device, socket=socket)


def load_file(filename, socket=None):
    """safetensors.numpy.load_file: dict name -> read-only numpy array."""
    from .safe import load_file as _lf
    return _lf(filename, device="cpu", framework="np", socket=socket)
