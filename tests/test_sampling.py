"""The sampling rule, written once (realm_web.step.SamplingSpec) and checked once: the numpy
kernel reproduces every golden vector of tests/golden/sampling.json, the file the JavaScript
kernel is held to as well (wasm/test/sampling.test.mjs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from realm_web import SamplingParams
from realm_web.engines.sampler import sample_positions, top_logprobs
from realm_web.step import SamplingSpec

GOLDEN = Path(__file__).parent / "golden" / "sampling.json"
CASES: list[dict[str, Any]] = json.loads(GOLDEN.read_text())["cases"]


def logits_of(case: dict[str, Any]) -> np.ndarray:
    if case["dtype"] == "float16":
        return np.array(case["logits"], dtype=np.uint16).view(np.float16)
    return np.array(case["logits"], dtype=np.float32)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_numpy_sampler_reproduces_the_golden_vectors(case: dict[str, Any]) -> None:
    spec = SamplingSpec.from_json(case["spec"])
    x = logits_of(case)
    masks = None
    if case["masks"] is not None:
        masks = [None if m is None else np.isin(np.arange(x.shape[-1]), m) for m in case["masks"]]
    toks, lps = sample_positions(x, spec, case["draws"], case["tokens"], case["first"], masks)
    assert toks == case["expect"]["tokens"]
    for t, m in zip(toks, case["masks"] or []):
        assert m is None or t in m
    if case["expect"]["top"] is not None:
        got = top_logprobs(x, spec.top_logprobs)
        assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in case["expect"]["top"]]
        assert [v for row in got for _, v in row] == pytest.approx([v for row in case["expect"]["top"] for _, v in row],
                                                                   abs=1e-5)
    if case["expect"]["logprobs"] is None:
        assert lps is None
    else:
        assert lps == pytest.approx(case["expect"]["logprobs"], abs=1e-5)


def test_the_golden_file_covers_the_rule() -> None:
    """Every part of the rule is exercised, and on both logits types."""
    specs = [SamplingSpec.from_json(c["spec"]) for c in CASES]
    assert {c["dtype"] for c in CASES} == {"float32", "float16"}
    assert any(s.greedy for s in specs) and any(not s.greedy for s in specs)
    for field, default in (("top_k", 0), ("top_p", 1.0), ("min_p", 0.0), ("repetition_penalty", 1.0)):
        assert any(getattr(s, field) != default for s in specs), field
    assert any(s.logprobs for s in specs) and any(s.top_logprobs for s in specs)
    assert any(c["masks"] for c in CASES) and any(c["masks"] and s.repetition_penalty != 1.0 and not s.greedy
                                                  for c, s in zip(CASES, specs))
    assert any(len(c["expect"]["tokens"]) > 1 for c in CASES)  # several positions of one row
    # and the cases decide: the tokens differ across specs on the same logits
    same = [c for c in CASES if c["name"].startswith("same-logits")]
    assert len({tuple(c["expect"]["tokens"]) for c in same}) > 3


def test_sampling_params_give_their_spec() -> None:
    assert SamplingParams().spec() == SamplingSpec()  # one set of defaults
    p = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, repetition_penalty=1.2, logprobs=True,
                       max_tokens=3, seed=4, stop=["x"])
    assert p.spec() == SamplingSpec(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, repetition_penalty=1.2,
                                    logprobs=True)
    assert SamplingSpec.from_json(p.spec().to_json()) == p.spec()


def test_logprobs_are_the_raw_log_softmax() -> None:
    """Penalty, mask and temperature change the pick, never the reported logprob."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, size=(2, 50)).astype(np.float32)
    ref = x - np.log(np.exp(x.astype(np.float64)).sum(-1, keepdims=True))
    mask = np.zeros(50, bool)
    mask[[4, 9, 31]] = True
    spec = SamplingSpec(temperature=0.7, repetition_penalty=1.4, logprobs=True)
    toks, lps = sample_positions(x, spec, [0.3, 0.8], [4, 9, 4], 1, [mask, None])
    assert toks[0] in (4, 9, 31)
    assert lps == pytest.approx([ref[0, toks[0]], ref[1, toks[1]]], abs=1e-5)
