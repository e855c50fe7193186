"""Export pipeline on tiny random-weight models the test makes itself (fast), against transformers."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_hf_model
from realm_web import LLM
from realm_web.export import UnsupportedModelError, export_model
from realm_web.manifest import load_manifest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IDS = [1, 9690, 198, 2683, 359, 253, 5356, 30, 504, 3575, 282, 4649, 314, 7042, 30, 2, 198]


def run_graph(model_dir: Path, dtype: str, ids: list[int]) -> np.ndarray:
    import onnxruntime as ort

    from realm_web.engines.ort_native import session_options

    m = load_manifest(model_dir)
    s = ort.InferenceSession(str(model_dir / m.variants[dtype].file), session_options(ort),
                             providers=["CPUExecutionProvider"])
    kv = np.float16 if dtype == "fp16" else np.float32
    feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
             "logits_index": np.arange(len(ids), dtype=np.int64)[None]}
    for i in range(m.num_layers):
        for k in ("key", "value"):
            feeds[f"past_key_values.{i}.{k}"] = np.zeros((1, m.num_kv_heads, 0, m.head_dim), kv)
    return s.run(["logits"], feeds)[0][0].astype(np.float32)


def torch_logits(hf_dir: Path, ids: list[int]) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def tiny_export(tiny_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-export")
    export_model(tiny_hf_dir, out, ["fp32", "fp16", "int8", "int4"], progress=None)
    return out


def test_manifest_describes_the_export(tiny_export: Path) -> None:
    raw = json.loads((tiny_export / "realm.json").read_text())
    assert set(raw["variants"]) == {"fp32", "fp16", "int8", "int4"}
    assert raw["architecture"]["num_layers"] == 2 and raw["architecture"]["num_kv_heads"] == 2
    assert raw["graph"]["kv_share_buffer"] is True
    assert "cpu" in raw["variants"]["int4"]["preferred_by"]
    for v in raw["variants"].values():
        assert (tiny_export / v["file"]).stat().st_size == v["bytes"]
    for f in ("tokenizer.json", "chat_template.jinja", "tokenizer_config.json"):
        assert (tiny_export / f).exists()


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_float_exports_match_torch(tiny_hf_dir: Path, tiny_export: Path, dtype: str, tol: float) -> None:
    ref = torch_logits(tiny_hf_dir, IDS)
    ours = run_graph(tiny_export, dtype, IDS)
    assert np.abs(ours - ref).max() < tol * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_exports_track_torch(tiny_hf_dir: Path, tiny_export: Path, dtype: str) -> None:
    ref = torch_logits(tiny_hf_dir, IDS)
    ours = run_graph(tiny_export, dtype, IDS)
    cos = (ours * ref).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.min() > (0.999 if dtype == "int8" else 0.98), cos.min()


def test_qwen2_style_bias_and_untied_head(tmp_path: Path, model_dir: Path) -> None:
    hf = make_tiny_hf_model(tmp_path / "qwen", model_dir, arch="qwen2", seed=3)
    export_model(hf, tmp_path / "out", ["fp32"], progress=None)
    ref = torch_logits(hf, IDS)
    assert np.abs(run_graph(tmp_path / "out", "fp32", IDS) - ref).max() < 1e-4


def test_greedy_decode_matches_torch_generate(tiny_hf_dir: Path, tiny_export: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32).eval()
    x = torch.tensor([IDS])
    with torch.no_grad():
        ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(IDS):].tolist()
    llm = LLM(tiny_export, dtype="fp32", max_length=128)
    c = llm.generate(llm.tokenizer.decode(IDS), raw=True, max_tokens=24, ignore_eos=True)[0]
    assert c.prompt_token_ids == IDS
    assert c.token_ids == ref


def test_refuses_unsupported_architecture(tmp_path: Path, tiny_hf_dir: Path) -> None:
    d = tmp_path / "bert"
    d.mkdir()
    cfg = json.loads((tiny_hf_dir / "config.json").read_text())
    cfg["model_type"] = "bert"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="model_type 'bert' is not supported"):
        export_model(d, tmp_path / "o", progress=None)


def test_refuses_files_that_are_not_models(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(UnsupportedModelError, match="not a GGUF file"):
        export_model(f, tmp_path / "o", progress=None)
    gguf = pytest.importorskip("gguf")
    g = tmp_path / "bert.gguf"
    w = gguf.GGUFWriter(str(g), "bert")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="architecture 'bert' is not supported"):
        export_model(g, tmp_path / "o2", progress=None)
    with pytest.raises(FileNotFoundError):
        export_model(tmp_path / "missing.gguf", tmp_path / "o3", progress=None)


def test_the_graph_contract_is_written_and_read(tiny_export: Path) -> None:
    """realm.json names every graph input and output by role, as the ONNX file has them."""
    import onnx

    m = load_manifest(tiny_export)
    g = onnx.load(str(tiny_export / m.variants["fp32"].file), load_external_data=False).graph
    spec = m.graph
    want_in = [spec.input_ids, spec.attention_mask] + [spec.past(i, kv) for i in range(m.num_layers)
                                                       for kv in ("key", "value")] + [spec.logits_index]
    want_out = [spec.logits] + [spec.present(i, kv) for i in range(m.num_layers) for kv in ("key", "value")]
    assert [i.name for i in g.input] == want_in and [o.name for o in g.output] == want_out
    raw = json.loads((tiny_export / "realm.json").read_text())["graph"]
    assert raw["names"]["past_key"] == "past_key_values.{i}.key" and raw["layout"] == "gqa-v1"


def test_manifests_without_names_and_unknown_layouts(tiny_export: Path, tmp_path: Path) -> None:
    import shutil

    from realm_web.manifest import GraphSpec, ModelDirError

    raw = json.loads((tiny_export / "realm.json").read_text())
    old = dict(raw["graph"])
    del old["names"]  # as format 2 wrote it before the names: read by the order of the lists
    assert GraphSpec.from_json(old) == load_manifest(tiny_export).graph
    for change, match in (({"layout": "mha-v9"}, "layout 'mha-v9' is not supported"),
                          ({"kv_layout": ["batch", "length", "kv_heads", "head_dim"]}, "kv_layout"),
                          ({"padding": "left"}, "padding"),
                          ({"names": {**raw["graph"]["names"], "past_key": "past.key"}}, "past_key"),
                          ({"names": {"input_ids": "input_ids"}}, "lack")):
        d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_export, d)
        (d / "realm.json").write_text(json.dumps({**raw, "graph": {**raw["graph"], **change}}))
        with pytest.raises(ModelDirError, match=match):
            load_manifest(d)


def test_engines_bind_the_names_realm_json_gives(tiny_hf_dir: Path, tiny_export: Path, tmp_path: Path) -> None:
    """A graph built under other names runs on both engines, which read the names from
    realm.json, and decodes exactly what the standard names do."""
    import shutil
    import subprocess

    from realm_web.engines.ort_web import bridge_config
    from realm_web.export.graph import build_decoder, graph_spec
    from realm_web.export.load import load_source
    from realm_web.manifest import GraphSpec

    spec = GraphSpec(input_ids="ids", attention_mask="mask", logits_index="pick", logits="scores",
                     past_key="cache.{i}.k.in", past_value="cache.{i}.v.in", present_key="cache.{i}.k.out",
                     present_value="cache.{i}.v.out", kv_share_buffer=True, lm_head_refine=graph_spec().lm_head_refine)
    src = load_source(tiny_hf_dir)
    d = tmp_path / "renamed"
    shutil.copytree(tiny_export, d)
    (d / "model.onnx").write_bytes(build_decoder(src.config, src.weights, "fp32", 256, spec).SerializeToString())
    raw = json.loads((d / "realm.json").read_text())
    raw["graph"] = spec.to_json()
    raw["variants"] = {"fp32": {**raw["variants"]["fp32"], "bytes": (d / "model.onnx").stat().st_size}}
    (d / "realm.json").write_text(json.dumps(raw))

    def native(model: Path) -> list[int]:
        return LLM(model, dtype="fp32", max_length=128).generate(IDS, max_tokens=12, ignore_eos=True)[0].token_ids

    want = native(tiny_export)
    assert native(d) == want
    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "renamed.mjs"
    script.write_text(f"""
import {{ Bridge }} from "{(root / 'wasm' / 'src' / 'bridge.mjs').as_posix()}";
import ort from "{(root / 'wasm' / 'node_modules' / 'onnxruntime-node' / 'dist' / 'index.js').as_posix()}";
const [file, cfgJson, idsJson] = process.argv.slice(2);
const b = await Bridge.create(ort, file, {{ ...JSON.parse(cfgJson), threads: 1 }});
const ids = JSON.parse(idsJson), G = {{ temperature: 0, top_k: 0, top_p: 1, min_p: 0, repetition_penalty: 1, logprobs: false }};
let out = JSON.parse(await b.step(JSON.stringify({{ seqs: [[0, 0, 0, ids, 1, []]], new: [{{ id: 0, slot: 0, sampling: G }}] }}))).tokens[0];
for (let i = 0; i < 11; i++)
  out.push(...JSON.parse(await b.step(JSON.stringify({{ seqs: [[0, 0, ids.length + i, [out[i]], 1, []]] }}))).tokens[0]);
console.log(JSON.stringify(out));
await b.dispose();
""")
    cfg = bridge_config(load_manifest(d), "fp32", "cpu")
    r = subprocess.run(["node", str(script), str(d / "model.onnx"), json.dumps(cfg), json.dumps(IDS)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == want


@pytest.mark.model
def test_the_packed_download_expands_to_the_fp32_export(model_dir: Path, tmp_path: Path) -> None:
    """The default model's packed fp32 download (export/packed.py): its blocks expand to exactly the
    bytes of every fp32 initializer, and its graph with the expanded weights beside it gives the
    fp32 export's logits bit for bit on onnxruntime (and JS's expansion, wasm/src/packed.mjs, the same
    bytes: Node compares them)."""
    import hashlib
    import shutil
    import subprocess

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from realm_web.export.packed import expand_weights, read_packed

    p = load_manifest(model_dir).variants["fp32"].packed
    assert p and p["blocks_bytes"] < load_manifest(model_dir).variants["fp32"].bytes / 5
    meta, _ = read_packed(model_dir / p["blocks"])
    assert {e["kind"] for e in meta["tensors"]} >= {"q4_1", "q8_0"}
    weights = expand_weights(model_dir / p["blocks"])
    ref = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_dir / "model.onnx")).graph.initializer}
    for e in meta["tensors"]:
        got = np.frombuffer(weights[e["offset"]: e["offset"] + e["bytes"]], "<f4").reshape(e["shape"])
        assert np.array_equal(got.view(np.uint32), ref[e["name"]].view(np.uint32)), e["name"]
    # the graph + its external weights run, and give the fp32 export's logits exactly
    shutil.copy(model_dir / p["file"], tmp_path / p["file"])
    (tmp_path / p["weights"]).write_bytes(weights)
    n = load_manifest(model_dir).num_layers
    a = load_manifest(model_dir).architecture
    feeds = {"input_ids": np.array([[1, 9690, 198, 2683]], np.int64), "attention_mask": np.ones((1, 4), np.int64),
             "logits_index": np.array([[3]], np.int64)}
    for i in range(n):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, a["num_kv_heads"], 0, a["head_dim"]), np.float32)
    outs = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
            for f in (model_dir / "model.onnx", tmp_path / p["file"])]
    assert np.array_equal(outs[0], outs[1])
    # JavaScript's expansion gives the same bytes
    js = ("import fs from 'node:fs'; import crypto from 'node:crypto';"
          f"import {{ PackedExpander }} from '{(Path(__file__).parent.parent / 'wasm/src/packed.mjs').as_posix()}';"
          f"const b = fs.readFileSync('{(model_dir / p['blocks']).as_posix()}'); const x = new PackedExpander(b.length);"
          "for (let i = 0; i < b.length; i += 1 << 20) x.push(b.subarray(i, i + (1 << 20)));"
          "console.log(crypto.createHash('sha256').update(x.finish()).digest('hex'));")
    out = subprocess.run(["node", "--input-type=module", "-e", js], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(weights).hexdigest()


def _node(js: str) -> str:
    import subprocess

    out = subprocess.run(["node", "--input-type=module", "-e", js], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_js_float16_rounding_is_numpys() -> None:
    """packed.mjs's toHalf (float32 -> float16 bits, ties to even) against numpy's astype on
    random values of every magnitude, ties, subnormals, overflow, infinities and NaN."""
    rng = np.random.default_rng(7)
    bits = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
                           # around float16's range, its subnormals and exact ties of its last place
                           (rng.integers(0x33000000, 0x47800000, 100_000, dtype=np.uint64).astype(np.uint32) & ~np.uint32(0xFFF))
                           | np.uint32(0x1000),
                           np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x477FE000, 0x477FF000,
                                     0x33000000, 0x33000001, 0x387FC000, 0x38800000, 0x337FFFFF], np.uint32)])
    f = bits.view(np.float32)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16).view(np.uint16)
    nan = np.isnan(f)
    path = (Path(__file__).parent.parent / "wasm/src/packed.mjs").as_posix()
    with tempfile.NamedTemporaryFile(suffix=".bin") as tmp:
        tmp.write(bits.tobytes())
        tmp.flush()
        got = np.frombuffer(bytes.fromhex(_node(
            f"import fs from 'node:fs'; import {{ toHalf }} from '{path}';"
            f"const b = fs.readFileSync('{tmp.name}'); const f = new Float32Array(b.buffer, b.byteOffset, b.length / 4);"
            "const o = new Uint16Array(f.length); for (let i = 0; i < f.length; i++) o[i] = toHalf(f[i]);"
            "console.log(Buffer.from(o.buffer).toString('hex'));")), np.uint16)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7C00) == 0x7C00) and np.all(got[nan] & 0x3FF)


@pytest.mark.model
def test_the_packed_fp16_download_expands_to_the_fp16_export(model_dir: Path, tmp_path: Path) -> None:
    """The fp16 export's packed form shares the fp32 one's blocks: expanded and rounded to
    float16 (plus the explicit lm_head transpose) they are exactly the bytes of every fp16
    initializer the packed graph holds outside itself, its logits equal the fp16 file's, and
    packed.mjs (half) makes the same bytes."""
    import hashlib
    import shutil

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    from realm_web.export.packed import expand_weights

    m = load_manifest(model_dir)
    p = m.variants["fp16"].packed
    assert p and p["element"] == "f16" and p["blocks"] == m.variants["fp32"].packed["blocks"]  # type: ignore[index]
    assert p["bytes"] < 2_000_000 and p["derived"]
    weights = expand_weights(model_dir / p["blocks"], p)
    assert len(weights) == p["weights_bytes"]
    ref = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_dir / m.variants["fp16"].file)).graph.initializer}
    outside = 0
    for t in onnx.load(str(model_dir / p["file"]), load_external_data=False).graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        off, n = int(info["offset"]), int(info["length"])
        assert info["location"] == p["weights"]
        assert weights[off: off + n] == np.ascontiguousarray(ref[t.name]).tobytes(), t.name
        outside += n
    assert outside > 0.99 * sum(a.nbytes for a in ref.values())
    shutil.copy(model_dir / p["file"], tmp_path / p["file"])
    (tmp_path / p["weights"]).write_bytes(weights)
    a = m.architecture
    feeds = {"input_ids": np.array([[1, 9690, 198, 2683]], np.int64), "attention_mask": np.ones((1, 4), np.int64),
             "logits_index": np.array([[3]], np.int64)}
    for i in range(m.num_layers):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, a["num_kv_heads"], 0, a["head_dim"]), np.float16)
    outs = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
            for f in (model_dir / m.variants["fp16"].file, tmp_path / p["file"])]
    assert np.array_equal(outs[0], outs[1])
    path = (Path(__file__).parent.parent / "wasm/src/packed.mjs").as_posix()
    opts = json.dumps({"half": True, "derived": p["derived"], "weightsBytes": p["weights_bytes"]})
    assert _node(f"import fs from 'node:fs'; import crypto from 'node:crypto'; import {{ PackedExpander }} from '{path}';"
                 f"const b = fs.readFileSync('{(model_dir / p['blocks']).as_posix()}'); const x = new PackedExpander(b.length, {opts});"
                 "for (let i = 0; i < b.length; i += 1 << 20) x.push(b.subarray(i, i + (1 << 20)));"
                 "console.log(crypto.createHash('sha256').update(x.finish()).digest('hex'));") == hashlib.sha256(weights).hexdigest()
