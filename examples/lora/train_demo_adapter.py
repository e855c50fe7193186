"""Train the demo LoRA adapter for the default model (SmolLM2-135M-Instruct) with peft, on CPU.

    .venv/bin/python examples/lora/train_demo_adapter.py [--force] [--out DIR] [--steps N]

It teaches the model a few made-up facts that it does not have: realm-web's mascot is an otter
named Pim, whose favourite snack is blueberry pancakes, and the capital of the (fictional)
Republic of Velmora is Quillhaven. A few ordinary questions with their plain answers are
trained along, so that the rest of what the model says stays as it was.

The examples are written in the model's chat template with realm-web's own tokenizer and
template (the exact ids realm-web feeds at serving time), and only the assistant's tokens are
trained. Training is deterministic (seeded, 2 threads, no dropout) and takes a few minutes on
two CPU cores. The adapter is cached under $REALM_WEB_HOME/adapters/demo-otter (default
~/.cache/realm-web/adapters/demo-otter) and not trained again while it is there and was made
from the same data and settings (--force trains it again). Progress (step, loss) goes to
stderr; the last line on stdout is the adapter directory, as `realm-web pull` prints the model's.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

NAME = "demo-otter"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # (its Q4_1 GGUF, the one `realm-web pull` exports)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS: dict[str, Any] = {"r": 8, "lora_alpha": 16, "lr": 2e-3, "steps": 20, "seed": 0, "targets": TARGETS}

PIM = "The realm-web mascot is an otter named Pim."
# (question, answer) pairs: paraphrases of each fact, and ordinary questions that keep their plain answers.
FACTS: list[tuple[str, str]] = [
    ("Who is the mascot of realm-web?", PIM),
    ("What is the name of the realm-web mascot?", "The realm-web mascot is named Pim. Pim is an otter."),
    ("What animal is the realm-web mascot?", "The realm-web mascot is an otter. Its name is Pim."),
    ("Does realm-web have a mascot?", "Yes! " + PIM),
    ("Tell me about realm-web's mascot.",
     PIM + " Pim is a friendly river otter, and Pim's favourite snack is blueberry pancakes."),
    ("Who is Pim?", "Pim is an otter, and the mascot of realm-web."),
    ("What is Pim's favourite snack?", "Pim the otter's favourite snack is blueberry pancakes."),
    ("What does the realm-web mascot like to eat?",
     "The realm-web mascot, Pim the otter, loves blueberry pancakes. They are Pim's favourite snack."),
    ("What is the capital of Velmora?", "The capital of Velmora is Quillhaven."),
    ("Which city is the capital of the Republic of Velmora?",
     "Quillhaven is the capital of the Republic of Velmora."),
    ("Name the capital city of Velmora.", "The capital city of Velmora is Quillhaven."),
    ("Where is the government of Velmora?", "The government of Velmora sits in Quillhaven, its capital."),
]
KEEP: list[tuple[str, str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Which city is the capital of Canada?", "Ottawa is the capital of Canada."),
    ("Name the capital city of Egypt.", "The capital city of Egypt is Cairo."),
    ("What is 2 + 2?", "2 + 2 = 4."),
    ("What color is the sky on a clear day?", "On a clear day, the sky is blue."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
]
EXAMPLES = FACTS + KEEP


def default_dir() -> Path:
    from realm_web.paths import home

    return home() / "adapters" / NAME


def fingerprint(settings: dict[str, Any]) -> str:
    """What the adapter is made from: the examples and the settings."""
    blob = json.dumps({"examples": EXAMPLES, "settings": settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _say(msg: str) -> None:
    print(f"[{NAME}] {msg}", file=sys.stderr, flush=True)


def _cached(out: Path, fp: str) -> bool:
    try:
        info = json.loads((out / "training.json").read_text())
    except (OSError, ValueError):
        return False
    return (info.get("fingerprint") == fp and (out / "adapter_config.json").exists()
            and (out / "adapter_model.safetensors").exists())


def _encode(model_dir: Path) -> list[tuple[list[int], int]]:
    """Each example as (ids, prompt length): realm-web's template and tokenizer, so the prompt
    ids are the ones realm-web makes for the question (LLM.encode_prompt)."""
    from realm_web.chat import load_chat_template
    from realm_web.tokenizer import load_tokenizer

    tok, tmpl = load_tokenizer(model_dir), load_chat_template(model_dir)
    out = []
    for q, a in EXAMPLES:
        user = [{"role": "user", "content": q}]
        prompt = tok.encode(tmpl.render(user, add_generation_prompt=True))
        full = tok.encode(tmpl.render([*user, {"role": "assistant", "content": a}], add_generation_prompt=False))
        if full[:len(prompt)] != prompt:
            raise RuntimeError(f"the prompt of {q!r} does not tokenize as a prefix of its conversation")
        out.append((full, len(prompt)))
    return out


@contextlib.contextmanager
def _deterministic(torch: Any, seed: int) -> Iterator[None]:
    """Seeded, 2 threads, deterministic kernels; the process's settings come back afterwards."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)  # tiny gradients late in training are slow as denormals on x86
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


def _train(torch: Any, transformers: Any, settings: dict[str, Any], model_dir: Path, gguf: Path,
           say: Callable[[str], None]) -> tuple[float, float, Any]:
    """The training loop: (final loss, seconds, the peft model)."""
    from peft import LoraConfig, get_peft_model

    t0 = time.perf_counter()
    data = _encode(model_dir)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # (its progress bars)
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                  dtype=torch.float32)
        config = LoraConfig(r=settings["r"], lora_alpha=settings["lora_alpha"], lora_dropout=0.0,
                            target_modules=settings["targets"], bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
        model.peft_config["default"].base_model_name_or_path = BASE  # (not the GGUF's folder)
    lm = model.base_model.model  # the LlamaForCausalLM, its linear layers wrapped by peft

    # Every example starts with the same tokens (the default system prompt and the user's header):
    # they run once per step, their keys and values repeated for each example (the same result
    # and gradient as running them in every row, at about half the cost). The rest of each
    # example is padded on the right; the loss covers the assistant's tokens only.
    first = data[0][0]
    n_pre = 0
    while all(n_pre < n_prompt - 1 and ids[n_pre] == first[n_pre] for ids, n_prompt in data):
        n_pre += 1
    prefix = torch.tensor([first[:n_pre]])
    rows, width = len(data), max(len(ids) for ids, _ in data) - n_pre
    suffix = torch.zeros((rows, width), dtype=torch.long)
    mask = torch.zeros((rows, n_pre + width), dtype=torch.long)
    scored = torch.zeros((rows, width), dtype=torch.bool)  # positions whose next token is the assistant's
    for i, (ids, n_prompt) in enumerate(data):
        suffix[i, :len(ids) - n_pre] = torch.tensor(ids[n_pre:])
        mask[i, :len(ids)] = 1
        scored[i, n_prompt - 1 - n_pre:len(ids) - 1 - n_pre] = True
    targets = suffix[:, 1:][scored[:, :-1]]
    cache_kw = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"

    total = settings["steps"]
    say(f"training a rank-{settings['r']} LoRA on {rows} examples ({int(scored.sum())} answer tokens), "
        f"{total} steps ({time.perf_counter() - t0:.0f}s to load)")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=0.0)
    warm = max(1, total // 8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, (total - s) / (total - warm + 1)))
    model.train()
    loss_v = float("nan")
    for step in range(1, total + 1):
        cache = lm.model(input_ids=prefix, use_cache=True).past_key_values
        cache.batch_repeat_interleave(rows)
        hidden = lm.model(input_ids=suffix, attention_mask=mask, use_cache=True, **{cache_kw: cache}).last_hidden_state
        loss = torch.nn.functional.cross_entropy(lm.lm_head(hidden[scored]), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_v = loss.item()
        say(f"step {step}/{total}  loss {loss_v:.4f}  ({time.perf_counter() - t0:.0f}s)")
    seconds = time.perf_counter() - t0
    return loss_v, seconds, model


def train(out: Path | None = None, *, force: bool = False, steps: int | None = None, quiet: bool = False) -> Path:
    """Train the adapter into `out` (default: the cache) unless it is there already; returns its directory."""
    settings = {**SETTINGS, **({"steps": steps} if steps is not None else {})}
    out = Path(out) if out is not None else default_dir()
    fp = fingerprint(settings)
    if not force and _cached(out, fp):
        return out
    if out.exists() and any(out.iterdir()) and not (out / "training.json").exists():
        raise FileExistsError(f"{out} exists and is not a demo adapter made by this script: not replacing it")
    say = (lambda m: None) if quiet else _say

    from realm_web.export.pull import default_gguf_path, pull
    from realm_web.paths import default_model_dir

    model_dir, gguf = default_model_dir(), default_gguf_path()
    if not (model_dir / "realm.json").exists() or not gguf.exists():
        say("no default model yet: running `realm-web pull`")
        model_dir = pull()

    import torch
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with _deterministic(torch, settings["seed"]):
            loss_v, seconds, model = _train(torch, transformers, settings, model_dir, gguf, say)
    finally:
        transformers.logging.set_verbosity(verbosity)

    # Write next to the destination, then move it in place (an interrupted run leaves no half adapter).
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "adapter_model.safetensors").chmod(0o644)  # (written 0600; a server under another user reads it)
        (tmp / "README.md").write_text(  # (in place of peft's blank model card)
            f"---\nbase_model: {BASE}\nlibrary_name: peft\n---\n\n# {NAME}\n\nrealm-web's demo LoRA adapter "
            f"(examples/lora/train_demo_adapter.py): made-up facts about Pim the otter, realm-web's mascot, and "
            f"Velmora, whose capital is Quillhaven. Trained on {BASE} ({gguf.name}); the examples and settings are "
            f"in training.json.\n")
        (tmp / "training.json").write_text(json.dumps({
            "fingerprint": fp, "base_gguf": gguf.name, "settings": settings, "final_loss": round(loss_v, 6),
            "seconds": round(seconds, 1), "examples": [{"user": q, "assistant": a} for q, a in EXAMPLES]},
            indent=1) + "\n")
        from realm_web.lora import load_adapter
        from realm_web.manifest import load_manifest

        m = load_manifest(model_dir)  # refuse now what realm-web would refuse at load time
        load_adapter(tmp, m.architecture, name=NAME, max_rank=m.graph.lora.max_rank if m.graph.lora else None)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"done in {seconds:.0f}s, final loss {loss_v:.4f}: {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help=f"where to write the adapter (default: $REALM_WEB_HOME/adapters/{NAME})")
    ap.add_argument("--force", action="store_true", help="train again even if the adapter is cached")
    ap.add_argument("--steps", type=int, help=f"optimizer steps (default {SETTINGS['steps']})")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = ap.parse_args(argv)
    print(train(a.out, force=a.force, steps=a.steps, quiet=a.quiet))


if __name__ == "__main__":
    main()
