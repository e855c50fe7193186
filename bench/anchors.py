"""Anchors for bench/batching.py, each run the way its users run it, on the same requests:

* transformers `generate` with a static batch (left padding), eager attention;
* a plain `torch.onnx.export` of the same model (past/present KV concatenated each step) on
  onnxruntime with IO binding, a static batch, greedy picks on the device;
* onnxruntime-genai: its model builder's graph and its generator (static batch).

Static batches start together; their time to first token is the batch's prefill.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PAD = 2


def left_pad(ids_list: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    n = max(len(x) for x in ids_list)
    ids = np.full((len(ids_list), n), PAD, np.int64)
    mask = np.zeros((len(ids_list), n), np.int64)
    for i, x in enumerate(ids_list):
        ids[i, n - len(x):] = x
        mask[i, n - len(x):] = 1
    return ids, mask


def hf_dir_from_gguf(gguf: Path, out: Path) -> Path:
    """transformers' dequantized weights saved as safetensors (input for the builders)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    m.hf_quantizer = None
    if hasattr(m.config, "quantization_config"):
        del m.config.quantization_config
    m.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


# -- transformers ---------------------------------------------------------------------------------
def load_hf(hf: Path, device: str, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    td = torch.float16 if dtype == "fp16" else torch.float32
    return AutoModelForCausalLM.from_pretrained(hf, dtype=td, attn_implementation="eager").to(device).eval()


def hf_batched(model: Any, ids_list: list[list[int]], new: int) -> dict[str, Any]:
    import torch

    dev = next(model.parameters()).device
    ids, mask = (torch.from_numpy(a).to(dev) for a in left_pad(ids_list))
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=PAD)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, **kw)
        sync()
        t1 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        sync()
        t2 = time.perf_counter()
    tokens = out[:, ids.shape[1]:].tolist()
    return {"ttft_s": [t1 - t0] * len(ids_list), "total_s": t2 - t1, "tokens": tokens}


# -- plain torch.onnx.export ----------------------------------------------------------------------
def export_plain(hf: Path, out: Path, device: str, dtype: str) -> Path:
    """Legacy torch.onnx.export (opset 17) of the model with concatenated KV in and out, under the
    standard decoder names (input_ids, attention_mask, position_ids, past_key_values.N.key/value ->
    logits for every position, present.N.key/value). Written once to `out/model.onnx`."""
    import torch
    from transformers import DynamicCache

    path = out / "model.onnx"
    if path.exists():
        return path
    out.mkdir(parents=True, exist_ok=True)
    model = load_hf(hf, device, dtype)
    cfg = model.config
    L, kvh = cfg.num_hidden_layers, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, position_ids, *past):  # type: ignore[no-untyped-def]
            cache = DynamicCache()
            for i in range(L):
                cache.update(past[2 * i], past[2 * i + 1], i)
            o = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=cache, use_cache=True)
            pres = []
            for layer in o.past_key_values.layers:
                pres += [layer.keys, layer.values]
            return (o.logits, *pres)

    td = next(model.parameters()).dtype
    b, s, p = 2, 3, 4
    args = (torch.ones(b, s, dtype=torch.long, device=device), torch.ones(b, p + s, dtype=torch.long, device=device),
            torch.arange(p, p + s, device=device).repeat(b, 1),
            *[torch.zeros(b, kvh, p, hd, dtype=td, device=device) for _ in range(2 * L)])
    # the standard decoder names (as transformers.js and optimum use them)
    kv = [f"{i}.{k}" for i in range(L) for k in ("key", "value")]
    names_in = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{x}" for x in kv]
    names_out = ["logits"] + [f"present.{x}" for x in kv]
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch_size", 1: "sequence_length"},
                                       "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
                                       "position_ids": {0: "batch_size", 1: "sequence_length"},
                                       "logits": {0: "batch_size", 1: "sequence_length"}}
    for n in names_in[3:]:
        axes[n] = {0: "batch_size", 2: "past_sequence_length"}
    for n in names_out[1:]:
        axes[n] = {0: "batch_size", 2: "total_sequence_length"}
    part = out / "model.part.onnx"
    with torch.no_grad():
        torch.onnx.export(Wrap(), args, str(part), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    part.replace(path)
    return path


def plain_batched(path: Path, ids_list: list[list[int]], new: int, device: str, threads: int | None) -> dict[str, Any]:
    """Static batch over the plain export: IO binding, KV outputs fed back as inputs, argmax on
    the device (a one-node ArgMax session, as realm-web's engine does)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    prov = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=prov)
    kv_in = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    ft = np.float16 if "float16" in kv_in[0].type else np.float32
    _, kvh, _, hd = kv_in[0].shape
    g = helper.make_graph([helper.make_node("ArgMax", ["x"], ["y"], axis=-1, keepdims=0)], "a",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16 if ft == np.float16 else TensorProto.FLOAT,
                                                         ["b", "s", "v"])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, ["b", "s"])])
    am = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    am.ir_version = 8
    argmax = ort.InferenceSession(am.SerializeToString(), so, providers=prov)
    dev = "cuda" if device == "cuda" else "cpu"
    ids, mask = left_pad(ids_list)
    b = ids.shape[0]
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    past = [ort.OrtValue.ortvalue_from_numpy(np.zeros((b, kvh, 0, hd), ft), dev, 0) for _ in kv_in]
    out_names = [o.name for o in sess.get_outputs()]
    tokens: list[list[int]] = [[] for _ in range(b)]
    t0 = time.perf_counter()
    ttft = 0.0
    for step in range(new):
        bnd = sess.io_binding()
        bnd.bind_cpu_input("input_ids", ids)
        bnd.bind_cpu_input("attention_mask", mask)
        bnd.bind_cpu_input("position_ids", pos)
        for i, v in zip(kv_in, past):
            bnd.bind_ortvalue_input(i.name, v)
        for n in out_names:
            bnd.bind_output(n, dev)
        sess.run_with_iobinding(bnd)
        outs = bnd.get_outputs()
        logits, past = outs[0], outs[1:]
        nxt = argmax.run_with_ort_values(["y"], {"x": logits})[0].numpy()[:, -1]
        for i in range(b):
            tokens[i].append(int(nxt[i]))
        if step == 0:
            ttft = time.perf_counter() - t0
        ids = nxt[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
        pos = pos[:, -1:] + 1
    total = time.perf_counter() - t0
    return {"ttft_s": [ttft] * b, "total_s": total - ttft, "tokens": tokens}


# -- onnxruntime-genai ----------------------------------------------------------------------------
def build_genai(hf: Path, out: Path, precision: str, device: str, threads: int | None) -> Path:
    if not (out / "genai_config.json").exists():
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
               "-p", precision, "-e", device, "-c", str(out / "cache")]
        if precision == "int4":
            cmd += ["--extra_options", "int4_accuracy_level=4"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if threads:
            cfg = json.loads((out / "genai_config.json").read_text())
            so = cfg["model"]["decoder"].setdefault("session_options", {})
            so["intra_op_num_threads"] = threads
            so["inter_op_num_threads"] = 1
            (out / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def genai_batched(model: Any, ids_list: list[list[int]], new: int) -> dict[str, Any]:
    """`model`: a genai model directory, or an `og.Model` already loaded (to time repeated runs)."""
    import onnxruntime_genai as og

    m = og.Model(str(model)) if isinstance(model, (str, Path)) else model
    ids, _ = left_pad(ids_list)
    b, n = ids.shape
    params = og.GeneratorParams(m)
    params.set_search_options(max_length=n + new, min_length=n + new, do_sample=False, batch_size=b)
    g = og.Generator(m, params)
    t0 = time.perf_counter()
    g.append_tokens(ids)
    g.generate_next_token()
    t1 = time.perf_counter()
    while not g.is_done():
        g.generate_next_token()
    t2 = time.perf_counter()
    tokens = [[int(t) for t in g.get_sequence(i)][n:] for i in range(b)]
    return {"ttft_s": [t1 - t0] * b, "total_s": t2 - t1, "tokens": tokens}
