"""Build a Llama-family decoder ONNX graph directly from weights (no tracing).

The graph follows the Hugging Face ONNX decoder convention (input_ids, attention_mask,
past_key_values.N.key/value -> logits, present.N.key/value), so transformers.js and
onnxruntime-genai style runtimes can load it, but its layers are onnxruntime's fused kernels:

  SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization   RMSNorm (+ residual add)
  one MatMul (or MatMulNBits) for q|k|v and one for gate|up          fewer, larger matmuls
  GroupQueryAttention with rotary embedding inside                   KV cache append + RoPE + attention

KV cache: (batch, kv_heads, length, head_dim). The attention_mask (batch, total_length) only
gives each row's valid length (GroupQueryAttention takes seqlens_k = sum(mask) - 1), so rows
are right-padded. When the runtime binds the same buffer as past and present (capacity
`max_length`), the cache is updated in place and nothing is copied between steps.

`logits_index` (input, batch x k, int64) picks, per row, the k positions of this step whose
logits the lm_head computes: the last real token of each row for ordinary decoding (rows are
right-padded, so that is not always the last column), k positions for speculative
verification, arange(sequence_length) for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..manifest import GraphSpec, LoraContract
from .config import ModelConfig
from .quantize import NBits, concat_rows, quantize
from .packed import Origin
from .weights import BLOCK, Weight, dense

DTYPES = ("fp32", "fp16", "int8", "int4")
REFINE = 32  # lm_head candidates recomputed exactly in quantized exports
MS = "com.microsoft"


@dataclass
class _Graph:
    float_type: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    counter: int = 0
    _consts: set[str] = field(default_factory=set)

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "", **attrs: Any) -> list[str]:
        if isinstance(outputs, int):
            outputs = [self.name(f"/{op}") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.name(op), domain=domain, **attrs))
        return outputs

    def const(self, name: str, arr: np.ndarray) -> str:
        """An initializer (a name already made is reused: same name, same value)."""
        if name not in self._consts:
            self._consts.add(name)
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def floats(self, name: str, arr: np.ndarray) -> str:
        np_type = np.float16 if self.float_type == TensorProto.FLOAT16 else np.float32
        return self.const(name, np.asarray(arr, dtype=np_type))


LORA_GROUPS = ("qkv", "o", "gate_up", "down")
LORA_FORMS = ("gather", "masked", "grouped", "grouped-scatter", "grouped-h")


@dataclass(frozen=True)
class LoraLayout:
    """Per-row LoRA in the graph: adapter tables with `slots` entries (slot 0 all zeros: no
    adapter) of `ranks[group]` columns, a `lora_slot` (batch,) input naming each row's entry.

    form "gather": a (slots, in, R), b (slots, R, out); each row gathers its entry's tables and
    multiplies them (weights copied per row). form "masked": a (in, slots*R), b (slots*R, out);
    every row multiplies by all entries' A, the columns of other entries are masked to zero, then
    one matmul by B (no weights move; compute grows with the slots). form "grouped": a (slots, in,
    R), b (slots, R, out) as in "gather", but the rows are grouped by entry: `lora_order` (slots,
    n) lists each entry's rows (flattened batch x positions; the index rows x positions points at a
    zero row), the groups go through one batched matmul each by A and B, and `lora_inverse`
    (rows x positions,) picks each row's result back (rows x positions... for no adapter: a zero
    row). No weights move, and each row is computed for its own adapter only.

    Measured in bench/lora_forms.py only: "grouped-scatter" (each entry's results ScatterND-added
    into y instead of padded and gathered back: bit-identical, fewer nodes), "grouped-h" (that,
    with fp16 tables cast in the graph). On the H200 with CUDA graphs "masked" costs 2.45 ms a
    step against grouped's 3.6-4.1 and the plain graph's 1.18 (0.48x; 16 rows, rank 16,
    bench/reference/lora_forms_gpu_h200_masked_graph.json). A "masked-gemm" variant (y + h @ B
    as one Gemm) was measured there too (2.42 ms) and dropped: on the CPU its logits differed
    from "masked" for some table entries, a discrepancy not yet explained."""

    form: str
    slots: int
    ranks: dict[str, int]


def lora_member_dims(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Each group's members' output widths, in the fused matmul's order."""
    q, kv, ff = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    return {"qkv": (q, kv, kv), "o": (cfg.hidden_size,), "gate_up": (ff, ff), "down": (cfg.hidden_size,)}


def lora_dims(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"qkv": (cfg.hidden_size, q + 2 * kv), "o": (q, cfg.hidden_size),
            "gate_up": (cfg.hidden_size, 2 * cfg.intermediate_size), "down": (cfg.intermediate_size, cfg.hidden_size)}


class _Builder:
    def __init__(self, cfg: ModelConfig, weights: dict[str, Weight], dtype: str, max_length: int,
                 spec: GraphSpec, lora: LoraLayout | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
        if lora is not None and lora.form not in LORA_FORMS:
            raise ValueError(f"LoRA form must be one of {LORA_FORMS}, not {lora.form!r}")
        self.cfg, self.w, self.dtype, self.spec, self.lora_layout = cfg, weights, dtype, spec, lora
        self.lora_inputs: list[onnx.ValueInfoProto] = []
        self.lora_masks: dict[int, str] = {}
        self.bits = {"int4": 4, "int8": 8}.get(dtype)
        self.max_length = max_length
        self.g = _Graph(TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT)
        self.block_sums: dict[str, str] = {}
        self.origins: dict[str, Origin] = {}  # float initializer -> the weights it was made from (packed.py)
        self.consts: dict[str, str] = {}
        self.accuracy_level = 4  # int8 activations: onnxruntime's fast integer kernels
        self.head_accuracy_level = 4

    # -- weights -----------------------------------------------------------------------------
    def linear(self, x: str, names: list[str], out: str, biases: list[str] | None = None) -> str:
        """x @ concat(W_names)^T (+ bias): MatMul for float exports, MatMulNBits for int exports."""
        g = self.g
        ws = [self.w[n] for n in names]
        bias = None
        if biases and all(b in self.w for b in biases):
            bias = np.concatenate([dense(self.w[b]) for b in biases])
        if self.bits is None:
            wt = np.concatenate([dense(w) for w in ws], axis=0).T
            self.origins[out + ".weight"] = Origin(tuple(ws), transpose=True)
            y = g.node("MatMul", [x, g.floats(out + ".weight", wt)])[0]
            return g.node("Add", [y, g.floats(out + ".bias", bias)], [out])[0] if bias is not None else g.node("Identity", [y], [out])[0]
        q = concat_rows([quantize(w, self.bits) for w in ws])
        return self.matmul_nbits(x, q, out, bias)

    def matmul_nbits(self, x: str, q: NBits, out: str, bias: np.ndarray | None, accuracy_level: int | None = None) -> str:
        g = self.g
        inputs = [x, g.const(out + ".qweight", q.packed), g.const(out + ".scales", q.scales),
                  g.const(out + ".zero_points", q.zero_points)]
        if bias is not None:
            inputs += ["", g.const(out + ".bias", bias.astype(np.float32))]
        y = g.node("MatMulNBits", inputs, [out if q.offsets is None else out + "_q"], domain=MS,
                   K=q.k, N=q.n, bits=q.bits, block_size=BLOCK, accuracy_level=self.accuracy_level if accuracy_level is None else accuracy_level)[0]
        if q.offsets is None:
            return y
        # Exact Q4_1: + sum over blocks of (sum of x over the block) * m[n, block].
        corr = g.node("MatMul", [self.block_sum(x, q.k), g.const(out + ".block_offsets", q.offsets)])[0]
        return g.node("Add", [y, corr], [out])[0]

    def block_sum(self, x: str, k: int) -> str:
        """Sums of x over each block of 32 inputs: (..., K) -> (..., K/32)."""
        if x not in self.block_sums:
            g = self.g
            if "block_shape" not in self.consts:
                self.consts["block_shape"] = g.const("block_shape", np.array([0, 0, -1, BLOCK], np.int64))
                self.consts["axes_last"] = g.const("axes_last", np.array([-1], np.int64))
            r = g.node("Reshape", [x, self.consts["block_shape"]])[0]
            self.block_sums[x] = g.node("ReduceSum", [r, self.consts["axes_last"]], keepdims=0)[0]
        return self.block_sums[x]

    def lora(self, x: str, y: str, layer: int, group: str) -> str:
        """y + x @ A[row's entry] @ B[row's entry] (see LoraLayout); y itself with no LoRA."""
        lay = self.lora_layout
        if lay is None or not lay.ranks.get(group):
            return y
        g, ft = self.g, self.g.float_type
        n_in, n_out = lora_dims(self.cfg)[group]
        r = lay.ranks[group]
        names = self.spec.lora
        a = (names.a if names else "lora.{i}.{g}.a").format(i=layer, g=group)
        b = (names.b if names else "lora.{i}.{g}.b{k}").format(i=layer, g=group, k="{k}")
        order, inverse = (names.order, names.inverse) if names else ("lora_order", "lora_inverse")
        if lay.form in ("grouped-scatter", "grouped-h"):  # (bench/lora_forms.py only, for now)
            return self.lora_grouped(x, y, layer, group, a, b, order, inverse, scatter=True,
                                     half_tables=lay.form == "grouped-h")
        if lay.form == "grouped":  # entries: a contiguous range of the engine's adapter table
            d = self.lora_grouped(x, y, layer, group, a, b, order, inverse)
        elif lay.form == "gather":
            b = b.replace("{k}", "")
            self.lora_inputs += [helper.make_tensor_value_info(a, ft, [lay.slots, n_in, r]),
                                 helper.make_tensor_value_info(b, ft, [lay.slots, r, n_out])]
            h = g.node("MatMul", [x, g.node("Gather", [a, "lora_slot"], axis=0)[0]])[0]
            d = g.node("MatMul", [h, g.node("Gather", [b, "lora_slot"], axis=0)[0]])[0]
        else:
            b = b.replace("{k}", "")
            self.lora_inputs += [helper.make_tensor_value_info(a, ft, [n_in, lay.slots * r]),
                                 helper.make_tensor_value_info(b, ft, [lay.slots * r, n_out])]
            h = g.node("Mul", [g.node("MatMul", [x, a])[0], self.lora_mask(r)])[0]
            d = g.node("MatMul", [h, b])[0]
        return g.node("Add", [y, d], [y + "/lora"])[0]

    def lora_grouped(self, x: str, y: str, layer: int, group: str, a: str, b: str, order: str, inverse: str,
                     scatter: bool = False, half_tables: bool = False) -> str:
        """Form "grouped" (the contract's "grouped-tc"): the (row, position)s of each entry in
        use, in chunks of at most 16 columns, through A^T then each member's B^T.

        Transposed and chunked so that a column's result never depends on what else is in its
        group: onnxruntime's CPU MatMul with M fixed (R, or a member's out) computes each of up
        to 16 columns alike, whatever their number or place (beyond 16 columns it blocks K
        otherwise, and results move with the batch; with one column it takes another path:
        engines give >= 2). B^T is per member (q, k, v; gate, up), so no zeros of a
        block-diagonal B are read."""
        g, ft = self.g, self.g.float_type
        assert self.lora_layout is not None
        r_all = self.lora_layout.ranks[group]
        members = lora_member_dims(self.cfg)[group]
        r = r_all // len(members)
        n_in, n_out = lora_dims(self.cfg)[group]
        tt = TensorProto.FLOAT16 if half_tables else ft  # fp16 tables: half the bytes, Cast in cache
        self.lora_inputs.append(helper.make_tensor_value_info(a, tt, ["lora_entries", 1, r_all, n_in]))
        for k, out_k in enumerate(members):
            self.lora_inputs.append(helper.make_tensor_value_info(b.replace("{k}", str(k)), tt,
                                                                  ["lora_entries", 1, out_k, r]))
        if half_tables:
            a_in = g.node("Cast", [a], to=ft)[0]
            b_in = {k: g.node("Cast", [b.replace("{k}", str(k))], to=ft)[0] for k in range(len(members))}
        else:
            a_in, b_in = a, {k: b.replace("{k}", str(k)) for k in range(len(members))}
        flat = g.node("Reshape", [x, g.const(f"lora_flat_{n_in}", np.array([-1, n_in], np.int64))])[0]
        padded = g.node("Concat", [flat, g.floats(f"lora_zero_{n_in}", np.zeros((1, n_in)))], axis=0)[0]
        xg = g.node("Transpose", [g.node("Gather", [padded, order], axis=0)[0]], perm=[0, 1, 3, 2])[0]  # (E, C, in, W)
        h = g.node("MatMul", [a_in, xg])[0]  # (E, C, members x R, W)
        if len(members) == 1:
            dt = g.node("MatMul", [b_in[0], h])[0]
        else:
            hs = g.node("Split", [h, g.const(f"lora_split_{len(members)}x{r}", np.array([r] * len(members), np.int64))],
                        outputs=len(members), axis=2)
            dt = g.node("Concat", [g.node("MatMul", [b_in[k], hk])[0] for k, hk in enumerate(hs)],
                        axis=2)[0]  # (E, C, out, W)
        dg = g.node("Transpose", [dt], perm=[0, 1, 3, 2])[0]  # (E, C, W, out)
        dflat = g.node("Reshape", [dg, g.const(f"lora_flat_{n_out}", np.array([-1, n_out], np.int64))])[0]
        if scatter:  # y[order] += results: padded columns add the zero row's exact 0.0 to the last row
            yflat = g.node("Reshape", [y, g.const(f"lora_flat_{n_out}", np.array([-1, n_out], np.int64))])[0]
            summed = g.node("ScatterND", [yflat, self.lora_scatter_index(order), dflat], reduction="add")[0]
            return g.node("Reshape", [summed, self.lora_out_shape(n_out)])[0]
        dpad = g.node("Concat", [dflat, g.floats(f"lora_zero_{n_out}", np.zeros((1, n_out)))], axis=0)[0]
        rows = g.node("Gather", [dpad, inverse], axis=0)[0]  # (rows x positions, out)
        return g.node("Reshape", [rows, g.node("Shape", [y])[0]])[0]

    def lora_scatter_index(self, order: str) -> str:
        """(entries x chunks x width, 1): each column's row, padding (the zero row) clamped to the last."""
        if not hasattr(self, "_lora_scatter"):
            g = self.g
            last = g.node("Sub", [g.node("Size", [self.spec.input_ids])[0], g.const("lora_one", np.array(1, np.int64))])[0]
            flat = g.node("Reshape", [order, g.const("lora_flat_index", np.array([-1, 1], np.int64))])[0]
            self._lora_scatter = g.node("Min", [flat, last])[0]
        return self._lora_scatter

    def lora_out_shape(self, n_out: int) -> str:
        """(batch, positions, n_out), computed once per width."""
        if not hasattr(self, "_lora_shapes"):
            self._lora_shapes: dict[int, str] = {}
        if n_out not in self._lora_shapes:
            g = self.g
            self._lora_shapes[n_out] = g.node("Concat", [g.node("Shape", [self.spec.input_ids])[0],
                                                         g.const(f"lora_width_{n_out}", np.array([n_out], np.int64))],
                                              axis=0)[0]
        return self._lora_shapes[n_out]

    def lora_mask(self, r: int) -> str:
        """(batch, 1, slots*r): 1 on the r columns of each row's entry, 0 elsewhere."""
        if r not in self.lora_masks:
            g, lay = self.g, self.lora_layout
            assert lay is not None
            if not self.lora_masks:
                slots = g.const("lora_slot_range", np.arange(lay.slots, dtype=np.int64)[None, :])
                hot = g.node("Equal", [g.node("Unsqueeze", ["lora_slot", g.const("axes_1b", np.array([1], np.int64))])[0],
                                       slots])[0]
                self.lora_hot = g.node("Unsqueeze", [g.node("Cast", [hot], to=g.float_type)[0],
                                                     g.const("axes_2b", np.array([2], np.int64))])[0]  # (batch, slots, 1)
            ones = g.floats(f"lora_ones_{r}", np.ones((1, 1, r)))
            wide = g.node("Mul", [self.lora_hot, ones])[0]  # (batch, slots, r)
            self.lora_masks[r] = g.node("Reshape", [wide, g.const(f"lora_mask_shape_{r}",
                                                                  np.array([0, 1, lay.slots * r], np.int64))])[0]
        return self.lora_masks[r]

    def norm_weight(self, name: str) -> str:
        return self.g.floats(name, dense(self.w[name]))

    # -- graph -------------------------------------------------------------------------------
    def embed(self, ids: str) -> str:
        g = self.g
        w = self.w["model.embed_tokens.weight"]
        if self.bits is not None:
            # 8-bit blocks (GGUF Q8_0 carried over exactly), shared by the lookup and the lm_head refinement.
            return self.gather_q8(ids, "/embed_tokens/output")
        self.embed_name = g.floats("model.embed_tokens.weight", dense(w))
        self.origins[self.embed_name] = Origin((w,), transpose=False)
        return g.node("Gather", [self.embed_name, ids], ["/embed_tokens/output"])[0]

    def embed_q8(self) -> list[str]:
        if not hasattr(self, "_embed_q8"):
            g = self.g
            q = quantize(self.w["model.embed_tokens.weight"], 8)
            self._embed_q8 = [g.const("embed_tokens.qweight", q.packed.reshape(q.n, q.k)),
                              g.const("embed_tokens.scales", q.scales.reshape(q.n, q.k // BLOCK)),
                              g.const("embed_tokens.zero_points", q.zero_points.reshape(q.n, q.k // BLOCK))]
            self._embed_nbits = q
        return self._embed_q8

    def gather_q8(self, ids: str, out: str | None = None) -> str:
        data, scales, zp = self.embed_q8()
        return self.g.node("GatherBlockQuantized", [data, ids, scales, zp], [out] if out else 1, domain=MS,
                           gather_axis=0, quantize_axis=1, block_size=BLOCK, bits=8)[0]

    def lm_head(self, x: str, out: str) -> str:
        g = self.g
        tied = self.cfg.tie_word_embeddings
        w = self.w["model.embed_tokens.weight" if tied else "lm_head.weight"]
        if self.bits is None:
            if tied and self.dtype == "fp32":
                # One table for the lookup and the projection: x @ E^T without a transposed copy.
                return g.node("FusedMatMul", [x, self.embed_name], [out], domain=MS, transB=1, alpha=1.0)[0]
            self.origins["lm_head.weight"] = Origin((w,), transpose=True)
            return g.node("MatMul", [x, g.floats("lm_head.weight", dense(w).T)], [out])[0]
        if not tied:
            return self.matmul_nbits(x, quantize(w, 8), out, None, 0)
        # int8 activations (fast) for the whole vocabulary, then the top REFINE candidates recomputed
        # in float from the same 8-bit table: greedy picks match a float head, at int8 cost.
        approx = self.matmul_nbits(x, self._embed_nbits, "/lm_head/approx", None, self.head_accuracy_level)
        k = g.const("refine_k", np.array([REFINE], np.int64))
        _, idx = g.node("TopK", [approx, k], 2, axis=-1)
        rows = self.gather_q8(idx)  # (B, S, REFINE, H)
        xe = g.node("Unsqueeze", [x, g.const("axes_m1", np.array([-1], np.int64))])[0]  # (B, S, H, 1)
        exact = g.node("Squeeze", [g.node("MatMul", [rows, xe])[0], g.const("axes_m1b", np.array([-1], np.int64))])[0]
        return g.node("ScatterElements", [approx, idx, exact], [out], axis=-1)[0]

    def rotary_cache(self) -> tuple[str, str]:
        cfg = self.cfg
        inv = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim))
        t = np.arange(self.max_length, dtype=np.float64)
        freqs = np.outer(t, inv)
        return self.g.floats("cos_cache", np.cos(freqs)), self.g.floats("sin_cache", np.sin(freqs))

    def build(self) -> onnx.ModelProto:
        g, cfg, spec = self.g, self.cfg, self.spec
        ft = g.float_type
        kv_shape_past = ["batch_size", cfg.num_kv_heads, "past_sequence_length", cfg.head_dim]
        kv_shape_present = ["batch_size", cfg.num_kv_heads, "total_sequence_length", cfg.head_dim]
        inputs = [
            helper.make_tensor_value_info(spec.input_ids, TensorProto.INT64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info(spec.attention_mask, TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        ]
        outputs = [helper.make_tensor_value_info(spec.logits, ft, ["batch_size", "logits_length", cfg.vocab_size])]
        for i in range(cfg.num_layers):
            for kv in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(spec.past(i, kv), ft, kv_shape_past))
                outputs.append(helper.make_tensor_value_info(spec.present(i, kv), ft, kv_shape_present))
        inputs.append(helper.make_tensor_value_info(spec.logits_index, TensorProto.INT64, ["batch_size", "logits_length"]))

        # seqlens_k = valid length - 1 per row; total_sequence_length = mask width.
        one = g.const("one_i64", np.array(1, np.int64))
        axes1 = g.const("axes_1", np.array([1], np.int64))
        lens = g.node("ReduceSum", [spec.attention_mask, axes1], keepdims=0)[0]
        seqlens_k = g.node("Cast", [g.node("Sub", [lens, one])[0]], ["seqlens_k"], to=TensorProto.INT32)[0]
        width = g.node("Gather", [g.node("Shape", [spec.attention_mask])[0], one], axis=0)[0]
        total = g.node("Cast", [width], ["total_seq_len"], to=TensorProto.INT32)[0]
        cos, sin = self.rotary_cache()

        h = self.embed(spec.input_ids)
        residual = h
        x = g.node("SimplifiedLayerNormalization", [h, self.norm_weight("model.layers.0.input_layernorm.weight")],
                   ["/layers.0/input_layernorm/output"], axis=-1, epsilon=cfg.rms_norm_eps, stash_type=1)[0]
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            qkv = self.lora(x, self.linear(x, [p + f"self_attn.{n}_proj.weight" for n in "qkv"], f"/layers.{i}/attn/qkv",
                                           [p + f"self_attn.{n}_proj.bias" for n in "qkv"]), i, "qkv")
            attn = g.node("GroupQueryAttention",
                          [qkv, "", "", spec.past(i, "key"), spec.past(i, "value"), seqlens_k, total, cos, sin],
                          [f"/layers.{i}/attn/output", spec.present(i, "key"), spec.present(i, "value")], domain=MS,
                          num_heads=cfg.num_heads, kv_num_heads=cfg.num_kv_heads, do_rotary=1, rotary_interleaved=0,
                          scale=float(1.0 / np.sqrt(cfg.head_dim)))[0]
            o = self.lora(attn, self.linear(attn, [p + "self_attn.o_proj.weight"], f"/layers.{i}/attn/o_proj"), i, "o")
            x, _, _, residual = g.node(
                "SkipSimplifiedLayerNormalization", [o, residual, self.norm_weight(p + "post_attention_layernorm.weight")],
                [f"/layers.{i}/post_attention_layernorm/output", "", "", f"/layers.{i}/residual_attn"],
                domain=MS, epsilon=cfg.rms_norm_eps)
            gu = self.lora(x, self.linear(x, [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], f"/layers.{i}/mlp/gate_up"),
                           i, "gate_up")
            gate, up = g.node("Split", [gu, g.const(g.name("split"), np.array([cfg.intermediate_size] * 2, np.int64))], 2, axis=-1)
            act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])[0]])[0], up])[0]
            down = self.lora(act, self.linear(act, [p + "mlp.down_proj.weight"], f"/layers.{i}/mlp/down_proj"), i, "down")
            nxt = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < cfg.num_layers else "model.norm.weight"
            x, _, _, residual = g.node(
                "SkipSimplifiedLayerNormalization", [down, residual, self.norm_weight(nxt)],
                [f"/layers.{i + 1}/input_layernorm/output", "", "", f"/layers.{i}/residual_mlp"],
                domain=MS, epsilon=cfg.rms_norm_eps)
        # Gather the positions named by logits_index (batch, k) -> x (batch, k, hidden). GatherND
        # with batch_dims=1 needs no shape arithmetic, so no node falls back to the CPU (which
        # CUDA graph capture requires).
        idx = g.node("Unsqueeze", [spec.logits_index, g.const("axes_2", np.array([2], np.int64))])[0]
        x = g.node("GatherND", [x, idx], batch_dims=1)[0]
        self.lm_head(x, spec.logits)
        if self.lora_layout is not None and self.lora_layout.form in ("grouped", "grouped-scatter", "grouped-h"):
            lc = spec.lora
            inputs += [helper.make_tensor_value_info(lc.order if lc else "lora_order", TensorProto.INT64,
                                                     ["lora_entries", "lora_chunks", "lora_width"]),
                       helper.make_tensor_value_info(lc.inverse if lc else "lora_inverse", TensorProto.INT64,
                                                     ["batch_positions"]),
                       *self.lora_inputs]
        elif self.lora_layout is not None:
            inputs += [helper.make_tensor_value_info("lora_slot", TensorProto.INT64, ["batch_size"]), *self.lora_inputs]
        graph = helper.make_graph(g.nodes, "realm_web_decoder", inputs, outputs, g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)],
                                  producer_name="realm-web")
        model.ir_version = 10
        return model


def build_decoder(cfg: ModelConfig, weights: dict[str, Weight], dtype: str, max_length: int | None = None,
                  spec: GraphSpec | None = None, lora: LoraLayout | None = None,
                  origins: dict[str, Origin] | None = None) -> onnx.ModelProto:
    """The decoder graph for `dtype` (fp32, fp16, int8, int4), with the names of `spec`; with
    `lora`, per-row LoRA inputs too (see LoraLayout). `origins`, if given, is filled with where
    each float weight came from (for packed.write_packed)."""
    b = _Builder(cfg, weights, dtype, max_length or cfg.max_position_embeddings, spec or graph_spec(), lora)
    model = b.build()
    if origins is not None:
        origins.update(b.origins)
    return model


GROUP_MEMBERS = {"qkv": 3, "o": 1, "gate_up": 2, "down": 1}


def graph_spec(lora_rank: int = 0) -> GraphSpec:
    """The contract of the graphs this builder makes (written to realm.json); with `lora_rank`,
    of their LoRA-capable twins too (adapters up to that rank)."""
    lora = LoraContract(max_rank=lora_rank, ranks=tuple((g, m * lora_rank) for g, m in GROUP_MEMBERS.items())) \
        if lora_rank else None
    return GraphSpec(layout="gqa-v1", kv_share_buffer=True, lm_head_refine=REFINE, lora=lora)


def lora_layout(spec: GraphSpec) -> LoraLayout:
    """The builder's layout for the contract's LoRA graphs."""
    assert spec.lora is not None
    return LoraLayout("grouped", 0, dict(spec.lora.ranks))

