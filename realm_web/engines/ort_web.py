"""Web engine: onnxruntime-web (or onnxruntime-node) driven from Pyodide through pyodide.ffi.

The JavaScript half (wasm/src/bridge.mjs) owns the ORT session, the KV tensors of each slot
(GPU buffers with WebGPU) and token selection over the logits; this half only turns a StepPlan
into one JSON message and awaits one call per step, so no logits or cache ever become Python
objects. Standard library only: it runs in Pyodide, where `bridge` is a JsProxy.

The message carries only what the bridge does not know yet: requests announced (their sampling
spec, once), requests released, prefix copies, and per row [seq_id, slot, start, tokens,
num_samples, draws] (then, when present, [score, mask keys]); token masks are uploaded once per key.
"""
from __future__ import annotations

import json
from typing import Any

from ..lora import GROUPS, LoraAdapter, dims, group_dims, group_members
from ..manifest import Manifest, Variant
from ..step import EngineCaps, StepPlan, StepResult, TokenMask

KV_TYPES = {"fp32": "float32", "fp16": "float16"}
MAX_MASKS = 512  # token masks the bridge keeps (49 kB each for a 49,152-token vocabulary)


def bridge_config(manifest: Manifest, dtype: str | None, backend: str) -> dict[str, Any]:
    """What the JavaScript bridge needs to know about the export it runs (from realm.json)."""
    v = manifest.variant_for(backend, dtype)
    cfg: dict[str, Any] = {"file": v.file, "dtype": v.dtype, "kvDtype": KV_TYPES[v.kv_dtype], "backend": backend,
                           "numLayers": manifest.num_layers, "kvHeads": manifest.num_kv_heads,
                           "headDim": manifest.head_dim, "vocabSize": manifest.vocab_size, "bytes": v.bytes,
                           "names": manifest.graph.names, "arch": manifest.architecture}
    if v.packed:  # the compact download (export/packed.py); the host chooses which it fetches
        p = v.packed
        cfg["packed"] = {"file": p["file"], "bytes": p["bytes"], "blocks": p["blocks"], "blocksBytes": p["blocks_bytes"],
                         "weights": p["weights"], "weightsBytes": p["weights_bytes"], "element": p.get("element", "f32"),
                         "derived": p.get("derived", []),
                         "loraFile": p.get("lora_file"), "loraBytes": p.get("lora_bytes", 0)}
    c = manifest.graph.lora
    if c is not None and v.lora_file:  # the LoRA-capable twin (realm_web.manifest.LoraContract)
        arch, member = manifest.architecture, dims(manifest.architecture)
        cfg["lora"] = {"file": v.lora_file, "bytes": v.lora_bytes, "maxRank": c.max_rank,
                       "names": {"order": c.order, "inverse": c.inverse, "a": c.a, "b": c.b},
                       "groups": [{"name": g, "in": group_dims(arch)[g][0],
                                   "outs": [member[m][1] for m in group_members(g)]} for g in GROUPS]}
    return cfg


def adapter_blob(adapter: LoraAdapter) -> tuple[str, bytes]:
    """An adapter for the bridge's table (bridge.mjs `upload`): JSON listing, per (layer, group)
    it changes, [layer, group, R, member ranks], and the bytes of each one's fused A (in, R) then
    B (R, out), float32 little-endian, in that order. The bridge transposes them into its tables."""
    meta, parts = [], []
    for i, groups in enumerate(adapter.groups):
        for g in GROUPS:
            if g in groups:
                fa, fb, r = groups[g]
                meta.append([i, g, r, list(adapter.splits[i][g])])
                parts += [fa.tobytes(), fb.tobytes()]
    return json.dumps({"name": adapter.name, "groups": meta}, separators=(",", ":")), b"".join(parts)


class OrtWebEngine:
    """Runs StepPlans through a bridge object whose `step(json)` returns a promise of JSON and
    whose `capabilities()` returns the JSON of its EngineCaps; with adapters, `upload(entry,
    json, bytes)` puts one into the bridge's table before the step that first uses it."""

    step_thread = False

    def __init__(self, manifest: Manifest, bridge: Any, *, backend: str = "wasm", dtype: str | None = None,
                 max_slots: int = 1, max_length: int | None = None, max_loras: int = 8) -> None:
        self.manifest = manifest
        self.bridge = bridge
        self.variant: Variant = manifest.variant_for(backend, dtype)
        self.device = backend
        self.caps = EngineCaps.from_json(json.loads(str(bridge.capabilities())))
        self.max_slots = max_slots
        self.max_length = min(max_length or manifest.max_length, manifest.max_length)
        self.kv_capacity = max_slots * self.max_length
        self.max_loras = max_loras
        self.steps = 0
        self._masks: set[int] = set()  # token-mask keys the bridge holds

    async def run(self, plan: StepPlan) -> StepResult:
        for load in plan.adapter_loads:
            meta, blob = adapter_blob(load.adapter)
            self.bridge.upload(load.entry, meta, blob)
        rows: list[list[Any]] = []
        for q in plan.seqs:
            row: list[Any] = [q.seq_id, q.slot, q.start, q.tokens, q.num_samples, q.draws]
            if q.score or q.masks:
                row += [q.score, [self._mask(m) for m in q.masks] if q.masks else None]
            rows.append(row)
        msg: dict[str, Any] = {"seqs": rows}
        if plan.new_seqs:
            msg["new"] = [{"id": n.seq_id, "slot": n.slot, "sampling": n.sampling.to_json(), "adapter": n.adapter,
                           "entry": n.adapter_entry, **({"cached": n.cached} if n.cached else {})}
                          for n in plan.new_seqs]
        if plan.released:
            msg["released"] = plan.released
        if plan.copies:
            msg["copies"] = [[c.src, c.dst, c.length] for c in plan.copies]
        res = json.loads(str(await self.bridge.step(json.dumps(msg, separators=(",", ":")))))
        self.steps += 1
        return StepResult(tokens={int(k): [int(t) for t in v] for k, v in res["tokens"].items()},
                          logprobs={int(k): [float(x) for x in v] for k, v in res.get("logprobs", {}).items()},
                          top_logprobs=_tops(res.get("top")), scores={int(k): [float(x) for x in v]
                                                                     for k, v in res.get("scores", {}).items()},
                          score_tops=_tops(res.get("scoreTops")))

    def _mask(self, mask: TokenMask | None) -> int | None:
        """A mask's key, uploading it to the bridge the first time (the bridge keeps at most
        MAX_MASKS; past that it starts over)."""
        if mask is None:
            return None
        if mask.key not in self._masks:
            if len(self._masks) >= MAX_MASKS:
                self.bridge.clearMasks()
                self._masks.clear()
            self.bridge.setMask(mask.key, mask.allowed)
            self._masks.add(mask.key)
        return mask.key

    def run_sync(self, plan: StepPlan) -> StepResult:
        raise RuntimeError("the web engine is asynchronous: use `await llm.agenerate(...)` or `llm.stream(...)`")


def _tops(d: dict[str, Any] | None) -> dict[int, list[list[tuple[int, float]]]]:
    return {int(k): [[(int(i), float(v)) for i, v in pos] for pos in rows] for k, rows in (d or {}).items()}
