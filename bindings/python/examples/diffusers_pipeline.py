#!/usr/bin/env python3
"""Load the unet, vae and text encoder of one diffusers folder through weightd and compare the
time to ready with reading the same files directly (safetensors-style, every byte copied).

    python3 examples/diffusers_pipeline.py MODEL_DIR [--socket PATH]

MODEL_DIR is a diffusers layout (model_index.json + one folder per component), e.g. the
output of `build/weightctl gen --preset sd DIR`. "Ready" means every tensor of the three
components is a numpy array this process can read. The daemon path pins the components in
the shared host cache (loading them on first use) and hands out read-only views; the baseline
reads each file with numpy.fromfile. Without a daemon the weightd path falls back to the file
(one warning) and the two times measure the same thing.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import weightd  # noqa: E402
from weightd.stfile import STFile  # noqa: E402

COMPONENTS = ("unet", "vae", "text_encoder")


def component_file(model_dir, comp):
    d = os.path.join(model_dir, comp)
    for name in sorted(os.listdir(d)):
        if name.endswith(".safetensors"):
            return os.path.join(d, name)
    raise SystemExit("%s has no .safetensors file" % d)


def read_plain(path):
    """Every tensor of @path as a fresh numpy array, bytes read from the file."""
    stf = STFile(path)
    raw = np.fromfile(path, dtype=np.uint8, offset=8 + stf.header_len)
    out = {}
    for name, e in stf.entries.items():
        dt = weightd.dtypes.NUMPY[e.dtype]
        out[name] = raw[e.begin:e.end].view(dt).reshape(
            weightd.dtypes.array_shape(e.dtype, e.shape))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--socket", default=None)
    a = ap.parse_args()
    files = {c: component_file(a.model_dir, c) for c in COMPONENTS}

    t0 = time.perf_counter()
    plain = {c: read_plain(p) for c, p in files.items()}
    t_plain = time.perf_counter() - t0

    t0 = time.perf_counter()
    handles = {c: weightd.safe_open(p, socket=a.socket) for c, p in files.items()}
    pipe = {c: {k: h.get_tensor(k) for k in h.keys()} for c, h in handles.items()}
    t_wd = time.perf_counter() - t0

    n = sum(len(v) for v in pipe.values())
    nbytes = sum(t.nbytes for v in pipe.values() for t in v.values())
    for c in COMPONENTS:
        for k, v in pipe[c].items():
            if v.tobytes() != plain[c][k].tobytes():
                raise SystemExit("%s/%s differs between weightd and the file" % (c, k))
    sources = {c: h.source for c, h in handles.items()}
    print("components: %s (%d tensors, %.1f MiB)" % (", ".join(COMPONENTS), n, nbytes / 2**20))
    print("served by:  %s" % sources)
    print("plain file read: %8.2f ms" % (t_plain * 1e3))
    print("weightd:         %8.2f ms  (%.1fx)" % (t_wd * 1e3, t_plain / t_wd if t_wd else 0))


if __name__ == "__main__":
    main()
