"""python -m weightd.run SCRIPT [ARGS...] | -m MODULE [ARGS...]

Runs an unmodified Python program with weightd.patch() in force: its safetensors calls
(and so transformers' and diffusers' from_pretrained) read through the daemon's shared cache.
The program sees the same sys.argv as without the wrapper. WEIGHTD_SOCKET picks the daemon.
"""

import os
import runpy
import sys

from .patching import patch

USAGE = ("usage: python -m weightd.run SCRIPT [ARGS...]\n"
         "       python -m weightd.run -m MODULE [ARGS...]\n"
         "Runs the program with weightd.patch(): safetensors.safe_open, safetensors.torch."
         "load_file/load_model and\nsafetensors.numpy.load_file read through the weightd "
         "daemon ($WEIGHTD_SOCKET) when it serves the file.\n")


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    patch()
    if argv[0] == "-m":
        if len(argv) < 2:
            sys.stderr.write(USAGE)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
