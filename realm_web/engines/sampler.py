"""Token selection from logits, in numpy: the rule of realm_web.step.SamplingSpec.

wasm/src/bridge.mjs implements the same arithmetic in JavaScript; tests/golden/sampling.json
holds vectors (logits, spec, draw, history -> token, logprob) that both must reproduce.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..step import SamplingSpec


def sample_token(logits: np.ndarray, spec: SamplingSpec, u: float = 0.0,
                 history: Sequence[int] | None = None, mask: np.ndarray | None = None) -> tuple[int, float | None]:
    """Pick a token from one position's logits: mask (a bool array: the allowed tokens) ->
    penalty -> greedy or temperature / top-k / top-p / min-p and the inverse CDF at draw `u`.
    Returns (token, its logprob under the raw logits if spec.logprobs)."""
    tok = _select(logits, spec, u, history, mask)
    lp = token_logprobs(logits[None], [tok])[0] if spec.logprobs else None
    return tok, lp


def _select(logits: np.ndarray, spec: SamplingSpec, u: float, history: Sequence[int] | None,
            mask: np.ndarray | None) -> int:
    x = logits.astype(np.float32, copy=True)
    if mask is not None:
        x[~mask] = -np.inf
    rp = spec.repetition_penalty
    if rp != 1.0 and history:
        idx = np.unique(np.asarray(history, dtype=np.int64))
        v = x[idx]
        x[idx] = np.where(v > 0, v / np.float32(rp), v * np.float32(rp))
    if spec.temperature == 0.0:
        tok = int(np.argmax(x))
    else:
        tok = _pick(x / np.float32(spec.temperature), spec.top_k, spec.top_p, spec.min_p, u)
    return tok


def sample_positions(logits: np.ndarray, spec: SamplingSpec, draws: Sequence[float],
                     row_tokens: Sequence[int] | None = None, first: int = 0,
                     masks: Sequence[np.ndarray | None] | None = None) -> tuple[list[int], list[float] | None]:
    """One token per row of `logits` (k, vocab), the logits of k consecutive positions of one
    cache row, the first of them at position `first`. Position j uses draw j (no draws when
    greedy), mask j if given and, for the repetition penalty, the row's tokens up to and
    including its own position (`row_tokens[: first + j + 1]`). Returns the tokens and, if the
    spec asks, their logprobs (under the raw logits)."""
    toks: list[int] = []
    for j in range(logits.shape[0]):
        hist = row_tokens[: first + j + 1] if row_tokens is not None and spec.repetition_penalty != 1.0 else None
        toks.append(_select(logits[j], spec, draws[j] if draws else 0.0, hist, masks[j] if masks else None))
    return toks, (token_logprobs(logits, toks) if spec.logprobs else None)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of raw logits (k, vocab) -> their log-softmax, in float32."""
    x = logits.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))  # type: ignore[no-any-return]


def token_logprobs(logits: np.ndarray, ids: Sequence[int]) -> list[float]:
    """The log-probability of ids[j] at row j of `logits` (k, vocab)."""
    x = logits.astype(np.float32, copy=False)
    rows = np.arange(len(ids))
    m = x.max(axis=-1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=-1))
    return [float(v) for v in x[rows, np.asarray(ids, dtype=np.int64)] - lse]


def top_logprobs(logits: np.ndarray, n: int) -> list[list[tuple[int, float]]]:
    """Each row's n most likely tokens as (id, logprob), logprob descending, id ascending."""
    if n <= 0:
        return [[] for _ in range(logits.shape[0])]
    lp = log_softmax(logits)
    n = min(n, lp.shape[-1])
    part = np.argpartition(-lp, n - 1, axis=-1)[:, :n]
    out = []
    for j in range(lp.shape[0]):
        ids = part[j]
        vals = lp[j, ids]
        order = np.lexsort((ids, -vals))
        out.append([(int(ids[i]), float(vals[i])) for i in order])
    return out


def _pick(x: np.ndarray, top_k: int, top_p: float, min_p: float, u: float) -> int:
    """Canonical candidates (logit descending, id ascending; top-k keeps the lowest ids among
    ties), unnormalized weights exp(z - z0) in float64, a sequential cumulative sum, then top-p,
    min-p and the inverse CDF at u."""
    v = x.shape[0]
    k = v if top_k <= 0 else min(top_k, v)
    if k < v:
        thr = x[np.argpartition(-x, k - 1)[k - 1]]
        above = np.flatnonzero(x > thr)
        cand = np.concatenate([above, np.flatnonzero(x == thr)[: k - len(above)]])
    else:
        cand = np.arange(v)
    cand = cand[np.lexsort((cand, -x[cand]))]
    z = x[cand].astype(np.float64)
    w = np.exp(z - z[0])
    c = np.cumsum(w)
    n = len(cand)
    if top_p < 1.0:
        n = min(n, int(np.searchsorted(c, top_p * c[-1], side="left")) + 1)
    if min_p > 0.0:
        n = min(n, max(1, int(np.count_nonzero(w[:n] >= min_p))))
    i = int(np.searchsorted(c[:n], u * c[n - 1], side="right"))
    return int(cand[min(i, n - 1)])
