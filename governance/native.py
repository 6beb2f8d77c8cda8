"""Load order of native libraries that do not coexist in either order.

regopy's native library (rego-cpp) exports its own copies of C++ standard-library template
symbols as GNU "unique" symbols, which the dynamic loader binds process-wide whatever the
``dlopen`` flags. When regopy loads first, torch's later initialisation frees memory through the
wrong definitions and the process aborts with ``free(): invalid pointer``. When torch loads first
both work. Every import of regopy goes through ``load_regopy`` so that torch is always first.
"""

from __future__ import annotations

from types import ModuleType


def load_regopy() -> ModuleType:
    """Import regopy, loading torch's native libraries before it (see the module docstring)."""
    # isort: off
    import torch  # noqa: F401  (must precede regopy)
    import regopy
    # isort: on

    return regopy
