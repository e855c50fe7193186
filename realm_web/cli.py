"""realm-web command line: pull | export | generate (serve and bench come with their issues)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _cmd_pull(a: argparse.Namespace) -> None:
    from .export.pull import pull

    print(pull(a.dtype or None, force=a.force))


def _cmd_export(a: argparse.Namespace) -> None:
    from .export import export_model
    from .lora import AdapterError

    src = Path(a.src)
    if not src.exists():
        raise CliError(f"{src}: no such file or directory")
    try:
        m = export_model(src, a.output, a.dtype or ["fp32"], max_length=a.max_length,
                         progress=None if a.quiet else _progress, lora_rank=a.lora_rank, merge_lora=a.merge_lora)
    except AdapterError as e:
        raise CliError(f"--merge-lora: {e}") from None
    print(m.directory)


def _progress(msg: str) -> None:
    print(f"[realm-web] {msg}", file=sys.stderr, flush=True)


def _cmd_generate(a: argparse.Namespace) -> None:
    from . import LLM, SamplingParams
    from .paths import default_model_dir

    if not a.prompt or not a.prompt.strip():
        raise CliError("the prompt is empty")
    if a.max_tokens < 0:
        raise CliError(f"--max-tokens must be >= 0, got {a.max_tokens}")
    if a.temperature < 0:
        raise CliError(f"--temperature must be >= 0, got {a.temperature}")
    params = SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                            min_p=a.min_p, repetition_penalty=a.repetition_penalty, seed=a.seed,
                            stop=tuple(a.stop or ()))
    model = Path(a.model) if a.model else default_model_dir()
    if a.model is None and not (model / "realm.json").exists():
        _progress("no default model yet: running `realm-web pull`")
        from .export.pull import pull

        model = pull()
    llm = LLM(model, dtype=a.dtype, device=a.device, threads=a.threads, speculative=_speculative(a))
    adapter = None
    if a.lora:
        llm.load_adapter("lora", a.lora)
        adapter = "lora"
    if a.stream and not a.json:
        import asyncio

        async def go() -> None:
            async for out in llm.stream(a.prompt, params, raw=a.raw, system=a.system, adapter=adapter):
                sys.stdout.write(out.text)
                sys.stdout.flush()
            sys.stdout.write("\n")

        asyncio.run(go())
        return
    c = llm.generate(a.prompt, params, raw=a.raw, system=a.system, adapter=adapter)[0]
    if a.json:
        print(json.dumps({"text": c.text, "token_ids": c.token_ids, "prompt_token_ids": c.prompt_token_ids,
                          "finish_reason": c.finish_reason, "usage": c.usage, "timings": c.timings,
                          "model": str(model), "dtype": llm.engine.variant.dtype if hasattr(llm.engine, "variant") else None},
                         ensure_ascii=False))
    else:
        print(c.text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="realm-web", description="Run a language model everywhere from one Python core.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("pull", help="download the default model (SmolLM2-135M-Instruct) and export it")
    s.add_argument("--dtype", action="append", choices=["fp32", "fp16", "int8", "int4"], help="exports to make (repeatable)")
    s.add_argument("--force", action="store_true", help="export again even if the model is there")
    s.set_defaults(func=_cmd_pull)

    s = sub.add_parser("export", help="export a GGUF file or a Hugging Face directory to ONNX")
    s.add_argument("src", help="a .gguf file or a directory with config.json and *.safetensors")
    s.add_argument("-o", "--output", required=True, help="model directory to write")
    s.add_argument("--dtype", action="append", choices=["fp32", "fp16", "int8", "int4"], help="repeatable; default fp32")
    s.add_argument("--max-length", type=int, default=None, help="context length (default: the model's)")
    s.add_argument("--lora-rank", type=int, default=16,
                   help="also write LoRA-capable graphs for adapters up to this rank (default 16; 0: none)")
    s.add_argument("--merge-lora", action="append", metavar="PATH",
                   help="fold a LoRA adapter (PEFT directory or GGUF LoRA file) into the weights (repeatable)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("generate", help="answer a prompt")
    s.add_argument("prompt")
    s.add_argument("--model", help="model directory (default: the pulled default model)")
    s.add_argument("--dtype", choices=["fp32", "fp16", "int8", "int4"], help="which export to run (default: the manifest's choice)")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--max-tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--min-p", type=float, default=0.0)
    s.add_argument("--repetition-penalty", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--stop", action="append", help="stop string (repeatable)")
    s.add_argument("--system", help="system message")
    s.add_argument("--raw", action="store_true", help="no chat template: the prompt is fed as is")
    s.add_argument("--stream", action="store_true", help="print tokens as they are made")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--lora", help="a LoRA adapter to answer with: a PEFT directory or a GGUF LoRA file")
    _speculative_args(s)
    s.set_defaults(func=_cmd_generate)

    s = sub.add_parser("serve", help="the OpenAI-compatible HTTP + WebSocket server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model", help="model directory (default: the pulled default model)")
    s.add_argument("--config", help="TOML or JSON file with tenants, API keys and limits (default: open, loopback only)")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--dtype", choices=["fp32", "fp16", "int8", "int4"], help="which export to run")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--max-slots", type=int, default=16, help="requests decoded together (more wait in a queue)")
    s.add_argument("--max-length", type=int, default=2048, help="context per request, in tokens")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="info logs one JSON line per request")
    s.add_argument("--web", help="directory of the web page to serve at / (default: build/web of a checkout, made by `make web`)")
    s.add_argument("--lora-modules", nargs="+", metavar="NAME=PATH", default=[],
                   help="LoRA adapters to serve, each as model NAME (a PEFT directory or a GGUF LoRA file)")
    s.add_argument("--lora-root", help="admin tenants may load adapters from under this directory at run time")
    s.add_argument("--max-loras", type=int, default=8, help="adapters in use at once (default 8)")
    s.add_argument("--prefix-caching", action="store_true",
                   help="keep finished requests' caches: a prompt that begins the same way (the next turn of a chat) "
                        "computes only the rest")
    _speculative_args(s)
    s.set_defaults(func=_cmd_serve)
    return p


def _speculative_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--speculative", choices=["ngram", "draft"],
                   help="speculative decoding: ngram (prompt lookup) or draft (a draft model); same output, faster")
    s.add_argument("--num-speculative-tokens", type=int, default=None, metavar="K",
                   help="most draft tokens per verify step (default 4)")
    s.add_argument("--draft-model", help="with --speculative draft: the draft model's directory (default: this model)")
    s.add_argument("--draft-dtype", choices=["fp32", "fp16", "int8", "int4"],
                   help="with --speculative draft: the draft export's dtype (default: the model's int8 export, else int4)")


def _speculative(a: argparse.Namespace) -> dict[str, object] | None:
    """--speculative and its options -> LLM(speculative=...); a CLI error for a bad combination."""
    from .speculative import SpeculativeConfig, SpeculativeError

    if a.speculative is None:
        if a.num_speculative_tokens is not None or a.draft_model or a.draft_dtype:
            raise CliError("--num-speculative-tokens, --draft-model and --draft-dtype need --speculative")
        return None
    cfg: dict[str, object] = {"method": a.speculative}
    if a.num_speculative_tokens is not None:
        cfg["num_speculative_tokens"] = a.num_speculative_tokens
    if a.draft_model:
        if not (Path(a.draft_model) / "realm.json").exists():
            raise CliError(f"--draft-model {a.draft_model}: not a realm-web model directory (no realm.json)")
        cfg["draft_model"] = a.draft_model
    if a.draft_dtype:
        cfg["draft_dtype"] = a.draft_dtype
    try:
        SpeculativeConfig.of(cfg)
    except SpeculativeError as e:
        raise CliError(f"--speculative: {e}") from None
    return cfg


def _cmd_serve(a: argparse.Namespace) -> int:
    from .server.config import ConfigError
    from .server.serve import serve

    if a.model is None:
        from .paths import default_model_dir

        if not (default_model_dir() / "realm.json").exists():
            raise CliError(f"no default model at {default_model_dir()}: run `realm-web pull` first")
    elif not (Path(a.model) / "realm.json").exists():
        raise CliError(f"{a.model}: not a realm-web model directory (no realm.json)")
    if not 0 < a.port < 65536:
        raise CliError(f"--port must be in 1..65535, got {a.port}")
    modules: dict[str, str] = {}
    for m in a.lora_modules:
        name, eq, path = m.partition("=")
        if not eq or not name or not path:
            raise CliError(f"--lora-modules takes NAME=PATH, got {m!r}")
        if not Path(path).exists():
            raise CliError(f"--lora-modules {name}: {path}: no such adapter")
        modules[name] = path
    if a.lora_root is not None and not Path(a.lora_root).is_dir():
        raise CliError(f"--lora-root {a.lora_root}: not a directory")
    if a.max_loras < 1:
        raise CliError(f"--max-loras must be >= 1, got {a.max_loras}")
    if modules:
        _check_adapters(Path(a.model) if a.model else None, modules)
    try:
        return serve(host=a.host, port=a.port, model=a.model, config=a.config, device=a.device, dtype=a.dtype,
                     threads=a.threads, max_slots=a.max_slots, max_length=a.max_length, log_level=a.log_level,
                     web=a.web, lora_modules=modules, lora_root=a.lora_root, max_loras=a.max_loras,
                     speculative=_speculative(a), prefix_caching=a.prefix_caching)
    except ConfigError as e:
        raise CliError(str(e)) from None


def _check_adapters(model: Path | None, modules: dict[str, str]) -> None:
    """Read each adapter against the model before the server starts: a bad one is a CLI error,
    not a server that comes up without its model."""
    from .lora import AdapterError, load_adapter
    from .manifest import load_manifest
    from .paths import default_model_dir

    manifest = load_manifest(model or default_model_dir())
    if manifest.graph.lora is None:
        raise CliError(f"{manifest.directory}: this export has no LoRA-capable graph: export it again "
                       "(realm-web pull, or realm-web export --lora-rank 16)")
    for name, path in modules.items():
        if name == manifest.name:
            raise CliError(f"--lora-modules {name}: an adapter cannot take the base model's name")
        try:
            load_adapter(path, manifest.architecture, name=name, max_rank=manifest.graph.lora.max_rank)
        except AdapterError as e:
            raise CliError(f"--lora-modules {name}: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                        format='{"level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
    try:
        rc = a.func(a)
    except KeyboardInterrupt:
        return 130
    except (CliError, ValueError, FileNotFoundError, RuntimeError) as e:
        if a.verbose:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"realm-web: error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line for the user, traceback with -v
        if a.verbose:
            raise
        print(f"realm-web: error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
              file=sys.stderr)
        return 1
    return int(rc or 0)




if __name__ == "__main__":
    sys.exit(main())
