"""Tensor names longer than 255 bytes (the format sets no limit; issue 12, item 17): every
tensor of a valid file is reachable by its exact name from Python, and Pin.tensors() lists
all of them, none left out."""

import json
import os
import struct

import numpy as np

from conftest import host_loads_work

import pytest


def write_safetensors(path, tensors):
    """tensors: [(name, float32 ndarray)] -> a valid safetensors file."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors:
        b = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_long_tensor_names(daemon):
    why = host_loads_work(daemon)
    if why:
        pytest.skip(why)
    long1 = "n" * 999 + "1"
    long2 = "n" * 999 + "2"      # equal to long1 but for the last byte
    long3 = "é" * 300            # 600 bytes of UTF-8
    want = {long1: np.arange(4, dtype=np.float32), long2: np.arange(4, 8, dtype=np.float32),
            long3: np.arange(3, dtype=np.float32) * 2, "short": np.ones(2, dtype=np.float32)}
    write_safetensors(os.path.join(daemon.models, "longnames.safetensors"), list(want.items()))
    with daemon.client() as c:
        c.scan(daemon.models)
        pin = c.load("longnames")
        got = pin.tensors()
        assert sorted(got) == sorted(want), "Pin.tensors() left out %s" % (
            sorted(len(k) for k in set(want) - set(got)))
        for name, arr in want.items():
            assert np.array_equal(got[name], arr), len(name)
            assert np.array_equal(pin.tensor(name), arr), len(name)
        del got  # views hold the pin
        pin.release()
