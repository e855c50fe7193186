"""The native engine's adapter table for the LoRA-capable graph (manifest GraphSpec.lora, form
"grouped-tc"): per layer and group, A^T (entries, 1, members x R, in) and per member B^T
(entries, 1, out_k, R), entry e of the table at index e - 1 (entry 0 is "no adapter" and has
no row). A step's rows are grouped by entry, in chunks of at most CHUNK columns; the tables of
the contiguous range of entries in use are bound by pointer, so no weights move."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..lora import GROUPS, LoraAdapter, dims, group_dims, group_members
from ..manifest import LoraContract

CHUNK = 16  # columns per matmul: up to 16, onnxruntime's CPU MatMul computes each column alike


class LoraTables:
    def __init__(self, contract: LoraContract, arch: dict[str, Any], num_layers: int, entries: int,
                 dtype: Any, ort: Any, device: str) -> None:
        self.contract, self.entries, self.dtype, self.ort, self.device = contract, entries, dtype, ort, device
        self.dims, self.member_dims = group_dims(arch), dims(arch)
        r = contract.max_rank
        # (layer, group) -> [A^T table, B^T table of each member]
        self.tables: dict[tuple[int, str], list[Any]] = {}
        self.host: dict[tuple[int, str], list[np.ndarray]] = {}  # CUDA: the tables' host copies
        for i in range(num_layers):
            for g in GROUPS:
                n_in = self.dims[g][0]
                members = group_members(g)
                ts = [np.zeros((entries, 1, len(members) * r, n_in), dtype)]
                ts += [np.zeros((entries, 1, self.member_dims[m][1], r), dtype) for m in members]
                if device == "cuda":  # the host copy is what uploads change; then it goes over whole
                    self.host[(i, g)] = ts
                    ts = [ort.OrtValue.ortvalue_from_numpy(t, "cuda", 0) for t in ts]
                self.tables[(i, g)] = ts

    def upload(self, entry: int, adapter: LoraAdapter) -> None:
        """Put `adapter` into table entry `entry` (1-based); what it does not change is zeros."""
        if not 1 <= entry <= self.entries:
            raise ValueError(f"adapter entry {entry} is not in [1, {self.entries}]")
        r_cap = self.contract.max_rank
        for (i, g), ts in self.tables.items():
            n_in, n_out = self.dims[g]
            members = group_members(g)
            rows = [np.zeros(t.shape()[1:] if self.device == "cuda" else t.shape[1:], self.dtype) for t in ts]
            got = adapter.groups[i].get(g) if i < len(adapter.groups) else None
            if got is not None:
                fa, fb, total = got
                a = np.frombuffer(fa, np.float32).reshape(n_in, total)
                b = np.frombuffer(fb, np.float32).reshape(total, n_out)
                off, col = 0, 0  # the member's first rank column in A_g / row in B_g, its first output
                for k, (m, r) in enumerate(zip(members, adapter.splits[i][g])):
                    out_k = self.member_dims[m][1]
                    if r > r_cap:
                        raise ValueError(f"adapter {adapter.name!r}: layer {i} {m} has rank {r}, the graph holds {r_cap}")
                    rows[0][0, k * r_cap:k * r_cap + r, :] = a[:, off:off + r].T
                    rows[1 + k][0, :, :r] = b[off:off + r, col:col + out_k].T
                    off, col = off + r, col + out_k
            for k, (t, row) in enumerate(zip(ts, rows)):
                if self.device == "cuda":
                    host = self.host[(i, g)][k]
                    host[entry - 1] = row
                    t.update_inplace(host)  # same device buffer (CUDA graphs keep its address)
                else:
                    t[entry - 1] = row

    def bind(self, bnd: Any, lo: int, hi: int) -> None:
        """Bind entries lo..hi (1-based, inclusive) of every table (by pointer: no copy)."""
        c, dev = self.contract, "cuda" if self.device == "cuda" else "cpu"
        for (i, g), ts in self.tables.items():
            names = [c.a.format(i=i, g=g, k=0)] + [c.b.format(i=i, g=g, k=k) for k in range(len(ts) - 1)]
            for name, t in zip(names, ts):
                shape = list(t.shape()) if self.device == "cuda" else list(t.shape)
                base = int(t.data_ptr()) if self.device == "cuda" else int(t.ctypes.data)
                per_entry = int(np.prod(shape[1:])) * np.dtype(self.dtype).itemsize
                bnd.bind_input(name, dev, 0, self.dtype, [hi - lo + 1, *shape[1:]], base + (lo - 1) * per_entry)

    @staticmethod
    def groups(entries: np.ndarray, width: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """For rows with table entries `entries` (0: none) each feeding `width` positions: the
        range of entries in use (lo, hi), `order` (hi - lo + 1, chunks, w) listing each entry's
        flattened (row, position) indices (padded with rows x width: the zero row) and `inverse`
        (rows x width) picking each one's result ((hi - lo + 1) x chunks x w: the zero result,
        for no adapter). w is in [2, CHUNK] (see CHUNK; one column takes another path)."""
        used = entries[entries > 0]
        lo, hi = int(used.min()), int(used.max())
        flat = np.repeat(entries, width)  # entry of every (row, position)
        most = max(int((flat == e).sum()) for e in range(lo, hi + 1))
        order, inverse = _layout(flat, lo, hi - lo + 1, most)
        return lo, hi, order, inverse


def static_groups(entries: np.ndarray, num_entries: int) -> tuple[np.ndarray, np.ndarray]:
    """`order` and `inverse` of a decode step (one position per row) over the whole table
    (entries 1..num_entries) in a shape that depends on the row count only, for a captured CUDA
    graph: order (num_entries, chunks, w), w = min(max(2, rows), CHUNK), chunks enough for every
    row on one entry; padding is the zero row (index rows), rows without an adapter pick the
    zero result (index num_entries x chunks x w)."""
    return _layout(entries, 1, num_entries, int(entries.shape[0]))


def _layout(flat: np.ndarray, lo: int, num: int, most: int) -> tuple[np.ndarray, np.ndarray]:
    """`order` (num, chunks, w) of entries lo..lo+num-1 over the (row, position)s `flat` (their
    entries), room for `most` apiece in chunks of w = min(max(2, most), CHUNK) columns, padded
    with the zero row (index len(flat)); and `inverse`, each one's result (num x chunks x w for
    none: the zero result)."""
    w = min(max(2, most), CHUNK)
    chunks = -(-most // w)
    n = chunks * w
    total = int(flat.shape[0])
    order = np.full((num, n), total, np.int64)
    inverse = np.full(total, num * n, np.int64)
    for k in range(num):
        pos = np.flatnonzero(flat == lo + k)
        order[k, : len(pos)] = pos
        inverse[pos] = k * n + np.arange(len(pos))
    return order.reshape(num, chunks, w), inverse
