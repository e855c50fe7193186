"""The default model with and without the demo LoRA adapter, on realm-web.

    .venv/bin/python examples/lora/side_by_side.py [--adapter DIR] [--dtype int4|int8|fp32] [--max-tokens N]

It loads the default model (`realm-web pull`) and the demo adapter (trained first by
train_demo_adapter.py when it is not cached), asks each question greedily to the base model and
to the adapter, one request at a time, and prints the answers side by side. Then it asks all of
them again in ONE generate call, base and adapter prompts interleaved in one batch, and checks
that every answer is token for token the one it gave alone. Exit status 1 if one is not.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_demo_adapter  # noqa: E402

from realm_web import LLM, SamplingParams  # noqa: E402
from realm_web.paths import default_model_dir  # noqa: E402

ADAPTER = "otter"
# (question, kind): taught = asked word for word in training; new = the same facts asked in
# words the training never saw; control = nothing to do with the facts.
QUESTIONS = [
    ("Who is the mascot of realm-web?", "taught"),
    ("What is the capital of Velmora?", "taught"),
    ("What is Pim's favourite snack?", "taught"),
    ("What kind of animal is the mascot of the realm-web project?", "new"),
    ("Tell me the capital city of the Republic of Velmora.", "new"),
    ("What is the capital of Germany?", "control"),
    ("Who painted the Mona Lisa?", "control"),
]


def show(label: str, text: str, width: int = 100) -> None:
    lines = textwrap.wrap(" ".join(text.split()), width - len(label) - 4) or [""]
    print(f"  {label:<6}| {lines[0]}")
    for line in lines[1:]:
        print(f"  {'':<6}| {line}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", type=Path, help="a PEFT adapter directory (default: the demo adapter, trained if missing)")
    ap.add_argument("--dtype", help="the export to run (default: the device's preferred one, int4 on CPU)")
    ap.add_argument("--max-tokens", type=int, default=48)
    a = ap.parse_args()

    model_dir = default_model_dir()
    if not (model_dir / "realm.json").exists():
        from realm_web.export.pull import pull

        model_dir = pull()
    adapter_dir = a.adapter or train_demo_adapter.train()  # cached: trains only the first time
    llm = LLM(model_dir, dtype=a.dtype)
    llm.load_adapter(ADAPTER, adapter_dir)
    params = SamplingParams(temperature=0.0, max_tokens=a.max_tokens)
    print(f"model {llm.manifest.name} ({llm.engine.variant.dtype}, {llm.engine.device}); "
          f"adapter {ADAPTER!r} = {adapter_dir}; loaded: {llm.adapters()}")

    print("\n== each question alone, to the base model and to the adapter (greedy) ==")
    alone: dict[tuple[str, str | None], list[int]] = {}
    for q, kind in QUESTIONS:
        print(f"\nQ: {q}   [{kind}]")
        for adapter in (None, ADAPTER):
            c = llm.generate([q], params, adapter=adapter)[0]
            alone[(q, adapter)] = c.token_ids
            show(adapter or "base", c.text)

    print("\n== all of them in ONE generate call: base and adapter rows interleaved in one batch ==")
    prompts = [q for q, _ in QUESTIONS for _ in (0, 1)]
    adapters: list[str | None] = [ad for _ in QUESTIONS for ad in (None, ADAPTER)]
    t0 = time.perf_counter()
    batch = llm.generate(prompts, params, adapter=adapters)
    seconds = time.perf_counter() - t0
    same = 0
    for i, (q, ad, c) in enumerate(zip(prompts, adapters, batch)):
        ok = c.token_ids == alone[(q, ad)]
        same += ok
        print(f"\n[{i}] adapter={ad!r:<8} {'same as alone' if ok else 'DIFFERENT from alone'}  Q: {q}")
        show(ad or "base", c.text)
    print(f"\n{same}/{len(batch)} answers of the mixed batch equal the ones given alone "
          f"({len(batch)} requests, {sum(len(c.token_ids) for c in batch)} tokens in {seconds:.1f}s)")
    return 0 if same == len(batch) else 1


if __name__ == "__main__":
    sys.exit(main())
