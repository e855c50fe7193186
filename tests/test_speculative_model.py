"""Speculative decoding on the real model and the native engine (onnxruntime, CPU): greedy and
seeded output identical with and without speculation."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from realm_web import LLM, SamplingParams
from realm_web.speculative import SpeculativeConfig, SpeculativeError
from realm_web.step import NewSeq, SamplingSpec, SeqStep, StepPlan

pytestmark = pytest.mark.model

TEXT = ("The committee met on Tuesday to review the budget. It approved the new library, postponed the road "
        "repairs and asked the treasurer for a revised forecast by March.")
PROMPTS = [f"Repeat this text exactly: {TEXT}", f"Summarize in one sentence: {TEXT}",
           "Write a Python function that returns the sum of a list.", "What is the capital of France?",
           f"Extract the decisions from this text as a list: {TEXT}", "Tell me a short story about a cat."]


def params(i: int, n: int = 40) -> SamplingParams:
    """Greedy, seeded, top-k/top-p, min-p and penalty requests in turn."""
    kinds = [dict(), dict(temperature=0.8, seed=i), dict(temperature=0.7, top_k=20, top_p=0.9, seed=i),
             dict(temperature=1.0, min_p=0.1, seed=i), dict(repetition_penalty=1.3),
             dict(temperature=0.6, repetition_penalty=1.2, seed=i)]
    return SamplingParams(max_tokens=n, **kinds[i % len(kinds)])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def plain(model_dir: Path) -> LLM:
    return LLM(model_dir, dtype="fp32", max_slots=16, max_length=512)


def spec_llm(model_dir: Path, k: int, adaptive: bool = True, method: str = "ngram", **kw: object) -> LLM:
    return LLM(model_dir, dtype="fp32", max_slots=kw.pop("max_slots", 16), max_length=kw.pop("max_length", 512),  # type: ignore[arg-type]
               speculative=SpeculativeConfig(method=method, num_speculative_tokens=k, adaptive=adaptive), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def drafting(model_dir: Path) -> LLM:
    """The target in fp32 with its own int8 export as the draft model, the default (settings
    changed per test; test_static_verify_buffers_identical drafts with int4)."""
    return spec_llm(model_dir, 4, adaptive=False, method="draft")


def configure(llm: LLM, k: int, adaptive: bool) -> LLM:
    """Another k / policy for the next requests (the scheduler reads its config every step)."""
    assert llm.scheduler.speculative is not None and not llm.scheduler.has_work()
    llm.scheduler.speculative = replace(llm.scheduler.speculative, num_speculative_tokens=k, adaptive=adaptive)
    return llm


def ids(cs: Sequence[object]) -> list[list[int]]:
    return [c.token_ids for c in cs]  # type: ignore[attr-defined]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 8])
def test_alone_identical_for_every_k(model_dir: Path, plain: LLM, k: int) -> None:
    llm = spec_llm(model_dir, k, adaptive=False)
    for i, prompt in enumerate(PROMPTS[:3]):
        p = params(i)
        assert ids(llm.generate(prompt, p)) == ids(plain.generate(prompt, p)), (k, i)
    assert llm.scheduler.spec_stats["accepted_tokens"] > 0


def test_default_draft_is_the_int8_export(drafting: LLM) -> None:
    draft = drafting.engine.draft  # type: ignore[attr-defined]
    assert (drafting.engine.variant.dtype, draft.engine.variant.dtype) == ("fp32", "int8")  # type: ignore[attr-defined]


def test_draft_model_alone_identical_for_every_k(plain: LLM, drafting: LLM) -> None:
    for k in range(1, 9):
        llm = configure(drafting, k, adaptive=False)
        before = dict(llm.scheduler.spec_stats)
        for i, prompt in enumerate(PROMPTS[:3]):
            p = params(i)
            assert ids(llm.generate(prompt, p)) == ids(plain.generate(prompt, p)), (k, i)
        st = llm.scheduler.spec_stats
        assert st["verify_steps"] > before["verify_steps"] and st["accepted_tokens"] > before["accepted_tokens"]


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_32_staggered_requests_identical(model_dir: Path, plain: LLM, drafting: LLM, method: str) -> None:
    reqs = [(PROMPTS[i % len(PROMPTS)], params(i, 24 + i % 17)) for i in range(32)]
    want = ids(plain.generate([r[0] for r in reqs], [r[1] for r in reqs]))
    for k, adaptive in ((4, False), (8, True)):
        llm = spec_llm(model_dir, k, adaptive=adaptive) if method == "ngram" else configure(drafting, k, adaptive)
        if adaptive:  # the policy prices steps from this machine's timings: pinned, the run is the same anywhere
            llm.scheduler.cost.seed(8e-3, 1e-3, 0.3e-3 if method == "draft" else 0.0, weight=1e12)
        got: list[list[int]] = [[] for _ in reqs]
        rid_of: dict[int, int] = {}
        sink = lambda i: (lambda d: got[i].extend(d.token_ids))  # noqa: E731
        step = 0
        while len(rid_of) < len(reqs) or llm.scheduler.has_work():  # arrivals every other step
            if step % 2 == 0 and len(rid_of) < len(reqs):
                i = len(rid_of)
                rid_of[llm._add(llm.encode_prompt(reqs[i][0]), reqs[i][1], sink(i))] = i
            llm.step()
            step += 1
        assert got == want, (method, k)
        # drafts fed whenever there are some; adaptive, a verify row (a run of its own) rarely pays
        # beside a busy batch: with n-gram drafts it may never, the draft model's do here
        if not adaptive or method == "draft":
            assert llm.scheduler.spec_stats["verify_steps"] > 0, (method, k)


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_stops_and_context_end_inside_accepted_runs(model_dir: Path, plain: LLM, drafting: LLM, method: str) -> None:
    prompt = PROMPTS[0]
    full = plain.generate(prompt, SamplingParams(max_tokens=60))[0]
    llm = spec_llm(model_dir, 6, adaptive=False) if method == "ngram" else configure(drafting, 6, adaptive=False)
    stop = full.text[30:36]
    cases = [SamplingParams(max_tokens=23), SamplingParams(max_tokens=60, stop=[stop]),
             SamplingParams(max_tokens=60, stop_token_ids=(full.token_ids[17],))]
    for p in cases:
        a, b = plain.generate(prompt, p)[0], llm.generate(prompt, p)[0]
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
    n = len(plain.encode_prompt(prompt))
    short_plain = LLM(model_dir, dtype="fp32", max_slots=2, max_length=n + 19)
    short_spec = spec_llm(model_dir, 6, adaptive=False, method=method, max_slots=2, max_length=n + 19)
    a, b = short_plain.generate(prompt, max_tokens=60)[0], short_spec.generate(prompt, max_tokens=60)[0]
    assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason == "length"


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_preemption_keeps_outputs(model_dir: Path, plain: LLM, method: str) -> None:
    reqs = [(PROMPTS[i % 3], params(i, 40)) for i in range(6)]
    want = ids(plain.generate([r[0] for r in reqs], [r[1] for r in reqs]))
    llm = spec_llm(model_dir, 4, adaptive=False, method=method, max_slots=4, max_length=160, kv_capacity=230)
    assert ids(llm.generate([r[0] for r in reqs], [r[1] for r in reqs])) == want
    assert llm.scheduler.num_preemptions > 0 and llm.scheduler.spec_stats["verify_steps"] > 0


def test_a_smaller_draft_model_with_the_same_tokenizer(model_dir: Path, plain: LLM, tiny_hf_dir: Path,
                                                       tmp_path: Path) -> None:
    """A user-given draft model (a random 2-layer Llama on the same tokenizer): its drafts are
    mostly wrong, the output is still the target's; one with a shorter context is refused."""
    from realm_web.export import export_model

    draft = tmp_path / "tiny"
    export_model(tiny_hf_dir, draft, ["fp32"], progress=None)
    with pytest.raises(SpeculativeError, match="context"):
        LLM(model_dir, dtype="fp32", max_slots=2, max_length=512,
            speculative={"method": "draft", "draft_model": str(draft)})
    llm = LLM(model_dir, dtype="fp32", max_slots=4, max_length=256,
              speculative={"method": "draft", "draft_model": str(draft), "adaptive": False})
    for i, prompt in enumerate(PROMPTS[:3]):
        p = params(i, 24)
        assert ids(llm.generate(prompt, p)) == ids(plain.generate(prompt, p)), i
    st = llm.scheduler.spec_stats
    assert st["verify_steps"] > 0 and st["draft_tokens"] > st["accepted_tokens"]


def test_draft_model_refusals(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SpeculativeError, match="target itself"):
        LLM(model_dir, dtype="int8", max_slots=1, max_length=128, speculative={"method": "draft", "draft_dtype": "int8"})
    with pytest.raises(SpeculativeError, match="no export smaller"):  # int4 is the smallest: nothing drafts for it
        LLM(model_dir, dtype="int4", max_slots=1, max_length=128, speculative="draft")
    with pytest.raises(SpeculativeError, match="draft_model"):
        SpeculativeConfig(method="ngram", draft_model=str(model_dir))


class Oracle:
    def __init__(self, stream: list[int]) -> None:
        self.stream, self.tokens = stream, []  # type: ignore[var-annotated]

    def sync(self, tokens: Sequence[int]) -> None:
        self.tokens = list(tokens)

    def propose(self, k: int) -> list[int]:
        i = len(self.tokens) - self.n_prompt
        return self.stream[i:i + k]


def test_oracle_and_always_wrong_drafters(model_dir: Path, plain: LLM) -> None:
    prompt = PROMPTS[3]
    want = plain.generate(prompt, max_tokens=41, ignore_eos=True)[0]
    n_prompt = len(want.prompt_token_ids)

    class Exact(Oracle):
        n_prompt = len(want.prompt_token_ids)

    class Wrong(Exact):
        def propose(self, k: int) -> list[int]:
            return [(t + 1) % 49152 for t in super().propose(k)]

    llm = spec_llm(model_dir, 4, adaptive=False)
    llm.scheduler.new_drafter = lambda: Exact(want.token_ids)
    got = llm.generate(prompt, max_tokens=41, ignore_eos=True)[0]
    st = llm.scheduler.spec_stats
    assert got.token_ids == want.token_ids
    assert st["verify_steps"] == 8 and st["emitted_tokens"] == 40  # k + 1 = 5 tokens per step
    llm = spec_llm(model_dir, 4, adaptive=False)
    llm.scheduler.new_drafter = lambda: Wrong(want.token_ids)
    assert llm.generate(prompt, max_tokens=41, ignore_eos=True)[0].token_ids == want.token_ids
    st = llm.scheduler.spec_stats
    assert st["accepted_tokens"] == 0 and st["emitted_tokens"] == st["verify_steps"] > 30
    assert n_prompt > 0


def test_engine_takes_any_logits_width_on_the_same_span(model_dir: Path) -> None:
    """Rows asking for 1, then 4, then 2 positions on one span (and a verify row beside a batch)."""
    llm = LLM(model_dir, dtype="fp32", max_slots=2, max_length=128)
    e = llm.engine
    ids_ = llm.encode_prompt("Count: one two three four five")
    spec = SamplingSpec()
    e.run_sync(StepPlan(seqs=[SeqStep(0, 0, 0, ids_, 1)], new_seqs=[NewSeq(0, 0, spec)]))
    e.run_sync(StepPlan(seqs=[SeqStep(1, 1, 0, ids_, 1)], new_seqs=[NewSeq(1, 1, spec)]))
    n = len(ids_)
    r1 = e.run_sync(StepPlan(seqs=[SeqStep(0, 0, n, [11, 12, 13, 14], 4)])).tokens[0]
    r2 = e.run_sync(StepPlan(seqs=[SeqStep(0, 0, n, [11, 12], 2)])).tokens[0]  # a rollback, narrower
    assert r2 == r1[:2]
    both = e.run_sync(StepPlan(seqs=[SeqStep(0, 0, n, [11, 12, 13], 3), SeqStep(1, 1, n, [11], 1)])).tokens
    alone = e.run_sync(StepPlan(seqs=[SeqStep(1, 1, n, [11], 1)])).tokens
    assert both[0] == r1[:3] and both[1] == alone[1]
    lg = e.prompt_logits(ids_ + [11, 12], slot=0)
    assert r1[:2] == [int(np.argmax(lg[n - 1 + j])) for j in range(1, 3)]


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_static_verify_buffers_identical(model_dir: Path, plain: LLM, method: str) -> None:
    """The CUDA-graph path's verify rows (fixed buffers per slot and power-of-two width, the
    padding past the drafts), run here on the CPU without capture: same outputs."""
    from realm_web.engines.ort_native import OrtNativeEngine

    engine = OrtNativeEngine(model_dir, dtype="fp32", max_slots=4, max_length=256, static_decode=True,
                             draft_model=model_dir if method == "draft" else None,
                             draft_dtype="int4" if method == "draft" else None)
    llm = LLM(engine=engine, speculative=SpeculativeConfig(method=method, num_speculative_tokens=5, adaptive=False))
    reqs = [(PROMPTS[i % 4], params(i, 30)) for i in range(6)]
    assert ids(llm.generate([r[0] for r in reqs], [r[1] for r in reqs])) == \
        ids(plain.generate([r[0] for r in reqs], [r[1] for r in reqs]))
    assert llm.scheduler.spec_stats["verify_steps"] > 0
    assert {(w, slot) for rows, _, slot, w in engine._static if w > 1} >= {(8, 0)}  # 1 + 5 tokens -> 8 wide
