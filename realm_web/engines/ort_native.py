"""Native engine: onnxruntime (CPU, or CUDA with onnxruntime-gpu) + numpy.

The only module (with ort_web) that touches a runtime.

KV cache layout: one buffer per layer and key/value, shape (slots, kv_heads, max_length,
head_dim), allocated once (on the device for CUDA). Slot s is the contiguous block
[s * row, (s + 1) * row) of each buffer. A step runs one padded batch over the contiguous
span of slots lo..hi that its requests occupy: the span's block is bound, by pointer, as both
`past_key_values.N.*` and `present.N.*`, so GroupQueryAttention appends each row's new keys
and values in place at that row's own position. No cache is copied, gathered or moved by a
step; what crosses per step is the token ids and mask in (rows x width int64) and one row of
logits per sampled request out (or, on CUDA with greedy requests, one token id each).
Bindings are redone only when the span changes.

Rows of the span that the step does not schedule (free slots, requests waiting for their
turn) are idle: they are fed padding that lands past their valid length, where the next real
token overwrites it, so they cost compute but never change what a request sees.
"""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest, load_manifest
from ..step import SeqStep, StepPlan, StepResult
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
                 threads: int | None = None, max_slots: int = 1, max_length: int | None = None,
                 bucket_shapes: bool | None = None, step_thread: bool = True, cuda_graph: bool | None = None,
                 static_decode: bool | None = None) -> None:
        import onnxruntime as ort

        self.manifest: Manifest = load_manifest(model_dir)
        m = self.manifest
        if max_slots < 1:
            raise ValueError("max_slots must be >= 1")
        self.device = device
        # Decode steps replayed as CUDA graphs: one graph per power-of-two batch of rows. It
        # replaces ~500 kernel launches per step by one (H100, this model: 4.9 -> 1.6 ms a step).
        cuda_graph = device == "cuda" if cuda_graph is None else cuda_graph
        self.variant = m.variant_for(device, dtype)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if device == "cuda":
            # The GPU does the work: a pool of spinning CPU threads would only compete with the
            # Python threads that feed it (measured: it costs the serving loop milliseconds).
            so.intra_op_num_threads = threads or 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        else:
            so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("device 'cuda' needs onnxruntime-gpu with CUDAExecutionProvider")
            cuda_opts = {"device_id": "0", **({"enable_cuda_graph": "1"} if cuda_graph else {})}
            providers: list[Any] = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
        elif cuda_graph:
            raise ValueError("cuda_graph needs device 'cuda'")
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
        self.session = ort.InferenceSession(str(Path(m.directory, self.variant.file)), so, providers=providers)
        self.max_slots = max_slots
        self.max_length = min(max_length or m.max_length, m.max_length)
        self.kv_capacity = max_slots * self.max_length
        self.kv_dtype = np.float16 if self.variant.kv_dtype == "fp16" else np.float32
        self.ort = ort
        self.ort_device = "cuda" if device == "cuda" else "cpu"
        self.row_shape = (m.num_kv_heads, self.max_length, m.head_dim)
        self.row_bytes = int(np.prod(self.row_shape)) * np.dtype(self.kv_dtype).itemsize
        shape = (max_slots, *self.row_shape)
        # CPU: numpy buffers (zero pages are only touched when used). CUDA: device OrtValues.
        self._keep: list[Any] = []
        self.cache_ptrs: list[int] = []
        for _ in range(m.num_layers * 2):
            if device == "cuda":
                buf = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, "cuda", 0)
                self.cache_ptrs.append(int(buf.data_ptr()))
            else:
                buf = np.zeros(shape, dtype=self.kv_dtype)
                self.cache_ptrs.append(int(buf.ctypes.data))
            self._keep.append(buf)
        self.lengths = np.zeros(max_slots, dtype=np.int64)  # valid tokens per slot
        self.binding = self.session.io_binding()
        self._span: tuple[int, int] | None = None
        self.pad_id = int(m.eos_token_ids[0]) if m.eos_token_ids else 0
        self._argmax = self._argmax_session() if device == "cuda" else None
        # onnxruntime's CUDA provider spends ~45 ms (H100, ORT 1.31) the first time a session sees
        # a new input_ids shape; rounding rows and width up to powers of two bounds the number of
        # shapes (warmup() can visit them all up front). On CPU padding costs real compute: off.
        self.bucket_shapes = device == "cuda" if bucket_shapes is None else bucket_shapes
        # Static decode: decode steps run over slots 0..R-1 (R a power of two) with device
        # buffers of fixed shape and address for ids, mask (width max_length) and logits, one
        # set per R; with cuda_graph each R is captured once as a CUDA graph and replayed.
        self.cuda_graph = cuda_graph
        self.static_decode = cuda_graph if static_decode is None else static_decode
        self._static: dict[int, dict[str, Any]] = {}
        self._plain_options = ort.RunOptions()
        if cuda_graph:
            self._plain_options.add_run_config_entry("gpu_graph_id", "-1")  # prompts: no capture
        self._logits_type = np.float16 if "float16" in self.session.get_outputs()[0].type else np.float32
        # Every run happens on one thread: onnxruntime's CUDA provider keeps per-thread state
        # (handles, and the first-shape cost that warmup() pays), so a step must not land on a
        # thread that was never warmed. With step_thread (the default) that is a worker the
        # async API awaits, so the event loop keeps serving while a step runs; without it, the
        # thread that made the engine, which then runs async steps inline (no thread hand-off:
        # less host latency per step, but the loop is blocked for the step).
        self.step_thread = step_thread
        self._executor: ThreadPoolExecutor | None = None
        self._worker = threading.get_ident()
        if step_thread:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="realm-engine")
            self._worker = self._executor.submit(threading.get_ident).result()

    # -- bindings ------------------------------------------------------------------------------
    def _bind_span(self, lo: int, hi: int) -> None:
        """Bind slots lo..hi-1 of every cache buffer as past and present (in place)."""
        if self._span == (lo, hi):
            return
        shape = [hi - lo, *self.row_shape]
        bnd = self.binding
        bnd.clear_binding_outputs()
        bnd.bind_output("logits", self.ort_device)  # output 0
        for i in range(self.manifest.num_layers):
            for j, kv in enumerate(("key", "value")):
                ptr = self.cache_ptrs[2 * i + j] + lo * self.row_bytes
                bnd.bind_input(f"past_key_values.{i}.{kv}", self.ort_device, 0, self.kv_dtype, shape, ptr)
                bnd.bind_output(f"present.{i}.{kv}", self.ort_device, 0, self.kv_dtype, shape, ptr)
        self._span = (lo, hi)

    def _argmax_session(self) -> Any:
        """A one-node graph that takes greedy picks on the device: (rows, 1, vocab) -> (rows, 1)."""
        import onnx
        from onnx import TensorProto, helper

        ft = TensorProto.FLOAT16 if self.variant.kv_dtype == "fp16" else TensorProto.FLOAT
        g = helper.make_graph([helper.make_node("ArgMax", ["logits"], ["ids"], axis=-1, keepdims=0)], "argmax",
                              [helper.make_tensor_value_info("logits", ft, ["b", "k", "v"])],
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "k"])])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        so = self.ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return self.ort.InferenceSession(model.SerializeToString(), so,
                                         providers=["CUDAExecutionProvider", "CPUExecutionProvider"])

    # -- one step ------------------------------------------------------------------------------
    def run_sync(self, plan: StepPlan) -> StepResult:
        """One forward pass for every request in the plan, then one sampled token per request that asks."""
        return self._on_worker(self._run, plan)  # type: ignore[no-any-return]

    def _run(self, plan: StepPlan) -> StepResult:
        for s in plan.freed_slots:
            self.lengths[s] = 0
        seqs = plan.seqs
        if not seqs:
            return StepResult(tokens={})
        lo = min(q.slot for q in seqs)
        hi = max(q.slot for q in seqs) + 1
        width = max(len(q.tokens) for q in seqs)
        if self.static_decode and width == 1:
            return self._static_decode(plan, hi)
        if self.bucket_shapes:
            lo, hi, width = self._bucketed(seqs, lo, hi, width)
        ids = np.full((hi - lo, width), self.pad_id, dtype=np.int64)
        totals = self.lengths[lo:hi] + width  # idle rows: padding after their valid tokens
        index = np.zeros((hi - lo, 1), dtype=np.int64)
        for q in seqs:
            r = q.slot - lo
            ids[r, : len(q.tokens)] = q.tokens
            totals[r] = q.start + width
            index[r, 0] = len(q.tokens) - 1
        logits = self._forward(lo, ids, totals, index)
        for q in seqs:
            self.lengths[q.slot] = q.start + len(q.tokens)
        return self._sample(plan, lo, logits)

    def _static_decode(self, plan: StepPlan, hi: int) -> StepResult:
        rows = min(_pow2(hi), self.max_slots)
        ids = np.full((rows, 1), self.pad_id, dtype=np.int64)
        totals = self.lengths[:rows] + 1  # idle rows: one pad after their valid tokens
        for q in plan.seqs:
            ids[q.slot, 0] = q.tokens[0]
            totals[q.slot] = q.start + 1
        mask = (np.arange(self.max_length)[None, :] < totals[:, None]).astype(np.int64)
        st = self._static.get(rows) or self._make_static(rows)
        st["ids"].update_inplace(ids)
        st["mask"].update_inplace(mask)
        self.session.run_with_iobinding(st["binding"], st["options"])
        for q in plan.seqs:
            self.lengths[q.slot] = q.start + 1
        return self._sample(plan, 0, st["logits"])

    def _make_static(self, rows: int) -> dict[str, Any]:
        ort, dev = self.ort, self.ort_device
        st: dict[str, Any] = {
            "ids": ort.OrtValue.ortvalue_from_numpy(np.zeros((rows, 1), np.int64), dev, 0),
            "mask": ort.OrtValue.ortvalue_from_numpy(np.zeros((rows, self.max_length), np.int64), dev, 0),
            "index": ort.OrtValue.ortvalue_from_numpy(np.zeros((rows, 1), np.int64), dev, 0),
            "logits": ort.OrtValue.ortvalue_from_shape_and_type((rows, 1, self.manifest.vocab_size),
                                                                 self._logits_type, dev, 0),
            "binding": self.session.io_binding(),
            "options": ort.RunOptions(),
        }
        bnd = st["binding"]
        bnd.bind_ortvalue_input("input_ids", st["ids"])
        bnd.bind_ortvalue_input("attention_mask", st["mask"])
        bnd.bind_ortvalue_input("logits_index", st["index"])
        bnd.bind_ortvalue_output("logits", st["logits"])
        shape = [rows, *self.row_shape]
        for i in range(self.manifest.num_layers):
            for j, kv in enumerate(("key", "value")):
                ptr = self.cache_ptrs[2 * i + j]
                bnd.bind_input(f"past_key_values.{i}.{kv}", dev, 0, self.kv_dtype, shape, ptr)
                bnd.bind_output(f"present.{i}.{kv}", dev, 0, self.kv_dtype, shape, ptr)
        if self.cuda_graph:
            st["options"].add_run_config_entry("gpu_graph_id", str(len(self._static) + 1))
        self._static[rows] = st
        return st

    def _bucketed(self, seqs: list[Any], lo: int, hi: int, width: int) -> tuple[int, int, int]:
        """Round the step's width and span up to powers of two where the extra positions and rows
        are harmless: padding must fit every row's context, and a multi-token step may only widen
        its span over empty slots (the attention kernel's rule for batched prompts)."""
        w = _pow2(width) if width > 1 else 1
        if int(self.lengths[lo:hi].max(initial=0)) + w > self.max_length or \
                any(q.start + w > self.max_length for q in seqs):
            w = width
        rows = _pow2(hi - lo)
        if rows > hi - lo and (lo + rows <= self.max_slots or hi - rows >= 0):
            extra = list(range(hi, lo + rows)) if lo + rows <= self.max_slots else list(range(hi - rows, lo))
            if w == 1 or (all(q.start == 0 for q in seqs) and all(self.lengths[r] == 0 for r in extra)):
                lo, hi = min(lo, *extra), max(hi, max(extra) + 1)
        return lo, hi, w

    def _on_worker(self, fn: Any, *args: Any) -> Any:
        if threading.get_ident() == self._worker:
            return fn(*args)
        if self._executor is None:
            raise RuntimeError("the engine is closed, or runs steps only on the thread that made it (step_thread=False)")
        return self._executor.submit(fn, *args).result()

    def warmup(self, max_width: int) -> int:
        """Run each bucketed shape once (decode spans, prompt widths, batched prompts up to
        `max_width` tokens) so that no request pays the provider's first-shape cost. Only empty
        slots are touched; returns the number of shapes run."""
        return int(self._on_worker(self._warmup, max_width))

    def _warmup(self, max_width: int) -> int:
        if self.lengths.any():
            raise RuntimeError("warmup() needs an idle engine")
        n = 0
        rows = 1
        while rows <= self.max_slots:
            width = 1
            while width <= min(max_width, self.max_length):
                if width == 1 and self.static_decode:
                    plan = StepPlan(seqs=[SeqStep(seq_id=0, slot=rows - 1, tokens=[self.pad_id], start=0, sample=True)])
                    for _ in range(2):  # the first run of a graph id warms up, the next captures it
                        self._static_decode(plan, rows)
                    self.lengths[:] = 0
                    n += 1
                elif rows == 1 or width == 1 or rows * width <= max_width:
                    ids = np.full((rows, width), self.pad_id, np.int64)
                    logits = self._forward(0, ids, np.full(rows, width, np.int64), np.full((rows, 1), width - 1, np.int64))
                    if width == 1 and self._argmax is not None:  # its shapes depend on rows only
                        self._argmax.run_with_ort_values(["ids"], {"logits": logits})
                    n += 1
                width *= 2
            rows *= 2
        if self.static_decode and self.max_slots not in self._static:  # max_slots not a power of two
            plan = StepPlan(seqs=[SeqStep(seq_id=0, slot=self.max_slots - 1, tokens=[self.pad_id], start=0, sample=True)])
            for _ in range(2):
                self._static_decode(plan, self.max_slots)
            self.lengths[:] = 0
            n += 1
        return n

    def _forward(self, lo: int, ids: np.ndarray, totals: np.ndarray, index: np.ndarray) -> Any:
        """One run over slots lo..lo+rows-1; returns the logits OrtValue (rows, k, vocab)."""
        if int(totals.max()) > self.max_length:
            raise ValueError(f"a step of width {ids.shape[1]} exceeds the context of {self.max_length} tokens")
        mask = (np.arange(int(totals.max()))[None, :] < totals[:, None]).astype(np.int64)
        self._bind_span(lo, lo + ids.shape[0])
        bnd = self.binding
        bnd.bind_cpu_input("input_ids", ids)
        bnd.bind_cpu_input("attention_mask", mask)
        bnd.bind_cpu_input("logits_index", index)
        self.session.run_with_iobinding(bnd, self._plain_options)
        return bnd.get_outputs()[0]

    def prompt_logits(self, token_ids: list[int], slot: int = 0) -> np.ndarray:
        """Logits (len, vocab) at every position of `token_ids`, run from an empty cache in `slot`
        (which it overwrites): for parity checks and tools, not for serving."""
        return self._on_worker(self._prompt_logits, token_ids, slot)  # type: ignore[no-any-return]

    def _prompt_logits(self, token_ids: list[int], slot: int) -> np.ndarray:
        n = len(token_ids)
        logits = self._forward(slot, np.array([token_ids], np.int64), np.array([n], np.int64),
                               np.arange(n, dtype=np.int64)[None])
        self.lengths[slot] = n
        return np.array(logits.numpy()[0], dtype=np.float32)  # a copy: the output buffer is reused

    def _sample(self, plan: StepPlan, lo: int, logits_value: Any) -> StepResult:
        out: dict[int, list[int]] = {q.seq_id: [] for q in plan.seqs}
        lps: dict[int, list[float]] = {}
        todo = [q for q in plan.seqs if q.sample]
        if not todo:
            return StepResult(tokens=out)
        fast = [q for q in todo if _plain_greedy(q.sampling) and not q.logprobs]
        if self._argmax is not None and len(fast) == len(todo):  # all greedy: pick on the device
            picks = self._argmax.run_with_ort_values(["ids"], {"logits": logits_value})[0].numpy()[:, 0]
            for q in todo:
                out[q.seq_id] = [int(picks[q.slot - lo])]
            return StepResult(tokens=out)
        logits = logits_value.numpy()[:, 0]  # (rows, vocab)
        if fast:
            rows = np.array([q.slot - lo for q in fast])
            picks = np.argmax(logits[rows], axis=-1)
            for q, t in zip(fast, picks):
                out[q.seq_id] = [int(t)]
        for q in todo:
            if out[q.seq_id]:
                continue
            tok, lp = sample_token(logits[q.slot - lo], q.sampling, q.draw, q.history, q.logprobs)
            out[q.seq_id] = [tok]
            if lp is not None:
                lps[q.seq_id] = [lp]
        return StepResult(tokens=out, logprobs=lps)

    async def run(self, plan: StepPlan) -> StepResult:
        """Run the step on a worker thread (onnxruntime releases the GIL), so the event loop keeps
        serving while the model computes."""
        if not self.step_thread:
            return self._on_worker(self._run, plan)  # type: ignore[no-any-return]
        if self._executor is None:
            raise RuntimeError("the engine is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, plan)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._span = None
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        self._keep.clear()


def _plain_greedy(sampling: dict[str, Any]) -> bool:
    return float(sampling.get("temperature", 0.0)) == 0.0 and float(sampling.get("repetition_penalty", 1.0)) == 1.0


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
