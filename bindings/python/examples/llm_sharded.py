#!/usr/bin/env python3
"""Load an HF sharded LLM checkpoint (model.safetensors.index.json + shards) through weightd
and compare the time to ready with reading the shards directly.

    python3 examples/llm_sharded.py MODEL_DIR [--socket PATH]

MODEL_DIR holds the index and its shards, e.g. `build/weightctl gen --preset llama DIR`.
"Ready" means every tensor named in the index's weight_map is a numpy array. The weightd path
opens each shard with weightd.safe_open (the daemon knows the shards as one component, loads
it once and pins it); the baseline reads every shard with numpy.fromfile.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import weightd  # noqa: E402

from diffusers_pipeline import read_plain  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--socket", default=None)
    a = ap.parse_args()
    idx = [n for n in os.listdir(a.model_dir) if n.endswith(".safetensors.index.json")]
    if len(idx) != 1:
        raise SystemExit("%s: expected one *.safetensors.index.json, found %s"
                         % (a.model_dir, idx))
    with open(os.path.join(a.model_dir, idx[0])) as f:
        weight_map = json.load(f)["weight_map"]
    shards = sorted(set(weight_map.values()))
    paths = [os.path.join(a.model_dir, s) for s in shards]

    t0 = time.perf_counter()
    plain = {}
    for p in paths:
        plain.update(read_plain(p))
    t_plain = time.perf_counter() - t0

    t0 = time.perf_counter()
    state = {}
    handles = [weightd.safe_open(p, socket=a.socket) for p in paths]
    for h in handles:
        for k in h.keys():
            state[k] = h.get_tensor(k)
    t_wd = time.perf_counter() - t0

    missing = set(weight_map) - set(state)
    if missing:
        raise SystemExit("tensors of the index not found in the shards: %s" % sorted(missing)[:5])
    for k, v in state.items():
        if v.tobytes() != plain[k].tobytes():
            raise SystemExit("%s differs between weightd and the file" % k)
    nbytes = sum(v.nbytes for v in state.values())
    print("shards: %d, tensors: %d, %.1f MiB" % (len(paths), len(state), nbytes / 2**20))
    print("served by: %s" % sorted({h.source for h in handles}))
    print("plain file read: %8.2f ms" % (t_plain * 1e3))
    print("weightd:         %8.2f ms  (%.1fx)" % (t_wd * 1e3, t_plain / t_wd if t_wd else 0))


if __name__ == "__main__":
    main()
