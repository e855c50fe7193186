"""Fold LoRA adapters into a model's weights at export time (`realm-web export --merge-lora`):
W' = W + (B A) * scale for each module the adapter targets, in Hugging Face layout (out, in).
The merged export runs the plain graph: the ceiling that served adapters are measured against."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..lora import GROUPS, LoraAdapter, dims, group_members
from .weights import Weight, dense

_WHERE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def merge_adapter(weights: Mapping[str, Weight], adapter: LoraAdapter, arch: Mapping[str, Any]) -> dict[str, Weight]:
    """A copy of `weights` (Hugging Face parameter names) with `adapter` folded in; the modules it
    changes become dense float32 (and are quantized again by the export's dtype)."""
    out = dict(weights)
    d = dims(arch)
    for i, groups in enumerate(adapter.groups):
        for g in GROUPS:
            if g not in groups:
                continue
            fa, fb, total = groups[g]
            n_in = d[group_members(g)[0]][0]
            n_out = sum(d[m][1] for m in group_members(g))
            a = np.frombuffer(fa, np.float32).reshape(n_in, total)
            b = np.frombuffer(fb, np.float32).reshape(total, n_out)
            off, col = 0, 0
            for m, r in zip(group_members(g), adapter.splits[i][g]):
                out_m = d[m][1]
                if r:
                    name = f"model.layers.{i}.{_WHERE[m]}.{m}.weight"
                    delta = a[:, off:off + r] @ b[off:off + r, col:col + out_m]  # (in, out), scale folded in
                    out[name] = dense(weights[name]).astype(np.float32) + delta.T
                off, col = off + r, col + out_m
    return out
