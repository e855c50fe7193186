"""LoRA adapters read by the core (realm_web/lora.py, standard library only) against peft, the
reference: PEFT directories (fp32, fp16, bf16; rslora, rank_pattern, alpha_pattern, any subset of
targets) and llama.cpp-style GGUF LoRA files give exactly peft's update of every fused group,
and what realm-web does not serve is refused with an error naming the field."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_hf_model
from realm_web.lora import AdapterError, LoraAdapter, group_dims, load_adapter

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ARCH = {"num_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16}
GROUP_MEMBERS = {"qkv": ["q_proj", "k_proj", "v_proj"], "o": ["o_proj"], "gate_up": ["gate_proj", "up_proj"],
                 "down": ["down_proj"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny-lora-base"), model_dir, seed=4)


def make_adapter(base: Path, out: Path, seed: int = 0, dtype: Any = None, **cfg: Any) -> Any:
    """A peft LoRA on the tiny model with random (not zero) B, saved as a PEFT directory."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ALL, "init_lora_weights": False, **cfg})
    pm = peft.get_peft_model(model, config)
    if dtype is not None:
        pm = pm.to(dtype)
    pm.save_pretrained(out)
    return pm


def peft_group_update(pm: Any, layer: int, group: str, x: np.ndarray) -> np.ndarray:
    """x -> the group's fused output change, from peft's own modules (scale included)."""
    layer_mod = pm.base_model.model.model.layers[layer]
    parts = []
    for m in GROUP_MEMBERS[group]:
        mod = getattr(layer_mod.self_attn if m in ("q_proj", "k_proj", "v_proj", "o_proj") else layer_mod.mlp, m)
        out_features = getattr(mod, "base_layer", mod).out_features
        if "default" not in getattr(mod, "lora_A", {}):
            parts.append(np.zeros((x.shape[0], out_features), np.float32))
            continue
        a = mod.lora_A["default"].weight.detach().float().numpy()
        b = mod.lora_B["default"].weight.detach().float().numpy()
        parts.append((x @ a.T @ b.T) * float(mod.scaling["default"]))
    return np.concatenate(parts, axis=1)


def ours(ad: LoraAdapter, layer: int, group: str, x: np.ndarray) -> np.ndarray:
    n_in, n_out = group_dims(ARCH)[group]
    if group not in ad.groups[layer]:
        return np.zeros((x.shape[0], n_out), np.float32)
    a, b, r = ad.groups[layer][group]
    return x @ np.frombuffer(a, np.float32).reshape(n_in, r) @ np.frombuffer(b, np.float32).reshape(r, n_out)


def assert_same(pm: Any, ad: LoraAdapter, tol: float = 1e-5) -> None:
    rng = np.random.default_rng(0)
    for layer in range(ARCH["num_layers"]):
        for g, (n_in, _) in group_dims(ARCH).items():
            x = rng.standard_normal((3, n_in)).astype(np.float32)
            want, got = peft_group_update(pm, layer, g, x), ours(ad, layer, g, x)
            assert np.abs(want).max() > 0 or g not in ad.groups[layer]
            np.testing.assert_allclose(got, want, atol=tol * max(1.0, float(np.abs(want).max())), rtol=0,
                                       err_msg=f"layer {layer} {g}")


@pytest.mark.parametrize("cfg", [
    {},
    {"use_rslora": True, "r": 8, "lora_alpha": 4},
    {"rank_pattern": {"q_proj": 2, "layers.1.mlp.down_proj": 6}, "alpha_pattern": {"v_proj": 3.0}},
    {"target_modules": ["q_proj", "v_proj", "down_proj"]},
    {"target_modules": ["k_proj", "up_proj"], "layers_to_transform": [1]},
], ids=["plain", "rslora", "patterns", "subset", "one-layer"])
def test_peft_adapters_give_peft_updates(tiny: Path, tmp_path: Path, cfg: dict[str, Any]) -> None:
    pm = make_adapter(tiny, tmp_path / "a", **cfg)
    ad = load_adapter(tmp_path / "a", ARCH, name="a")
    assert_same(pm, ad)
    targets = cfg.get("target_modules", ALL)
    assert set(ad.targets) == set(targets)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_adapters(tiny: Path, tmp_path: Path, dtype: str) -> None:
    pm = make_adapter(tiny, tmp_path / "a", dtype=getattr(torch, dtype))
    raw = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert any(v.get("dtype") == ("F16" if dtype == "float16" else "BF16") for v in header.values() if isinstance(v, dict))
    assert_same(pm, load_adapter(tmp_path / "a", ARCH), tol=1e-5)  # the same (rounded) numbers, widened exactly


def write_gguf_lora(pm: Any, path: Path, alpha: float, dtype: str = "F32") -> None:
    """The adapter as llama.cpp's convert_lora_to_gguf.py writes it: general.type adapter,
    adapter.lora.alpha, blk.N.<tensor>.weight.lora_a (r, in) / .lora_b (out, r), q/k lora_b rows in
    llama.cpp's rotary order."""
    import gguf

    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for key, t in pm.state_dict().items():
        if "lora_" not in key:
            continue
        layer = int(key.split("layers.")[1].split(".")[0])
        module = key.split(".lora_")[0].split(".")[-1]
        arr = t.detach().float().numpy()
        if ".lora_B." in key and module in ("q_proj", "k_proj"):
            arr = permute(arr, ARCH["num_heads"] if module == "q_proj" else ARCH["num_kv_heads"])
        name = f"blk.{layer}.{names[module]}.weight.lora_{'a' if '.lora_A.' in key else 'b'}"
        if dtype == "F16":
            w.add_tensor(name, arr.astype(np.float16))
        elif dtype == "Q8_0":
            w.add_tensor(name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("dtype,tol", [("F32", 1e-5), ("F16", 5e-3)])
def test_gguf_lora_gives_the_same_updates(tiny: Path, tmp_path: Path, dtype: str, tol: float) -> None:
    pm = make_adapter(tiny, tmp_path / "a", r=8, lora_alpha=16)
    write_gguf_lora(pm, tmp_path / "a.gguf", 16.0, dtype)
    ad = load_adapter(tmp_path / "a.gguf", ARCH)
    assert_same(pm, ad, tol=tol)
    peft_ad = load_adapter(tmp_path / "a", ARCH)
    if dtype == "F32":  # bit for bit the PEFT directory's
        for layer in range(2):
            for g, (a, b, r) in peft_ad.groups[layer].items():
                assert ad.groups[layer][g] == (a, b, r)


def test_q8_0_gguf_lora(tiny: Path, tmp_path: Path) -> None:
    pm = make_adapter(tiny, tmp_path / "a", r=32, lora_alpha=32, target_modules=["q_proj", "down_proj"])
    write_gguf_lora(pm, tmp_path / "a.gguf", 32.0, "Q8_0")
    assert_same(pm, load_adapter(tmp_path / "a.gguf", ARCH), tol=3e-2)


def test_what_is_not_served_is_refused_by_name(tiny: Path, tmp_path: Path) -> None:
    def refused(path: Path, field: str, **kw: Any) -> None:
        with pytest.raises(AdapterError) as e:
            load_adapter(path, kw.pop("arch", ARCH), **kw)
        assert e.value.field == field, (e.value.field, str(e.value))

    make_adapter(tiny, tmp_path / "dora", use_dora=True)
    refused(tmp_path / "dora", "use_dora")
    make_adapter(tiny, tmp_path / "save", modules_to_save=["lm_head"])
    refused(tmp_path / "save", "modules_to_save")
    make_adapter(tiny, tmp_path / "emb", target_modules=["embed_tokens", "q_proj"])
    refused(tmp_path / "emb", "target_modules")
    make_adapter(tiny, tmp_path / "ok")
    refused(tmp_path / "ok", "hidden_size", arch={**ARCH, "hidden_size": 128, "head_dim": 32})
    refused(tmp_path / "ok", "num_layers", arch={**ARCH, "num_layers": 1})
    refused(tmp_path / "ok", "r", max_rank=2)
    # files that are missing, empty, truncated, or not what they claim
    refused(tmp_path / "missing", "path")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "ok", bad)
    w = bad / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    with pytest.raises(AdapterError, match="truncated or corrupt|not a safetensors"):
        load_adapter(bad, ARCH)
    w.write_bytes(b"\x00" * 3)
    refused(bad, "adapter_model.safetensors")
    (bad / "adapter_config.json").write_text("{not json")
    refused(bad, "adapter_config.json")
    (bad / "adapter_config.json").unlink()
    refused(bad, "adapter_config.json")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 40)
    refused(junk, "path")
    base_gguf = tmp_path / "base.gguf"
    import gguf

    g = gguf.GGUFWriter(str(base_gguf), "llama")
    g.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    refused(base_gguf, "general.type")


# -- serving: the LoRA-capable graph on the native engine ------------------------------------------
IDS = [1, 9690, 198, 2683, 359, 253, 5356, 30, 504, 3575]


@pytest.fixture(scope="module")
def tiny_export(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from realm_web.export import export_model

    out = tmp_path_factory.mktemp("tiny-lora-export")
    export_model(tiny, out, ["fp32"], progress=None, lora_rank=8)
    return out


def strong(pm: Any, factor: float = 20.0) -> Any:
    """Scale B up so the adapter clearly changes what the tiny model says."""
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.mul_(factor)
    return pm


def serve(tiny: Path, tmp: Path, name: str, seed: int, **cfg: Any) -> Any:
    pm = make_adapter(tiny, tmp / name, seed=seed, **{"r": 8, "lora_alpha": 16, **cfg})
    strong(pm).save_pretrained(tmp / name)
    return pm


@pytest.mark.parametrize("cfg", [{}, {"use_rslora": True, "lora_alpha": 4},
                                 {"rank_pattern": {"q_proj": 2, "down_proj": 6}, "alpha_pattern": {"v_proj": 3.0}},
                                 {"target_modules": ["v_proj", "gate_proj"]}],
                         ids=["plain", "rslora", "patterns", "subset"])
def test_served_adapters_match_peft(tiny: Path, tiny_export: Path, tmp_path: Path, cfg: dict[str, Any]) -> None:
    from realm_web import LLM
    from realm_web.step import AdapterLoad, StepPlan

    pm = serve(tiny, tmp_path, "a", 1, **cfg)
    llm = LLM(tiny_export, dtype="fp32", max_length=128, max_slots=4)
    llm.load_adapter("a", tmp_path / "a")
    llm.engine.run_sync(StepPlan(seqs=[], adapter_loads=[AdapterLoad(1, "a", llm.scheduler.router.adapters["a"])]))
    ours = llm.engine.prompt_logits(IDS, 0, adapter_entry=1)
    with torch.no_grad():
        ref = pm(torch.tensor([IDS])).logits[0].numpy()
        gen = pm.merge_and_unload().generate(torch.tensor([IDS]), max_new_tokens=16, do_sample=False,
                                             eos_token_id=None, pad_token_id=0)[0, len(IDS):].tolist()
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()
    assert llm.generate(IDS, max_tokens=16, ignore_eos=True, adapter="a")[0].token_ids == gen
    assert llm.generate(IDS, max_tokens=16, ignore_eos=True)[0].token_ids != gen  # the adapter matters


def test_a_gguf_lora_serves_the_same_tokens(tiny: Path, tiny_export: Path, tmp_path: Path) -> None:
    from realm_web import LLM

    pm = serve(tiny, tmp_path, "a", 2)
    write_gguf_lora(pm, tmp_path / "a.gguf", 16.0)
    llm = LLM(tiny_export, dtype="fp32", max_length=128, max_slots=4)
    llm.load_adapter("peft", tmp_path / "a")
    llm.load_adapter("gguf", tmp_path / "a.gguf")
    out = llm.generate([IDS, IDS], max_tokens=16, ignore_eos=True, adapter=["peft", "gguf"])
    assert out[0].token_ids == out[1].token_ids


def test_mixed_batches_equal_each_request_alone(tiny: Path, tiny_export: Path, tmp_path: Path) -> None:
    """32 staggered requests over 4 adapters and the base (greedy and seeded), on 2 adapter
    entries: every request's tokens equal its tokens alone; base rows equal an engine that never
    loaded an adapter."""
    from realm_web import LLM, SamplingParams

    for k in range(4):
        serve(tiny, tmp_path, f"a{k}", 10 + k)
    llm = LLM(tiny_export, dtype="fp32", max_length=128, max_slots=8, max_tokens_per_step=64)
    for k in range(4):
        llm.load_adapter(f"a{k}", tmp_path / f"a{k}")
    plain = LLM(tiny_export, dtype="fp32", max_length=128, max_slots=8, max_tokens_per_step=64)
    rng = np.random.default_rng(3)
    prompts = [[int(t) for t in rng.integers(3, 40000, size=int(rng.integers(2, 20)))] for _ in range(32)]
    adapters = [None if i % 5 == 4 else f"a{i % 4}" for i in range(32)]
    params = [SamplingParams(max_tokens=int(4 + i % 9), ignore_eos=True, **({"temperature": 0.9, "seed": i}
                                                                          if i % 2 else {})) for i in range(32)]
    alone = [llm.generate(p, q, adapter=a)[0].token_ids for p, q, a in zip(prompts, params, adapters)]
    s = llm.scheduler
    got: dict[int, list[int]] = {}
    rids: dict[int, int] = {}
    arrive = [(i * 5) % 23 for i in range(32)]
    step = 0
    while len(rids) < 32 or s.has_work():
        for i, at in enumerate(arrive):
            if at == step:
                rids[i] = s.add(prompts[i], params[i], adapter=adapters[i])
        plan = s.schedule()
        for o in s.update(plan, llm.engine.run_sync(plan)):
            got.setdefault(o.request_id, []).extend(o.token_ids)
        step += 1
    bad = [i for i in range(32) if got[rids[i]] != alone[i]]
    assert not bad, [(i, adapters[i], params[i].temperature) for i in bad]
    base = [i for i in range(32) if adapters[i] is None]
    assert [plain.generate(prompts[i], params[i])[0].token_ids for i in base] == [alone[i] for i in base]
    assert len({tuple(alone[i]) for i in range(32)}) > 20


def test_adapters_load_and_unload_while_requests_run(tiny: Path, tiny_export: Path, tmp_path: Path) -> None:
    import asyncio

    from realm_web import LLM
    from realm_web.lora import AdapterError

    serve(tiny, tmp_path, "a", 5)
    serve(tiny, tmp_path, "b", 6)
    make_adapter(tiny, tmp_path / "big", r=16, lora_alpha=16)
    llm = LLM(tiny_export, dtype="fp32", max_length=128, max_slots=4)
    llm.load_adapter("a", tmp_path / "a")
    want_a = llm.generate(IDS, max_tokens=40, ignore_eos=True, adapter="a")[0].token_ids
    want_base = llm.generate(IDS, max_tokens=40, ignore_eos=True)[0].token_ids

    async def main() -> tuple[list[int], list[int]]:
        started = asyncio.Event()

        async def run(adapter: str | None) -> list[int]:
            out = []
            async for d in llm.stream(IDS, max_tokens=40, ignore_eos=True, adapter=adapter):
                out += d.token_ids
                started.set()
                if adapter == "a" and len(out) == 1:  # while both run: load one, try to unload the busy one
                    llm.load_adapter("b", tmp_path / "b")
                    with pytest.raises(AdapterError, match="use it"):
                        llm.unload_adapter("a")
            return out

        ta = asyncio.ensure_future(run("a"))
        tb = asyncio.ensure_future(run(None))
        return await ta, await tb

    a, b = asyncio.run(main())
    assert a == want_a and b == want_base
    llm.unload_adapter("a")
    assert llm.adapters() == ["b"]
    with pytest.raises(AdapterError, match="no adapter 'a'"):
        llm.generate(IDS, max_tokens=2, adapter="a")
    with pytest.raises(AdapterError) as e:
        llm.load_adapter("big", tmp_path / "big")  # rank 16 > the export's 8
    assert e.value.field == "r"
    with pytest.raises(TypeError):
        llm.generate([IDS, IDS], adapter=["b"])


# -- the default model ------------------------------------------------------------------------------
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three primary colors.",
             "Explain in one sentence why the sky is blue."]


def run_together(llm: Any, reqs: list[tuple[list[int], Any, str | None]]) -> list[tuple[list[int], list[float]]]:
    """Every request added at once, then stepped to the end: (tokens, logprobs) of each."""
    s = llm.scheduler
    rids = [s.add(p, q, adapter=a) for p, q, a in reqs]
    got: dict[int, tuple[list[int], list[float]]] = {r: ([], []) for r in rids}
    while s.has_work():
        plan = s.schedule()
        for o in s.update(plan, llm.engine.run_sync(plan)):
            got[o.request_id][0].extend(o.token_ids)
            got[o.request_id][1].extend(o.logprobs or [])
    return [got[r] for r in rids]


def test_the_default_model_with_an_adapter_answers_as_peft(model_dir: Path, hf_reference: Any, tmp_path: Path) -> None:
    import copy

    from adapters import write_random_adapter
    from realm_web import LLM
    from realm_web.manifest import load_manifest

    write_random_adapter(tmp_path / "a", load_manifest(model_dir).architecture, r=16, alpha=16, seed=5, b_scale=0.08)
    llm = LLM(model_dir, dtype="fp32", max_slots=4)
    llm.load_adapter("a", tmp_path / "a")
    model, _ = hf_reference
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "a")).eval()
    ours = llm.generate(QUESTIONS, max_tokens=24, temperature=0, adapter="a")
    base = llm.generate(QUESTIONS, max_tokens=24, temperature=0)
    for c in ours:
        with torch.no_grad():
            ref = pm.generate(torch.tensor([c.prompt_token_ids]), max_new_tokens=24, do_sample=False,
                              pad_token_id=2)[0, len(c.prompt_token_ids):].tolist()
        assert c.token_ids == ref[: len(c.token_ids)] and (len(c.token_ids) == 24 or ref[len(c.token_ids) - 1] == 2)
    assert sum(a.token_ids != b.token_ids for a, b in zip(ours, base)) >= 2  # the adapter matters


def test_adapter_rows_are_exact_in_any_batch_of_the_default_model(model_dir: Path, tmp_path: Path) -> None:
    """The served int4 export: prompts of 5-60 tokens on three adapters and the base, every
    token and logprob equal whether each runs alone or all prefill and decode together (groups
    of more than 16 positions per adapter; quantized activations make any difference show)."""
    from adapters import write_random_adapter
    from realm_web import LLM, SamplingParams
    from realm_web.manifest import load_manifest

    arch = load_manifest(model_dir).architecture
    for k, r in enumerate((16, 8, 4)):
        write_random_adapter(tmp_path / f"a{k}", arch, r=r, alpha=2 * r, seed=20 + k, b_scale=0.08)
    llm = LLM(model_dir, dtype="int4", max_slots=8)
    for k in range(3):
        llm.load_adapter(f"a{k}", tmp_path / f"a{k}")
    rng = np.random.default_rng(1)
    words = "the of and a to in is you that it he was for on are as with his they I at be this".split()
    prompts = [llm.tokenizer.encode(" ".join(rng.choice(words, size=int(n)))) for n in (4, 60, 33, 17, 45, 9, 52, 25)]
    adapters = ["a0", "a0", "a0", "a1", "a1", None, "a2", "a0"]
    params = [SamplingParams(max_tokens=6, ignore_eos=True, logprobs=True,
                             **({"temperature": 0.8, "seed": i} if i % 2 else {})) for i in range(8)]
    reqs = list(zip(prompts, params, adapters))
    alone = [run_together(llm, [r])[0] for r in reqs]
    assert run_together(llm, reqs) == alone
    assert run_together(llm, reqs[::-1]) == alone[::-1]


def test_export_merge_lora_answers_as_the_served_adapter(model_dir: Path, default_gguf: Path, tmp_path: Path) -> None:
    """`realm-web export --merge-lora` folds the adapter into the weights: the plain graph of the
    merged export gives the served adapter's greedy tokens (fp32)."""
    import subprocess
    import sys

    from adapters import write_random_adapter
    from realm_web import LLM
    from realm_web.manifest import load_manifest

    write_random_adapter(tmp_path / "a", load_manifest(model_dir).architecture, r=16, alpha=32, seed=1, b_scale=0.06,
                         targets=("q_proj", "k_proj", "o_proj", "up_proj", "down_proj"))
    out = tmp_path / "merged"
    r = subprocess.run([sys.executable, "-m", "realm_web.cli", "export", str(default_gguf), "-o", str(out), "--dtype",
                        "fp32", "--lora-rank", "0", "--merge-lora", str(tmp_path / "a"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_manifest(out).source["merged_lora"] == [str(tmp_path / "a")]
    served = LLM(model_dir, dtype="fp32", max_slots=4, max_length=256)
    served.load_adapter("a", tmp_path / "a")
    want = [c.token_ids for c in served.generate(QUESTIONS, max_tokens=24, adapter="a")]
    assert want != [c.token_ids for c in served.generate(QUESTIONS, max_tokens=24)]
    merged = LLM(out, dtype="fp32", max_slots=4, max_length=256)
    assert [c.token_ids for c in merged.generate(QUESTIONS, max_tokens=24)] == want
    bad = subprocess.run([sys.executable, "-m", "realm_web.cli", "export", str(default_gguf), "-o", str(tmp_path / "x"),
                          "--merge-lora", str(tmp_path / "missing"), "-q"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--merge-lora" in bad.stderr and "no such adapter" in bad.stderr


def test_static_decode_with_adapters_equals_the_dynamic_path(model_dir: Path, tmp_path: Path) -> None:
    """The decode form CUDA graphs capture (the whole adapter table bound, `order` shaped by the
    row count only), run on the CPU: the same greedy and seeded tokens as the dynamic form."""
    from adapters import write_random_adapter
    from realm_web import LLM
    from realm_web.engines.ort_native import OrtNativeEngine
    from realm_web.manifest import load_manifest

    arch = load_manifest(model_dir).architecture
    write_random_adapter(tmp_path / "a1", arch, r=16, alpha=32, seed=1, b_scale=0.08)
    write_random_adapter(tmp_path / "a2", arch, r=8, alpha=16, seed=2, b_scale=0.1, targets=("q_proj", "v_proj", "down_proj"))
    names = [None, "a1", "a2", "a1", None, "a2"]
    prompts = [*QUESTIONS, "Who wrote Hamlet?", "Tell me about owls."]
    got = []
    for static in (False, True):
        eng = OrtNativeEngine(model_dir, dtype="int4", max_slots=8, max_length=256, static_decode=static)
        llm = LLM(engine=eng)
        llm.load_adapter("a1", tmp_path / "a1")
        llm.load_adapter("a2", tmp_path / "a2")
        greedy = [c.token_ids for c in llm.generate(prompts, max_tokens=12, adapter=names)]
        seeded = [c.token_ids for c in llm.generate(prompts, max_tokens=12, temperature=0.8, seed=3, adapter=names)]
        got.append((greedy, seeded))
        if static:
            assert (8, True, 0, 1) in eng._static  # the LoRA decode buffers were used
        llm.close()
    assert got[0] == got[1]
    assert got[0][0][1] != got[0][0][0] or got[0][0][2] != got[0][0][0]
