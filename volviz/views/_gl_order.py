"""Load the model stack's GPU libraries before any render context exists.

torchvision imports triton when it is installed, and importing triton AFTER an EGL context was
made crashes the process (SIGSEGV) on Mesa/EGL machines; the other order works. Every path that
renders (CLI, app server, scene movies) imports ``volviz.views`` first, which imports this, so
the order is right everywhere. Costs about 0.1 s, only where triton is installed.
"""

import importlib.util

if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
