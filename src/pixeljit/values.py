"""What counts as an integer or a number in a user's argument: Python's and NumPy's alike (a
count read from an array is an `np.int64`), never a bool (True is an int to Python, but
`steps=True` is a mistake). Torch-free, for every layer to share."""

from __future__ import annotations

import numbers


def is_integer(value) -> bool:
    """An integer of any type (int, a NumPy integer, …) but not a bool (nor NumPy's)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number of any type (int, float, a NumPy number, …) but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
