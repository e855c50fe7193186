"""Block quantization into the layouts of onnxruntime's MatMulNBits / GatherBlockQuantized.

MatMulNBits computes y = x @ W^T with W[n, k] = scale[n, b] * (q[n, k] - zp[n, b]) per block b
of 32 along k; q packs two 4-bit values per byte (low nibble first) or one 8-bit value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .weights import BLOCK, Q4Blocks, Q8Blocks, Weight, dense


@dataclass
class NBits:
    """A weight in MatMulNBits layout, plus an optional per-block offset term (exact Q4_1)."""

    bits: int
    n: int
    k: int
    packed: np.ndarray  # (N, K/32, 32*bits/8) uint8
    scales: np.ndarray  # (N * K/32,) float32
    zero_points: np.ndarray  # packed uint8
    offsets: np.ndarray | None = None  # (K/32, N) float32: m^T of Q4_1, applied to block sums of x


def _pack4(q: np.ndarray) -> np.ndarray:
    """(..., 2j) low nibble, (..., 2j+1) high nibble."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _zp_pack(zp: np.ndarray, bits: int) -> np.ndarray:
    n, nb = zp.shape
    if bits == 8:
        return zp.astype(np.uint8).reshape(-1)
    if nb % 2:
        zp = np.concatenate([zp, np.zeros((n, 1), zp.dtype)], axis=1)
    return _pack4(zp.astype(np.uint8)).reshape(-1)


def rtn(w: np.ndarray, bits: int) -> NBits:
    """Round-to-nearest asymmetric quantization of a dense (N, K) weight, blocks of 32."""
    n, k = w.shape
    if k % BLOCK:
        raise ValueError(f"input dimension {k} is not a multiple of {BLOCK}")
    qmax = (1 << bits) - 1
    b = w.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    lo = np.minimum(b.min(axis=2), 0.0)
    hi = np.maximum(b.max(axis=2), 0.0)
    scale = (hi - lo) / qmax
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    zp = np.clip(np.round(-lo / scale), 0, qmax)
    q = np.clip(np.round(b / scale[..., None] + zp[..., None]), 0, qmax).astype(np.uint8)
    packed = _pack4(q) if bits == 4 else q
    return NBits(bits, n, k, packed, scale.reshape(-1), _zp_pack(zp, bits))


def from_q4_1(w: Q4Blocks) -> NBits:
    """Carry GGUF Q4_1 blocks over without rounding: W = d*q + m = MatMulNBits(q, d, zp=0) + m-term."""
    n, k = w.shape
    q = w.q.reshape(n, k // BLOCK, BLOCK)
    zp = np.zeros((n, k // BLOCK), np.uint8)
    return NBits(4, n, k, _pack4(q), w.d.reshape(-1).astype(np.float32), _zp_pack(zp, 4),
                 offsets=np.ascontiguousarray(w.m.T.astype(np.float32)))


def from_q8_0(w: Q8Blocks) -> NBits:
    """GGUF Q8_0 (symmetric int8) as 8-bit MatMulNBits: q + 128 with zero point 128, exact."""
    n, k = w.shape
    q = (w.q.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // BLOCK, BLOCK)
    zp = np.full((n, k // BLOCK), 128, np.uint8)
    return NBits(8, n, k, q, w.d.reshape(-1).astype(np.float32), _zp_pack(zp, 8))


def quantize(w: Weight, bits: int) -> NBits:
    """Best available representation of w with `bits` bits per weight (no double rounding when avoidable)."""
    if bits == 4 and isinstance(w, Q4Blocks):
        return from_q4_1(w)
    if bits == 8 and isinstance(w, Q8Blocks):
        return from_q8_0(w)
    return rtn(dense(w), bits)


def concat_rows(parts: list[NBits]) -> NBits:
    """Stack quantized weights along N (fused q/k/v or gate/up projections)."""
    first = parts[0]
    if any(p.bits != first.bits or p.k != first.k for p in parts):
        raise ValueError("cannot fuse weights of different shapes or bit widths")
    offsets = None
    if any(p.offsets is not None for p in parts):
        offsets = np.concatenate(
            [p.offsets if p.offsets is not None else np.zeros((p.k // BLOCK, p.n), np.float32) for p in parts], axis=1)
    zps = [p.zero_points.reshape(p.n, -1) for p in parts]
    return NBits(first.bits, sum(p.n for p in parts), first.k,
                 np.concatenate([p.packed for p in parts], axis=0),
                 np.concatenate([p.scales for p in parts]),
                 np.concatenate(zps, axis=0).reshape(-1), offsets)
