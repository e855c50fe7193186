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
turn) are idle: they are fed padding that lands past their valid length (the plan's `idle`),
where the next real token overwrites it, so they cost compute but never change what a request
sees. The engine keeps no length of its own: each row's comes from the plan (`start`, `idle`),
so a row rolls back by the plan starting it earlier. It keeps the tokens of each slot only for
the repetition penalty, cut and extended by the plan the same way.

Lone rows (CPU): on some CPUs (x86 with AVX2 and no AVX-512: MLAS's int8-activation kernels of
the quantized MatMulNBits) onnxruntime multiplies a single row (M = 1, or a lone row past a
multiple of 128) with another kernel than the same row among others, and a request's tokens
would then depend on whether it ran alone. The engine checks at load (`lone_rows_differ`: the
model run on one row and on two) and, where they differ, never runs a matmul of M = 1 mod 128:
a lone decode row gets an idle neighbour (a scratch slot past the last one if need be), a
prompt chunk one more position of padding, and the logits one more position. Costs nothing on
CPUs where the kernels agree.
"""
from __future__ import annotations

import asyncio
import logging
import mmap
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest, load_manifest
from ..speculative import default_draft_dtype
from ..step import EngineCaps, KVCopy, NewSeq, SamplingSpec, SeqStep, StepPlan, StepResult, TokenMask
from .ort_draft import DraftError, DraftModel
from .ort_lora import LoraTables, static_groups
from .sampler import sample_positions, token_logprobs, top_logprobs

log = logging.getLogger("realm_web.engine")

# A padded batch over a contiguous span of slots; onnxruntime's GroupQueryAttention runs a
# multi-token step on top of earlier context one row at a time, so rows share a prompt step only
# when every row of the span starts empty.
CAPS = EngineCaps(padded_span=True, prefill_batch="fresh", prefill_width=None, multi_position_logits=True,
                  adapters=False, token_masks=True, kv_copy=True, prefix_reuse=True)


_global_threads: int | None = None  # the size of the process's shared intra-op pool, once made


def _use_global_pool(ort: Any, threads: int) -> None:
    """Make the process-wide pool of onnxruntime threads (once; every later session of the
    process must use it: onnxruntime's rule). Used by CPU engines with a draft model."""
    global _global_threads
    if _global_threads is None:
        ort.capi._pybind_state.set_global_thread_pool_sizes(threads, 1)
        _global_threads = threads
    elif _global_threads != threads:
        log.info("shared onnxruntime thread pool", extra={"fields": {"threads": _global_threads, "asked": threads}})


def session_options(ort: Any) -> Any:
    """SessionOptions for a plain CPU session that works in this process (tests, tools)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if _global_threads is not None:
        so.use_per_session_threads = False
    return so


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
                 static_decode: bool | None = None, max_loras: int = 8,
                 draft_model: str | os.PathLike[str] | None = None, draft_dtype: str | None = None,
                 pad_lone_rows: bool | None = None) -> None:
        """`pad_lone_rows`: None checks this CPU (see the module's "Lone rows"), True pads lone
        rows whatever the check says, False never does (faster on CPUs whose kernels differ, but a
        request's tokens may then depend on the traffic)."""
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
        elif draft_model is not None or _global_threads is not None:
            # A target and its draft model take turns: with a pool each, one pool's threads spin
            # while the other's work (measured here: steps 2x slower), so both use one pool
            _use_global_pool(ort, threads or default_threads())
            so.use_per_session_threads = False
        else:
            so.intra_op_num_threads = threads or default_threads()
        if so.use_per_session_threads:
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
        # CPU: one scratch slot past the last, the idle neighbour of a lone row in slot max_slots - 1
        self.scratch_slot = max_slots if device == "cpu" else None
        shape = (max_slots + (device == "cpu"), *self.row_shape)
        # CPU: numpy arrays over anonymous mmaps of 4 KB pages (not numpy's own allocation, which
        # asks for transparent huge pages: a write to one position then makes 2 MB resident, and a
        # server's RSS grew by every slot's full context). Only the positions written take memory,
        # and a released slot's pages go back to the system. CUDA: device OrtValues.
        self._keep: list[Any] = []
        self._maps: list[mmap.mmap] = []
        self.cache_ptrs: list[int] = []
        nbytes = int(np.prod(shape)) * np.dtype(self.kv_dtype).itemsize
        for _ in range(m.num_layers * 2):
            if device == "cuda":
                buf = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, "cuda", 0)
                self.cache_ptrs.append(int(buf.data_ptr()))
            else:
                mm = mmap.mmap(-1, nbytes)
                self._maps.append(mm)
                buf = np.frombuffer(mm, dtype=self.kv_dtype).reshape(shape)
                self.cache_ptrs.append(int(buf.ctypes.data))
            self._keep.append(buf)
        # LoRA: the variant's LoRA-capable twin graph, made a session when the first adapter comes
        self.max_loras = max_loras
        self._lora_file = Path(m.directory, self.variant.lora_file) if self.variant.lora_file else None
        has_lora = self._lora_file is not None and self._lora_file.exists() and m.graph.lora is not None
        self.caps = replace(CAPS, adapters=has_lora)
        self._so, self._providers = so, providers
        self._lora: Any = None  # (session, binding, LoraTables), made by the first adapter load
        self._lora_span: tuple[int, int] | None = None
        self._lora_entries: tuple[int, int] | None = None  # the table entries bound to the LoRA binding
        self._lora_static = True  # decode steps with adapter rows use static buffers too (see _static_decode)
        self._entry_of: dict[int, int] = {}  # slot -> the adapter entry of the request on it
        self.graph = m.graph
        g = m.graph
        self._kv_names = [(g.past(i, kv), g.present(i, kv)) for i in range(m.num_layers) for kv in ("key", "value")]
        self._specs: dict[int, SamplingSpec] = {}  # seq id -> its sampling spec (from the plan's new_seqs)
        self._masks: dict[int, np.ndarray] = {}  # TokenMask key -> its bool array
        self._slot_of: dict[int, int] = {}  # seq id -> the slot it was announced on
        self._tokens: list[list[int]] = [[] for _ in range(max_slots)]  # each slot's tokens (for the penalty)
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
        self._static: dict[tuple[int, bool, int, int], dict[str, Any]] = {}  # (rows, lora, slot, width) -> buffers
        self._plain_options = ort.RunOptions()
        if cuda_graph:
            self._plain_options.add_run_config_entry("gpu_graph_id", "-1")  # prompts: no capture
        self._logits_type = np.float16 if "float16" in self.session.get_outputs()[0].type else np.float32
        if device != "cpu" or pad_lone_rows is False:
            self.pad_lone_rows = False
        else:
            self.pad_lone_rows = bool(pad_lone_rows) or lone_rows_differ(self.session, m, self.kv_dtype, self.pad_id)
        if self.pad_lone_rows:
            log.info("lone rows padded", extra={"fields": {"dtype": self.variant.dtype, "forced": bool(pad_lone_rows)}})
        self._logits_k = 1  # positions per row the bound logits output has (see _forward)
        self._row_copier: tuple[Any, Any] | None = None
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
        # speculative method "draft": a second engine over a cheaper model, made on the step thread
        self.draft: DraftModel | None = None
        if draft_model is not None:
            if draft_dtype is None and Path(draft_model).resolve() == Path(m.directory).resolve():
                exports = {d: v.bytes for d, v in m.variants.items()}
                draft_dtype = default_draft_dtype(exports, self.variant.dtype)
                if draft_dtype is None:
                    raise DraftError(f"{m.directory} has no export smaller than the target's ({self.variant.dtype}) "
                                     "to draft with: pass a draft_dtype or a draft_model")
            self.draft = self._on_worker(self._make_draft, draft_model, draft_dtype, threads)
            self.caps = replace(self.caps, draft_model=True)

    def _make_draft(self, model_dir: str | os.PathLike[str], dtype: str | None, threads: int | None) -> DraftModel:
        def make(cuda_graph: bool) -> OrtNativeEngine:
            return OrtNativeEngine(model_dir, dtype=dtype, device=self.device, threads=threads, max_slots=self.max_slots,
                                   max_length=self.max_length, bucket_shapes=self.bucket_shapes, step_thread=False,
                                   cuda_graph=cuda_graph)
        try:
            draft = make(self.cuda_graph)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            if not self.cuda_graph:
                raise
            # CUDA graphs need every node on the CUDA provider (a quantized export may have some
            # on the CPU): the draft then runs uncaptured
            log.warning("draft model: no CUDA graphs", extra={"fields": {"error": str(e).splitlines()[0][:200]}})
            draft = make(False)
        if draft.max_length < self.max_length:
            raise DraftError(f"the draft model's context ({draft.max_length}) is shorter than the target's ({self.max_length})")
        if Path(draft.manifest.directory, draft.variant.file).resolve() == Path(self.manifest.directory, self.variant.file).resolve():
            raise DraftError(f"the draft model is the target itself ({self.variant.dtype}): pick another draft_dtype or model")
        return DraftModel(draft, self.manifest)

    # -- bindings ------------------------------------------------------------------------------
    def _bind_span(self, lo: int, hi: int) -> None:
        """Bind slots lo..hi-1 of every cache buffer as past and present (in place)."""
        if self._span != (lo, hi):
            self._bind_rows(self.binding, lo, hi)
            self._span = (lo, hi)

    def _bind_rows(self, bnd: Any, lo: int, hi: int) -> None:
        """Bind cache rows lo..hi-1 as past and present of `bnd` (its outputs anew, logits first)."""
        shape = [hi - lo, *self.row_shape]
        bnd.clear_binding_outputs()
        bnd.bind_output(self.graph.logits, self.ort_device)  # output 0
        for (past, present), base in zip(self._kv_names, self.cache_ptrs):
            ptr = base + lo * self.row_bytes
            bnd.bind_input(past, self.ort_device, 0, self.kv_dtype, shape, ptr)
            bnd.bind_output(present, self.ort_device, 0, self.kv_dtype, shape, ptr)

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
        self._learn(plan)
        if not plan.seqs:
            return StepResult(tokens={})
        self._take(plan)
        drafts: dict[int, list[int]] = {}
        if any(q.propose for q in plan.seqs):
            plan, drafts = self._drafted(plan)
        parts = _parts(plan)
        if len(parts) == 1:
            out = self._run_part(plan)
        else:
            out = StepResult(tokens={})
            for part in parts:
                res = self._run_part(part)
                out.tokens.update(res.tokens)
                out.logprobs.update(res.logprobs)
                out.top_logprobs.update(res.top_logprobs)
                out.scores.update(res.scores)
                out.score_tops.update(res.score_tops)
        out.drafts = drafts
        return out

    def _drafted(self, plan: StepPlan) -> tuple[StepPlan, dict[int, list[int]]]:
        """The plan with each proposing row's drafts fed after its token, as a verify row."""
        assert self.draft is not None
        props = [q for q in plan.seqs if q.propose]
        got = self.draft.propose([(q.slot, self._tokens[q.slot], q.propose) for q in props])
        seqs, drafts = [], {}
        for q in plan.seqs:
            if q.propose:
                d = got[q.slot]
                drafts[q.seq_id] = d
                self._tokens[q.slot] += d
                q = replace(q, tokens=q.tokens + d, drafts=len(d), propose=0)
            seqs.append(q)
        return replace(plan, seqs=seqs), drafts

    def _run_part(self, plan: StepPlan) -> StepResult:
        """One run over the plan's rows (see _parts), then their samples."""
        seqs = plan.seqs
        lo, hi, width, k = self._geometry(plan)
        lora = any(self._entry_of.get(q.slot) for q in seqs)
        if self.static_decode and width == 1 and (not lora or self._lora_static) and not any(q.score for q in seqs):
            return self._static_decode(plan, hi, lora)
        if self.static_decode and len(seqs) == 1 and seqs[0].drafts and not lora \
                and seqs[0].start + _pow2(width) <= self.max_length:
            return self._static_verify(plan, _pow2(width))
        if self.bucket_shapes:
            lo, hi, width = self._bucketed(plan, lo, hi, width)
        if self.pad_lone_rows:
            lo, hi, width, k = self._unlone(plan, lo, hi, width, k)
        ids = np.full((hi - lo, width), self.pad_id, dtype=np.int64)
        totals = np.full(hi - lo, width, dtype=np.int64)  # idle rows: padding after their valid tokens
        for slot, n in plan.idle.items():
            if lo <= slot < hi:
                totals[slot - lo] += n
        index = np.zeros((hi - lo, k), dtype=np.int64)
        for q in seqs:
            r = q.slot - lo
            n = len(q.tokens)
            ids[r, :n] = q.tokens
            totals[r] = q.start + width
            index[r, :] = n - 1  # the sampled positions first, then the scored ones, the last one repeated
            if q.num_samples > 1:
                index[r, : q.num_samples] = np.arange(n - q.num_samples, n)
            if q.score:
                index[r, q.num_samples: q.num_samples + len(q.score)] = np.arange(len(q.score))
        entries = None
        if lora:  # rows on adapters: the LoRA graph (rows with none add exactly 0.0)
            entries = np.zeros(hi - lo, np.int64)
            for q in seqs:
                entries[q.slot - lo] = self._entry_of.get(q.slot, 0)
        logits = self._forward(lo, ids, totals, index, entries)
        return self._sample(plan, lo, logits)

    def _take(self, plan: StepPlan) -> None:
        """Check the plan's rows against the slots they name and the context; then cut each
        slot's tokens to where its row starts and append what it feeds."""
        seqs, tokens, limit, slots = plan.seqs, self._tokens, self.max_length, self.max_slots
        for q in seqs:
            slot, start, n, m = q.slot, q.start, len(q.tokens), q.num_samples
            if not (0 <= slot < slots and 0 <= start <= len(tokens[slot]) and 0 < n and start + n + q.propose <= limit
                    and 0 <= m <= n + q.propose) or (q.propose and (self.draft is None or m != n + q.propose)):
                raise self._refusal(q)
            if q.score and (len(q.score) > n or q.propose):
                raise ValueError(f"sequence {q.seq_id}: {len(q.score)} scored positions for {n} tokens")
            if q.masks and len(q.masks) != m:
                raise ValueError(f"sequence {q.seq_id}: {len(q.masks)} masks for {m} samples")
        if len({q.slot for q in seqs}) != len(seqs):
            raise ValueError("two rows of one step name the same slot")
        for q in seqs:
            t = tokens[q.slot]
            if len(t) != q.start:
                del t[q.start:]  # a rollback, or a fresh start
            t += q.tokens
            if self.draft is not None:
                self.draft.cut(q.slot, q.start)

    def _geometry(self, plan: StepPlan) -> tuple[int, int, int, int]:
        """The span of a run's rows, its width and the positions per row to compute logits for."""
        seqs = plan.seqs
        lo, hi, width, k = self.max_slots, 0, 1, 1
        for q in seqs:
            slot, n, m = q.slot, len(q.tokens), q.num_samples
            if slot < lo:
                lo = slot
            if slot >= hi:
                hi = slot + 1
            if n > width:
                width = n
            if m + len(q.score) > k:
                k = m + len(q.score)
        if width > 1 and len(seqs) > 1 and (any(q.start for q in seqs) or any(lo <= s < hi for s in plan.idle)):
            raise ValueError("a multi-token step of several rows must span only empty slots (prefill_batch 'fresh')")
        return lo, hi, width, k

    def _refusal(self, q: SeqStep) -> ValueError:
        if q.propose and self.draft is None:
            return ValueError(f"sequence {q.seq_id}: this engine has no draft model to propose tokens")
        if q.propose and q.num_samples != len(q.tokens) + q.propose:
            return ValueError(f"sequence {q.seq_id}: proposing {q.propose} drafts needs {len(q.tokens) + q.propose} "
                              f"samples, not {q.num_samples}")
        if not 0 <= q.slot < self.max_slots:
            return ValueError(f"sequence {q.seq_id}: slot {q.slot} is not in [0, {self.max_slots})")
        held = len(self._tokens[q.slot])
        if not 0 <= q.start <= held:
            return ValueError(f"slot {q.slot} holds {held} tokens but sequence {q.seq_id}'s step starts at {q.start}")
        if not 0 <= q.num_samples <= len(q.tokens):
            return ValueError(f"sequence {q.seq_id}: {q.num_samples} samples for {len(q.tokens)} tokens")
        return ValueError(f"sequence {q.seq_id}: a step of {len(q.tokens) + q.propose} tokens from position {q.start} "
                          f"does not fit the context of {self.max_length} tokens")

    def _learn(self, plan: StepPlan) -> None:
        """The plan's news: requests gone (their slots' memory is given back), adapters to
        upload, requests new (their constants), prefix copies."""
        kept = {n.slot for n in plan.new_seqs if n.cached}  # prefix-cache hits: their slots' caches stay
        for n in plan.new_seqs:
            if n.cached and (not 0 <= n.slot < self.max_slots or not 0 < n.cached <= len(self._tokens[n.slot])):
                raise ValueError(f"sequence {n.seq_id}: slot {n.slot} cannot give it {n.cached} cached positions")
        for sid in plan.released:
            self._specs.pop(sid, None)
            slot = self._slot_of.pop(sid, None)
            if slot is not None and slot not in self._slot_of.values() and slot not in kept:
                self._drop_slot(slot)
                self._entry_of.pop(slot, None)
                if self.draft is not None:
                    self.draft.drop(slot)
        for load in plan.adapter_loads:
            self._lora_graph()[2].upload(load.entry, load.adapter)
        for n in plan.new_seqs:
            self._announce(n)
        for c in plan.copies:
            self._copy(c)
            if self.draft is not None:
                self.draft.copy(c)

    def _announce(self, n: NewSeq) -> None:
        if n.adapter is not None and not self.caps.adapters:
            raise ValueError(f"sequence {n.seq_id}: this export has no LoRA graph (asked for adapter {n.adapter!r})")
        if not 0 <= n.slot < self.max_slots:
            raise ValueError(f"sequence {n.seq_id}: slot {n.slot} is not in [0, {self.max_slots})")
        if not 0 <= n.adapter_entry <= self.max_loras or (n.adapter_entry == 0) != (n.adapter is None):
            raise ValueError(f"sequence {n.seq_id}: adapter entry {n.adapter_entry} for adapter {n.adapter!r}")
        self._specs[n.seq_id] = n.sampling
        self._slot_of[n.seq_id] = n.slot
        self._entry_of[n.slot] = n.adapter_entry

    def _lora_graph(self) -> tuple[Any, Any, LoraTables]:
        """The LoRA-capable session, its binding and the adapter tables (made on first use)."""
        if self._lora is None:
            if not self.caps.adapters:
                raise ValueError("this export has no LoRA graph: export it again with --lora-rank")
            m = self.manifest
            try:
                sess = self.ort.InferenceSession(str(self._lora_file), self._so, providers=self._providers)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
                if not self.cuda_graph:
                    raise
                # CUDA graphs need every node on the CUDA provider: without them, steps with
                # adapter rows run the LoRA graph uncaptured (the plain graph stays captured)
                log.warning("LoRA graph: no CUDA graphs", extra={"fields": {"error": str(e).splitlines()[0]}})
                sess = self.ort.InferenceSession(str(self._lora_file), self._so,
                                                 providers=[("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"])
                self._lora_static = False
            assert m.graph.lora is not None
            tables = LoraTables(m.graph.lora, m.architecture, m.num_layers, self.max_loras, self.kv_dtype, self.ort,
                                self.device)
            self._lora = (sess, sess.io_binding(), tables)
        return self._lora  # type: ignore[no-any-return]

    def _drop_slot(self, slot: int) -> None:
        """A slot nobody holds: its tokens are forgotten and, on the CPU, its cache pages given
        back (they read as zeros until written again)."""
        self._tokens[slot].clear()
        page = mmap.PAGESIZE
        lo = -(-slot * self.row_bytes // page) * page  # the whole pages inside the slot's rows
        hi = (slot + 1) * self.row_bytes // page * page
        if hi > lo:
            for mm in self._maps:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def _copy(self, c: KVCopy) -> None:
        """Positions [0, length) of slot src's cache (and tokens) become those of slot dst."""
        if not (0 <= c.src < self.max_slots and 0 <= c.dst < self.max_slots) or c.src == c.dst:
            raise ValueError(f"a KV copy needs two different slots in [0, {self.max_slots}), not {c.src} -> {c.dst}")
        if not 0 <= c.length <= len(self._tokens[c.src]):
            raise ValueError(f"slot {c.src} holds {len(self._tokens[c.src])} tokens; cannot copy {c.length}")
        if self.device == "cuda":
            self._copy_rows_on_device(c.src, c.dst)
        else:
            for buf in self._keep:
                buf[c.dst, :, : c.length] = buf[c.src, :, : c.length]
        self._tokens[c.dst] = self._tokens[c.src][: c.length]

    def _copy_rows_on_device(self, src: int, dst: int) -> None:
        """Whole rows, one Identity per cache buffer in one run (positions past the copied
        length are not valid in either row, so copying them too is harmless)."""
        if self._row_copier is None:
            self._row_copier = self._identity_session(len(self.cache_ptrs))
        sess, bnd = self._row_copier
        shape = [1, *self.row_shape]
        for n, base in enumerate(self.cache_ptrs):
            bnd.bind_input(f"x{n}", self.ort_device, 0, self.kv_dtype, shape, base + src * self.row_bytes)
            bnd.bind_output(f"y{n}", self.ort_device, 0, self.kv_dtype, shape, base + dst * self.row_bytes)
        sess.run_with_iobinding(bnd, self._plain_options)

    def _identity_session(self, n: int) -> tuple[Any, Any]:
        from onnx import TensorProto, helper

        ft = TensorProto.FLOAT16 if self.kv_dtype == np.float16 else TensorProto.FLOAT
        dims = [1, *self.row_shape]
        g = helper.make_graph([helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(n)], "copy",
                              [helper.make_tensor_value_info(f"x{i}", ft, dims) for i in range(n)],
                              [helper.make_tensor_value_info(f"y{i}", ft, dims) for i in range(n)])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        so = self.ort.SessionOptions()
        so.log_severity_level = 3
        sess = self.ort.InferenceSession(model.SerializeToString(), so,
                                         providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        return sess, sess.io_binding()

    def _static_decode(self, plan: StepPlan, hi: int, lora: bool = False) -> StepResult:
        """A decode step over slots 0..R-1 on fixed device buffers (a CUDA graph's replay). With
        `lora`, on the LoRA graph with the whole adapter table bound and `order` of fixed shape
        (max_loras, chunks, w) for R rows: the graph is the same whatever the rows' adapters."""
        rows = min(_pow2(hi), self.max_slots)
        if self.pad_lone_rows and rows % LONE == 1:
            rows += 1  # the next slot idle, or the scratch slot past the last (see "Lone rows")
        ids = np.full((rows, 1), self.pad_id, dtype=np.int64)
        totals = np.ones(rows, dtype=np.int64)  # idle rows: one pad after their valid tokens
        for slot, n in plan.idle.items():
            if slot < rows:
                totals[slot] += n
        for q in plan.seqs:
            ids[q.slot, 0] = q.tokens[0]
            totals[q.slot] = q.start + 1
        mask = (np.arange(self.max_length)[None, :] < totals[:, None]).astype(np.int64)
        key = (rows, lora, 0, 1)
        st = self._static.get(key) or self._make_static(rows, lora)
        st["ids"].update_inplace(ids)
        st["mask"].update_inplace(mask)
        if lora:
            entries = np.zeros(rows, np.int64)
            for q in plan.seqs:
                entries[q.slot] = self._entry_of.get(q.slot, 0)
            order, inverse = static_groups(entries, self.max_loras)
            st["order"].update_inplace(order)
            st["inverse"].update_inplace(inverse)
        st["session"].run_with_iobinding(st["binding"], st["options"])
        return self._sample(plan, 0, st["logits"])

    def _static_verify(self, plan: StepPlan, width: int) -> StepResult:
        """One verify row (speculative decoding: its last token and drafts) on fixed device buffers
        for its slot, padded to `width` (a power of two): a CUDA graph per (slot, width), captured
        on first use. The padding lands past the row's drafts, where the next step overwrites it."""
        q = plan.seqs[0]
        n, m = len(q.tokens), q.num_samples
        ids = np.full((1, width), self.pad_id, dtype=np.int64)
        ids[0, :n] = q.tokens
        mask = (np.arange(self.max_length) < q.start + width).astype(np.int64)[None]
        index = np.full((1, width), n - 1, dtype=np.int64)
        index[0, :m] = np.arange(n - m, n)
        st = self._static.get((1, False, q.slot, width)) or self._make_static(1, False, q.slot, width)
        st["ids"].update_inplace(ids)
        st["mask"].update_inplace(mask)
        st["index"].update_inplace(index)
        st["session"].run_with_iobinding(st["binding"], st["options"])
        return self._sample(plan, q.slot, st["logits"])

    def _make_static(self, rows: int, lora: bool = False, slot: int = 0, width: int = 1) -> dict[str, Any]:
        """Fixed buffers (and, with cuda_graph, a graph id) for runs of `rows` rows from `slot` on,
        `width` tokens each."""
        ort, dev = self.ort, self.ort_device
        sess = self._lora_graph()[0] if lora else self.session
        st: dict[str, Any] = {
            "ids": ort.OrtValue.ortvalue_from_numpy(np.zeros((rows, width), np.int64), dev, 0),
            "mask": ort.OrtValue.ortvalue_from_numpy(np.zeros((rows, self.max_length), np.int64), dev, 0),
            "index": ort.OrtValue.ortvalue_from_numpy(np.zeros((rows, width), np.int64), dev, 0),
            "logits": ort.OrtValue.ortvalue_from_shape_and_type((rows, width, self.manifest.vocab_size),
                                                                 self._logits_type, dev, 0),
            "session": sess,
            "binding": sess.io_binding(),
            "options": ort.RunOptions(),
        }
        bnd = st["binding"]
        g = self.graph
        bnd.bind_ortvalue_input(g.input_ids, st["ids"])
        bnd.bind_ortvalue_input(g.attention_mask, st["mask"])
        bnd.bind_ortvalue_input(g.logits_index, st["index"])
        bnd.bind_ortvalue_output(g.logits, st["logits"])
        shape = [rows, *self.row_shape]
        for (past, present), ptr in zip(self._kv_names, self.cache_ptrs):
            bnd.bind_input(past, dev, 0, self.kv_dtype, shape, ptr + slot * self.row_bytes)
            bnd.bind_output(present, dev, 0, self.kv_dtype, shape, ptr + slot * self.row_bytes)
        if lora:
            tables = self._lora_graph()[2]
            tables.bind(bnd, 1, self.max_loras)  # the whole table: its addresses never change
            order, inverse = static_groups(np.zeros(rows, np.int64), self.max_loras)
            c = self.graph.lora
            assert c is not None
            st["order"] = ort.OrtValue.ortvalue_from_numpy(order, dev, 0)
            st["inverse"] = ort.OrtValue.ortvalue_from_numpy(inverse, dev, 0)
            bnd.bind_ortvalue_input(c.order, st["order"])
            bnd.bind_ortvalue_input(c.inverse, st["inverse"])
        if self.cuda_graph:
            st["options"].add_run_config_entry("gpu_graph_id", str(len(self._static) + 1))
        self._static[(rows, lora, slot, width)] = st
        return st

    def _bucketed(self, plan: StepPlan, lo: int, hi: int, width: int) -> tuple[int, int, int]:
        """Round the step's width and span up to powers of two where the extra positions and rows
        are harmless: padding must fit every row's context, and a multi-token step may only widen
        its span over empty slots (the attention kernel's rule for batched prompts)."""
        seqs = plan.seqs
        w = _pow2(width) if width > 1 else 1
        held = [n for s, n in plan.idle.items() if lo <= s < hi]
        if max(held, default=0) + w > self.max_length or any(q.start + w > self.max_length for q in seqs):
            w = width
        rows = _pow2(hi - lo)
        if rows > hi - lo and (lo + rows <= self.max_slots or hi - rows >= 0):
            extra = list(range(hi, lo + rows)) if lo + rows <= self.max_slots else list(range(hi - rows, lo))
            if w == 1 or (all(q.start == 0 for q in seqs) and not any(r in plan.idle for r in extra)):
                lo, hi = min(lo, *extra), max(hi, max(extra) + 1)
        return lo, hi, w

    def _unlone(self, plan: StepPlan, lo: int, hi: int, width: int, k: int) -> tuple[int, int, int, int]:
        """The run's span, width and logits positions grown so that no matmul has a lone row
        (M = 1 mod 128; see "Lone rows" above): a decode step takes an idle neighbour row (one
        that holds no cache, or whose padding lands past its valid length, as _bucketed's), a
        multi-token step one more position of padding; the logits one more position."""
        if (hi - lo) * width % LONE == 1:
            if width == 1:
                for s in (hi, lo - 1):
                    if 0 <= s <= self.max_slots and plan.idle.get(s, 0) < self.max_length:
                        lo, hi = min(lo, s), max(hi, s + 1)
                        break
            elif all(q.start + width < self.max_length for q in plan.seqs) and \
                    all(n + width < self.max_length for s, n in plan.idle.items() if lo <= s < hi):
                width += 1
        if (hi - lo) * k % LONE == 1:
            k += 1
        return lo, hi, width, k

    def _on_worker(self, fn: Any, *args: Any) -> Any:
        if threading.get_ident() == self._worker:
            return fn(*args)
        if self._executor is None:
            raise RuntimeError("the engine is closed, or runs steps only on the thread that made it (step_thread=False)")
        return self._executor.submit(fn, *args).result()

    def warmup(self, max_width: int, verify_width: int = 0) -> int:
        """Run each bucketed shape once (decode spans, prompt widths, batched prompts up to
        `max_width` tokens; with `verify_width`, the static verify graphs of every slot up to that
        many tokens) so that no request pays the provider's first-shape cost. Only empty slots
        are touched; returns the number of shapes run."""
        return int(self._on_worker(self._warmup, max_width, verify_width))

    def _warmup(self, max_width: int, verify_width: int = 0) -> int:
        if self._specs:
            raise RuntimeError("warmup() needs an idle engine")
        n = self._warm_verify(verify_width) if self.static_decode and verify_width > 1 else 0
        rows = 1
        while rows <= self.max_slots:
            width = 1
            while width <= min(max_width, self.max_length):
                if width == 1 and self.static_decode:
                    self._warm_static(rows)
                    n += 1
                elif rows == 1 or width == 1 or rows * width <= max_width:
                    ids = np.full((rows, width), self.pad_id, np.int64)
                    logits = self._forward(0, ids, np.full(rows, width, np.int64), np.full((rows, 1), width - 1, np.int64))
                    if width == 1 and self._argmax is not None:  # its shapes depend on rows only
                        self._argmax.run_with_ort_values(["ids"], {"logits": logits})
                    n += 1
                width *= 2
            rows *= 2
        if self.static_decode and (self.max_slots, False, 0, 1) not in self._static:  # max_slots not a power of two
            self._warm_static(self.max_slots)
            n += 1
        if self.static_decode and self.caps.adapters:  # LoRA decode graphs too (the LoRA session is made now)
            self._lora_graph()
            rows = 1
            while self._lora_static:
                self._warm_static(min(rows, self.max_slots), lora=True)
                n += 1
                if rows >= self.max_slots:
                    break
                rows *= 2
        for t in self._tokens:
            t.clear()
        return n

    def calibrate(self, reps: int = 5) -> dict[str, float]:
        """Measured step costs for the speculative policy (Scheduler.calibrate): a run's fixed
        seconds, seconds per fed token (from runs of 1 and 8 tokens on 64 tokens of context), and,
        with a draft model, its run's seconds. Needs an idle engine (else {}); medians of `reps`."""
        return self._on_worker(self._calibrate, reps)  # type: ignore[no-any-return]

    def _calibrate(self, reps: int) -> dict[str, float]:
        if self._specs or self.max_length < 80:
            return {}
        ctx = [self.pad_id] * 64

        def timed(engine: OrtNativeEngine, width: int) -> float:
            engine._specs[-1] = SamplingSpec()
            engine._run(StepPlan(seqs=[SeqStep(-1, 0, 0, ctx, 1)]))
            ts = []
            for _ in range(reps + 1):
                t0 = time.perf_counter()
                engine._run(StepPlan(seqs=[SeqStep(-1, 0, len(ctx), [self.pad_id] * width, 1)]))
                ts.append(time.perf_counter() - t0)
            del engine._specs[-1]
            engine._tokens[0].clear()
            return statistics.median(ts[1:])

        one, eight = timed(self, 1), timed(self, 8)
        per_token = max(1e-6, (eight - one) / 7)
        out = {"run_seconds": max(1e-6, one - per_token), "token_seconds": per_token}
        if self.draft is not None:
            out["draft_seconds"] = timed(self.draft.engine, 1)
            self.draft.synced[0] = 0
        return out

    def _warm_verify(self, verify_width: int) -> int:
        """The static verify graphs (see _static_verify) of each slot and power-of-two width."""
        n = 0
        for slot in range(self.max_slots):
            w = 2
            while w <= _pow2(verify_width) and w <= self.max_length:
                for _ in range(2):  # the first run of a graph id warms up, the next captures it
                    q = SeqStep(seq_id=-1, slot=slot, start=0, tokens=[self.pad_id] * w, num_samples=w, drafts=w - 1)
                    plan = StepPlan(seqs=[q], new_seqs=[NewSeq(-1, slot, SamplingSpec())])
                    self._learn(plan)
                    self._take(plan)
                    self._static_verify(plan, w)
                    self._learn(StepPlan(seqs=[], released=[-1]))
                n += 1
                w *= 2
        return n

    def _warm_static(self, rows: int, lora: bool = False) -> None:
        """The first run of a graph id warms up, the next captures it."""
        for _ in range(2):
            plan = StepPlan(seqs=[SeqStep(seq_id=-1, slot=rows - 1, start=0, tokens=[self.pad_id], num_samples=1)],
                            new_seqs=[NewSeq(-1, rows - 1, SamplingSpec())])
            self._learn(plan)
            self._static_decode(plan, rows, lora)
            self._learn(StepPlan(seqs=[], released=[-1]))

    def _forward(self, lo: int, ids: np.ndarray, totals: np.ndarray, index: np.ndarray,
                 entries: np.ndarray | None = None) -> Any:
        """One run over slots lo..lo+rows-1; returns the logits OrtValue (rows, k, vocab). With
        `entries` (each row's adapter entry, 0: none) it runs the LoRA-capable graph."""
        if int(totals.max()) > self.max_length:
            raise ValueError(f"a step of width {ids.shape[1]} exceeds the context of {self.max_length} tokens")
        mask = (np.arange(int(totals.max()))[None, :] < totals[:, None]).astype(np.int64)
        g = self.graph
        if entries is None:
            self._bind_span(lo, lo + ids.shape[0])
            bnd, sess = self.binding, self.session
            if self._logits_k != index.shape[1]:  # a new logits shape: onnxruntime allocates the output anew
                bnd.bind_output(g.logits, self.ort_device)
                self._logits_k = index.shape[1]
        else:
            sess, bnd, tables = self._lora_graph()
            self._bind_lora_span(bnd, lo, lo + ids.shape[0])
            bnd.bind_output(g.logits, self.ort_device)
            e_lo, e_hi, order, inverse = LoraTables.groups(entries, ids.shape[1])
            if self._lora_entries != (e_lo, e_hi):
                tables.bind(bnd, e_lo, e_hi)
                self._lora_entries = (e_lo, e_hi)
            assert g.lora is not None
            bnd.bind_cpu_input(g.lora.order, order)
            bnd.bind_cpu_input(g.lora.inverse, inverse)
        bnd.bind_cpu_input(g.input_ids, ids)
        bnd.bind_cpu_input(g.attention_mask, mask)
        bnd.bind_cpu_input(g.logits_index, index)
        sess.run_with_iobinding(bnd, self._plain_options)
        return bnd.get_outputs()[0]

    def _bind_lora_span(self, bnd: Any, lo: int, hi: int) -> None:
        """The LoRA session's binding of the same cache rows (see _bind_span)."""
        if self._lora_span != (lo, hi):
            self._bind_rows(bnd, lo, hi)
            self._lora_span = (lo, hi)

    def prompt_logits(self, token_ids: list[int], slot: int = 0, adapter_entry: int = 0) -> np.ndarray:
        """Logits (len, vocab) at every position of `token_ids`, run from an empty cache in `slot`
        (which it overwrites), with the adapter in table entry `adapter_entry` (0: none): for
        parity checks and tools, not for serving."""
        return self._on_worker(self._prompt_logits, token_ids, slot, adapter_entry)  # type: ignore[no-any-return]

    def _prompt_logits(self, token_ids: list[int], slot: int, adapter_entry: int = 0) -> np.ndarray:
        n = len(token_ids)
        logits = self._forward(slot, np.array([token_ids], np.int64), np.array([n], np.int64),
                               np.arange(n, dtype=np.int64)[None],
                               np.array([adapter_entry], np.int64) if adapter_entry else None)
        self._tokens[slot] = list(token_ids)
        return np.array(logits.numpy()[0], dtype=np.float32)  # a copy: the output buffer is reused

    def _sample(self, plan: StepPlan, lo: int, logits_value: Any) -> StepResult:
        """Tokens at each row's sampled positions (and the logprobs its spec asks for, and the
        scores of its `score` tokens); logits_value is (rows, k, vocab) with the row's sampled
        positions first, then its scored ones."""
        out: dict[int, list[int]] = {}
        res = StepResult(tokens=out)
        try:
            todo = [(q, self._specs[q.seq_id]) for q in plan.seqs if q.num_samples or q.score]
        except KeyError as e:
            raise ValueError(f"sequence {e.args[0]} runs without having been announced in new_seqs") from None
        if not todo:
            return res
        # greedy rows take the argmax of the raw logits; a constrained one keeps it when its mask
        # allows it (then it is also the masked argmax: the first maximum, and allowed), and
        # otherwise is sampled below with its mask applied
        plain = [s.plain_greedy and not q.score for q, s in todo]
        if self._argmax is not None and all(plain):  # all greedy: pick on the device
            picks = self._argmax.run_with_ort_values(["ids"], {"logits": logits_value})[0].numpy().tolist()
            plain = self._take_picks(todo, plain, picks, lo, out)
            if all(plain):
                return res
        logits = logits_value.numpy()  # (rows, k, vocab)
        fast = [q for (q, _), p in zip(todo, plain) if p and q.seq_id not in out]
        if fast:
            if 2 * len(fast) >= logits.shape[0]:  # most rows: argmax the whole span, no copy
                picks = np.argmax(logits, axis=-1).tolist()
            else:
                rows = np.array([q.slot - lo for q in fast])
                picks = [[]] * logits.shape[0]
                for q, p in zip(fast, np.argmax(logits[rows], axis=-1).tolist()):
                    picks[q.slot - lo] = p
            plain = self._take_picks(todo, plain, picks, lo, out)
        for (q, spec), p in zip(todo, plain):
            if p:
                continue
            x = logits[q.slot - lo]
            m = q.num_samples
            if q.draws and len(q.draws) != m:
                raise ValueError(f"sequence {q.seq_id}: {len(q.draws)} draws for {m} samples")
            if m:
                first = q.start + len(q.tokens) - m  # the first sampled position
                masks = [self._mask(k) for k in q.masks] if q.masks else None
                toks, lp = sample_positions(x[:m], spec, q.draws, self._tokens[q.slot], first, masks)
                out[q.seq_id] = toks
                if lp is not None:
                    res.logprobs[q.seq_id] = lp
                if spec.top_logprobs:
                    res.top_logprobs[q.seq_id] = top_logprobs(x[:m], spec.top_logprobs)
            if q.score:
                scored = x[m: m + len(q.score)]
                res.scores[q.seq_id] = token_logprobs(scored, q.score)
                if spec.top_logprobs:
                    res.score_tops[q.seq_id] = top_logprobs(scored, spec.top_logprobs)
        return res

    def _take_picks(self, todo: list[tuple[SeqStep, SamplingSpec]], plain: list[bool], picks: list[list[int]],
                    lo: int, out: dict[int, list[int]]) -> list[bool]:
        """Take the argmax picks of the greedy rows whose masks allow them; returns `plain`
        with the rows whose picks a mask refused turned off (they are sampled with the mask)."""
        kept = list(plain)
        for i, (q, _) in enumerate(todo):
            if not plain[i] or q.seq_id in out:
                continue
            p = picks[q.slot - lo][: q.num_samples]
            if q.masks and not all(k is None or self._mask(k)[t] for k, t in zip(q.masks, p)):  # type: ignore[index]
                kept[i] = False
                continue
            out[q.seq_id] = p
        return kept

    def _mask(self, mask: TokenMask | None) -> np.ndarray | None:
        """A token mask as a bool array (kept by key: a constrained request reuses few masks)."""
        if mask is None:
            return None
        arr = self._masks.get(mask.key)
        if arr is None:
            arr = np.frombuffer(mask.allowed, dtype=np.uint8)[: self.manifest.vocab_size].astype(bool)
            if len(arr) < self.manifest.vocab_size:
                arr = np.concatenate([arr, np.zeros(self.manifest.vocab_size - len(arr), bool)])
            if len(self._masks) >= 512:
                self._masks.clear()
            self._masks[mask.key] = arr
        return arr

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
        if self.draft is not None:
            self.draft.engine.close()
        self._span = None
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        self._keep.clear()


def _parts(plan: StepPlan) -> list[StepPlan]:
    """The runs a step takes. onnxruntime's GroupQueryAttention takes several new tokens on top of
    a cache for one row at a time, so in a step of several rows each such row (a verify row with
    drafts) runs on its own, after one run of the others, in which its slot is idle at its start
    (the padding written there is overwritten by its own run)."""
    seqs = plan.seqs
    solo = [q for q in seqs if len(q.tokens) > 1 and q.start > 0] if len(seqs) > 1 else []
    if not solo:
        return [plan]
    rest = [q for q in seqs if not (len(q.tokens) > 1 and q.start > 0)]
    parts = []
    if rest:
        idle = dict(plan.idle)
        idle.update({q.slot: q.start for q in solo})
        parts.append(StepPlan(seqs=rest, idle=idle))
    return parts + [StepPlan(seqs=[q]) for q in solo]


LONE = 128  # MLAS splits a matmul's rows in blocks of 128: a block of one row is a lone row


def lone_rows_differ(session: Any, m: Manifest, kv_dtype: Any, token: int) -> bool:
    """Whether this session computes a row alone (one row, one token) other than the same row
    among others (two rows): the model run twice from an empty cache, logits compared bit for
    bit. True for the int4 exports on x86 CPUs without AVX-512 (onnxruntime 1.30-1.32)."""
    g = m.graph
    inputs = {i.name: i for i in session.get_inputs()}

    def logits(rows: int) -> np.ndarray:
        feeds: dict[str, np.ndarray] = {
            g.input_ids: np.full((rows, 1), token, np.int64),
            g.attention_mask: np.ones((rows, 1), np.int64),
            g.logits_index: np.zeros((rows, 1), np.int64),
        }
        for i in range(m.num_layers):
            for kv in ("key", "value"):
                name = g.past(i, kv)
                if name in inputs:
                    feeds[name] = np.zeros((rows, m.num_kv_heads, 0, m.head_dim), kv_dtype)
        return np.asarray(session.run([g.logits], feeds)[0])

    return not np.array_equal(logits(1)[0], logits(2)[0])


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
