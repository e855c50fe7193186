"""Write tests/golden/sampling.json: logits, a SamplingSpec, draws and a row's tokens -> the
tokens (and logprobs) the sampling rule picks, as realm_web/engines/sampler.py computes them.

Both token-selection kernels must reproduce these vectors: the numpy one (tests/test_sampling.py)
and the JavaScript one in wasm/src/bridge.mjs (wasm/test/sampling.test.mjs). Regenerate only on
purpose (a deliberate change of the rule), and change both kernels with it:

    .venv/bin/python tools/gen_sampling_golden.py
"""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from realm_web.engines.sampler import sample_positions, top_logprobs
from realm_web.step import SamplingSpec

ABOUT = ("Token selection: logits (float16 as uint16 bits), spec, draws, the row's tokens, the first "
         "position and per position the allowed token ids (masks, or null) -> tokens, logprobs (of the raw "
         "logits) and the top N (spec.top_logprobs) of each position. Made by tools/gen_sampling_golden.py; realm_web/engines/sampler.py "
         "and wasm/src/bridge.mjs must both reproduce every case.")
OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "sampling.json"


def logits_for(rng: np.random.Generator, kind: str, vocab: int, k: int) -> np.ndarray:
    x = rng.normal(0.0, 2.5, size=(k, vocab)).astype(np.float32)
    if kind == "peaked":  # one clear favourite and a long tail, as a trained model gives
        x[:, rng.integers(vocab)] += 12.0
    elif kind == "ties":  # coarse values: many exact ties, also at the top-k threshold
        x = np.round(x * 2.0) / 2.0
    elif kind == "flat":  # nearly uniform: top-p and the draw decide
        x = (x * 0.05).astype(np.float32)
    elif kind == "negative":  # all below zero: the penalty multiplies instead of dividing
        x = -np.abs(x) - 0.5
    return np.round(x, 3).astype(np.float32)  # three decimals: short in JSON, still float32 exactly


def short(v: np.float32) -> float:
    """The shortest decimal that reads back (through a double, as JSON parsers do) as `v`."""
    f = float(np.format_float_scientific(v, unique=True))
    return f if np.float32(f) == v else float(v)


def case(name: str, dtype: str, stored: list[list[Any]], x: np.ndarray, spec: SamplingSpec, draws: list[float],
         tokens: list[int], first: int, masks: list[list[int] | None] | None) -> dict[str, Any]:
    bool_masks = None
    if masks is not None:
        bool_masks = []
        for m in masks:
            b = None
            if m is not None:
                b = np.zeros(x.shape[-1], dtype=bool)
                b[m] = True
            bool_masks.append(b)
    toks, lps = sample_positions(x, spec, draws, tokens, first, bool_masks)
    top = [[[i, v] for i, v in row] for row in top_logprobs(x, spec.top_logprobs)] if spec.top_logprobs else None
    return {"name": name, "dtype": dtype, "logits": stored, "spec": spec.to_json(), "draws": draws, "tokens": tokens,
            "first": first, "masks": masks, "expect": {"tokens": toks, "logprobs": lps, "top": top}}


def main() -> None:
    rng = np.random.default_rng(20261201)
    pick = random.Random(7)
    specs = [
        SamplingSpec(),
        SamplingSpec(logprobs=True),
        SamplingSpec(repetition_penalty=1.3),
        SamplingSpec(repetition_penalty=0.8, logprobs=True),
        SamplingSpec(temperature=1.0),
        SamplingSpec(temperature=0.7, top_p=0.9),
        SamplingSpec(temperature=1.3, top_k=40),
        SamplingSpec(temperature=0.9, top_k=5, top_p=0.95),
        SamplingSpec(temperature=1.0, top_k=1),
        SamplingSpec(temperature=1.2, min_p=0.05),
        SamplingSpec(temperature=0.8, min_p=0.2, top_p=0.8),
        SamplingSpec(temperature=1.0, top_p=0.5, logprobs=True),
        SamplingSpec(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.2, logprobs=True),
        SamplingSpec(temperature=2.0, top_k=3, min_p=0.3, repetition_penalty=1.5),
        SamplingSpec(temperature=0.3),
        SamplingSpec(logprobs=True, top_logprobs=5),
        SamplingSpec(temperature=0.8, top_p=0.9, repetition_penalty=1.1, logprobs=True, top_logprobs=3),
    ]
    cases: list[dict[str, Any]] = []
    for kind in ("normal", "peaked", "ties", "flat", "negative"):
        for vocab in (7, 256, 1024):
            for spec in specs:
                if vocab == 1024 and pick.random() < 0.7:
                    continue  # keep the file small: a sample of the large-vocabulary cases
                k = pick.choice([1, 1, 1, 3])
                x = logits_for(rng, kind, vocab, k)
                dtype = "float16" if pick.random() < 0.25 else "float32"
                if dtype == "float16":
                    x16 = x.astype(np.float16)
                    stored: list[list[Any]] = x16.view(np.uint16).astype(int).tolist()
                    x = x16.astype(np.float32)
                else:
                    stored = [[short(v) for v in row] for row in x]
                fed = [int(t) for t in rng.integers(0, vocab, size=k)]
                history = [int(t) for t in rng.integers(0, vocab, size=pick.randrange(0, 12))]
                tokens = history + fed  # the row's tokens after this step
                first = len(tokens) - k
                draws = [] if spec.greedy else [float(d) for d in rng.random(k)]
                if draws and pick.random() < 0.2:  # the ends of [0, 1)
                    draws[0] = pick.choice([0.0, 0.9999999999])
                masks = None
                if pick.random() < 0.3:  # a constrained row: some positions allow only a few tokens
                    masks = [sorted(int(t) for t in rng.choice(vocab, size=pick.randrange(1, max(2, vocab // 3)),
                                                             replace=False)) if pick.random() < 0.8 else None
                             for _ in range(k)]
                cases.append(case(f"{kind}-v{vocab}-{len(cases)}", dtype, stored, x, spec, draws, tokens, first, masks))
    # the same logits under every spec: the rule's parts one at a time
    x = logits_for(rng, "normal", 64, 1) * np.float32(0.5)
    for spec in specs:
        spec = replace(spec, logprobs=True)
        draws = [] if spec.greedy else [0.5]
        cases.append(case(f"same-logits-{len(cases)}", "float32", [[short(v) for v in x[0]]], x, spec, draws,
                          [3, 3, 9], 2, None))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"about": ABOUT, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"{len(cases)} cases -> {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
