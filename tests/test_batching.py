"""Continuous batching on the real default model: a request's tokens do not depend on who else
is in the batch, when it arrived, whether others were cancelled, or whether it was preempted."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from realm_web import LLM, SamplingParams

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Explain photosynthesis in one paragraph for a child who is eight years old and curious about plants.",
    "List three colors.",
    "Who wrote Hamlet?",
    "Translate 'good morning' to Spanish.",
    "Hi",
    "Give me a short recipe for pancakes, with ingredients and steps.",
    "Why is the sky blue?",
    "Name a famous physicist and one of their discoveries.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What is the boiling point of water in Fahrenheit?",
    "Tell me a joke about computers.",
    "How many legs does a spider have?",
    "Describe a cat to someone who has never seen one, using at least three different senses.",
]


def run_staggered(llm: LLM, prompts: list[str], params: list[SamplingParams], arrive: list[int],
                  on_step: Callable[[int, dict[int, int]], None] | None = None) -> dict[int, list[int]]:
    """Drive schedule -> engine -> update, adding request i at step arrive[i]."""
    s = llm.scheduler
    rids: dict[int, int] = {}
    step = 0
    while len(rids) < len(prompts) or s.has_work():
        for i, at in enumerate(arrive):
            if at == step:
                rids[i] = s.add(llm.encode_prompt(prompts[i]), params[i])
        if on_step is not None:
            on_step(step, rids)
        plan = s.schedule()
        s.update(plan, llm.engine.run_sync(plan))
        step += 1
    out = {i: s.requests[r].output_ids for i, r in rids.items()}
    for r in rids.values():
        s.requests.pop(r)
    return out


@pytest.fixture(scope="module", params=["int4", "fp32"])
def llm(request: pytest.FixtureRequest, model_dir: Path) -> LLM:
    return LLM(model_dir, dtype=request.param, max_slots=32, max_length=256, max_tokens_per_step=256)


def workload(n: int = 32) -> tuple[list[str], list[int], list[int]]:
    prompts = [PROMPTS[i % len(PROMPTS)] + (" Answer briefly." if i >= len(PROMPTS) else "") for i in range(n)]
    max_tokens = [4 + (i * 7) % 29 for i in range(n)]
    arrive = [(i * 5) % 23 for i in range(n)]  # arrivals spread over the first 23 steps, out of order
    return prompts, max_tokens, arrive


def test_greedy_tokens_identical_alone_and_among_32(llm: LLM) -> None:
    prompts, max_tokens, arrive = workload()
    params = [SamplingParams(max_tokens=m) for m in max_tokens]
    alone = [llm.generate(p, q)[0].token_ids for p, q in zip(prompts, params)]
    batched = run_staggered(llm, prompts, params, arrive)
    assert [batched[i] for i in range(len(prompts))] == alone
    assert any(len(t) > 20 for t in alone)


def test_seeded_sampling_identical_alone_and_batched(llm: LLM) -> None:
    prompts, max_tokens, arrive = workload(12)
    params = [SamplingParams(max_tokens=m + 8, temperature=0.9, top_p=0.95, top_k=50 * (i % 2), seed=100 + i)
              for i, m in enumerate(max_tokens)]
    alone = [llm.generate(p, q)[0].token_ids for p, q in zip(prompts, params)]
    batched = run_staggered(llm, prompts, params, arrive)
    assert [batched[i] for i in range(len(prompts))] == alone
    assert len({tuple(t) for t in alone}) > 1


def test_cancel_frees_the_slot_next_step_and_leaves_others_alone(llm: LLM) -> None:
    prompts, _, _ = workload(8)
    params = [SamplingParams(max_tokens=24, ignore_eos=True) for _ in prompts]
    alone = [llm.generate(p, q)[0].token_ids for p, q in zip(prompts, params)]
    s = llm.scheduler
    seen: dict[str, object] = {}

    def cancel(step: int, rids: dict[int, int]) -> None:
        if step == 10:
            req = s.requests[rids[3]]
            seen["slot"] = req.slot
            s.abort(rids[3])
        if step == 11:  # the plan made right after the abort hands the slot back to the engine
            seen["free_after"] = seen["slot"] in s.free_slots

    plan_freed: list[list[int]] = []
    orig = s.schedule

    def schedule():  # type: ignore[no-untyped-def]
        plan = orig()
        plan_freed.append(list(plan.freed_slots))
        return plan

    s.schedule = schedule  # type: ignore[method-assign]
    try:
        out = run_staggered(llm, prompts, params, [0] * len(prompts), cancel)
    finally:
        del s.schedule
    assert seen["slot"] is not None and seen["slot"] in plan_freed[10]
    for i in range(len(prompts)):
        if i == 3:
            assert 0 < len(out[i]) < 24 and out[i] == alone[i][: len(out[i])]
        else:
            assert out[i] == alone[i]


def test_preempted_requests_resume_exactly(model_dir: Path) -> None:
    # Room for about three requests' worth of KV among 8 slots: decoding outgrows it, so the
    # latest arrivals are preempted, requeued, and recompute their tokens when readmitted.
    llm = LLM(model_dir, max_slots=8, max_length=128, kv_capacity=3 * 60, max_tokens_per_step=256)
    prompts, _, _ = workload(8)
    params = [SamplingParams(max_tokens=20, ignore_eos=True) for _ in prompts]
    alone = [llm.generate(p, q)[0].token_ids for p, q in zip(prompts, params)]
    before = llm.scheduler.num_preemptions
    out = run_staggered(llm, prompts, params, [0, 0, 0, 1, 1, 2, 2, 3])
    assert llm.scheduler.num_preemptions > before
    assert [out[i] for i in range(len(prompts))] == alone
