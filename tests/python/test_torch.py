"""torch for real (framework "pt"): tensors share the shared cache's memory with no copy,
BF16 and F8 come back as torch's own dtypes, and a write is copy-on-write: it changes this
process's tensor only, never the cache another process reads nor the file."""

import os
import subprocess
import sys
import warnings

import pytest

import weightd
from weightd import safe as wsafe

from conftest import CORPUS, file_range, need

torch = need("torch")
NO_SOCKET = "/nonexistent/weightd-torch.sock"

TORCH_DTYPES = {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn,
                "F8_E5M2": torch.float8_e5m2, "F16": torch.float16, "F32": torch.float32,
                "BOOL": torch.bool, "U16": torch.uint16, "I64": torch.int64}


def _mappings():
    """[(start, end, path)] of this process's memory mappings."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[5].strip() if len(parts) > 5 else ""))
    return out


def _mapping_of(ptr):
    for lo, hi, path in _mappings():
        if lo <= ptr < hi:
            return path
    return None


@pytest.fixture
def served(loaded_daemon):
    """(daemon, path of all_dtypes.safetensors under its model root)."""
    return loaded_daemon, os.path.join(loaded_daemon.models, "all_dtypes.safetensors")


def test_pt_tensors_share_the_cache(served):
    """Through the daemon every tensor's data_ptr() lies in a mapping of the cache's memfd
    (not a private heap copy), with torch's dtype and the file's bytes."""
    d, path = served
    with weightd.safe_open(path, framework="pt", socket=d.socket) as f:
        assert f.source == "daemon", f.fallback_reason
        for name in f.keys():
            t = f.get_tensor(name)
            dt = f.get_slice(name).get_dtype()
            if dt in TORCH_DTYPES:
                assert t.dtype == TORCH_DTYPES[dt], (name, t.dtype, dt)
            if t.numel():
                where = _mapping_of(t.data_ptr())
                assert where and "memfd:" in where, (name, hex(t.data_ptr()), where)
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            assert raw == file_range(path, name), name
    wsafe._drop_client(d.socket)


def test_pt_file_path_shares_the_file_mapping(corpus):
    """Without a daemon the tensors view the file's mapping (its path in /proc/self/maps)."""
    path = os.path.join(corpus, "all_dtypes.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        sd = weightd.torch.load_file(path, socket=NO_SOCKET)
    for name, t in sd.items():
        if t.numel():
            assert _mapping_of(t.data_ptr()) == os.path.realpath(path), name


CHILD = r"""
import sys, warnings
sys.path.insert(0, %(pkg)r)
import weightd
warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
f = weightd.safe_open(%(path)r, framework="pt", socket=%(sock)r)
t = f.get_tensor("t_f32")
print(f.source, t.reshape(-1).view(__import__("torch").uint8).numpy().tobytes().hex())
"""


@pytest.mark.parametrize("via", ["daemon", "file"])
def test_write_is_copy_on_write(served, via):
    """A write to a tensor changes it in this process only: the next safe_open here, another
    process reading through the daemon, and the file still have the original bytes."""
    d, path = served
    sock = d.socket if via == "daemon" else NO_SOCKET
    orig = file_range(path, "t_f32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        f = weightd.safe_open(path, framework="pt", socket=sock)
        assert f.source == via, f.fallback_reason
        t = f.get_tensor("t_f32")
        ptr = t.data_ptr()
        t.fill_(7.0)
        assert t.data_ptr() == ptr and bool((t == 7.0).all())
        again = weightd.safe_open(path, framework="pt", socket=sock).get_tensor("t_f32")
        assert again.numpy().tobytes() == orig
    pkg = os.path.dirname(os.path.dirname(weightd.__file__))
    r = subprocess.run([sys.executable, "-c", CHILD % {"pkg": pkg, "path": path,
                                                        "sock": sock}],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    source, hexbytes = r.stdout.split()
    assert source == via and bytes.fromhex(hexbytes) == orig, r.stdout
    assert file_range(path, "t_f32") == orig
    del t, f
    wsafe._drop_client(d.socket)


def test_clone_is_independent(served):
    d, path = served
    with weightd.safe_open(path, framework="pt", socket=d.socket) as f:
        t = f.get_tensor("t_bf16")
        c = t.clone()
        assert c.dtype == torch.bfloat16 and c.data_ptr() != t.data_ptr()
        assert torch.equal(c.view(torch.int16), t.view(torch.int16))
    wsafe._drop_client(d.socket)


def test_f8_and_bf16_through_load_file(corpus):
    """BF16 and the F8 types come back as torch dtypes with the file's bytes (load_file)."""
    path = os.path.join(CORPUS, "all_dtypes.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        sd = weightd.torch.load_file(path, socket=NO_SOCKET)
    assert sd["t_bf16"].dtype == torch.bfloat16
    assert sd["t_f8_e4m3"].dtype == torch.float8_e4m3fn
    assert sd["t_f8_e5m2"].dtype == torch.float8_e5m2
    for k in ("t_bf16", "t_f8_e4m3", "t_f8_e5m2"):
        assert sd[k].reshape(-1).view(torch.uint8).numpy().tobytes() == file_range(path, k)
