"""Loom's desktop editor (PySide6). Never imports torch: images arrive as numpy arrays."""

import sys


def _pin_none_refcount() -> None:
    """Work around a shiboken6 6.12 bug on Python < 3.12: every void Qt method returns None
    without taking a new reference (correct only where None is immortal, 3.12+). Each call
    lowers None's refcount by one (True/False likewise for bool-returning overrides), and
    after enough painting the interpreter aborts with "none_dealloc: deallocating None".
    Give None a refcount no session can exhaust, which is what Python 3.12 does for immortal
    objects."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return
    import ctypes

    for obj in (None, True, False):  # bool-returning overrides lose references the same way
        refcnt = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt is the first field
        if refcnt.value < 1 << 40:
            refcnt.value += 1 << 60


_pin_none_refcount()
