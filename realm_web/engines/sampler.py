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
    """Canonical candidates (logit descending, id ascending; top-k keeps the lowest ids among
    ties), unnormalized weights exp(z - z0) in float64, a sequential cumulative sum, then top-p,
    min-p and the inverse CDF at u. wasm/src/bridge.mjs does exactly the same arithmetic."""
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
