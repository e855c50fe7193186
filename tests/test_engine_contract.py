"""The step contract on the real native engine, with hand-made plans: the plan's `start` is the
row's length (a row rolls back by starting earlier), samples at several positions equal
step-by-step decoding, KV copies give a slot another's prefix, and plans outside the contract
or the engine's capabilities are refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from realm_web import LLM, load_tokenizer
from realm_web.engines.ort_native import OrtNativeEngine
from realm_web.step import KVCopy, NewSeq, SamplingSpec, SeqStep, StepPlan

GREEDY = SamplingSpec()
PENALTY = SamplingSpec(repetition_penalty=1.5)


@pytest.fixture(scope="module")
def eng(model_dir: Path) -> OrtNativeEngine:
    # fp32: a multi-token step and one-token steps use different kernels, whose sums agree to
    # ~1e-6 in fp32; int4's integer kernels can flip a close call between the two
    return OrtNativeEngine(model_dir, dtype="fp32", max_slots=4, max_length=256)


@pytest.fixture(scope="module")
def prompt(model_dir: Path) -> list[int]:
    return load_tokenizer(model_dir).encode("The quick brown fox jumps over the lazy dog. The quick brown")


@pytest.fixture(scope="module")
def greedy(model_dir: Path, prompt: list[int]) -> list[int]:
    """Ten greedy tokens after the prompt, decoded one step at a time through the scheduler."""
    llm = LLM(model_dir, dtype="fp32", max_slots=1, max_length=256)
    return llm.generate(prompt, max_tokens=10, ignore_eos=True)[0].token_ids


def run(eng: OrtNativeEngine, *seqs: SeqStep, new: list[NewSeq] | None = None, **kw) -> dict[int, list[int]]:  # type: ignore[no-untyped-def]
    return eng.run_sync(StepPlan(seqs=list(seqs), new_seqs=new or [], **kw)).tokens


def test_samples_at_several_positions_equal_step_by_step_decoding(eng, prompt, greedy) -> None:  # type: ignore[no-untyped-def]
    n = len(prompt)
    assert run(eng, SeqStep(1, 0, 0, prompt, 1), new=[NewSeq(1, 0, GREEDY)])[1] == greedy[:1]
    # verification: feed the next 7 tokens at once and sample at each of their positions
    assert run(eng, SeqStep(1, 0, n, greedy[:7], 7))[1] == greedy[1:8]
    # roll back: the row is cut to n + 3 by the plan alone, and continues from there
    assert run(eng, SeqStep(1, 0, n + 3, greedy[3:4], 1))[1] == greedy[4:5]
    assert run(eng, SeqStep(1, 0, n + 4, greedy[4:6], 2))[1] == greedy[5:7]
    assert run(eng, SeqStep(1, 0, n + 6, greedy[6:9], 3))[1] == greedy[7:10]
    # several rows, each sampled at several positions, in one padded step
    out = run(eng, SeqStep(2, 1, 0, prompt + greedy[:3], 4), SeqStep(1, 0, 0, prompt + greedy[:5], 3),
              new=[NewSeq(2, 1, GREEDY)])
    assert out == {2: greedy[:4], 1: greedy[3:6]}
    eng.run_sync(StepPlan(seqs=[], released=[1, 2]))


def test_a_different_token_after_a_rollback_is_computed_afresh(eng, prompt, greedy) -> None:  # type: ignore[no-untyped-def]
    n = len(prompt)
    other = [t for t in (13, 42, 314) if t != greedy[2]][0]
    run(eng, SeqStep(3, 0, 0, prompt, 1), new=[NewSeq(3, 0, GREEDY)])
    run(eng, SeqStep(3, 0, n, greedy[:5], 5))
    after = run(eng, SeqStep(3, 0, n + 2, [other], 1))[3]  # overwrite position n + 2
    fresh = run(eng, SeqStep(4, 1, 0, prompt + greedy[:2] + [other], 1), new=[NewSeq(4, 1, GREEDY)])[4]
    assert after == fresh
    eng.run_sync(StepPlan(seqs=[], released=[3, 4]))


def test_a_kv_copy_gives_a_slot_another_slots_prefix(eng, prompt, greedy) -> None:  # type: ignore[no-untyped-def]
    n = len(prompt)
    run(eng, SeqStep(5, 0, 0, prompt + greedy[:4], 1), new=[NewSeq(5, 0, GREEDY)])
    # slot 2 takes the first n - 1 positions of slot 0, and feeds only the prompt's last token;
    # with a repetition penalty the copied tokens count too
    out = run(eng, SeqStep(6, 2, n - 1, prompt[-1:], 1), new=[NewSeq(6, 2, PENALTY)], copies=[KVCopy(0, 2, n - 1)])
    out |= run(eng, SeqStep(7, 3, 0, prompt, 1), new=[NewSeq(7, 3, PENALTY)])
    assert out[6] == out[7]
    out = run(eng, SeqStep(6, 2, n, out[6], 1), SeqStep(7, 3, n, out[7], 1))
    assert out[6] == out[7]
    eng.run_sync(StepPlan(seqs=[], released=[5, 6, 7]))


def test_plans_outside_the_contract_are_refused(eng, prompt) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="announced"):
        run(eng, SeqStep(8, 0, 0, prompt, 1))
    run(eng, SeqStep(8, 0, 0, prompt, 1), new=[NewSeq(8, 0, GREEDY)])
    with pytest.raises(ValueError, match="holds"):
        run(eng, SeqStep(8, 0, len(prompt) + 5, [1], 1))  # a gap after the cache
    # a multi-token row over a held cache (a verify row) beside another row: it runs on its own
    both = run(eng, SeqStep(8, 0, len(prompt), [1, 2], 2), SeqStep(9, 1, 0, [1, 2], 1), new=[NewSeq(9, 1, GREEDY)])
    assert both[8] == run(eng, SeqStep(8, 0, len(prompt), [1, 2], 2))[8]
    assert both[9] == run(eng, SeqStep(9, 1, 0, [1, 2], 1))[9]
    with pytest.raises(ValueError, match="draft model"):
        run(eng, SeqStep(8, 0, len(prompt), [1], 2, propose=1))
    with pytest.raises(ValueError, match="context"):
        run(eng, SeqStep(8, 0, len(prompt), [1] * 250, 1))
    with pytest.raises(ValueError, match="copy"):
        run(eng, copies=[KVCopy(0, 1, len(prompt) + 50)])
    with pytest.raises(ValueError, match="adapter"):
        run(eng, new=[NewSeq(10, 0, GREEDY, adapter="sql")])
    eng.run_sync(StepPlan(seqs=[], released=[8, 9]))


def test_masks_on_greedy_rows_pick_the_best_allowed_token(eng, prompt, greedy) -> None:  # type: ignore[no-untyped-def]
    """Greedy rows with token masks in one batched step: a mask that allows the argmax keeps it,
    one that refuses it gets the best allowed token (the runner-up), one that allows a single
    token gets that token; an unmasked row beside them is untouched."""
    from realm_web.step import TokenMask

    vocab = eng.manifest.vocab_size
    top = eng.run_sync(StepPlan(seqs=[SeqStep(9, 3, 0, prompt, 1)],
                                new_seqs=[NewSeq(9, 3, SamplingSpec(top_logprobs=2))])).top_logprobs[9][0]
    eng.run_sync(StepPlan(seqs=[], released=[9]))
    assert top[0][0] == greedy[0]
    every = bytes([1]) * vocab
    refuse = bytearray(every)
    refuse[greedy[0]] = 0
    only = bytearray(vocab)
    only[42] = 1
    masks = [TokenMask(9001, every), TokenMask(9002, bytes(refuse)), TokenMask(9003, bytes(only))]
    seqs = [SeqStep(i + 1, i, 0, prompt, 1, masks=[m]) for i, m in enumerate(masks)] + [SeqStep(4, 3, 0, prompt, 1)]
    out = run(eng, *seqs, new=[NewSeq(i + 1, i, GREEDY) for i in range(4)])
    assert out == {1: greedy[:1], 2: [top[1][0]], 3: [42], 4: greedy[:1]}
    eng.run_sync(StepPlan(seqs=[], released=[1, 2, 3, 4]))
