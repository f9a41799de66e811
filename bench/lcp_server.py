"""llama-cpp-python's own server, as the benchmark runs it.

One change from ``python -m llama_cpp.server``: weights load without llama.cpp's extra
buffer types (the equivalent of llama-server's ``--no-repack``). On CPUs with AMX the
0.3.36 build otherwise dies of SIGILL in its AMX kernels, so every server in the
benchmark runs this way.
"""

import runpy

import llama_cpp.llama_cpp as capi

_default_params = capi.llama_model_default_params


def _without_extra_buffers():
    params = _default_params()
    params.use_extra_bufts = False
    return params


capi.llama_model_default_params = _without_extra_buffers
runpy.run_module("llama_cpp.server", run_name="__main__")
