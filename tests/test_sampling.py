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
from realm_web.engines.sampler import sample_positions
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
    toks, lps = sample_positions(logits_of(case), spec, case["draws"], case["tokens"], case["first"])
    assert toks == case["expect"]["tokens"]
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
    assert any(s.logprobs for s in specs)
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
