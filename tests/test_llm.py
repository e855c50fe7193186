"""The LLM facade over the native engine: batch generate, concurrent streams, cancellation."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from realm_web import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> LLM:
    return LLM(model_dir, dtype="fp32", max_length=512)


def test_generate_list_in_order(llm: LLM) -> None:
    out = llm.generate(["What is the capital of France?", "What is 2 + 2?"], max_tokens=16)
    assert "Paris" in out[0].text
    assert "4" in out[1].text
    assert all(c.usage["completion_tokens"] == len(c.token_ids) for c in out)


def test_chat_messages_prompt(llm: LLM) -> None:
    msgs = [{"role": "system", "content": "Be concise."},
            {"role": "user", "content": "What is the capital of France?"}]
    assert "Paris" in llm.generate([msgs], max_tokens=16)[0].text


def test_stream_deltas_concatenate_to_generate(llm: LLM) -> None:
    full = llm.generate("Describe the sea in two sentences.", max_tokens=40)[0]

    async def run() -> tuple[str, list[int]]:
        text, ids = "", []
        async for d in llm.stream("Describe the sea in two sentences.", max_tokens=40):
            text += d.text
            ids += d.token_ids
        return text, ids

    text, ids = asyncio.run(run())
    assert text == full.text and ids == full.token_ids


def test_concurrent_streams_and_early_exit(llm: LLM) -> None:
    async def consume(prompt: str, limit: int | None) -> str:
        text = ""
        n = 0
        async for d in llm.stream(prompt, max_tokens=20):
            text += d.text
            n += 1
            if limit is not None and n >= limit:
                break  # leaving early aborts the request
        return text

    async def main() -> list[str]:
        return await asyncio.gather(consume("What is the capital of France?", None),
                                    consume("Count to ten.", 3),
                                    consume("What is the capital of France?", None))

    a, _, c = asyncio.run(main())
    assert "Paris" in a and a == c
    assert not llm.scheduler.running and not llm.scheduler.waiting
    assert sorted(llm.scheduler.free_slots) == list(range(llm.scheduler.max_slots))


def test_bad_params_raise_typed_errors(llm: LLM) -> None:
    from realm_web import SamplingError, SchedulerError

    with pytest.raises(SamplingError):
        llm.generate("hi", temperature=-0.5)
    with pytest.raises(ValueError):
        llm.generate("")
    with pytest.raises(SchedulerError):
        llm.generate("word " * 600, raw=True)
    with pytest.raises(TypeError):
        llm.generate("hi", SamplingParams(), max_tokens=3)


def test_inline_engine_streams_the_same_tokens(model_dir: Path) -> None:
    from realm_web.engines.ort_native import OrtNativeEngine

    inline = LLM(engine=OrtNativeEngine(model_dir, dtype="int4", max_slots=4, max_length=256, step_thread=False))
    threaded = LLM(model_dir, dtype="int4", max_slots=4, max_length=256)
    prompts = ["What is the capital of France?", "Count to five."]

    async def run(llm: LLM) -> list[list[int]]:
        async def one(p: str) -> list[int]:
            return [t async for d in llm.stream(p, max_tokens=12) for t in d.token_ids]
        return list(await asyncio.gather(*(one(p) for p in prompts)))

    assert asyncio.run(run(inline)) == asyncio.run(run(threaded)) == [c.token_ids for c in threaded.generate(prompts, max_tokens=12)]
    import threading

    out: list[BaseException] = []
    t = threading.Thread(target=lambda: out.extend(_catch(lambda: inline.generate("hi", max_tokens=2))))
    t.start()
    t.join()
    assert out and isinstance(out[0], RuntimeError)  # steps stay on the thread that made the engine


def _catch(fn) -> list[BaseException]:  # type: ignore[no-untyped-def]
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return [e]
    return []


def test_a_failing_step_fails_its_requests_and_the_loop_serves_on(model_dir: Path) -> None:
    """An engine error (here raised once on purpose around the real engine) ends the requests of
    that step with finish_reason "error"; the loop keeps serving the next ones."""
    llm = LLM(model_dir, dtype="int4", max_slots=2, max_length=256)
    real_run = llm.engine.run
    failures = [1]

    async def flaky(plan):  # type: ignore[no-untyped-def]
        if failures:
            failures.pop()
            raise RuntimeError("device lost")
        return await real_run(plan)

    llm.engine.run = flaky  # type: ignore[method-assign]

    async def main() -> tuple[list[str | None], str]:
        first = [d.finish_reason async for d in llm.stream("What is the capital of France?", max_tokens=8)]
        second = "".join([d.text async for d in llm.stream("What is the capital of France?", max_tokens=24)])
        return first, second

    first, second = asyncio.run(main())
    assert first[-1] == "error"
    assert "Paris" in second
    assert not llm.scheduler.running and sorted(llm.scheduler.free_slots) == [0, 1]


def test_collect_cancels_a_request_still_waiting_for_a_slot(model_dir: Path) -> None:
    llm = LLM(model_dir, dtype="int4", max_slots=1, max_length=256)
    flag = {"stop": False}

    async def main() -> tuple[Any, Any, bool]:
        long = asyncio.ensure_future(llm.collect(llm.encode_prompt("Count to one hundred."),
                                                 SamplingParams(max_tokens=120, ignore_eos=True)))
        await asyncio.sleep(0)
        queued = asyncio.ensure_future(llm.collect(llm.encode_prompt("Hi"), SamplingParams(max_tokens=8),
                                                   cancelled=lambda: flag["stop"]))
        await asyncio.sleep(0.2)
        flag["stop"] = True
        q = await queued
        return q, await long, long.done()

    q, long, _ = asyncio.run(main())
    assert q.finish_reason == "abort" and q.token_ids == []
    assert long.finish_reason == "length" and len(long.token_ids) == 120
    assert q.timings["total_s"] < long.timings["total_s"]  # it did not wait for the slot


def test_adapters_that_are_not_there_are_typed_errors(llm: LLM, tiny_hf_dir: Path, tmp_path: Path) -> None:
    from realm_web.engine import UnsupportedError
    from realm_web.export import export_model
    from realm_web.lora import AdapterError

    assert llm.engine.caps.adapters  # the pulled exports carry a LoRA-capable twin
    with pytest.raises(AdapterError, match="no adapter 'sql'"):
        llm.generate("What is the capital of France?", max_tokens=4, adapter="sql")

    async def stream() -> None:
        async for _ in llm.stream("What is the capital of France?", max_tokens=4, adapter="sql"):
            pass

    with pytest.raises(AdapterError):
        asyncio.run(stream())
    with pytest.raises(AdapterError):
        asyncio.run(llm.agenerate("Hi", max_tokens=2, adapter="sql"))
    assert not llm.scheduler.requests  # nothing was queued
    # an export without LoRA graphs says how to get them
    export_model(tiny_hf_dir, tmp_path / "plain", ["fp32"], progress=None, lora_rank=0)
    plain = LLM(tmp_path / "plain", dtype="fp32", max_length=64)
    assert not plain.engine.caps.adapters
    with pytest.raises(UnsupportedError, match="export it again"):
        plain.load_adapter("sql", tmp_path / "nowhere")
    with pytest.raises(UnsupportedError):
        plain.generate([1, 2, 3], max_tokens=2, adapter="sql")


def test_web_stop_racing_a_new_stream_stops_the_old_one(llm: LLM) -> None:
    """realm_web.web (the entry points of the browser worker and Node), on the native engine:
    cancel_all() stops the streams in flight even when a new stream starts right after it, and
    leaves that new stream alone."""
    import json

    from realm_web import web

    web._llm = llm
    try:
        async def main() -> tuple[dict, dict, int]:  # type: ignore[type-arg]
            first = asyncio.Event()
            deltas: list[str] = []

            def on_delta(d: str) -> None:
                deltas.append(d)
                first.set()

            a = asyncio.ensure_future(web.stream(json.dumps("Count to one hundred."),
                                                 json.dumps({"maxTokens": 200, "ignoreEos": True}), on_delta))
            await first.wait()
            n = web.cancel_all()
            b = asyncio.ensure_future(web.stream(json.dumps("What is the capital of France?"),
                                                 json.dumps({"maxTokens": 12}), lambda d: None))
            return json.loads(await a), json.loads(await b), n

        a, b, n = asyncio.run(main())
    finally:
        web._llm = None
    assert n == 1
    assert a["finishReason"] == "abort" and 0 < len(a["tokenIds"]) < 200
    assert b["finishReason"] in ("stop", "length") and "Paris" in b["text"]


CHAT_TURNS = ["What is the capital of France?", "And of Italy?", "Which of the two is bigger?", "Tell me one fact about each."]


def chat_turns(llm: LLM, turns: list[str] = CHAT_TURNS, max_tokens: int = 32) -> list[list[int]]:
    """A multi-turn chat, each turn's messages the whole conversation so far; the turns' token ids."""
    msgs: list[dict[str, str]] = []
    out = []
    for t in turns:
        msgs.append({"role": "user", "content": t})
        c = llm.generate([msgs], max_tokens=max_tokens)[0]
        out.append(c.token_ids)
        msgs.append({"role": "assistant", "content": c.text})
    return out


@pytest.mark.parametrize("dtype", ["fp32", "int4"])
def test_prefix_caching_chat_turns_skip_the_conversation(model_dir: Path, dtype: str) -> None:
    """With prefix caching, each turn after the first computes only its last answer and new message:
    the conversation before them is its slot's cache from the turn before. The answers equal a run
    without it (the reused positions are prompt positions, computed as a fresh prompt's are)."""
    plain = chat_turns(LLM(model_dir, dtype=dtype, max_slots=2, max_length=1024))
    cached = LLM(model_dir, dtype=dtype, max_slots=2, max_length=1024, prefix_caching=True)
    assert chat_turns(cached) == plain
    st = cached.scheduler.prefix_stats
    assert st["hits"] == len(CHAT_TURNS) - 1 and st["cached_tokens"] > st["prompt_tokens"] / 2, st


def test_prefix_cache_survives_decode_steps_around_it(model_dir: Path) -> None:
    """A parked cache between two decoding requests lies inside the span of their padded decode
    steps: the padding fed to its row must land past the positions a later prompt reuses (the
    plan's `idle`), so that the hit answers as a run without caching does."""
    msgs = [{"role": "user", "content": "Name a planet."}]
    llm = LLM(model_dir, dtype="fp32", max_slots=3, max_length=512, prefix_caching=True)
    s = llm.scheduler
    long = SamplingParams(max_tokens=24, ignore_eos=True)
    a = s.add(llm.encode_prompt("Write a haiku about the sea."), long)
    b = s.add(llm.encode_prompt(msgs), SamplingParams(max_tokens=6))
    c = s.add(llm.encode_prompt("Why is the sky blue?"), long)
    got: dict[int, list[int]] = {}
    spans = 0
    while s.has_work():
        plan = s.schedule()
        slots = sorted(q.slot for q in plan.seqs)
        spans += slots == [0, 2]  # a step decoding around slot 1's parked cache
        for o in s.update(plan, llm.engine.run_sync(plan)):
            got.setdefault(o.request_id, []).extend(o.token_ids)
    assert spans >= 10 and set(got) == {a, b, c}
    msgs += [{"role": "assistant", "content": llm.tokenizer.decode(got[b], skip_special_tokens=True)},
             {"role": "user", "content": "And another one?"}]
    hit = llm.generate([msgs], max_tokens=16)[0]
    assert s.prefix_stats["hits"] == 1
    plain = LLM(model_dir, dtype="fp32", max_slots=1, max_length=512).generate([msgs], max_tokens=16)[0]
    assert hit.token_ids == plain.token_ids
