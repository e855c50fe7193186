"""Token selection from one row of logits, in numpy (see realm_web/sampling.py for the rule)."""
from __future__ import annotations

from typing import Any

import numpy as np


def sample_token(logits: np.ndarray, params: dict[str, Any], u: float,
                 history: list[int] | None = None, want_logprob: bool = False) -> tuple[int, float | None]:
    """Pick a token: penalty -> greedy or temperature/top-k/top-p/min-p + inverse CDF at draw u."""
    x = logits.astype(np.float32, copy=True)
    rp = float(params.get("repetition_penalty", 1.0))
    if rp != 1.0 and history:
        idx = np.unique(np.asarray(history, dtype=np.int64))
        v = x[idx]
        x[idx] = np.where(v > 0, v / rp, v * rp)
    temp = float(params.get("temperature", 0.0))
    if temp == 0.0:
        tok = int(np.argmax(x))
    else:
        tok = _sample(x / temp, int(params.get("top_k", 0)), float(params.get("top_p", 1.0)),
                      float(params.get("min_p", 0.0)), u)
    lp = None
    if want_logprob:
        m = float(x.max())
        lp = float(x[tok] - m - np.log(np.exp(x - m).sum()))
    return tok, lp


def _sample(x: np.ndarray, top_k: int, top_p: float, min_p: float, u: float) -> int:
    k = x.shape[0] if top_k <= 0 else min(top_k, x.shape[0])
    # Candidates in canonical order: logit descending, then token id ascending.
    if k < x.shape[0]:
        cand = np.argpartition(-x, k - 1)[:k]
    else:
        cand = np.arange(x.shape[0])
    order = np.lexsort((cand, -x[cand]))
    cand = cand[order]
    z = x[cand].astype(np.float64)
    p = np.exp(z - z[0])
    p /= p.sum()
    n = len(cand)
    if top_p < 1.0:
        c = np.cumsum(p)
        n = min(n, int(np.searchsorted(c, top_p, side="left")) + 1)
    if min_p > 0.0:
        n = min(n, max(1, int(np.count_nonzero(p[:n] >= min_p * p[0]))))
    p = p[:n]
    c = np.cumsum(p)
    i = int(np.searchsorted(c, u * c[-1], side="right"))
    return int(cand[min(i, n - 1)])
