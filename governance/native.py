"""Load order of native libraries that do not coexist in either order.

regopy's native library (rego-cpp) exports its own copies of C++ standard-library template
symbols as GNU "unique" symbols, which the dynamic loader binds process-wide whatever the
``dlopen`` flags. When regopy loads first, torch's later initialisation frees memory through the
wrong definitions and the process aborts with ``free(): invalid pointer``. When torch loads first
both work. Every import of regopy goes through ``load_regopy`` so that torch is always first.

A command that never runs a model (every ``latentops policy`` command, the grant commands, the
quarantine commands, ``screening status`` and ``audit retention``; see
``platform/cli/context.runs_no_model``) calls ``without_torch`` first: regopy then loads alone,
which saves the seconds of importing torch, and a later attempt to import torch in that process
fails with an ``ImportError`` that says why instead of aborting.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

TORCH_REFUSED = "torch cannot be loaded in this process: it loaded regopy without torch (a command that runs no model)"


class _RefuseTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == "torch" or fullname.startswith("torch."):
            raise ImportError(TORCH_REFUSED)
        return None


_torch_refused = False


def without_torch() -> bool:
    """Let regopy load without torch for the rest of this process; False when torch is already loaded."""
    global _torch_refused
    if "torch" in sys.modules:
        return False
    if not _torch_refused:
        sys.meta_path.insert(0, _RefuseTorch())
        _torch_refused = True
    return True


def load_regopy() -> ModuleType:
    """Import regopy, loading torch's native libraries before it (see the module docstring)."""
    # isort: off
    if not _torch_refused:
        import torch  # noqa: F401  (must precede regopy)
    import regopy
    # isort: on

    return regopy
