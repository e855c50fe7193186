"""LoRA adapters: read a PEFT directory or a llama.cpp GGUF LoRA into the form the engines serve.

Theory of operation
-------------------
A LoRA adapter adds, to some linear layers W (out x in) of the base model, a low-rank update
`scale * B @ A` with A (r x in) and B (out x r): y = W x + scale * B (A x). PEFT stores A and B
per target module (`lora_A.weight` (r, in), `lora_B.weight` (out, r)) with `r` and `lora_alpha`
in adapter_config.json (scale = alpha / r, or alpha / sqrt(r) with `use_rslora`; per-module
overrides in `rank_pattern` / `alpha_pattern`). llama.cpp's GGUF LoRA stores the same A and B
as `<tensor>.weight.lora_a` / `.lora_b` with one `adapter.lora.alpha` (scale = alpha / r of each
tensor), its q/k rows in llama.cpp's rotary order, which is undone here as the exporter does
for the base weights.

Our graphs fuse q|k|v into one matmul and gate|up into another, so an adapter is served per
*group*: qkv, o, gate_up, down. A group's update is x @ A_g @ B_g with A_g (in, R) the members'
A^T side by side and B_g (R, out) block-diagonal, each member's scale folded into its block of
B: x A_g B_g = [s_q x A_q^T B_q^T | s_k ... | s_v ...], exactly the members' updates. A member
that is not targeted takes no rank. `LoraAdapter.groups[layer][group]` holds (A_g, B_g, R) as
flat row-major float32 arrays, which is what an engine copies into its adapter tables.

Standard library only (json, struct, array): it runs in Pyodide too.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeAlias

Floats: TypeAlias = "array[float]"  # float32 values (typecode "f"), row-major

# (group, member) for each target module, in the order of the fused matmuls' outputs
MODULES = {"q_proj": ("qkv", 0), "k_proj": ("qkv", 1), "v_proj": ("qkv", 2), "o_proj": ("o", 0),
           "gate_proj": ("gate_up", 0), "up_proj": ("gate_up", 1), "down_proj": ("down", 0)}
GROUPS = ("qkv", "o", "gate_up", "down")
_GGUF_MODULES = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj",
                 "ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}
_NOT_SERVED = ("embed_tokens", "lm_head", "token_embd", "output")


class AdapterError(ValueError):
    """An adapter realm-web cannot serve; `field` names what is wrong (a config key, a tensor)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AdapterNotFound(AdapterError):
    """No adapter of that name is loaded."""


class AdapterInUse(AdapterError):
    """The adapter has running or waiting requests: it cannot be unloaded or replaced now."""


@dataclass
class LoraAdapter:
    """One adapter, mapped onto the base model's fused matmuls (see the module docstring)."""

    name: str
    source: str
    rank: int  # the largest rank of any target module
    targets: tuple[str, ...]  # the modules it changes (q_proj, ...)
    # layer -> group -> (A (in, R), B (R, out), R), for the groups it changes
    groups: list[dict[str, tuple[Floats, Floats, int]]] = field(default_factory=list)
    # layer -> group -> each member's rank, in the group's order (0: not targeted); they sum to R
    splits: list[dict[str, tuple[int, ...]]] = field(default_factory=list)

    def group_rank(self, group: str) -> int:
        """The largest R of this group over the layers (what a table must hold)."""
        return max((g[group][2] for g in self.groups if group in g), default=0)


def dims(arch: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) of each target module for the base model's architecture (realm.json)."""
    h, hd = int(arch["hidden_size"]), int(arch["head_dim"])
    q, kv, ff = int(arch["num_heads"]) * hd, int(arch["num_kv_heads"]) * hd, int(arch["intermediate_size"])
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, ff), "up_proj": (h, ff), "down_proj": (ff, h)}


def group_members(group: str) -> list[str]:
    """The target modules of a fused group, in the order of its matmul's outputs."""
    return [m for m, (g, _) in sorted(MODULES.items(), key=lambda kv: kv[1][1]) if g == group]


def group_dims(arch: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) of each fused group."""
    d = dims(arch)
    return {"qkv": (d["q_proj"][0], d["q_proj"][1] + 2 * d["k_proj"][1]), "o": d["o_proj"],
            "gate_up": (d["gate_proj"][0], 2 * d["gate_proj"][1]), "down": d["down_proj"]}


def load_adapter(path: str | os.PathLike[str], arch: Mapping[str, Any], name: str | None = None,
                 max_rank: int | None = None) -> LoraAdapter:
    """Read a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) or a GGUF
    LoRA file for a base model of architecture `arch` (the manifest's). Raises AdapterError,
    naming the field, for anything it cannot serve."""
    p = Path(path)
    label = name or p.stem
    if p.is_dir():
        modules, label_src = _read_peft(p), str(p)
    elif p.is_file():
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise AdapterError(f"{p}: not a GGUF file or a PEFT adapter directory", "path")
        modules, label_src = _read_gguf_lora(p, arch), str(p)
    else:
        raise AdapterError(f"{p}: no such adapter (a PEFT directory or a GGUF LoRA file)", "path")
    return _assemble(label, label_src, modules, arch, max_rank)


# -- PEFT ----------------------------------------------------------------------------------------
def _read_peft(d: Path) -> dict[tuple[int, str], tuple[Floats, Floats, int, float]]:
    """(layer, module) -> (A (r, in), B (out, r), r, scale) from a PEFT directory."""
    cfg_path = d / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"{d}: no adapter_config.json (not a PEFT adapter directory)", "adapter_config.json") from None
    except (ValueError, RecursionError) as e:
        raise AdapterError(f"{cfg_path}: not valid JSON ({e})", "adapter_config.json") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{cfg_path}: not a JSON object", "adapter_config.json")
    _check_peft_config(cfg, cfg_path)
    weights = d / "adapter_model.safetensors"
    if not weights.exists():
        raise AdapterError(f"{d}: no adapter_model.safetensors (only safetensors weights are read)",
                           "adapter_model.safetensors")
    tensors = read_safetensors(weights)
    base_r, base_alpha = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    rslora = bool(cfg.get("use_rslora", False))
    out: dict[tuple[int, str], tuple[Floats, Floats, int, float]] = {}
    pairs: dict[str, dict[str, tuple[tuple[int, ...], Floats]]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight", key)
        if m is None:
            what = "a DoRA magnitude" if "lora_magnitude" in key else \
                "modules_to_save" if "modules_to_save" in key or "original_module" in key else \
                "an embedding LoRA" if "lora_embedding" in key else "not a LoRA A or B weight"
            raise AdapterError(f"{weights}: tensor {key!r} is {what}; realm-web serves LoRA on linear layers only", key)
        pairs.setdefault(m.group(1), {})[m.group(2)] = t
    for module_path, ab in sorted(pairs.items()):
        layer, module = _module_of(module_path, str(weights))
        sa, a, sb, b = _pair(ab.get("lora_A"), ab.get("lora_B"), ("lora_A", "lora_B"), f"{weights}: {module_path}",
                             module_path)
        r = sa[0]
        key = module_path.removeprefix("base_model.model.")
        r_cfg = int(rank_pattern.get(_pattern_key(rank_pattern, key), base_r))
        if r_cfg != r:
            raise AdapterError(f"{weights}: {module_path} has rank {r}, but the config gives {r_cfg} "
                               "(r / rank_pattern)", "rank_pattern" if rank_pattern else "r")
        alpha = float(alpha_pattern.get(_pattern_key(alpha_pattern, key), base_alpha))
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        out[(layer, module)] = (a, b, r, scale)
    if not out:
        raise AdapterError(f"{weights}: no LoRA weights", "adapter_model.safetensors")
    return out


def _check_peft_config(cfg: dict[str, Any], where: Path) -> None:
    peft_type = cfg.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterError(f"{where}: peft_type {peft_type!r}: only LoRA adapters are served", "peft_type")
    if cfg.get("use_dora"):
        raise AdapterError(f"{where}: use_dora: DoRA adapters are not served", "use_dora")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"{where}: modules_to_save {cfg['modules_to_save']}: adapters that replace whole "
                           "modules are not served", "modules_to_save")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"{where}: bias {cfg['bias']!r}: adapters with trained biases are not served", "bias")
    if cfg.get("layer_replication"):
        raise AdapterError(f"{where}: layer_replication is not served", "layer_replication")
    targets = cfg.get("target_modules")
    names = [targets] if isinstance(targets, str) else list(targets or [])
    for t in names:
        if any(x in str(t) for x in ("embed_tokens", "lm_head")):
            raise AdapterError(f"{where}: target_modules {targets}: embedding and lm_head targets are not served",
                               "target_modules")
    for k in ("r", "lora_alpha"):
        v = cfg.get(k, 8)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise AdapterError(f"{where}: {k} must be a positive number, got {v!r}", k)
    for k in ("rank_pattern", "alpha_pattern"):
        v = cfg.get(k) or {}
        if not isinstance(v, dict) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              for x in v.values()):
            raise AdapterError(f"{where}: {k} must map module names to numbers", k)


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str:
    """PEFT's rule: a pattern key matches a module whose name ends with it (at a dot)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def _module_of(path: str, where: str) -> tuple[int, str]:
    """'model.layers.3.self_attn.q_proj' -> (3, 'q_proj'); AdapterError for anything else."""
    if any(x in path.split(".") for x in _NOT_SERVED):
        raise AdapterError(f"{where}: {path}: embedding and lm_head LoRA are not served", "target_modules")
    m = re.fullmatch(r"(?:.*\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)", path)
    if m is None or m.group(2) not in MODULES:
        raise AdapterError(f"{where}: {path}: not a LoRA target realm-web serves (q/k/v/o/gate/up/down_proj "
                           "of a decoder layer)", "target_modules")
    return int(m.group(1)), m.group(2)


# -- GGUF ----------------------------------------------------------------------------------------
def _read_gguf_lora(p: Path, arch: Mapping[str, Any]) -> dict[tuple[int, str], tuple[Floats, Floats, int, float]]:
    meta, tensors = read_gguf(p)
    if meta.get("general.type") != "adapter" or meta.get("adapter.type", "lora") != "lora":
        raise AdapterError(f"{p}: general.type is {meta.get('general.type')!r}, not a LoRA adapter "
                           "(a base model GGUF?)", "general.type")
    alpha = float(meta.get("adapter.lora.alpha", 0.0))
    pairs: dict[tuple[int, str], dict[str, tuple[tuple[int, ...], Floats]]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight\.lora_(a|b)", key)
        if m is None or m.group(2) not in _GGUF_MODULES:
            raise AdapterError(f"{p}: tensor {key!r} is not a LoRA target realm-web serves "
                               "(embeddings, norms and the output layer are not)", key)
        pairs.setdefault((int(m.group(1)), _GGUF_MODULES[m.group(2)]), {})[m.group(3)] = t
    n_head, n_kv = int(arch["num_heads"]), int(arch["num_kv_heads"])
    out: dict[tuple[int, str], tuple[Floats, Floats, int, float]] = {}
    for (layer, module), ab in sorted(pairs.items()):
        sa, a, sb, b = _pair(ab.get("a"), ab.get("b"), ("lora_a", "lora_b"), f"{p}: layer {layer} {module}", module)
        r = sa[0]
        if module in ("q_proj", "k_proj"):  # llama.cpp's rotary row order -> Hugging Face's
            b = _unpermute_rows(b, sb[0], r, n_head if module == "q_proj" else n_kv)
        out[(layer, module)] = (a, b, r, alpha / r if alpha else 1.0)
    if not out:
        raise AdapterError(f"{p}: no LoRA tensors", "tensors")
    return out


Tensor: TypeAlias = "tuple[tuple[int, ...], Floats]"


def _pair(a: Tensor | None, b: Tensor | None, names: tuple[str, str], where: str,
          field: str) -> tuple[tuple[int, ...], Floats, tuple[int, ...], Floats]:
    """One module's A (r, in) and B (out, r) with their shapes; AdapterError when one is missing
    or they do not pair."""
    if a is None or b is None:
        raise AdapterError(f"{where} has {names[0]} or {names[1]} but not both", field)
    (sa, fa), (sb, fb) = a, b
    if len(sa) != 2 or len(sb) != 2 or sa[0] != sb[1]:
        raise AdapterError(f"{where}: {names[0]} {list(sa)} and {names[1]} {list(sb)} do not pair", field)
    return sa, fa, sb, fb


def _unpermute_rows(b: Floats, rows: int, cols: int, n_head: int) -> Floats:
    """The inverse of llama.cpp's q/k row order (see export/weights.py's unpermute_rope_rows)."""
    hd = rows // n_head
    out = array("f")
    for h in range(n_head):
        for half in range(2):
            for i in range(hd // 2):
                src = h * hd + 2 * i + half
                out.extend(b[src * cols:(src + 1) * cols])
    return out


# -- assembling the groups -------------------------------------------------------------------------
def _assemble(name: str, source: str, modules: dict[tuple[int, str], tuple[Floats, Floats, int, float]],
              arch: Mapping[str, Any], max_rank: int | None) -> LoraAdapter:
    n_layers = int(arch["num_layers"])
    d = dims(arch)
    rank = max(r for _, _, r, _ in modules.values())
    if max_rank is not None and rank > max_rank:
        raise AdapterError(f"{source}: rank {rank} is more than this server's max rank {max_rank}", "r")
    groups: list[dict[str, tuple[Floats, Floats, int]]] = [{} for _ in range(n_layers)]
    splits: list[dict[str, tuple[int, ...]]] = [{} for _ in range(n_layers)]
    for layer in range(n_layers):
        for g in GROUPS:
            members = [(m, modules[(layer, m)]) for m, (grp, _) in MODULES.items() if grp == g and (layer, m) in modules]
            if members:
                groups[layer][g] = _fuse(g, members, d, source, layer)
                splits[layer][g] = tuple(modules[(layer, m)][2] if (layer, m) in modules else 0
                                         for m in group_members(g))
    layers_seen = {layer for layer, _ in modules}
    if max(layers_seen) >= n_layers:
        raise AdapterError(f"{source}: the adapter has layer {max(layers_seen)}, the base model {n_layers} layers "
                           "(another base model?)", "num_layers")
    return LoraAdapter(name=name, source=source, rank=rank, targets=tuple(sorted({m for _, m in modules})),
                       groups=groups, splits=splits)


def _fuse(group: str, members: list[tuple[str, tuple[Floats, Floats, int, float]]], d: dict[str, tuple[int, int]],
          source: str, layer: int) -> tuple[Floats, Floats, int]:
    """A_g (in, R): the members' A^T side by side; B_g (R, out): block-diagonal, scales folded in.
    Members of the group that the adapter does not target add no rank (and zero output)."""
    order = group_members(group)
    n_in = d[order[0]][0]
    outs = {m: d[m][1] for m in order}
    total_out = sum(outs.values())
    have = dict(members)
    R = sum(have[m][2] for m in order if m in have)
    a_cols: list[tuple[Floats, int]] = []  # (A (r, in), r) in order
    b = array("f")
    offset = 0  # output column where the current member starts
    for m in order:
        if m not in have:
            offset += outs[m]
            continue
        a_m, b_m, r, scale = have[m]
        n_in_m, n_out = d[m]
        if len(a_m) != r * n_in_m or len(b_m) != n_out * r:
            raise AdapterError(f"{source}: layer {layer} {m}: A is {len(a_m) // max(r, 1)} wide and B "
                               f"{len(b_m) // max(r, 1)} tall, the base model's {m} is {n_in_m} -> {n_out} "
                               "(another base model?)", "hidden_size")
        a_cols.append((a_m, r))
        for j in range(r):  # row j of B_m^T, scaled, at its column offset
            col = b_m[j::r]
            b.extend(array("f", bytes(4 * offset)))
            b.extend(array("f", (scale * v for v in col)) if scale != 1.0 else col)
            b.extend(array("f", bytes(4 * (total_out - offset - n_out))))
        offset += outs[m]
    a = array("f")
    for i in range(n_in):  # row i of A_g: column i of every member's A, side by side
        for a_m, r in a_cols:
            a.extend(a_m[i::n_in])
    return a, b, R


# -- file formats ----------------------------------------------------------------------------------
_SAFE_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}


def read_safetensors(path: Path) -> dict[str, tuple[tuple[int, ...], Floats]]:
    """name -> (shape, float32 values, row-major) of a .safetensors file (F32, F16, BF16)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AdapterError(f"{path}: cannot read ({e.strerror})", "adapter_model.safetensors") from None
    try:
        (n,) = struct.unpack_from("<Q", data, 0)
        if n > len(data) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(data[8:8 + n])
        if not isinstance(header, dict):
            raise ValueError("the header is not an object")
    except (struct.error, ValueError, RecursionError) as e:
        raise AdapterError(f"{path}: not a safetensors file ({e})", "adapter_model.safetensors") from None
    base = 8 + n
    out: dict[str, tuple[tuple[int, ...], Floats]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt, shape, (start, end) = info["dtype"], tuple(int(x) for x in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise AdapterError(f"{path}: tensor {name!r} has a malformed header entry", name) from None
        if dt not in _SAFE_DTYPES:
            raise AdapterError(f"{path}: tensor {name!r} is {dt}; adapters must be F32, F16 or BF16", name)
        count = math.prod(shape)
        if not 0 <= start <= end <= len(data) - base or end - start != count * _SAFE_DTYPES[dt]:
            raise AdapterError(f"{path}: tensor {name!r} does not fit the file (truncated or corrupt)", name)
        out[name] = (shape, _floats(data[base + start:base + end], dt))
    return out


def _floats(raw: bytes, dt: str) -> Floats:
    """Little-endian F32 / F16 / BF16 bytes -> float32 values."""
    if dt == "F32":
        a = array("f", raw)
        if sys.byteorder != "little":
            a.byteswap()
        return a
    if dt == "F16":
        return array("f", struct.unpack(f"<{len(raw) // 2}e", raw))
    h = array("H", raw)  # BF16: the high half of a float32
    if sys.byteorder != "little":
        h.byteswap()
    w = array("I", [x << 16 for x in h])
    return array("f", w.tobytes())


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGML_F32, _GGML_F16, _GGML_Q8_0, _GGML_BF16 = 0, 1, 8, 30


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, tuple[tuple[int, ...], Floats]]]:
    """The metadata and the float32 tensors (F32, F16, BF16, Q8_0) of a GGUF file. Shapes are
    row-major (numpy order: the reverse of GGUF's ne)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AdapterError(f"{path}: cannot read ({e.strerror})", "path") from None
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string() -> str:
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8", errors="replace")
        pos += n
        return s

    def value(t: int) -> Any:
        if t in _GGUF_SCALARS:
            return take(_GGUF_SCALARS[t])
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            if n > len(data):
                raise ValueError("array longer than the file")
            return [value(et) for _ in range(n)]
        raise ValueError(f"unknown metadata type {t}")

    try:
        if data[:4] != b"GGUF":
            raise ValueError("no GGUF magic")
        pos = 4
        version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            k = string()
            meta[k] = value(take("I"))
        infos = []
        for _ in range(n_tensors):
            name = string()
            nd = take("I")
            ne = [take("Q") for _ in range(nd)]
            infos.append((name, tuple(reversed(ne)), take("I"), take("Q")))
        align = int(meta.get("general.alignment", 32))
        start = (pos + align - 1) // align * align
        tensors = {}
        for name, shape, ggml_type, offset in infos:
            count = math.prod(shape)
            at = start + offset
            if ggml_type == _GGML_F32:
                tensors[name] = (shape, _floats(data[at:at + 4 * count], "F32"))
            elif ggml_type == _GGML_F16:
                tensors[name] = (shape, _floats(data[at:at + 2 * count], "F16"))
            elif ggml_type == _GGML_BF16:
                tensors[name] = (shape, _floats(data[at:at + 2 * count], "BF16"))
            elif ggml_type == _GGML_Q8_0:
                tensors[name] = (shape, _q8_0(data[at:at + 34 * (count // 32)]))
            else:
                raise AdapterError(f"{path}: tensor {name!r} has GGML type {ggml_type}; LoRA tensors must be F32, "
                                   "F16, BF16 or Q8_0", name)
            if len(tensors[name][1]) != count:
                raise ValueError(f"tensor {name!r} is truncated")
    except AdapterError:
        raise
    except (struct.error, ValueError, IndexError, MemoryError, RecursionError) as e:
        raise AdapterError(f"{path}: not a readable GGUF file ({e})", "path") from None
    return meta, tensors


def _q8_0(raw: bytes) -> Floats:
    """GGML Q8_0 blocks (an f16 scale, then 32 int8) -> float32 values."""
    out = array("f")
    for k in range(0, len(raw), 34):
        (d,) = struct.unpack_from("<e", raw, k)
        out.extend(d * q for q in struct.unpack_from("<32b", raw, k + 2))
    return out


# -- routing ---------------------------------------------------------------------------------------
class LoraRouter:
    """Which loaded adapters sit in the engine's `max_loras` adapter table entries (1..max_loras;
    entry 0 means no adapter), for the scheduler.

    Theory of operation: adapters are loaded by name into host memory (`load`), any number of
    them. A running request holds a reference on its adapter's entry, and an entry with
    references is never evicted, so a request's entry does not change while it runs and a step
    never has more than `max_loras` distinct adapters. Taking an adapter that is not resident
    uses a free entry, else evicts the least recently used unreferenced one; the engine is told
    to upload it (the plan's `adapter_loads`). When every entry is referenced, a request for
    another adapter waits (requests behind it that need no new entry go on: no head-of-line
    blocking). To keep it from starving, once it has waited a while (the scheduler's
    STARVE_STEPS) the router closes one entry: the resident adapter with the fewest references
    (then the least recently used) takes no new requests until its last one ends, and its entry
    is then reserved for the adapter that waited.
    """

    def __init__(self, max_loras: int) -> None:
        if max_loras < 1:
            raise ValueError("max_loras must be >= 1")
        self.max_loras = max_loras
        self.adapters: dict[str, LoraAdapter] = {}  # loaded (host memory)
        self.entry: dict[str, int] = {}  # resident adapter -> its table entry
        self.refs: dict[str, int] = {}
        self._clock = 0
        self._used: dict[str, int] = {}  # resident adapter -> when it was last taken
        self.closing: str | None = None  # takes no new requests: its entry goes to `waiting_for`
        self.waiting_for: str | None = None
        self._reserved: int | None = None  # a freed entry kept for `waiting_for`

    # -- adapters ----------------------------------------------------------------------------
    def load(self, name: str, adapter: LoraAdapter) -> None:
        if name in self.adapters and self.refs.get(name):
            raise AdapterInUse(f"adapter {name!r} is in use; replace it when its requests end", "name")
        self.adapters[name] = adapter
        self._evict(name)  # a new version: upload again when next taken

    def get(self, name: str) -> LoraAdapter:
        """A loaded adapter; AdapterNotFound."""
        if name not in self.adapters:
            raise AdapterNotFound(f"no adapter {name!r} is loaded", "name")
        return self.adapters[name]

    def unload(self, name: str) -> None:
        if name not in self.adapters:
            raise AdapterNotFound(f"no adapter {name!r} is loaded", "name")
        if self.refs.get(name):
            raise AdapterInUse(f"adapter {name!r} is in use by {self.refs[name]} requests", "name")
        del self.adapters[name]
        self._evict(name)

    def _evict(self, name: str) -> None:
        self.entry.pop(name, None)
        self.refs.pop(name, None)
        self._used.pop(name, None)
        if self.closing == name:
            self.closing = self.waiting_for = None

    # -- entries -----------------------------------------------------------------------------
    def can_take(self, name: str) -> bool:
        """Whether a new request for `name` can get an entry now."""
        if name in self.entry:
            return name != self.closing
        if self._reserved is not None and name == self.waiting_for:
            return True
        return self._free_entry() is not None or self._victim() is not None

    def take(self, name: str) -> tuple[int, bool]:
        """A reference on `name`'s entry: (entry, True if the engine must upload it there)."""
        assert self.can_take(name), name
        self._clock += 1
        self._used[name] = self._clock
        self.refs[name] = self.refs.get(name, 0) + 1
        if name in self.entry:
            return self.entry[name], False
        if self._reserved is not None and name == self.waiting_for:
            e, self._reserved, self.waiting_for = self._reserved, None, None
        else:
            free = self._free_entry()
            if free is None:  # the least recently used adapter nobody holds leaves its entry
                victim = self._victim()
                assert victim is not None
                free = self.entry[victim]
                self._evict(victim)
            e = free
        self.entry[name] = e
        return e, True

    def drop(self, name: str) -> None:
        """A request on `name` ended (or was preempted)."""
        self.refs[name] -= 1
        if self.refs[name] == 0 and name == self.closing:
            self._reserved = self.entry[name]
            self.closing = None
            self._evict(name)

    def want(self, name: str) -> None:
        """A request for `name` waits because every entry is referenced: close one (see above)."""
        if self.closing is not None or self._reserved is not None or name in self.entry:
            return
        busy = [n for n in self.entry if self.refs.get(n)]
        if not busy:
            return
        self.closing = min(busy, key=lambda n: (self.refs[n], self._used[n]))
        self.waiting_for = name

    def release_wait(self) -> None:
        """Nobody waits any more for the adapter an entry is being closed for: reopen it."""
        if self.closing is not None:
            self.closing = self.waiting_for = None
        elif self._reserved is not None:
            self._reserved = self.waiting_for = None

    def _free_entry(self) -> int | None:
        used = set(self.entry.values()) | ({self._reserved} if self._reserved is not None else set())
        return next((e for e in range(1, self.max_loras + 1) if e not in used), None)

    def _victim(self) -> str | None:
        idle = [n for n in self.entry if not self.refs.get(n) and n != self.closing]
        return min(idle, key=lambda n: self._used[n]) if idle else None
