"""The Python API, no server: load the default model on this machine's CPU (onnxruntime) and ask.

    .venv/bin/python examples/paris/native/paris.py [--stream] [--dtype int4|int8|fp32] [--model DIR]

`realm-web pull` (or `make model`) makes the default model first.
"""
import argparse
import asyncio

from realm_web import LLM, SamplingParams

ap = argparse.ArgumentParser()
ap.add_argument("--stream", action="store_true", help="print the answer as it is generated")
ap.add_argument("--dtype", default=None, help="which export (default: the manifest's choice for the CPU)")
ap.add_argument("--model", default=None, help="a model directory (default: the one `realm-web pull` makes)")
a = ap.parse_args()

llm = LLM(a.model, dtype=a.dtype)  # None: the default model directory
q = "What is the capital of France?"
params = SamplingParams(temperature=0, max_tokens=32)
if a.stream:  # deltas as the tokens come (an async iterator: many streams share one engine loop)
    async def main() -> None:
        async for delta in llm.stream(q, params):
            print(delta.text, end="", flush=True)
        print()

    asyncio.run(main())
else:
    out = llm.generate(q, params)[0]
    print(out.text)
    print(f"({len(out.token_ids)} tokens, finish_reason {out.finish_reason})")
