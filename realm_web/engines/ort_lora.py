"""The native engine's adapter table for the LoRA-capable graph (manifest GraphSpec.lora, form
"grouped-t"): per layer and group, A^T (entries, R, in) and B^T (entries, out, R), entry e of the
table at index e - 1 (entry 0 is "no adapter" and has no row). A step's rows are grouped by
entry; the groups of the contiguous range of entries in use are bound by pointer, so no weights
move."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..lora import GROUPS, LoraAdapter, group_dims
from ..manifest import LoraContract


class LoraTables:
    def __init__(self, contract: LoraContract, arch: dict[str, Any], num_layers: int, entries: int,
                 dtype: Any, ort: Any, device: str) -> None:
        self.contract, self.entries, self.dtype, self.ort, self.device = contract, entries, dtype, ort, device
        self.dims = group_dims(arch)
        self.tables: dict[tuple[int, str], tuple[Any, Any]] = {}
        for i in range(num_layers):
            for g in GROUPS:
                n_in, n_out = self.dims[g]
                r = contract.rank(g)
                a = np.zeros((entries, r, n_in), dtype)
                b = np.zeros((entries, n_out, r), dtype)
                if device == "cuda":
                    a = ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0)
                    b = ort.OrtValue.ortvalue_from_numpy(b, "cuda", 0)
                self.tables[(i, g)] = (a, b)
        self.bound: tuple[int, int] | None = None

    def upload(self, entry: int, adapter: LoraAdapter) -> None:
        """Put `adapter` into table entry `entry` (1-based); groups it does not change are zeros."""
        if not 1 <= entry <= self.entries:
            raise ValueError(f"adapter entry {entry} is not in [1, {self.entries}]")
        for (i, g), (a, b) in self.tables.items():
            n_in, n_out = self.dims[g]
            r_cap = self.contract.rank(g)
            ea = np.zeros((r_cap, n_in), self.dtype)
            eb = np.zeros((n_out, r_cap), self.dtype)
            got = adapter.groups[i].get(g) if i < len(adapter.groups) else None
            if got is not None:
                fa, fb, r = got
                if r > r_cap:
                    raise ValueError(f"adapter {adapter.name!r}: layer {i} {g} has rank {r}, the graph holds {r_cap}")
                ea[:r, :] = np.frombuffer(fa, np.float32).reshape(n_in, r).T
                eb[:, :r] = np.frombuffer(fb, np.float32).reshape(r, n_out).T
            if self.device == "cuda":
                ha, hb = a.numpy(), b.numpy()  # the whole table round-trips: loads are rare
                ha[entry - 1], hb[entry - 1] = ea, eb
                a.update_inplace(ha)
                b.update_inplace(hb)
            else:
                a[entry - 1], b[entry - 1] = ea, eb

    def bind(self, bnd: Any, lo: int, hi: int) -> None:
        """Bind entries lo..hi (1-based, inclusive) of every table (by pointer: no copy)."""
        if self.bound == (lo, hi):
            return
        c, dev = self.contract, "cuda" if self.device == "cuda" else "cpu"
        for (i, g), (a, b) in self.tables.items():
            for name, t in ((c.a.format(i=i, g=g), a), (c.b.format(i=i, g=g), b)):
                shape = list(t.shape()) if self.device == "cuda" else list(t.shape)
                base = int(t.data_ptr()) if self.device == "cuda" else int(t.ctypes.data)
                per_entry = int(np.prod(shape[1:])) * np.dtype(self.dtype).itemsize
                bnd.bind_input(name, dev, 0, self.dtype, [hi - lo + 1, *shape[1:]], base + (lo - 1) * per_entry)
        self.bound = (lo, hi)

    @staticmethod
    def groups(entries: np.ndarray, width: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """For rows with table entries `entries` (0: none) each feeding `width` positions: the
        range of entries in use (lo, hi), `order` (hi - lo + 1, n) listing each entry's flattened
        (row, position) indices (padded with rows x width: the zero row) and `inverse` (rows x
        width) picking each one's result ((hi - lo + 1) x n: the zero result, for no adapter)."""
        used = entries[entries > 0]
        lo, hi = int(used.min()), int(used.max())
        flat = np.repeat(entries, width)  # entry of every (row, position)
        where = [np.flatnonzero(flat == e) for e in range(lo, hi + 1)]
        n = max(2, max(len(w) for w in where))  # n >= 2: onnxruntime's MatMul takes another path for 1
        total = flat.shape[0]
        order = np.full((hi - lo + 1, n), total, np.int64)
        inverse = np.full(total, (hi - lo + 1) * n, np.int64)
        for k, pos in enumerate(where):
            order[k, : len(pos)] = pos
            inverse[pos] = k * n + np.arange(len(pos))
        return lo, hi, order, inverse
