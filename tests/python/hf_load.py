"""Child program of test_patch.py: an unmodified from_pretrained() of a local directory.

    hf_load.py make DIR          writes the tiny models (random init, save_pretrained with
                                 safetensors, also sharded) under DIR
    hf_load.py load KIND PATH... loads each with from_pretrained (KIND llama or vae) and
                                 prints one JSON line: each state dict's digest, whether
                                 weightd.patch() was in force, and how many safe_open
                                 handles weightd served (daemon, file)

It never imports weightd itself: `python -m weightd.run hf_load.py ...` or WEIGHTD_PATCH=1
(the .pth hook) are what route it through the daemon.
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make(d):
    from diffusers import AutoencoderKL
    from transformers import LlamaConfig, LlamaForCausalLM
    import torch
    torch.manual_seed(16)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                      max_position_embeddings=64)
    m = LlamaForCausalLM(cfg)
    m.save_pretrained(os.path.join(d, "llama"))
    m.save_pretrained(os.path.join(d, "llama-sharded"), max_shard_size="20KB")
    v = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                      up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,),
                      layers_per_block=1, latent_channels=4, norm_num_groups=4,
                      sample_size=16)
    v.save_pretrained(os.path.join(d, "vae"))
    v.save_pretrained(os.path.join(d, "vae-sharded"), max_shard_size="10KB")


def digest(kind, path):
    import torch
    if kind == "llama":
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(path)
    else:
        from diffusers import AutoencoderKL
        m = AutoencoderKL.from_pretrained(path)
    sd = m.state_dict()
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous().reshape(-1)
        h.update(k.encode() + str(t.dtype).encode() + str(tuple(sd[k].shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "%d:%s" % (len(sd), h.hexdigest())


def load(pairs):
    digests = {path: digest(kind, path) for kind, path in pairs}
    wd = sys.modules.get("weightd")
    out = {"digests": digests, "patched": bool(wd and wd.patching.patched()),
           "opened": dict(wd.safe.opened) if wd else None}
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        args = sys.argv[2:]
        load(list(zip(args[0::2], args[1::2])))
