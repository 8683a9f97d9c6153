"""Reading the standard CIFAR python batches without executing arbitrary pickles.

The ``cifar-10-batches-py`` / ``cifar-100-python`` files are pickles of dicts of lists, bytes and
numpy arrays. :func:`load` unpickles them with an allow-list of constructors (numpy array
reconstruction and dtypes); anything else, e.g. a pickle that would import ``os``, is refused.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def load(path: Path) -> Any:
    """Unpickle a CIFAR batch file with the allow-list above (latin1 strings, as CIFAR needs)."""
    with open(path, "rb") as f:
        return _RestrictedUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
