"""The compact download of an fp32 export ("packed"): the same graph with its weights outside
it, and those weights carried as the GGUF's quantized blocks, expanded back to the exact fp32
bytes where the model runs (wasm/src/packed.mjs: in the tab's worker, in Node). The fp16 export
gets one too over the same blocks (`write_packed_half`: expanded, then rounded to float16).

onnxruntime-web's WASM kernels are fast for fp32 only, and an fp32 export of a Q4_1 GGUF is
nothing but its blocks dequantized (weights.Q4Blocks.dense): so 98 MB of blocks stand for 540 MB
of fp32 with no loss and no change of kernel. Three files, named in realm.json's variant
(`Variant.packed`):

- `model_packed.onnx`: the fp32 graph, every float initializer stored as external data in
  `model_packed.weights` (which is never written: the expander makes it);
- `model_packed.blocks`: b"RWPK", u32 version, u32 header length, the JSON header, zero padding
  to 8 bytes, then the data. The header lists each external tensor (`offset`, `bytes` in the
  weights file) and how to make it: "raw" (its fp32 bytes as they are), "q4_1" or "q8_0"
  (`rows` x `cols` in GGUF's block layout, rows in the graph's order; `transpose`: the graph
  holds the (cols, rows) transpose), at `data` (`data_bytes` long) in the data section;
- `model_lora_packed.onnx` (when the variant has a LoRA twin): the LoRA graph, its base weights
  pointing into the same weights file.

A block expands as q * d + m in float32 (d, m float16), exactly as the exporter dequantizes; the
exporter checks every tensor's expansion against the fp32 bytes before it writes a "q" kind.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .weights import BLOCK, Q4Blocks, Q8Blocks, Weight

MAGIC = b"RWPK"
VERSION = 1
ALIGN = 64  # tensors start on 64-byte boundaries in the weights file
MIN_EXTERNAL = 1024  # smaller initializers stay inside the graph


@dataclass(frozen=True)
class Origin:
    """Where an fp32 initializer came from: the weights whose rows it concatenates, transposed
    (a MatMul's (in, out) weight) or not (the embedding)."""

    weights: tuple[Weight, ...]
    transpose: bool


def _q4_bytes(w: Q4Blocks) -> bytes:
    n, k = w.shape
    q = w.q.reshape(n, k // BLOCK, 2, 16)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).astype(np.uint8)  # byte j: element j low, j + 16 high
    d = w.d.astype(np.float16).view(np.uint8).reshape(n, k // BLOCK, 2)
    m = w.m.astype(np.float16).view(np.uint8).reshape(n, k // BLOCK, 2)
    return np.concatenate([d, m, qs], axis=2).tobytes()


def _q8_bytes(w: Q8Blocks) -> bytes:
    n, k = w.shape
    d = w.d.astype(np.float16).view(np.uint8).reshape(n, k // BLOCK, 2)
    qs = w.q.reshape(n, k // BLOCK, BLOCK).view(np.uint8)
    return np.concatenate([d, qs], axis=2).tobytes()


def expand(kind: str, rows: int, cols: int, transpose: bool, data: bytes) -> np.ndarray:
    """The fp32 tensor a block-encoded entry stands for (the reference for packed.mjs)."""
    nb = cols // BLOCK
    if kind == "q4_1":
        b = np.frombuffer(data, np.uint8).reshape(rows, nb, 20)
        d = b[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        m = b[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = b[:, :, 4:20]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.float32)
        w = q * d[..., None] + m[..., None]
    elif kind == "q8_0":
        b = np.frombuffer(data, np.uint8).reshape(rows, nb, 34)
        d = b[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        q = b[:, :, 2:34].copy().view(np.int8).astype(np.float32)
        w = q * d[..., None]
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    w = w.reshape(rows, cols)
    return np.ascontiguousarray(w.T if transpose else w)


def _encode(origin: Origin | None, arr: np.ndarray) -> tuple[str, int, int, bytes] | None:
    """(kind, rows, cols, data) for an initializer made of blocks of one kind, checked to expand
    to exactly `arr`; None where it is not (it goes raw)."""
    if origin is None or not origin.weights:
        return None
    ws = origin.weights
    if all(isinstance(w, Q4Blocks) for w in ws):
        kind, data = "q4_1", b"".join(_q4_bytes(w) for w in ws)  # type: ignore[arg-type]
    elif all(isinstance(w, Q8Blocks) for w in ws):
        kind, data = "q8_0", b"".join(_q8_bytes(w) for w in ws)  # type: ignore[arg-type]
    else:
        return None
    cols = ws[0].shape[1]
    if any(w.shape[1] != cols for w in ws) or cols % BLOCK:
        return None
    rows = sum(w.shape[0] for w in ws)
    back = expand(kind, rows, cols, origin.transpose, data)
    if back.shape != arr.shape or not np.array_equal(back.view(np.uint32), np.ascontiguousarray(arr).view(np.uint32)):
        return None
    return kind, rows, cols, data


def _externalize(t: TensorProto, location: str, offset: int, length: int) -> None:
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def write_packed(model: onnx.ModelProto, origins: dict[str, Origin], out: Path, stem: str = "model_packed",
                 lora_model: onnx.ModelProto | None = None) -> dict[str, Any]:
    """Write the packed form of the fp32 `model` (and of its LoRA twin) into `out`; returns the
    variant's `packed` entry for realm.json. The protos are changed (their weights moved out)."""
    weights_name, blocks_name = f"{stem}.weights", f"{stem}.blocks"
    tensors: list[dict[str, Any]] = []
    data: list[bytes] = []
    placed: dict[str, tuple[int, int, bytes]] = {}  # name -> (offset, length, sha256 of the fp32 bytes)
    offset = data_at = 0
    for t in model.graph.initializer:
        if t.data_type != TensorProto.FLOAT or t.data_location == TensorProto.EXTERNAL:
            continue
        arr = numpy_helper.to_array(t)
        raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        if len(raw) < MIN_EXTERNAL:
            continue
        enc = _encode(origins.get(t.name), arr)
        entry: dict[str, Any] = {"name": t.name, "offset": offset, "bytes": len(raw), "shape": list(arr.shape)}
        if enc is None:
            kind, blob = "raw", raw
        else:
            kind, rows, cols, blob = enc
            entry.update(rows=rows, cols=cols, transpose=origins[t.name].transpose)
        entry.update(kind=kind, data=data_at, data_bytes=len(blob))
        tensors.append(entry)
        data.append(blob)
        data_at += len(blob)
        placed[t.name] = (offset, len(raw), hashlib.sha256(raw).digest())
        _externalize(t, weights_name, offset, len(raw))
        offset += -(-len(raw) // ALIGN) * ALIGN
    header = json.dumps({"version": VERSION, "weights": weights_name, "weights_bytes": offset, "tensors": tensors},
                        separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<II", VERSION, len(header)) + header
    head += b"\0" * (-len(head) % 8)
    with open(out / blocks_name, "wb") as f:
        f.write(head)
        for blob in data:
            f.write(blob)
    graph_path = out / f"{stem}.onnx"
    graph_path.write_bytes(model.SerializeToString())
    entry_out: dict[str, Any] = {"file": graph_path.name, "bytes": graph_path.stat().st_size, "blocks": blocks_name,
                                 "blocks_bytes": (out / blocks_name).stat().st_size, "weights": weights_name,
                                 "weights_bytes": offset}
    if lora_model is not None:
        for t in lora_model.graph.initializer:
            got = placed.get(t.name)
            if got is None or t.data_type != TensorProto.FLOAT or t.data_location == TensorProto.EXTERNAL:
                continue
            raw = np.ascontiguousarray(numpy_helper.to_array(t), dtype="<f4").tobytes()
            if len(raw) == got[1] and hashlib.sha256(raw).digest() == got[2]:  # the same base weight
                _externalize(t, weights_name, got[0], got[1])
        lora_path = out / f"{stem.replace('model', 'model_lora', 1)}.onnx"
        lora_path.write_bytes(lora_model.SerializeToString())
        entry_out.update(lora_file=lora_path.name, lora_bytes=lora_path.stat().st_size)
    return entry_out


def _entry_fp32(e: dict[str, Any], data: bytes) -> np.ndarray:
    """The fp32 tensor one header entry stands for."""
    blob = data[e["data"]: e["data"] + e["data_bytes"]]
    if e["kind"] == "raw":
        return np.frombuffer(blob, "<f4").reshape(e["shape"])
    return expand(e["kind"], e["rows"], e["cols"], e["transpose"], blob).reshape(e["shape"])


def write_packed_half(model: onnx.ModelProto, fp32_packed: dict[str, Any], out: Path, stem: str = "model_fp16_packed",
                      lora_model: onnx.ModelProto | None = None) -> dict[str, Any]:
    """Write the packed form of the fp16 `model` (and its LoRA twin) over the fp32 export's
    blocks (`fp32_packed`: that variant's `packed` entry): the fp16 graph's weights are the fp32
    expansion rounded to float16 (round to nearest even, numpy's astype), so one .blocks file
    serves both. Each float16 initializer the header names is moved out to `{stem}.weights` at
    half the fp32 offset, after checking that the rounded expansion is its exact bytes (any
    other stays in the graph). Returns the fp16 variant's `packed` entry ("element": "f16")."""
    meta, data = read_packed(out / fp32_packed["blocks"])
    by_name = {e["name"]: e for e in meta["tensors"]}
    weights_name = f"{stem}.weights"
    want: dict[str, bytes] = {}  # name -> the float16 bytes its entry expands to (the twin reuses them)
    end = meta["weights_bytes"] // 2  # the derived tensors go after the rounded ones
    derived: list[dict[str, Any]] = []  # 2-D transposes of header tensors (fp16's explicit lm_head)

    def rounded(name: str) -> bytes:
        if name not in want:
            want[name] = _entry_fp32(by_name[name], data).astype("<f2").tobytes()
        return want[name]

    def move_out(m: onnx.ModelProto) -> None:
        nonlocal end
        for t in m.graph.initializer:
            if t.data_type != TensorProto.FLOAT16 or t.data_location == TensorProto.EXTERNAL:
                continue
            arr = np.ascontiguousarray(numpy_helper.to_array(t), dtype="<f2")
            e = by_name.get(t.name)
            if e is not None and list(arr.shape) == e["shape"] and arr.tobytes() == rounded(t.name):
                _externalize(t, weights_name, e["offset"] // 2, e["bytes"] // 2)
                continue
            known = next((d for d in derived if d["name"] == t.name), None)
            if known is None and arr.ndim == 2 and arr.nbytes >= MIN_EXTERNAL:
                for src in (x for x in meta["tensors"] if x["shape"] == list(arr.shape[::-1])):
                    back = np.frombuffer(rounded(src["name"]), "<f2").reshape(src["shape"])
                    if np.array_equal(back.T.view(np.uint16), arr.view(np.uint16)):
                        known = {"name": t.name, "from": src["name"], "offset": end, "bytes": arr.nbytes}
                        derived.append(known)
                        end += -(-arr.nbytes // ALIGN) * ALIGN
                        break
            if known is not None and known["bytes"] == arr.nbytes:
                _externalize(t, weights_name, known["offset"], known["bytes"])

    move_out(model)
    graph_path = out / f"{stem}.onnx"
    graph_path.write_bytes(model.SerializeToString())
    entry: dict[str, Any] = {"file": graph_path.name, "bytes": graph_path.stat().st_size, "blocks": fp32_packed["blocks"],
                             "blocks_bytes": fp32_packed["blocks_bytes"], "weights": weights_name,
                             "element": "f16", "derived": derived}
    if lora_model is not None:
        move_out(lora_model)
        lora_path = out / f"{stem.replace('_packed', '_lora_packed')}.onnx"
        lora_path.write_bytes(lora_model.SerializeToString())
        entry.update(lora_file=lora_path.name, lora_bytes=lora_path.stat().st_size)
    entry["weights_bytes"] = end
    return entry


def read_packed(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """The header and data section of a .blocks file."""
    buf = Path(path).read_bytes()
    if buf[:4] != MAGIC:
        raise ValueError(f"{path}: not a realm-web packed weights file")
    version, n = struct.unpack("<II", buf[4:12])
    if version != VERSION:
        raise ValueError(f"{path}: packed weights version {version}, this realm-web reads {VERSION}")
    start = 12 + n
    start += -start % 8
    return json.loads(buf[12:12 + n]), buf[start:]


def expand_weights(path: str | Path, packed: dict[str, Any] | None = None) -> bytes:
    """The weights file a .blocks file stands for (what packed.mjs makes in the tab): fp32, or
    for a `packed` entry with element "f16" the fp16 graph's (every tensor rounded to float16 at
    half the offset, then its `derived` transposes after them)."""
    meta, data = read_packed(path)
    half = bool(packed and packed.get("element") == "f16")
    div = 2 if half else 1
    out = bytearray(packed["weights_bytes"] if packed else meta["weights_bytes"])
    by_name = {e["name"]: e for e in meta["tensors"]}
    for e in meta["tensors"]:
        at = e["offset"] // div
        out[at: at + e["bytes"] // div] = _entry_fp32(e, data).astype("<f2" if half else "<f4").tobytes()
    for d in (packed or {}).get("derived", []):
        src = by_name[d["from"]]
        at = src["offset"] // div
        arr = np.frombuffer(bytes(out[at: at + src["bytes"] // div]), "<f2" if half else "<f4").reshape(src["shape"])
        out[d["offset"]: d["offset"] + d["bytes"]] = np.ascontiguousarray(arr.T).tobytes()
    return bytes(out)
