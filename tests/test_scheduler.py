"""Scheduler and streaming rules driven by hand-made engine results (no model)."""
from __future__ import annotations

from pathlib import Path

import pytest

from realm_web import SamplingParams, Scheduler, SchedulerError, load_tokenizer
from realm_web.step import EngineCaps, StepResult
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
            if q.num_samples:
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
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=3, max_length=256, max_tokens_per_step=16)
    a = s.add(list(range(10, 50)), SamplingParams(max_tokens=2))
    plan = s.schedule()
    assert [(q.start, len(q.tokens), bool(q.num_samples)) for q in plan.seqs] == [(0, 16, False)]
    s.update(plan, StepResult(tokens={a: []}))
    b = s.add([5, 6, 7], SamplingParams(max_tokens=2))
    c = s.add([8, 9], SamplingParams(max_tokens=2))
    plan = s.schedule()  # a's next chunk has context before it: it runs alone, a whole budget long
    assert [(q.seq_id, q.start, len(q.tokens), bool(q.num_samples)) for q in plan.seqs] == [(a, 16, 16, False)]
    s.update(plan, StepResult(tokens={a: []}))
    plan = s.schedule()
    assert [(q.seq_id, q.start, len(q.tokens), bool(q.num_samples)) for q in plan.seqs] == [(a, 32, 8, True)]
    s.update(plan, StepResult(tokens={a: [1]}))
    plan = s.schedule()  # a decodes, then b and c (fresh, whole) share one padded prefill step
    assert [(q.seq_id, q.tokens) for q in plan.seqs] == [(a, [1])]
    s.update(plan, StepResult(tokens={a: [EOS]}))
    plan = s.schedule()
    assert [(q.seq_id, q.start, len(q.tokens), bool(q.num_samples)) for q in plan.seqs] == [(b, 0, 3, True), (c, 0, 2, True)]
    assert len(plan.seqs) * 3 <= 16 and plan.released == [a]
    assert [n.seq_id for n in plan.new_seqs] == [b, c]


def test_long_prompt_stalls_a_decoding_stream_by_at_most_one_chunk(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=2, max_length=512, max_tokens_per_step=8)
    a = s.add([1, 2], SamplingParams(max_tokens=50))
    plan = s.schedule()
    s.update(plan, StepResult(tokens={a: [9]}))
    b = s.add(list(range(100, 140)), SamplingParams(max_tokens=5))
    kinds = ""
    for _ in range(12):
        plan = s.schedule()
        ids = {q.seq_id for q in plan.seqs}
        kinds += "a" if ids == {a} else "b" if ids == {b} else "?"
        assert len(plan.seqs) * max(len(q.tokens) for q in plan.seqs) <= 8  # padded cost within budget
        s.update(plan, StepResult(tokens={q.seq_id: [9] if q.num_samples else [] for q in plan.seqs}))
    # while b's 40-token prompt is pending (5 chunks of 8), decode and prefill steps take turns;
    # then both decode together
    assert kinds == "ababababab??", kinds


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
    assert [q.seq_id for q in plan.seqs] == [b] and plan.seqs[0].slot == 0 and plan.released == [a]


def test_seeded_draws_are_reproducible_and_differ_by_seed(tok) -> None:  # type: ignore[no-untyped-def]
    def draws(seed: int) -> list[float]:
        s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=64)
        rid = s.add([1], SamplingParams(max_tokens=5, temperature=1.0, seed=seed))
        seen = []
        for _ in range(5):
            plan = s.schedule()
            seen.append(plan.seqs[0].draws[0])
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


def test_freed_slots_are_reused_lowest_first(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=4, max_length=64)
    ids = [s.add([1, 2, 3], SamplingParams(max_tokens=1)) for _ in range(3)]
    plan = s.schedule()
    assert sorted(q.slot for q in plan.seqs) == [0, 1, 2]
    s.update(plan, StepResult(tokens={i: [5] for i in ids}))  # all finish
    c = s.add([4, 5], SamplingParams(max_tokens=3))
    plan = s.schedule()
    assert [(q.seq_id, q.slot) for q in plan.seqs] == [(c, 0)] and sorted(plan.released) == ids
    assert not s.requests.keys() - {c}  # finished requests leave the scheduler with their last delta


def test_priority_orders_the_queue_and_preempts(tok) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=64)
    low = s.add([1, 2, 3], SamplingParams(max_tokens=4))
    plan = s.schedule()
    s.update(plan, StepResult(tokens={low: [10]}))
    plan = s.schedule()
    s.update(plan, StepResult(tokens={low: [11]}))
    mid = s.add([4], SamplingParams(max_tokens=1))
    high = s.add([5, 6], SamplingParams(max_tokens=2), priority=5)
    plan = s.schedule()  # high takes the only slot from low; mid (same priority as low) waits
    assert [q.seq_id for q in plan.seqs] == [high] and plan.released == [low]
    assert s.requests[low].slot is None and s.requests[low].preemptions == 1
    assert [r.request_id for r in s.waiting] == [low, mid]  # low keeps its place (earlier arrival)
    s.update(plan, StepResult(tokens={high: [20]}))
    plan = s.schedule()
    s.update(plan, StepResult(tokens={high: [21]}))  # high done
    # low resumes: its prompt by prefill, then the two tokens it had replayed one per step (as
    # they were first computed), the last of which samples its third token
    steps = []
    for _ in range(3):
        plan = s.schedule()
        steps += [(q.seq_id, q.start, q.tokens, bool(q.num_samples)) for q in plan.seqs]
        s.update(plan, StepResult(tokens={low: [12] if plan.seqs[0].num_samples else []}))
    assert steps == [(low, 0, [1, 2, 3], False), (low, 3, [10], False), (low, 4, [11], True)]
    plan = s.schedule()
    assert [(q.seq_id, q.start, q.tokens) for q in plan.seqs] == [(low, 5, [12])]
    (last,) = s.update(plan, StepResult(tokens={low: [13]}))
    assert (last.request_id, last.token_ids, last.finish_reason) == (low, [13], "length")
    assert low not in s.requests
    with pytest.raises(SchedulerError):
        s.add([1], SamplingParams(), priority="high")  # type: ignore[arg-type]


class FakeModel:
    """A hand-made engine that follows the step contract with the scheduler's plans and checks
    each against what it holds: every slot's cached tokens (a row continues exactly where its
    cache ends, or starts a fresh one at 0), which requests were announced and released, the
    idle rows' lengths, and the padded-span rules. It 'samples' a token that depends on the
    whole sequence (so a lost, repeated or misplaced token changes everything after it)."""

    def __init__(self, s: Scheduler) -> None:
        self.s = s
        self.kv: dict[int, list[int]] = {i: [] for i in range(s.max_slots)}
        self.known: dict[int, int] = {}  # announced and not released -> its adapter entry
        self.table: dict[int, str] = {}  # adapter entry -> the adapter uploaded there
        self.max_distinct = 0

    def run(self, plan):  # type: ignore[no-untyped-def]
        for sid in plan.released:
            assert sid in self.known, "released a request that was never announced"
            del self.known[sid]
        for load in plan.adapter_loads:  # never over an entry that a running request holds
            assert 1 <= load.entry <= self.s.router.max_loras
            assert all(e != load.entry for e in self.known.values()), "an adapter in use was replaced"
            self.table[load.entry] = load.name
        for n in plan.new_seqs:
            assert n.seq_id not in self.known, "announced twice without a release"
            req = self.s.requests[n.seq_id]
            assert n.sampling == req.params.spec()
            assert n.slot == req.slot
            assert (n.adapter, n.adapter_entry != 0) == (req.adapter, req.adapter is not None)
            assert n.adapter is None or self.table[n.adapter_entry] == n.adapter
            self.known[n.seq_id] = n.adapter_entry
        ran = {q.slot for q in plan.seqs}
        running = {r.slot: r for r in self.s.running}
        for slot, n in plan.idle.items():  # idle rows: held caches of running requests that sit out
            assert slot not in ran and slot in running and n == len(self.kv[slot]) > 0
        assert all(r.slot in ran or r.slot in plan.idle or r.num_computed == 0 for r in self.s.running)
        tokens = {}
        caps = self.s.caps
        assert all(len(q.tokens) <= self.s.chunk or len(q.tokens) == 1 for q in plan.seqs)
        if plan.seqs and not caps.padded_span:  # rows run one by one: the step costs what it feeds
            assert plan.num_tokens <= self.s.budget or len(plan.seqs) == 1 or all(len(q.tokens) == 1 for q in plan.seqs)
            multi = [q for q in plan.seqs if len(q.tokens) > 1 or q.start == 0]
            if caps.prefill_batch == "none":
                assert len(multi) <= 1
        if plan.seqs and caps.padded_span:
            lo, hi = min(q.slot for q in plan.seqs), max(q.slot for q in plan.seqs)
            width = max(len(q.tokens) for q in plan.seqs)
            assert (hi - lo + 1) * width <= self.s.budget or width == 1  # decode spans are 1 wide
            for slot in range(lo, hi + 1):  # every row of the span has room for the padding
                assert plan.idle.get(slot, 0) + width <= self.s.max_length
            assert len(ran) == len(plan.seqs)
            if width > 1 and hi > lo:  # a shared prefill step: every row of the span starts empty
                assert all(q.start == 0 for q in plan.seqs) and not any(lo <= s <= hi for s in plan.idle)
            assert width == 1 or all(q.start + len(q.tokens) <= len(self.s.requests[q.seq_id].all_ids)
                                     for q in plan.seqs)
        entries = {self.known[q.seq_id] for q in plan.seqs if q.seq_id in self.known} - {0}
        assert len(entries) <= self.s.router.max_loras
        self.max_distinct = max(self.max_distinct, len(entries))
        for q in plan.seqs:
            assert q.seq_id in self.known, "a request ran without being announced"
            if q.start == 0:
                self.kv[q.slot] = []
            assert q.start == len(self.kv[q.slot]), "a step must continue exactly where the cache ends"
            self.kv[q.slot] += q.tokens
            assert len(q.draws) == (q.num_samples if not self.s.requests[q.seq_id].spec.greedy else 0)
            entry = self.known[q.seq_id]
            salt = [sum(map(ord, self.table[entry]))] if entry else []  # the adapter changes the token
            tokens[q.seq_id] = [self.next_token(salt + self.kv[q.slot])] if q.num_samples else []
        assert self.s.kv_used() <= self.s.kv_capacity
        return StepResult(tokens=tokens)

    @staticmethod
    def next_token(seq: list[int]) -> int:
        h = 0
        for t in seq:
            h = (h * 31 + t) % 1_000_003
        return 3 + h % 500


@pytest.mark.parametrize("caps", [EngineCaps(), EngineCaps(padded_span=False, prefill_batch="any"),
                                  EngineCaps(padded_span=False, prefill_batch="any", prefill_width=16),
                                  EngineCaps(padded_span=False, prefill_batch="none"),
                                  EngineCaps(padded_span=True, prefill_batch="none", prefill_width=8),
                                  EngineCaps(adapters=True), EngineCaps(padded_span=False, prefill_batch="any", adapters=True)],
                         ids=["native", "bridge", "webgpu", "one-prompt", "padded-one-prompt", "native-lora", "bridge-lora"])
def test_random_traffic_matches_each_request_alone(tok, caps: EngineCaps) -> None:  # type: ignore[no-untyped-def]
    import random

    rng = random.Random(7)
    specs = [([rng.randrange(3, 500) for _ in range(rng.randrange(1, 60))], rng.randrange(1, 40),
              rng.choice([0, 0, 1, 2]), rng.randrange(0, 120)) for _ in range(60)]
    names = ["sql", "poet", "pirate", "legal", "kid"]  # 5 adapters over 2 table entries, and the base
    adapters = [rng.choice([None, None, *names]) if caps.adapters else None for _ in specs]

    def alone(prompt: list[int], n: int, adapter: str | None = None) -> list[int]:
        seq, out = list(prompt), []
        salt = [sum(map(ord, adapter))] if adapter else []
        for _ in range(n):
            t = FakeModel.next_token(salt + seq)
            out.append(t)
            seq.append(t)
        return out

    for slots, budget, cap in ((1, 512, None), (4, 16, None), (8, 64, 200), (16, 37, 120)):
        s = Scheduler(tok, eos_token_ids=[1], max_slots=slots, max_length=120, max_tokens_per_step=budget,
                      kv_capacity=cap, caps=caps, max_loras=2)
        for name in names:
            s.load_adapter(name, object())
        fake = FakeModel(s)
        rids: dict[int, int] = {}
        got: dict[int, list[int]] = {}
        reasons: dict[int, str | None] = {}
        aborted: set[int] = set()
        step = 0
        while len(rids) < len(specs) or s.has_work():
            for i, (prompt, n, prio, at) in enumerate(specs):
                if at == step:
                    rids[i] = s.add(prompt, SamplingParams(max_tokens=n, ignore_eos=True), priority=prio,
                                    adapter=adapters[i])
            if step % 13 == 5 and s.running:
                victim = s.running[rng.randrange(len(s.running))]
                aborted.add(victim.request_id)
                s.abort(victim.request_id)
            plan = s.schedule()
            for o in s.update(plan, fake.run(plan)):
                got.setdefault(o.request_id, []).extend(o.token_ids)
                if o.finished:
                    reasons[o.request_id] = o.finish_reason
            step += 1
            assert step < 5000
        assert not s.requests and not fake.known  # every request finished, and was released
        for i, (prompt, n, _, _) in enumerate(specs):
            rid = rids[i]
            ids = got.get(rid, [])
            if rid in aborted:
                assert reasons[rid] == "abort"
                assert ids == alone(prompt, n, adapters[i])[: len(ids)]
            else:
                assert ids == alone(prompt, min(n, 120 - len(prompt)), adapters[i]), (slots, budget, cap, i)
        if caps.adapters and slots > 2:
            assert fake.max_distinct == 2  # the table was full at times
        if cap is not None:
            assert s.num_preemptions > 0  # the capacity limit really was exercised
        assert sorted(s.free_slots) == list(range(slots)) and not s.running and not s.waiting


def _lora_sched(tok, slots: int = 4, max_loras: int = 1, names=("x", "y")):  # type: ignore[no-untyped-def]
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=slots, max_length=256, caps=EngineCaps(adapters=True),
                  max_loras=max_loras)
    for n in names:
        s.load_adapter(n, object())
    return s


def test_a_request_waiting_for_an_adapter_entry_does_not_hold_up_the_queue(tok) -> None:  # type: ignore[no-untyped-def]
    s = _lora_sched(tok)
    fake = FakeModel(s)
    long_x = s.add([1, 2], SamplingParams(max_tokens=50, ignore_eos=True), adapter="x")  # takes the one entry
    s.update(plan := s.schedule(), fake.run(plan))
    y = s.add([3], SamplingParams(max_tokens=3), adapter="y")  # needs the entry: waits
    base = s.add([4], SamplingParams(max_tokens=3))  # behind it, needs no entry
    x2 = s.add([5], SamplingParams(max_tokens=3), adapter="x")  # behind it, the entry it needs is resident
    plan = s.schedule()
    running = {r.request_id for r in s.running}
    assert base in running and x2 in running and y not in running and long_x in running
    assert [r.request_id for r in s.waiting] == [y]
    assert not plan.adapter_loads  # x was uploaded once, for long_x


def test_a_rare_adapter_is_not_starved_by_a_busy_one(tok) -> None:  # type: ignore[no-untyped-def]
    """x is used by a stream of requests that always keep its entry referenced; y waits. The
    router closes x's entry to new requests, its running ones finish, and y gets the entry."""
    s = _lora_sched(tok, slots=4)
    fake = FakeModel(s)
    got: dict[int, list[int]] = {}
    rid_y = None
    for step in range(400):
        if step % 3 == 0:  # a new x request every 3 steps, 6 tokens each: x is never idle
            s.add([7, step % 50 + 3], SamplingParams(max_tokens=6, ignore_eos=True), adapter="x")
        if step == 5:
            rid_y = s.add([9, 9], SamplingParams(max_tokens=4, ignore_eos=True), adapter="y")
        plan = s.schedule()
        for o in s.update(plan, fake.run(plan)):
            got.setdefault(o.request_id, []).extend(o.token_ids)
        if rid_y is not None and rid_y not in s.requests:
            break
    assert rid_y is not None and len(got[rid_y]) == 4, "y starved"
    assert step < 60, step  # it waited for x's running requests only, not for the stream to end


def test_adapters_cannot_be_unloaded_or_used_wrongly(tok) -> None:  # type: ignore[no-untyped-def]
    from realm_web.lora import AdapterError

    s = _lora_sched(tok)
    with pytest.raises(SchedulerError, match="no adapter 'z'"):
        s.add([1], SamplingParams(), adapter="z")
    rid = s.add([1, 2], SamplingParams(max_tokens=2), adapter="x")
    with pytest.raises(AdapterError, match="requests use it"):
        s.unload_adapter("x")  # queued
    fake = FakeModel(s)
    s.update(plan := s.schedule(), fake.run(plan))
    with pytest.raises(AdapterError, match="requests use it"):
        s.unload_adapter("x")  # running
    while rid in s.requests:
        s.update(plan := s.schedule(), fake.run(plan))
    s.unload_adapter("x")
    with pytest.raises(SchedulerError):
        s.add([1], SamplingParams(), adapter="x")
    with pytest.raises(AdapterError, match="no adapter"):
        s.unload_adapter("x")


# -- prefix caching ------------------------------------------------------------------------------------
def run_one(s: Scheduler, prompt: list[int], script: list[int], **kw):  # type: ignore[no-untyped-def]
    """Add a request and drive it to the end; returns (its id, the plans of the steps)."""
    rid = s.add(prompt, SamplingParams(max_tokens=len(script), ignore_eos=True), **kw)
    plans, i = [], 0
    while s.has_work():
        plan = s.schedule()
        plans.append(plan)
        toks = {}
        for q in plan.seqs:
            toks[q.seq_id] = [script[i]] if q.num_samples else []
            i += bool(q.num_samples)
        s.update(plan, StepResult(tokens=toks))
    return rid, plans


def test_prefix_caching_reuses_a_finished_requests_cache(tok) -> None:  # type: ignore[no-untyped-def]
    """The next turn of a chat starts where the last one's prompt ends in the cache: its NewSeq
    says how many positions the slot keeps, the finished request is released in that same plan (so
    the engine keeps the cache), and only the rest is fed (the last answer's positions are
    computed again, as a prompt: they were computed one token at a time)."""
    caps = EngineCaps(prefix_reuse=True)
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=2, max_length=128, prefix_caching=True, caps=caps)
    turn1 = list(range(10, 30))
    a, plans = run_one(s, turn1, [50, 51, 52])
    assert all(a not in p.released for p in plans)  # parked: not released to the engine
    turn2 = turn1 + [50, 51, 52, 60, 61, 62]  # the conversation so far, then the new message
    b, plans = run_one(s, turn2, [70, 71])
    first = plans[0]
    (n,) = first.new_seqs
    assert n.seq_id == b and n.cached == len(turn1) and a in first.released
    assert first.seqs[0].start == n.cached and first.seqs[0].tokens == turn2[n.cached:]
    assert s.prefix_stats["hits"] == 1 and s.prefix_stats["cached_tokens"] == n.cached


def test_prefix_caching_misses_and_evictions(tok) -> None:  # type: ignore[no-untyped-def]
    caps = EngineCaps(prefix_reuse=True)
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=128, prefix_caching=True, caps=caps)
    a, _ = run_one(s, list(range(10, 30)), [50])
    # another prompt takes the only slot: the parked cache is given up (released, no `cached`)
    b, plans = run_one(s, list(range(40, 60)), [51])
    assert plans[0].new_seqs[0].cached == 0 and a in plans[0].released and plans[0].seqs[0].start == 0
    # a prompt that needs prompt logprobs computes every position
    rid = s.add(list(range(40, 60)), SamplingParams(max_tokens=1, prompt_logprobs=0))
    plan = s.schedule()
    assert plan.new_seqs[0].cached == 0 and plan.seqs[0].start == 0 and b in plan.released
    s.abort(rid)
    s.update(plan, StepResult(tokens={}))
    # off (or an engine that cannot keep caches): finished requests are released as before
    for on, c in ((False, caps), (True, EngineCaps())):
        t = Scheduler(tok, eos_token_ids=[EOS], max_slots=1, max_length=128, prefix_caching=on, caps=c)
        x, plans = run_one(t, list(range(10, 30)), [50, 51])
        y, plans = run_one(t, list(range(10, 30)) + [50, 60], [52])
        assert plans[0].new_seqs[0].cached == 0 and plans[0].seqs[0].start == 0
        assert any(x in p.released for p in plans) or not t._parked


def test_prefix_caching_keeps_adapters_apart(tok) -> None:  # type: ignore[no-untyped-def]
    """A cache computed with one adapter is never reused for another (or for the base model)."""
    from realm_web.lora import LoraAdapter

    caps = EngineCaps(prefix_reuse=True, adapters=True)
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=2, max_length=128, prefix_caching=True, caps=caps)
    fake = object.__new__(LoraAdapter)
    s.router.load("x", fake)
    prompt = list(range(10, 30))
    run_one(s, prompt, [50], adapter="x")
    _, plans = run_one(s, prompt + [50, 7], [51])  # the base model: no hit
    assert plans[0].new_seqs[0].cached == 0
    _, plans = run_one(s, prompt + [50, 7], [51], adapter="x")  # the same adapter: a hit
    assert plans[0].new_seqs[0].cached == len(prompt)


def test_parked_caches_are_idle_rows_and_never_take_padding(tok) -> None:  # type: ignore[no-untyped-def]
    """A parked cache inside the span of a padded engine's step: the plan lists it in `idle` with
    the positions a later prompt may reuse (so that padding lands past them), and fresh prompts
    are not batched over a span that holds it (their padding would overwrite it)."""
    caps = EngineCaps(padded_span=True, prefill_batch="fresh", prefix_reuse=True)
    s = Scheduler(tok, eos_token_ids=[EOS], max_slots=4, max_length=128, prefix_caching=True, caps=caps)
    prompts = [list(range(10, 30)), list(range(40, 60)), list(range(70, 90))]
    ids = [s.add(p, SamplingParams(max_tokens=m, ignore_eos=True)) for p, m in zip(prompts, (6, 1, 6))]
    plan = s.schedule()  # the three fresh prompts in one padded step over slots 0..2
    assert [q.slot for q in plan.seqs] == [0, 1, 2]
    s.update(plan, StepResult(tokens={q.seq_id: [5] for q in plan.seqs}))
    plan = s.schedule()  # slot 1's request is done (parked); slots 0 and 2 decode around it
    assert ids[1] not in plan.released and [q.slot for q in plan.seqs] == [0, 2]
    assert plan.idle == {1: len(prompts[1])}
    while s.has_work():
        s.update(plan, StepResult(tokens={q.seq_id: [5] for q in plan.seqs}))
        plan = s.schedule()
    # slots 0..2 parked, 3 clean: a fresh prompt takes slot 3, the next one gives slot 0's cache
    # up; slots 1 and 2 lie between them, so each prompt runs on its own
    d, e = (s.add(list(range(b, b + 10)), SamplingParams(max_tokens=1)) for b in (100, 200))
    plan = s.schedule()
    assert [(q.seq_id, q.slot) for q in plan.seqs] == [(d, 3)] and plan.idle == {1: 20, 2: 20}
    s.update(plan, StepResult(tokens={d: [5]}))
    plan = s.schedule()
    assert [(q.seq_id, q.slot, q.start) for q in plan.seqs] == [(e, 0, 0)] and 0 not in plan.idle
