"""Host syncs: the operations that make the CPU wait for the accelerator.

On CUDA a kernel launch returns at once and the GPU works through a queue; an operation whose
result the host needs (a Python number from a tensor, an output whose *shape* depends on the data)
drains that queue first, and the GPU then idles while Python launches the next kernels; inside a
PGD loop that happens once per forward pass. :class:`HostSyncs`
counts them on any device (the CPU too, so the tests can guard the CUDA path), by watching the
dispatched ATen operations:

* ``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``;
* data-dependent output shapes: ``nonzero``, ``masked_select``, ``unique``, ``bincount``,
  ``repeat_interleave`` with a tensor of repeats;
* boolean-mask indexing, ``x[mask]`` and ``x[mask] = v`` (a hidden ``nonzero``);
* ``equal`` and ``allclose`` (a Python bool).

Copies from the accelerator to the host also sync; they cannot be told apart on a CPU-only machine
and are not counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SCALAR = {"_local_scalar_dense", "equal", "allclose"}
_DATA_SHAPED = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
                "bincount"}
_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _is_mask(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


def _syncs(name: str, args: tuple[Any, ...]) -> bool:
    if name in _SCALAR or name in _DATA_SHAPED:
        return True
    if name in _INDEXING and len(args) > 1 and isinstance(args[1], (list, tuple)):
        return any(_is_mask(i) for i in args[1])
    if name == "repeat_interleave":
        return isinstance(args[0], torch.Tensor) and (len(args) == 1 or isinstance(args[1], torch.Tensor))
    return False


class HostSyncs(TorchDispatchMode):
    """Count host-syncing operations inside a ``with`` block: ``total`` and ``by_op``.

    >>> with HostSyncs() as s:
    ...     _ = float(torch.ones(2).sum())
    >>> s.total
    1
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if _syncs(name, args):
            self.by_op[name] += 1
        return func(*args, **(kwargs or {}))
