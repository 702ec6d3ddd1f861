"""Counts the aten ops a piece of code dispatches and flags the ones that stall the host on an accelerator.

Used by bench/views_speed.py and the views tests: each dispatched op costs a kernel launch (or at least
Python dispatch time), and a host sync stops the CPU from queueing work ahead of the device. It lives with the
tests, not in the package, because it is built on torch's private dispatch modules.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Ops that read device data on the host (item, bool(tensor), data-dependent output sizes).
SYNC_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "allclose", "unique",
    "_unique", "_unique2", "unique_consecutive", "unique_dim", "repeat_interleave", "multinomial",
})
INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})


class OpRecorder(TorchDispatchMode):
    """`with OpRecorder() as ops: ...` then `ops.total`, `ops.counts` (op name -> calls) and `ops.flagged`
    (what would sync or move data between host and device: sync ops, boolean-mask indexing, tensors built
    from Python data, copies across devices)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.flagged: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.counts[name] += 1
        reason = self._sync_reason(name, args, kwargs)
        if reason:
            self.flagged[reason] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _sync_reason(name: str, args, kwargs) -> str | None:
        if name in SYNC_OPS:
            return name
        if name in INDEX_OPS and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool
                                     for t in tree_leaves(args[1])):
            return f"{name} with a boolean mask"
        if name == "lift_fresh":
            return "tensor from Python data"
        if name in ("_to_copy", "copy_"):
            source = args[1] if name == "copy_" else args[0]
            target = args[0].device if name == "copy_" else kwargs.get("device", source.device)
            if torch.device(target) != source.device:
                return f"copy {source.device.type} -> {torch.device(target).type}"
        return None
