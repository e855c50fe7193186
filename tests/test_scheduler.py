"""Scheduler and streaming rules driven by hand-made engine results (no model)."""
from __future__ import annotations

from pathlib import Path

import pytest

from realm_web import SamplingParams, Scheduler, SchedulerError, load_tokenizer
from realm_web.step import StepResult
from realm_web.stream import IncrementalDetokenizer, StopStrings

EOS = 2


@pytest.fixture(scope="module")
def tok(model_dir: Path):  # type: ignore[no-untyped-def]
    return load_tokenizer(model_dir)


def drive(s: Scheduler, script: dict[int, list[int]], max_steps: int = 200) -> dict[int, list]:  # type: ignore[type-arg]
    """Run the scheduler against a scripted engine: request id -> the tokens it will 'sample'."""
    outs: dict[int, list] = {}  # type: ignore[type-arg]
    pos = {rid: 0 for rid in script}
    for _ in range(max_steps):
        if not s.has_work():
            break
        plan = s.schedule()
        tokens = {}
        for q in plan.seqs:
            if q.sample:
                tokens[q.seq_id] = [script[q.seq_id][pos[q.seq_id]]]
                pos[q.seq_id] += 1
            else:
                tokens[q.seq_id] = []
        for o in s.update(plan, StepResult(tokens=tokens)):
            outs.setdefault(o.request_id, []).append(o)
    return outs


def text_of(outs: list) -> str:  # type: ignore[type-arg]
    return "".join(o.text for o in outs)


def test_eos_stops_and_is_not_text(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=64)
    ids = tok.encode(" Paris is nice")
    rid = s.add([1, 2, 3], SamplingParams(max_tokens=10))
    outs = drive(s, {rid: ids + [EOS, 5, 5]})[rid]
    assert text_of(outs) == " Paris is nice"
    assert outs[-1].finished and outs[-1].finish_reason == "stop"
    assert sum((o.token_ids for o in outs), []) == ids + [EOS]


def test_max_tokens_gives_length(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=64)
    rid = s.add([1, 2, 3], SamplingParams(max_tokens=3))
    outs = drive(s, {rid: [100, 101, 102, 103, 104]})[rid]
    assert [t for o in outs for t in o.token_ids] == [100, 101, 102]
    assert outs[-1].finish_reason == "length"


def test_stop_string_across_tokens_is_cut_and_held_back(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=64)
    ids = tok.encode("Hello world. END here")
    rid = s.add([1], SamplingParams(max_tokens=50, stop=["D her"]))
    outs = drive(s, {rid: ids + [EOS]})[rid]
    assert text_of(outs) == "Hello world. EN"
    assert outs[-1].finish_reason == "stop"
    # no delta ever contained text past the stop point
    assert all("D" not in o.text for o in outs)


def test_stop_token_ids(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=64)
    rid = s.add([1], SamplingParams(max_tokens=50, stop_token_ids=[30]))
    outs = drive(s, {rid: [504, 30, 31]})[rid]
    assert outs[-1].finish_reason == "stop" and [t for o in outs for t in o.token_ids] == [504, 30]


def test_context_limit_ends_with_length(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=8)
    rid = s.add([1, 2, 3, 4, 5], SamplingParams(max_tokens=100))
    outs = drive(s, {rid: [7] * 20})[rid]
    assert len([t for o in outs for t in o.token_ids]) == 3 and outs[-1].finish_reason == "length"
    with pytest.raises(SchedulerError):
        s.add(list(range(8)), SamplingParams())
    with pytest.raises(SchedulerError):
        s.add([], SamplingParams())


def test_chunked_prefill_respects_budget_and_positions(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=2, max_length=256, max_tokens_per_step=16)
    a = s.add(list(range(10, 50)), SamplingParams(max_tokens=2))
    plan = s.schedule()
    assert [(q.start, len(q.tokens), q.sample) for q in plan.seqs] == [(0, 16, False)]
    s.update(plan, StepResult(tokens={a: []}))
    plan = s.schedule()
    assert [(q.start, len(q.tokens), q.sample) for q in plan.seqs] == [(16, 16, False)]
    s.update(plan, StepResult(tokens={a: []}))
    b = s.add([5, 6, 7], SamplingParams(max_tokens=2))
    plan = s.schedule()  # a finishes its prompt (8 left), b starts (3): within budget
    assert [(q.seq_id, q.start, len(q.tokens), q.sample) for q in plan.seqs] == [(a, 32, 8, True), (b, 0, 3, True)]
    assert plan.num_tokens <= 16


def test_decodes_go_first_and_long_prompt_waits_its_turn(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=2, max_length=512, max_tokens_per_step=8)
    a = s.add([1, 2], SamplingParams(max_tokens=50))
    plan = s.schedule()
    s.update(plan, StepResult(tokens={a: [9]}))
    b = s.add(list(range(100, 140)), SamplingParams(max_tokens=5))
    for _ in range(4):
        plan = s.schedule()
        first = plan.seqs[0]
        assert first.seq_id == a and first.tokens == [9]  # the running stream advances every step
        assert plan.num_tokens <= 8
        s.update(plan, StepResult(tokens={a: [9], b: []}))


def test_abort_frees_slot_for_waiting_request(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=64)
    a = s.add([1, 2], SamplingParams(max_tokens=50))
    b = s.add([3, 4], SamplingParams(max_tokens=50))
    plan = s.schedule()
    assert [q.seq_id for q in plan.seqs] == [a]
    s.abort(a)
    outs = s.update(plan, StepResult(tokens={a: [7]}))
    assert [(o.request_id, o.finish_reason) for o in outs] == [(a, "abort")]
    plan = s.schedule()
    assert [q.seq_id for q in plan.seqs] == [b] and plan.seqs[0].slot == 0 and plan.freed_slots == [0]


def test_seeded_draws_are_reproducible_and_differ_by_seed(tok) -> None:  # type: ignore[no-untyped-def]
    def draws(seed: int) -> list[float]:
        s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=64)
        rid = s.add([1], SamplingParams(max_tokens=5, temperature=1.0, seed=seed))
        seen = []
        for _ in range(5):
            plan = s.schedule()
            seen.append(plan.seqs[0].draw)
            s.update(plan, StepResult(tokens={rid: [40]}))
        return seen

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert all(0.0 <= d < 1.0 for d in draws(123))


def test_incremental_detokenizer_never_splits_characters(tok) -> None:  # type: ignore[no-untyped-def]
    text = "naïve café 日本語 🎉👍🏽 ok"
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok)
    pieces = [d.add([i]) for i in ids] + [d.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_strings_hold_back_only_possible_prefixes() -> None:
    s = StopStrings(["</end>"])
    assert s.feed("abc<") == ("abc", False)
    assert s.feed("/e") == ("", False)
    assert s.feed("x") == ("</ex", False)
    assert s.feed("</end> more") == ("", True)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(max_tokens=-1),
                                 dict(top_k=-2), dict(min_p=2), dict(repetition_penalty=0), dict(stop=[""])])
def test_sampling_params_are_validated(bad: dict) -> None:  # type: ignore[type-arg]
    from realm_web import SamplingError

    with pytest.raises(SamplingError):
        SamplingParams(**bad)
