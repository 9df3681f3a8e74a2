"""Work around a Triton-interpreter bug with NumPy >= 2.4 (TRITON_INTERPRET=1 only; tests).

The interpreter holds kernel scalars (program_id, int arguments, values derived from them) as
1-element numpy arrays and turns them into Python ints with `int(array)`, which NumPy 2.4 rejects
("only 0-dimensional arrays can be converted to Python scalars"), so every loop with a runtime
bound (`range(0, N, BLOCK)`, `range(row_start, row_end)`) fails. Fixed upstream after Triton 3.6
(triton-lang/triton#9171, #9172: `int(data.squeeze())`); on such versions `apply()` does nothing.
Compiled (CUDA) kernels never go through this code.
"""

from __future__ import annotations

import operator
import types
import warnings

import numpy as np


def _index_works(patch_lang_tensor) -> bool:
    """Does the interpreter's `__index__` convert a 1-element scalar handle? (feature probe)"""
    from triton.runtime import interpreter

    probe_cls = type("_Probe", (), {})
    scope = interpreter._LangPatchScope()
    patch_lang_tensor(probe_cls, scope)
    try:
        probe = probe_cls()
        probe.handle = types.SimpleNamespace(data=np.array([3], dtype=np.int32))
        with warnings.catch_warnings():  # NumPy 1.25-2.3 only warn: patch there too, warning-free
            warnings.simplefilter("error", DeprecationWarning)
            return operator.index(probe) == 3
    except (TypeError, DeprecationWarning):
        return False
    finally:
        scope.restore()


def apply() -> None:
    try:
        from triton.runtime import interpreter
        original = interpreter._patch_lang_tensor
        if getattr(original, "_perfkit_compat", False) or _index_works(original):
            return
    except (ImportError, AttributeError):  # another interpreter layout: nothing to fix here
        return

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    _patch_lang_tensor._perfkit_compat = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
