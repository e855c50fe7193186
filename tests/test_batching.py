"""Continuous batching on the real default model: a request's tokens do not depend on who else
is in the batch, when it arrived, whether others were cancelled, or whether it was preempted."""
from __future__ import annotations

from pathlib import Path

import pytest
from batching_workload import run_staggered, workload

from realm_web import LLM, SamplingParams


@pytest.fixture(scope="module", params=["int4", "fp32"])
def llm(request: pytest.FixtureRequest, model_dir: Path) -> LLM:
    return LLM(model_dir, dtype=request.param, max_slots=32, max_length=256, max_tokens_per_step=256)


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
            seen["slot"], seen["rid"] = req.slot, rids[3]
            s.abort(rids[3])
        if step == 11:  # the slot is free for the next request at once
            seen["free_after"] = seen["slot"] in s.free_slots

    plan_released: list[list[int]] = []
    orig = s.schedule

    def schedule():  # type: ignore[no-untyped-def]
        plan = orig()
        plan_released.append(list(plan.released))
        return plan

    s.schedule = schedule  # type: ignore[method-assign]
    try:
        out = run_staggered(llm, prompts, params, [0] * len(prompts), cancel)
    finally:
        del s.schedule
    assert seen["slot"] is not None and seen["free_after"]
    assert plan_released[10] == [seen["rid"]]  # the plan made right after the abort tells the engine
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


def test_static_decode_buffers_give_the_same_tokens(model_dir: Path) -> None:
    # The CUDA-graph path (fixed-shape device buffers per power-of-two span, mask as wide as the
    # context) run on the CPU without graph capture: the same tokens as the dynamic path.
    from realm_web.engines.ort_native import OrtNativeEngine

    prompts, max_tokens, arrive = workload(12)
    params = [SamplingParams(max_tokens=m) for m in max_tokens]
    eng = OrtNativeEngine(model_dir, max_slots=12, max_length=256, static_decode=True, bucket_shapes=True)
    assert eng.warmup(256) > 0
    static = run_staggered(LLM(engine=eng, max_tokens_per_step=256), prompts, params, arrive)
    plain = run_staggered(LLM(model_dir, max_slots=12, max_length=256, max_tokens_per_step=256), prompts, params, arrive)
    assert static == plain
    # (rows, lora, first slot, width): decode spans from slot 0, LoRA warmed too
    assert sorted(eng._static) == [(r, lora, 0, 1) for r in (1, 2, 4, 8, 12) for lora in (False, True)]


def test_lone_rows_padded_give_the_same_tokens(model_dir: Path) -> None:
    # Where a CPU's kernels compute a lone row (M = 1) otherwise than a batched one, the engine
    # never runs one (ort_native "Lone rows"). Forced on for fp32 (whose kernels agree on every
    # CPU): a lone decode row runs with an idle neighbour, the scratch slot past the last for the
    # last slot, and the tokens equal the unpadded engine's, alone and among others.
    from realm_web.engines.ort_native import OrtNativeEngine, lone_rows_differ

    plain = OrtNativeEngine(model_dir, dtype="fp32", max_slots=4, max_length=256)
    assert plain.scratch_slot == 4
    assert not lone_rows_differ(plain.session, plain.manifest, plain.kv_dtype, plain.pad_id)
    assert not plain.pad_lone_rows
    padded = OrtNativeEngine(model_dir, dtype="fp32", max_slots=4, max_length=256, pad_lone_rows=True)
    prompts, max_tokens, arrive = workload(8)
    params = [SamplingParams(max_tokens=m) for m in max_tokens]
    a, b = LLM(engine=plain, max_tokens_per_step=256), LLM(engine=padded, max_tokens_per_step=256)
    alone = [a.generate(p, q)[0].token_ids for p, q in zip(prompts[:3], params[:3])]
    assert [b.generate(p, q)[0].token_ids for p, q in zip(prompts[:3], params[:3])] == alone
    assert padded._span == (0, 2)  # the last decode step ran slot 0 with slot 1 idle
    assert run_staggered(b, prompts, params, arrive) == run_staggered(a, prompts, params, arrive)
    # the last slot's neighbour is the scratch slot
    s = b.scheduler
    for slot in range(3):  # hold slots 0..2 so that the next request lands in slot 3
        s.add(b.encode_prompt(prompts[slot]), SamplingParams(max_tokens=1))
    rid = s.add(b.encode_prompt(prompts[0]), SamplingParams(max_tokens=3))
    got: list[int] = []
    while s.has_work():
        plan = s.schedule()
        for o in s.update(plan, padded.run_sync(plan)):
            if o.request_id == rid:
                got += o.token_ids
    assert padded._span == (3, 5) and got == alone[0][:3]
