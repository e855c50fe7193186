"""Native engine: onnxruntime (CPU, or CUDA with onnxruntime-gpu) + numpy.

The only module (with ort_web) that touches a runtime. KV cache: one buffer per layer and
key/value, shape (slots, kv_heads, max_length, head_dim), allocated once on the device and
bound as both `past_key_values.N.*` and `present.N.*`: GroupQueryAttention then appends the
new keys/values in place, so a step copies no cache at all, only token ids in and one row
of logits per sampled request out.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest, load_manifest
from ..step import StepPlan, StepResult
from .sampler import sample_token


def default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, n)


class OrtNativeEngine:
    """Runs StepPlans on onnxruntime. `device` is "cpu" or "cuda"."""

    def __init__(self, model_dir: str | os.PathLike[str], *, dtype: str | None = None, device: str = "cpu",
                 threads: int | None = None, max_slots: int = 1, max_length: int | None = None) -> None:
        import onnxruntime as ort

        self.manifest: Manifest = load_manifest(model_dir)
        m = self.manifest
        self.device = device
        self.variant = m.variant_for(device, dtype)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("device 'cuda' needs onnxruntime-gpu with CUDAExecutionProvider")
            providers: list[Any] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
        self.session = ort.InferenceSession(str(Path(m.directory, self.variant.file)), so, providers=providers)
        self.max_slots = max_slots
        self.max_length = min(max_length or m.max_length, m.max_length)
        self.kv_dtype = np.float16 if self.variant.kv_dtype == "fp16" else np.float32
        self.ort = ort
        self.ort_device = "cuda" if device == "cuda" else "cpu"
        shape = (max_slots, m.num_kv_heads, self.max_length, m.head_dim)
        self.binding = self.session.io_binding()
        self.cache: list[Any] = []
        self.binding.bind_output("logits", self.ort_device if device == "cpu" else "cpu")  # output 0
        for i in range(m.num_layers):
            for kv in ("key", "value"):
                buf = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, self.ort_device, 0)
                self.cache.append(buf)
                self.binding.bind_ortvalue_input(f"past_key_values.{i}.{kv}", buf)
                self.binding.bind_ortvalue_output(f"present.{i}.{kv}", buf)
        self.pad_id = int(m.eos_token_ids[0]) if m.eos_token_ids else 0

    def run_sync(self, plan: StepPlan) -> StepResult:
        """One forward pass for every request in the plan, then one sampled token per request that asks."""
        seqs = plan.seqs
        if not seqs:
            return StepResult(tokens={})
        b = self.max_slots
        s = max(len(q.tokens) for q in seqs)
        ids = np.full((b, s), self.pad_id, dtype=np.int64)
        totals = np.ones(b, dtype=np.int64) * s  # idle rows write pads past their valid length: harmless
        for q in seqs:
            if q.start + s > self.max_length:
                raise ValueError(f"sequence {q.seq_id} exceeds the context of {self.max_length} tokens")
            ids[q.slot, : len(q.tokens)] = q.tokens
            totals[q.slot] = q.start + s
        width = int(totals.max())
        mask = (np.arange(width)[None, :] < totals[:, None]).astype(np.int64)
        ragged = any(len(q.tokens) != s for q in seqs)
        keep = 0 if ragged else 1
        bnd = self.binding
        bnd.bind_cpu_input("input_ids", ids)
        bnd.bind_cpu_input("attention_mask", mask)
        bnd.bind_cpu_input("num_logits_to_keep", np.array([keep], dtype=np.int64))
        bnd.bind_output("logits", "cpu")
        self.session.run_with_iobinding(bnd)
        logits = bnd.get_outputs()[0].numpy()  # logits were bound first
        out: dict[int, list[int]] = {}
        lps: dict[int, list[float]] = {}
        for q in seqs:
            if not q.sample:
                out[q.seq_id] = []
                continue
            row = logits[q.slot, (len(q.tokens) - 1) if ragged else -1]
            tok, lp = sample_token(row, q.sampling, q.draw, q.history, q.logprobs)
            out[q.seq_id] = [tok]
            if lp is not None:
                lps[q.seq_id] = [lp]
        return StepResult(tokens=out, logprobs=lps)

    async def run(self, plan: StepPlan) -> StepResult:
        return self.run_sync(plan)

    def close(self) -> None:
        self.cache.clear()
