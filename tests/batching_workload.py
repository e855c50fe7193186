"""The staggered-arrival workload shared by tests/test_batching.py and bench/engine_check.py
(plain Python: no pytest, so it also runs on the GPU machine)."""
from __future__ import annotations

from typing import Callable

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
    got: dict[int, list[int]] = {}
    step = 0
    while len(rids) < len(prompts) or s.has_work():
        for i, at in enumerate(arrive):
            if at == step:
                rids[i] = s.add(llm.encode_prompt(prompts[i]), params[i])
        if on_step is not None:
            on_step(step, rids)
        plan = s.schedule()
        for o in s.update(plan, llm.engine.run_sync(plan)):
            got.setdefault(o.request_id, []).extend(o.token_ids)
        step += 1
    return {i: got.get(r, []) for i, r in rids.items()}


def workload(n: int = 32) -> tuple[list[str], list[int], list[int]]:
    prompts = [PROMPTS[i % len(PROMPTS)] + (" Answer briefly." if i >= len(PROMPTS) else "") for i in range(n)]
    max_tokens = [4 + (i * 7) % 29 for i in range(n)]
    arrive = [(i * 5) % 23 for i in range(n)]  # arrivals spread over the first 23 steps, out of order
    return prompts, max_tokens, arrive
