"""Token ids of the benchmark prompts on every CPU engine, for checking that a change keeps them.

Runs the prompts of bench/cpu_decode.py (128 tokens, EOS ignored) and of the batching workload
(tests/batching_workload.py: greedy and seeded with every sampling option, submitted together so
the scheduler batches them) on:

  native   realm_web's onnxruntime engine (int4 and fp32), in this process
  node     the npm package in Node: Pyodide + onnxruntime-web WASM (fp32) and onnxruntime-node
           (int4), the prompts concurrently

and writes one JSON file. Compare two of them with --compare:

    .venv/bin/python tools/token_snapshot.py --out before.json
    .venv/bin/python tools/token_snapshot.py --out after.json --compare before.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from batching_workload import PROMPTS  # noqa: E402

LONG = "What is the capital of France?"
MAX = 32
# camelCase (the JS options) -> SamplingParams names
SEEDED = [{"temperature": 0.9, "topP": 0.95, "topK": 40, "seed": 11},
          {"temperature": 1.2, "minP": 0.05, "repetitionPenalty": 1.3, "seed": 5},
          {"temperature": 0.7, "seed": 123, "logprobs": True},
          {"repetitionPenalty": 1.2}]
NAMES = {"topP": "top_p", "topK": "top_k", "minP": "min_p", "repetitionPenalty": "repetition_penalty",
         "maxTokens": "max_tokens", "ignoreEos": "ignore_eos"}


def cases() -> list[dict[str, Any]]:
    """(prompt, JS options) of every request, in order."""
    out: list[dict[str, Any]] = [{"prompt": LONG, "options": {"maxTokens": 128, "ignoreEos": True}}]
    for i, p in enumerate(PROMPTS[:8]):
        out.append({"prompt": p, "options": {"maxTokens": MAX}})
        out.append({"prompt": p, "options": {"maxTokens": MAX, **SEEDED[i % len(SEEDED)]}})
    return out


def native(model: str, dtype: str) -> list[list[int]]:
    from realm_web import LLM, SamplingParams

    llm = LLM(model, dtype=dtype, max_slots=8, max_length=512)
    cs = cases()
    params = [SamplingParams(**{NAMES.get(k, k): v for k, v in c["options"].items()}) for c in cs]
    out = [c.token_ids for c in llm.generate([c["prompt"] for c in cs], params)]
    llm.close()
    return out


NODE = """
import { Realm } from "%s";
const [model, engine, dtype, json] = process.argv.slice(2);
const cases = JSON.parse(json);
const llm = await Realm.load({ model, engine, dtype, threads: 1, maxSlots: 8, maxLength: 512 });
const rs = await Promise.all(cases.map((c) => llm.generate(c.prompt, c.options)));
console.log(JSON.stringify(rs.map((r) => r.tokenIds)));
await llm.close();
"""


def node(model: str, engine: str, dtype: str) -> list[list[int]]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "snap.mjs"
        script.write_text(NODE % (ROOT / "wasm" / "src" / "index.mjs").as_posix())
        r = subprocess.run(["node", str(script), model, engine, dtype, json.dumps(cases())],
                           capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"node {engine} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the one `realm-web pull` makes)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", default=None, help="an earlier snapshot: report every difference")
    ap.add_argument("--skip-node", action="store_true")
    a = ap.parse_args()
    if a.model is None:
        from realm_web.paths import default_model_dir

        a.model = str(default_model_dir())
    snap: dict[str, Any] = {"cases": cases(), "runs": {}}
    for dtype in ("int4", "fp32"):
        print(f"native {dtype}", file=sys.stderr, flush=True)
        snap["runs"][f"native-{dtype}"] = native(a.model, dtype)
    if not a.skip_node:
        for engine, dtype in (("wasm", "fp32"), ("native", "int4")):
            print(f"node {engine} {dtype}", file=sys.stderr, flush=True)
            snap["runs"][f"node-{engine}-{dtype}"] = node(a.model, engine, dtype)
    Path(a.out).write_text(json.dumps(snap) + "\n")
    runs = snap["runs"]
    n = sum(len(x) for r in runs.values() for x in r)
    print(f"{len(runs)} runs, {len(snap['cases'])} requests each, {n} tokens -> {a.out}")
    if a.compare is None:
        return 0
    old = json.loads(Path(a.compare).read_text())["runs"]
    bad = 0
    for name, ids in runs.items():
        if name not in old:
            print(f"{name}: not in {a.compare}")
            continue
        diff = [i for i, (x, y) in enumerate(zip(ids, old[name])) if x != y]
        bad += len(diff)
        print(f"{name}: {len(ids) - len(diff)}/{len(ids)} requests identical" + (f" (differ: {diff})" if diff else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
