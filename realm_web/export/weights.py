"""Weight containers shared by the sources (GGUF, safetensors) and the graph builder.

A weight is either dense (float32) or kept in the block-quantized form it was stored in, so
that an int4 export can carry GGUF Q4_1 blocks over without rounding them a second time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

BLOCK = 32


@dataclass
class Q4Blocks:
    """Asymmetric 4-bit blocks along the input dimension: w[n, k] = d[n, k//32] * q[n, k] + m[n, k//32]."""

    q: np.ndarray  # (N, K) uint8 in 0..15
    d: np.ndarray  # (N, K//32) float32
    m: np.ndarray  # (N, K//32) float32

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.q.shape[0]), int(self.q.shape[1]))

    def dense(self) -> np.ndarray:
        n, k = self.shape
        q = self.q.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
        return (q * self.d[..., None] + self.m[..., None]).reshape(n, k)

    def take_rows(self, rows: np.ndarray) -> "Q4Blocks":
        return Q4Blocks(self.q[rows], self.d[rows], self.m[rows])


@dataclass
class Q8Blocks:
    """Symmetric 8-bit blocks: w[n, k] = d[n, k//32] * q[n, k], q int8."""

    q: np.ndarray  # (N, K) int8
    d: np.ndarray  # (N, K//32) float32

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.q.shape[0]), int(self.q.shape[1]))

    def dense(self) -> np.ndarray:
        n, k = self.shape
        q = self.q.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
        return (q * self.d[..., None]).reshape(n, k)

    def take_rows(self, rows: np.ndarray) -> "Q8Blocks":
        return Q8Blocks(self.q[rows], self.d[rows])


Weight = Union[np.ndarray, Q4Blocks, Q8Blocks]


def dense(w: Weight) -> np.ndarray:
    """The weight as a float32 array, exactly as a dequantizing loader (transformers) sees it."""
    if isinstance(w, np.ndarray):
        return w.astype(np.float32, copy=False)
    return w.dense()


def take_rows(w: Weight, rows: np.ndarray) -> Weight:
    if isinstance(w, np.ndarray):
        return w[rows]
    return w.take_rows(rows)


def unpermute_rope_rows(w: Weight, n_head: int) -> Weight:
    """Undo llama.cpp's reordering of q/k rows (interleaved RoPE -> Hugging Face's rotate-half).

    llama.cpp stores W.reshape(n_head, 2, hd/2, K).swapaxes(1, 2); this is its inverse, applied
    as a row permutation so quantized blocks move whole and are not rounded again.
    """
    n = w.shape[0]
    hd = n // n_head
    rows = np.arange(n).reshape(n_head, hd // 2, 2).swapaxes(1, 2).reshape(n)
    return take_rows(w, rows)
