"""Unmodified programs: weightd.patch() under the real transformers and diffusers.

Each test makes its own tiny models (random init, save_pretrained with safetensors, once as
one file and once sharded with a small max_shard_size; no hub: HF_HUB_OFFLINE=1), starts a
daemon over them, and runs an unmodified from_pretrained() (hf_load.py) in fresh processes:
plainly, under `python -m weightd.run`, and with WEIGHTD_PATCH=1 through weightd-patch.pth.
The state dicts must be identical; the patched runs must have been served by the daemon
(every safe_open from the shared cache, none from the file), and a second process loading
the same model must make the daemon read 0 bytes from disk (its read_bytes counter).
"""

import json
import os
import subprocess
import sys

import pytest

import weightd
from weightd import patching

from conftest import BUILD, Daemon, need, wait_for

need("torch")
need("transformers")
need("diffusers")
safetensors = need("safetensors")

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(os.path.dirname(os.path.abspath(weightd.__file__)))
MODELS = [("llama", "llama"), ("llama", "llama-sharded"), ("vae", "vae"),
          ("vae", "vae-sharded")]


def _env(socket=None, **extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               DIFFUSERS_VERBOSITY="error", WD_BUILD=BUILD, TOKENIZERS_PARALLELISM="false")
    env.pop("WEIGHTD_PATCH", None)
    env["PYTHONPATH"] = PKG + os.pathsep + env.get("PYTHONPATH", "")
    if socket:
        env["WEIGHTD_SOCKET"] = socket
    env.update(extra)
    return env


def _run(args, env):
    r = subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, "%s failed (%d):\n%s" % (args, r.returncode, r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hf(tmp_path_factory, lib):
    """(models dir, daemon) with the tiny models made by hf_load.py make."""
    d = str(tmp_path_factory.mktemp("hf"))
    models = os.path.join(d, "models")
    r = subprocess.run([sys.executable, os.path.join(HERE, "hf_load.py"), "make", models],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    daemon = Daemon(d, models)
    daemon.start([])

    def published():
        with daemon.client() as c:
            return len(c.models()) >= len(MODELS)
    try:
        wait_for(published, 30, "the tiny models published:\n%s" % daemon.tail())
        yield models, daemon
    finally:
        daemon.stop()


def test_from_pretrained_through_weightd(hf):
    """The four models (transformers and diffusers, one file and sharded) in three fresh
    processes: plain, under python -m weightd.run, then with WEIGHTD_PATCH=1."""
    models, daemon = hf
    script = os.path.join(HERE, "hf_load.py")
    args = [script, "load"]
    for kind, name in MODELS:
        args += [kind, os.path.join(models, name)]
    plain = _run(args, _env())
    assert not plain["patched"] and plain["opened"] is None, plain

    with daemon.client() as c:
        before = c.host_stats()["read_bytes"]
    first = _run(["-m", "weightd.run"] + args, _env(daemon.socket))
    assert first["patched"], first
    assert first["digests"] == plain["digests"], (first, plain)
    # One handle per file at least; a sharded model opens each shard.
    assert first["opened"]["daemon"] >= len(MODELS) and first["opened"]["file"] == 0, first
    with daemon.client() as c:
        mid = c.host_stats()["read_bytes"]
    assert mid > before, "the first patched process made the daemon read nothing"

    # A second process, switched on by the environment through the .pth file.
    code = ("import site, runpy, sys; site.addsitedir(%r); sys.argv = %r; "
            "runpy.run_path(%r, run_name='__main__')" % (PKG, args, script))
    second = _run(["-c", code], _env(daemon.socket, WEIGHTD_PATCH="1"))
    assert second["patched"], second
    assert second["digests"] == plain["digests"], (second, plain)
    assert second["opened"] == first["opened"], (second, first)
    with daemon.client() as c:
        after = c.host_stats()["read_bytes"]
    assert after == mid, "the second process made the daemon read %d bytes" % (after - mid)


def test_patch_and_unpatch_in_process(tmp_path):
    """patch() replaces the package's names, also those imported before it; unpatch() puts
    the originals back; frameworks weightd does not serve go to the original."""
    import safetensors.numpy
    import safetensors.torch
    from safetensors import safe_open as early
    orig = (safetensors.safe_open, safetensors.torch.load_file, safetensors.numpy.load_file)
    g = {"safe_open": early}
    sys.modules["_wd_patch_probe"] = type(sys)("_wd_patch_probe")
    sys.modules["_wd_patch_probe"].__dict__.update(g)
    try:
        weightd.patch(socket="/nonexistent/weightd-patch.sock")
        assert patching.patched()
        assert safetensors.safe_open is not orig[0]
        assert safetensors.torch.load_file is not orig[1]
        assert safetensors.numpy.load_file is not orig[2]
        assert sys.modules["_wd_patch_probe"].safe_open is safetensors.safe_open
        import numpy as np
        p = str(tmp_path / "x.safetensors")
        safetensors.numpy.save_file({"a": np.arange(6, dtype=np.float32)}, p)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
            f = safetensors.safe_open(p, framework="np")
            assert isinstance(f, weightd.safe_open)
            assert safetensors.numpy.load_file(p)["a"].tolist() == list(range(6))
            assert safetensors.torch.load_file(p)["a"].tolist() == list(range(6))
        weightd.unpatch()
        assert not patching.patched()
        assert (safetensors.safe_open, safetensors.torch.load_file,
                safetensors.numpy.load_file) == orig
        assert sys.modules["_wd_patch_probe"].safe_open is orig[0]
    finally:
        weightd.unpatch()
        del sys.modules["_wd_patch_probe"]


def test_run_help():
    r = subprocess.run([sys.executable, "-m", "weightd.run", "--help"], capture_output=True,
                       text=True, env=_env(), timeout=60)
    assert r.returncode == 0 and "usage: python -m weightd.run" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "weightd.run"], capture_output=True, text=True,
                       env=_env(), timeout=60)
    assert r.returncode == 2, r.returncode
