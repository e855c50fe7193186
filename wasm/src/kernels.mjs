// realm-web's own WebGPU decoder ("realm kernels"): a Llama-family forward pass in a few fused
// WGSL kernels that read the GGUF's quantized blocks (the packed export, realm_web/export/packed.py)
// as they are, with float32 arithmetic.
//
// Theory of operation. onnxruntime-web's WebGPU EP runs our graph as ~394 dependent dispatches a
// decode step (13 per layer), and on a real GPU (H100, Dawn/Vulkan) a step costs ~22-30 ms whether
// or not its commands are recorded once and replayed (graph capture gave 1.08x): the cost is per
// dispatch. Here a layer is five dispatches, each doing all the work between two points where
// every output must be complete before the next kernel reads it:
//
//   1. qkv:  RMSNorm(x) @ [Wq|Wk|Wv]^T, RoPE on q and k, k and v written into the KV cache
//   2. attn: softmax(q K^T / sqrt(d)) V per (token, head), online over chunks of positions
//   3. o:    x += attn @ Wo^T
//   4. glu:  RMSNorm(x) @ [Wg|Wu]^T -> silu(g) * u
//   5. down: x += act @ Wd^T
//
// plus the embedding lookup, the final RMSNorm + lm_head over the positions whose logits are
// wanted, and (greedy rows) an argmax, so that only token ids come back: 153 dispatches a step for
// a 30-layer model, one compute pass, one submit, one small readback.
//
// Weights are the GGUF's blocks: Q4_1 (a float16 scale d and min m, 32 4-bit q: w = q * d + m) and
// Q8_0 (d, 32 int8 q: w = q * d), regrouped at load into 32-bit words of q and float32 (d, m), so
// each dequantized weight is exactly the fp32 export's value; only the order of the sums differs
// from onnxruntime's fp32 kernels. The GPU holds ~100 MB for SmolLM2-135M instead of 540 (fp32) or
// 327 (fp16), reads it once a step, and needs no shader-f16.
//
// KV cache: one pool, `slots` regions of `cap` positions; a position holds every layer's k and v
// (layers x 2 x kv_heads x head_dim floats), so growing `cap` copies each slot's used part once.
// Each token of a step carries its slot's element offset at its own position; attention reads
// positions [0, pos] of its slot. A step may mix rows (prompt chunks, decode rows, verify rows).

import { PackedError, halfTable, readHeader } from "./packed.mjs";

const WG = 256; // threads per matvec workgroup on a GPU: 8 output units x 32 lanes
const MT = 4; // tokens per matvec workgroup (weights dequantized once for MT tokens)

export class KernelError extends Error {
  constructor(message) { super(message); this.name = "KernelError"; this.code = "engine_unavailable"; }
}

/** The packed file's header and data (realm_web/export/packed.py's layout). */
export function parsePacked(bytes) {
  const h = readHeader(bytes);
  if (!h) throw new PackedError("packed weights cut short (no whole header)");
  return { meta: h.meta, data: bytes.subarray(h.dataStart) };
}

/** Why the kernels cannot run a model of realm.json's `architecture`, or null: they run llama
 * without attention biases or RoPE scaling, with shapes their workgroups divide. */
export function archWhy(a = {}) {
  if (a.architecture !== "llama") return `architecture ${a.architecture} (the kernels run llama)`;
  if (a.attention_bias) return "attention biases (the kernels have none)";
  if (a.rope_scaling) return "RoPE scaling";
  const { hidden_size: H, num_heads: NH, num_kv_heads: KVH, head_dim: HD, intermediate_size: I } = a;
  if (HD % 8 || HD > 256 || (HD & (HD - 1)) || NH % KVH || H % 32 || I % 32) return `shape (head_dim ${HD}, hidden ${H}, intermediate ${I})`;
  return null;
}

/** A device for the kernels from `adapter`: the largest storage bindings it allows (the KV pool,
 * the embedding's blocks), and `features` (e.g. "timestamp-query"). */
export function kernelDevice(adapter, features = []) {
  const lim = adapter.limits;
  return adapter.requestDevice({ requiredFeatures: features,
                                 requiredLimits: { maxStorageBufferBindingSize: lim.maxStorageBufferBindingSize, maxBufferSize: lim.maxBufferSize } });
}

/** The model's shape for the kernels, from realm.json's architecture (bridge_config's `arch`),
 * or why they cannot run it. */
export function kernelPlan(arch, meta) {
  const a = arch || {};
  const why = archWhy(a);
  if (why) return { why };
  const L = a.num_layers, H = a.hidden_size, NH = a.num_heads, KVH = a.num_kv_heads, HD = a.head_dim, I = a.intermediate_size, V = a.vocab_size;
  const byName = new Map(meta.tensors.map((t) => [t.name, t]));
  const need = (name, kinds, rows, cols) => {
    const t = byName.get(name);
    if (!t) throw new KernelError(`the packed weights have no ${name}`);
    if (!kinds.includes(t.kind)) throw new KernelError(`${name} is ${t.kind} (the kernels read ${kinds.join(", ")})`);
    if (rows !== undefined && (t.rows ?? t.shape[0]) !== rows) throw new KernelError(`${name}: ${t.rows} rows, not ${rows}`);
    if (cols !== undefined && (t.cols ?? t.shape[1]) !== cols) throw new KernelError(`${name}: ${t.cols} columns, not ${cols}`);
    return t;
  };
  const q = ["q4_1", "q8_0"];
  try {
    const layers = [];
    for (let i = 0; i < L; i++) layers.push({
      attnNorm: need(`model.layers.${i}.input_layernorm.weight`, ["raw"]),
      qkv: need(`/layers.${i}/attn/qkv.weight`, q, (NH + 2 * KVH) * HD, H),
      o: need(`/layers.${i}/attn/o_proj.weight`, q, H, NH * HD),
      mlpNorm: need(`model.layers.${i}.post_attention_layernorm.weight`, ["raw"]),
      gateUp: need(`/layers.${i}/mlp/gate_up.weight`, q, 2 * I, H),
      down: need(`/layers.${i}/mlp/down_proj.weight`, q, H, I),
    });
    const embed = need("model.embed_tokens.weight", q, V, H);
    const head = a.tie_word_embeddings ? embed : need("lm_head.weight", q, V, H);
    return { L, H, NH, KVH, HD, I, V, eps: a.rms_norm_eps, layers, embed, head, norm: need("model.norm.weight", ["raw"]),
             cos: need("cos_cache", ["raw"]), sin: need("sin_cache", ["raw"]) };
  } catch (e) {
    if (e instanceof KernelError) return { why: e.message };
    throw e;
  }
}

// -- WGSL --------------------------------------------------------------------------------------

const f = (x) => (Number.isInteger(x) ? `${x}.0` : String(x));

/** The step buffer: [M, Ml, 0, 0], then per token: its id, position, KV element offset; then the
 * token index of each logits row; then each token's adapter table entry (0: none). */
const stepDecl = (T) => `
@group(1) @binding(0) var<storage, read> S: array<u32>;
@group(1) @binding(1) var<storage, read> ROPE: array<f32>;
const TOK: u32 = 4u; const POS: u32 = ${4 + T}u; const OFF: u32 = ${4 + 2 * T}u; const SEL: u32 = ${4 + 3 * T}u;
const ENT: u32 = ${4 + 4 * T}u;`;
const stepWords = (T) => 4 + 5 * T;

/** 32 dequantized weights of block `wb` into w (Q4_1: q * d + m; Q8_0: q * d). */
function dequant(kind) {
  if (kind === "q4_1") return `
    let d = WS[2u * wb]; let mn = WS[2u * wb + 1u];
    for (var i = 0u; i < 4u; i++) {
      let word = WQ[4u * wb + i];
      for (var b = 0u; b < 4u; b++) {
        let byte = (word >> (8u * b)) & 255u;
        w[i * 4u + b] = f32(byte & 15u) * d + mn;
        w[i * 4u + b + 16u] = f32(byte >> 4u) * d + mn;
      }
    }`;
  return `
    let d = WS[wb];
    for (var i = 0u; i < 8u; i++) {
      let word = i32(WQ[8u * wb + i]);
      for (var b = 0u; b < 4u; b++) { w[i * 4u + b] = f32(extractBits(word, 8u * b, 8u)) * d; }
    }`;
}

/** Output units of a matvec: "qkv" a pair (i, i + HD/2) of one head (for RoPE), "glu" a pair
 * (gate n, up n + N), else one row. */
export function units(epi, N, HD) {
  return epi === "qkv" ? N / 2 : N;
}

/** A matvec's last step for token j and output unit (n0, and n1 for pairs) from its sums v0, v1:
 * "plain" / "logits" y, "resid" x += y, "glu" silu(gate) * up, "qkv" RoPE on q and k, k and v
 * into the KV cache (the LoRA expand kernel ends the same way). */
function epilogueCode(epi, N, { HD, NH, KVH, cap }) {
  return {
    plain: `Y[j * ${N}u + n0] = v0;`,
    logits: `Y[j * ${N}u + n0] = v0;`,
    resid: `Y[j * ${N}u + n0] = Y[j * ${N}u + n0] + v0;`,
    glu: `Y[j * ${N}u + n0] = (v0 * (1.0 / (1.0 + exp(-v0)))) * v1;`,
    qkv: `let pos = S[POS + j]; let kv = S[OFF + j];
        if (head < ${NH + KVH}u) {
          let c = ROPE[pos * ${HD / 2}u + i]; let sn = ROPE[${cap * HD / 2}u + pos * ${HD / 2}u + i];
          let ra = v0 * c - v1 * sn; let rb = v1 * c + v0 * sn;
          if (head < ${NH}u) { Y[j * ${NH * HD}u + n0] = ra; Y[j * ${NH * HD}u + n1] = rb; }
          else { let o = kv + LP.x * ${2 * KVH * HD}u + (head - ${NH}u) * ${HD}u + i; KV[o] = ra; KV[o + ${HD / 2}u] = rb; }
        } else { let o = kv + LP.x * ${2 * KVH * HD}u + ${KVH * HD}u + (head - ${NH + KVH}u) * ${HD}u + i; KV[o] = v0; KV[o + ${HD / 2}u] = v1; }`,
  }[epi];
}

/** The (pair of) output rows of matvec unit u: "qkv" (i, i + HD/2) of one head, "glu" (gate u, up
 * u + N), else row u. */
function unitRows(epi, N, HD) {
  return epi === "qkv"
    ? `let head = u / ${HD / 2}u; let i = u % ${HD / 2}u; let n0 = head * ${HD}u + i; let n1 = n0 + ${HD / 2}u;`
    : epi === "glu" ? `let n0 = u; let n1 = u + ${N}u;` : `let n0 = u;`;
}

/** y = (RMSNorm?)(x) @ W^T for MT tokens a workgroup, with an epilogue: "plain" y, "resid"
 * x += y, "glu" silu(gate) * up, "qkv" RoPE and the KV cache write, "logits" (token rows picked
 * by SEL). `LN` lanes share an output unit: 8 on GPUs by default (the unit's blocks split over the
 * lanes, summed in workgroup memory; lanesFor), 1 on CPU adapters (SwiftShader: a thread per unit and no
 * workgroup barriers, which it runs as coroutine switches). */
function matvecShader({ kind, norm, epi, K, N, eps, T, HD, NH, KVH, L, cap, LN }) {
  const sel = epi === "logits", pair = epi === "glu" || epi === "qkv";
  const NACC = pair ? 2 : 1;
  const RPW = LN === 1 ? 64 : WG / LN; // units per workgroup
  const WGS = RPW * LN;
  const U = units(epi, N, HD);
  const rows = unitRows(epi, N, HD);
  const epilogue = epilogueCode(epi, N, { HD, NH, KVH, cap });
  // x as vec4s (with the norm: (x * inv) * g, as onnxruntime's SimplifiedLayerNormalization)
  const xv = (o, gi) => (norm ? `((X[${o}] * inv[t]) * G[${gi}])` : `X[${o}]`);
  // a block's words: Q4_1 word i holds elements 4i..4i+3 (low nibbles) and 16+4i.. (high);
  // Q8_0 word i elements 4i..4i+3; each dequantized value is the fp32 export's (q * d exact)
  const body4 = kind === "q4_1" ? `
        let lo = vec4<f32>(f32(word & 15u), f32((word >> 8u) & 15u), f32((word >> 16u) & 15u), f32((word >> 24u) & 15u)) * d + mn;
        let hi = vec4<f32>(f32((word >> 4u) & 15u), f32((word >> 12u) & 15u), f32((word >> 20u) & 15u), f32(word >> 28u)) * d + mn;
        for (var t = 0u; t < mt; t++) {
          let xo = xr[t] + blk * 8u;
          acc[t * ${NACC}u + G_] += dot(lo, ${xv("xo + i", "blk * 8u + i")}) + dot(hi, ${xv("xo + 4u + i", "blk * 8u + 4u + i")});
        }` : `
        let iw = i32(word);
        let wv = vec4<f32>(f32(extractBits(iw, 0u, 8u)), f32(extractBits(iw, 8u, 8u)), f32(extractBits(iw, 16u, 8u)), f32(extractBits(iw, 24u, 8u))) * d;
        for (var t = 0u; t < mt; t++) {
          let xo = xr[t] + blk * 8u;
          acc[t * ${NACC}u + G_] += dot(wv, ${xv("xo + i", "blk * 8u + i")});
        }`;
  const WPB = kind === "q4_1" ? 4 : 8;
  const accumulate = Array.from({ length: NACC }, (_, g) => `{
      let wb = n${g} * NB + blk;
      ${kind === "q4_1" ? "let d = WS[2u * wb]; let mn = WS[2u * wb + 1u];" : "let d = WS[wb];"}
      for (var i = 0u; i < ${WPB}u; i++) {
        let word = WQ[${WPB}u * wb + i];${body4.replaceAll("G_", `${g}u`)}
      }
    }`).join("\n");
  const normShared = `for (var t = 0u; t < mt; t++) {
    var part = 0.0;
    for (var k = tid; k < K / 4u; k += ${WGS}u) { let v = X[xr[t] + k]; part += dot(v, v); }
    red[tid] = part;
    workgroupBarrier();
    for (var s = ${WGS / 2}u; s > 0u; s >>= 1u) { if (tid < s) { red[tid] += red[tid + s]; } workgroupBarrier(); }
    if (tid == 0u) { invs[t] = 1.0 / sqrt(red[0] / ${f(K)} + ${eps}); }
    workgroupBarrier();
  }
  var inv: array<f32, ${MT}>;
  for (var t = 0u; t < mt; t++) { inv[t] = invs[t]; }`;
  const normOwn = `var inv: array<f32, ${MT}>;
  for (var t = 0u; t < mt; t++) {
    var part = 0.0;
    for (var k = 0u; k < K / 4u; k++) { let v = X[xr[t] + k]; part += dot(v, v); }
    inv[t] = 1.0 / sqrt(part / ${f(K)} + ${eps});
  }`;
  const finish = (v) => `for (var t = 0u; t < mt; t++) {
      let j = m0 + t;
      let v0 = ${v(0)};
      ${pair ? `let v1 = ${v(1)};` : ""}
      ${epilogue}
    }`;
  const body = LN === 1 ? `
  let u = wid.x * ${RPW}u + tid;
  if (u >= ${U}u) { return; }
  ${norm ? normOwn : ""}
  ${rows}
  var acc: array<f32, ${MT * NACC}>;
  for (var blk = 0u; blk < NB; blk++) {
    ${accumulate}
  }
  ${finish((g) => `acc[t * ${NACC}u + ${g}u]`)}` : `
  let r = tid / ${LN}u; let lane = tid % ${LN}u;
  let u = min(wid.x * ${RPW}u + r, ${U - 1}u);
  ${norm ? normShared : ""}
  ${rows}
  var acc: array<f32, ${MT * NACC}>;
  for (var blk = lane; blk < NB; blk += ${LN}u) {
    ${accumulate}
  }
  for (var q = 0u; q < ${MT * NACC}u; q++) { red[q * ${WGS}u + tid] = acc[q]; }
  workgroupBarrier();
  for (var s = ${LN / 2}u; s > 0u; s >>= 1u) {
    if (lane < s) { for (var q = 0u; q < ${MT * NACC}u; q++) { red[q * ${WGS}u + tid] += red[q * ${WGS}u + tid + s]; } }
    workgroupBarrier();
  }
  if (lane == 0u && wid.x * ${RPW}u + r < ${U}u) {
    ${finish((g) => `red[(t * ${NACC}u + ${g}u) * ${WGS}u + r * ${LN}u]`)}
  }`;
  return `${stepDecl(T)}
@group(0) @binding(0) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> WQ: array<u32>;
@group(0) @binding(2) var<storage, read> WS: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read> G: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> KV: array<f32>;
@group(0) @binding(6) var<uniform> LP: vec4<u32>;
const K: u32 = ${K}u; const NB: u32 = ${K / 32}u; const MT: u32 = ${MT}u;
${LN === 1 ? "" : `var<workgroup> red: array<f32, ${WGS * MT * NACC}>;
var<workgroup> invs: array<f32, ${MT}>;`}
@compute @workgroup_size(${WGS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let M = S[${sel ? 1 : 0}];
  let m0 = wid.y * MT;
  let mt = min(MT, M - m0); // this workgroup's tokens (uniform)
  var xr: array<u32, ${MT}>; // each token's row of X
  for (var t = 0u; t < mt; t++) { xr[t] = ${sel ? "S[SEL + m0 + t]" : "(m0 + t)"} * (K / 4u); } // in vec4s
  ${body}
}`;
}

/** Workgroups along x for a matvec of `epi` over N rows. */
export function matvecGroups(epi, N, HD, LN) {
  return Math.ceil(units(epi, N, HD) / (LN === 1 ? 64 : WG / LN));
}

/** softmax(q K^T * scale) V for one (token, head) a workgroup of HD threads, over chunks of HD
 * positions with a running max and sum (the usual online softmax). */
function attentionShader({ T, HD, NH, KVH, L }) {
  const E = L * 2 * KVH * HD, QW = NH * HD;
  const tree = (op) => `for (var s = ${HD / 2}u; s > 0u; s >>= 1u) { if (tid < s) { rd[tid] = ${op}; } workgroupBarrier(); }`;
  return `${stepDecl(T)}
@group(0) @binding(0) var<storage, read> Q: array<f32>;
@group(0) @binding(1) var<storage, read> KV: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;
@group(0) @binding(3) var<uniform> LP: vec4<u32>;
var<workgroup> qs: array<f32, ${HD}>;
var<workgroup> sc: array<f32, ${HD}>;
var<workgroup> rd: array<f32, ${HD}>;
@compute @workgroup_size(${HD})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let m = wid.y; let h = wid.x;
  if (m >= S[0]) { return; }
  let pos = S[POS + m];
  let base = S[OFF + m] - pos * ${E}u; // the slot's position 0
  let kvh = h / ${NH / KVH}u;
  let ko = base + LP.x * ${2 * KVH * HD}u + kvh * ${HD}u;
  let vo = ko + ${KVH * HD}u;
  qs[tid] = Q[m * ${QW}u + h * ${HD}u + tid];
  workgroupBarrier();
  let n = pos + 1u;
  var mx = -3.0e38; var l = 0.0; var acc = 0.0;
  for (var c0 = 0u; c0 < n; c0 += ${HD}u) {
    let t = c0 + tid;
    var sv = -3.0e38;
    if (t < n) {
      var d = 0.0;
      let at = ko + t * ${E}u;
      for (var i = 0u; i < ${HD}u; i++) { d += qs[i] * KV[at + i]; }
      sv = d * ${1 / Math.sqrt(HD)};
    }
    rd[tid] = sv;
    workgroupBarrier();
    ${tree("max(rd[tid], rd[tid + s])")}
    let mnew = max(mx, rd[0]);
    workgroupBarrier();
    let p = select(0.0, exp(sv - mnew), t < n);
    sc[tid] = p; rd[tid] = p;
    workgroupBarrier();
    ${tree("rd[tid] + rd[tid + s]")}
    let alpha = exp(mx - mnew);
    let cnt = min(${HD}u, n - c0);
    var a = 0.0;
    for (var j = 0u; j < cnt; j++) { a += sc[j] * KV[vo + (c0 + j) * ${E}u + tid]; }
    acc = acc * alpha + a;
    l = l * alpha + rd[0];
    mx = mnew;
    workgroupBarrier();
  }
  O[m * ${QW}u + h * ${HD}u + tid] = acc / l;
}`;
}

function embedShader({ kind, T, H }) {
  return `${stepDecl(T)}
@group(0) @binding(0) var<storage, read> WQ: array<u32>;
@group(0) @binding(1) var<storage, read> WS: array<f32>;
@group(0) @binding(2) var<storage, read_write> X: array<f32>;
@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let m = wid.y; if (m >= S[0]) { return; }
  let blk = wid.x * 32u + tid; if (blk >= ${H / 32}u) { return; }
  let wb = S[TOK + m] * ${H / 32}u + blk;
  var w: array<f32, 32>;
  ${dequant(kind)}
  for (var k = 0u; k < 32u; k++) { X[m * ${H}u + blk * 32u + k] = w[k]; }
}`;
}

/** The first largest logit of each logits row (as the JS sampler's greedy pick). */
function argmaxShader({ V }) {
  return `
@group(0) @binding(0) var<storage, read> LG: array<f32>;
@group(0) @binding(1) var<storage, read_write> IDS: array<u32>;
var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let o = wid.x * ${V}u;
  var v = -3.4e38; var id = 0xffffffffu;
  for (var n = tid; n < ${V}u; n += 256u) { let x = LG[o + n]; if (x > v) { v = x; id = n; } }
  bv[tid] = v; bi[tid] = id;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (tid < s) {
      let ov = bv[tid + s]; let oi = bi[tid + s];
      if (ov > bv[tid] || (ov == bv[tid] && oi < bi[tid])) { bv[tid] = ov; bi[tid] = oi; }
    }
    workgroupBarrier();
  }
  if (tid == 0u) { IDS[wid.x] = select(bi[0], 0u, bi[0] == 0xffffffffu); }
}`;
}

// -- LoRA --------------------------------------------------------------------------------------
//
// An adapter changes a group's matmul (qkv, o, gate_up, down: realm_web/lora.py) to
// y = x W^T + (x A_g) B_g, A_g (in, members x R) and B_g block-diagonal (scales folded in), as the
// export's LoRA graph does. A step with an adapter row runs each group in three dispatches: the
// shrink h = x A_g (per token, its table entry's A; zeros for no adapter), the group's matvec
// writing y as it is (the same sums as the fused kernel's), and the expand adding h B_g to y
// and ending as the fused kernel would (RoPE and the KV write, the residual add, silu(g) * u).
// A row with no adapter takes y unchanged, so it gets the plain step's values bit for bit. Groups
// that no adapter of the step changes (all zeros in its tables: e.g. o and the MLP under PEFT's
// usual q and v targets) run as the fused kernel.

/** h[j, c] = (RMSNorm?)(x_j) . A[e_j, c] for each token j on an adapter (entry e_j > 0), c over
 * the group's members x R columns; 0 for tokens with no adapter. A thread per (token, column). */
function loraShrinkShader({ T, K, C, norm, eps }) {
  const xv = norm ? "((X[xr + k] * inv) * G[k])" : "X[xr + k]";
  return `${stepDecl(T)}
@group(0) @binding(0) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Hs: array<f32>;
@group(0) @binding(3) var<storage, read> G: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let j = wid.y; let c = wid.x * 64u + tid;
  if (j >= S[0] || c >= ${C}u) { return; }
  let e = S[ENT + j];
  if (e == 0u) { Hs[j * ${C}u + c] = 0.0; return; }
  let xr = j * ${K / 4}u;
  var inv = 1.0;
  ${norm ? `var part = 0.0;
  for (var k = 0u; k < ${K / 4}u; k++) { let v = X[xr + k]; part += dot(v, v); }
  inv = 1.0 / sqrt(part / ${f(K)} + ${eps});` : ""}
  let ab = ((e - 1u) * ${C}u + c) * ${K / 4}u;
  var acc = 0.0;
  for (var k = 0u; k < ${K / 4}u; k++) { acc += dot(${xv}, A[ab + k]); }
  Hs[j * ${C}u + c] = acc;
}`;
}

/** The group's output for token j, unit u: y (the matvec's, YR) plus h_j B[e_j] on each of its
 * rows (none for no adapter), then the fused kernel's epilogue (epilogueCode). `NT` rows in all,
 * member m's rows read h's columns m*R..m*R+R-1; `bounds`: the first row of each member after
 * the first. */
function loraExpandShader({ T, epi, N, NT, R, C, bounds, HD, NH, KVH, cap }) {
  const member = bounds.reduceRight((acc, b, m) => `select(${acc}, ${m}u, n < ${b}u)`, `${bounds.length}u`);
  return `${stepDecl(T)}
@group(0) @binding(0) var<storage, read> YR: array<f32>;
@group(0) @binding(1) var<storage, read> Hs: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read_write> KV: array<f32>;
@group(0) @binding(5) var<uniform> LP: vec4<u32>;
fn lora(j: u32, e: u32, n: u32) -> f32 {
  let y = YR[j * ${NT}u + n];
  if (e == 0u) { return y; }
  let hb = j * ${C}u + ${member} * ${R}u; let bb = ((e - 1u) * ${NT}u + n) * ${R}u;
  var d = 0.0;
  for (var r = 0u; r < ${R}u; r++) { d += Hs[hb + r] * B[bb + r]; }
  return y + d;
}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let j = wid.y; let u = wid.x * 64u + tid;
  if (j >= S[0] || u >= ${units(epi, N, HD)}u) { return; }
  let e = S[ENT + j];
  ${unitRows(epi, N, HD)}
  let v0 = lora(j, e, n0);
  ${epi === "qkv" || epi === "glu" ? "let v1 = lora(j, e, n1);" : ""}
  ${epilogueCode(epi, N, { HD, NH, KVH, cap })}
}`;
}

// -- the decoder -------------------------------------------------------------------------------

const U = { STORAGE: 0x80, COPY_SRC: 0x04, COPY_DST: 0x08, UNIFORM: 0x40, MAP_READ: 0x01 };
export class GpuDecoder {
  /** Load the packed export's weights onto `device` (a GPUDevice): `arch` realm.json's
   * architecture, `packed` the .blocks file's bytes. `maxTokens`: tokens one forward takes (all
   * rows together); `maxLogits`: logits rows one forward returns. */
  static async create(device, arch, packed, { maxTokens = 256, maxLogits = 64, lanes = null } = {}) {
    const { meta, data } = parsePacked(packed);
    const plan = kernelPlan(arch, meta);
    if (plan.why) throw new KernelError(`realm kernels cannot run this model: ${plan.why}`);
    device.pushErrorScope("validation");
    const dec = new GpuDecoder(device, plan, data, maxTokens, maxLogits, lanes ?? lanesFor(device));
    const err = await device.popErrorScope();
    if (err) { dec.destroy(); throw new KernelError(`realm kernels: ${err.message}`); }
    return dec;
  }

  constructor(device, plan, data, maxTokens, maxLogits, lanes) {
    const t0 = performance.now();
    this.device = device;
    this.LN = lanes;
    this.p = plan;
    this.T = maxTokens;
    this.maxLogits = maxLogits;
    const { L, H, NH, KVH, HD, I, V } = plan;
    this.E = L * 2 * KVH * HD; // floats per cached position
    this.cap = 0; this.slots = 0; this.pool = null;
    this.lengths = new Map(); // slot -> positions written (for copies when the pool grows)
    this.ropeLen = plan.cos.shape[0];
    const buf = (size, usage) => device.createBuffer({ size: Math.max(16, Math.ceil(size / 4) * 4), usage });
    const upload = (arr, usage = U.STORAGE) => {
      const b = device.createBuffer({ size: Math.max(16, Math.ceil(arr.byteLength / 4) * 4), usage, mappedAtCreation: true });
      new Uint8Array(b.getMappedRange()).set(new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength));
      b.unmap();
      return b;
    };
    const raw = (t) => new Float32Array(data.slice(t.data, t.data + t.data_bytes).buffer);
    this.weightBytes = 0;
    const blocks = (t) => {
      const [q, s] = regroup(t, data.subarray(t.data, t.data + t.data_bytes));
      this.weightBytes += q.byteLength + s.byteLength;
      return { kind: t.kind, q: upload(q), s: upload(s) };
    };
    const rope = new Float32Array(2 * this.ropeLen * (HD / 2));
    rope.set(raw(plan.cos), 0); rope.set(raw(plan.sin), this.ropeLen * (HD / 2));
    this.rope = upload(rope);
    this.layers = plan.layers.map((l, i) => ({
      attnNorm: upload(raw(l.attnNorm)), mlpNorm: upload(raw(l.mlpNorm)),
      qkv: blocks(l.qkv), o: blocks(l.o), gateUp: blocks(l.gateUp), down: blocks(l.down),
      lp: upload(new Uint32Array([i, 0, 0, 0]), U.UNIFORM),
    }));
    this.embed = blocks(plan.embed);
    this.head = plan.head === plan.embed ? this.embed : blocks(plan.head);
    this.norm = upload(raw(plan.norm));
    const T = this.T;
    this.stepBuf = buf(4 * stepWords(T), U.STORAGE | U.COPY_DST);
    this.x = buf(4 * T * H, U.STORAGE);
    this.q = buf(4 * T * NH * HD, U.STORAGE);
    this.att = buf(4 * T * NH * HD, U.STORAGE);
    this.act = buf(4 * T * I, U.STORAGE);
    this.logits = buf(4 * maxLogits * V, U.STORAGE | U.COPY_SRC);
    this.ids = buf(4 * maxLogits, U.STORAGE | U.COPY_SRC);
    this.dummy = buf(16, U.STORAGE);
    this.dummyRw = buf(16, U.STORAGE);
    this.readback = null;
    this.profile = false; // see timestamps()
    this.failure = null; // the GPU's first uncaptured error: every later forward fails with it
    device.addEventListener?.("uncapturederror", (e) => { this.failure ??= e.error?.message || String(e.error); });
    this.gpuMs = [];
    this.loadMs = performance.now() - t0;
    this.pipelines();
    this.growPool(1, 256);
  }

  pipelines() {
    const d = this.device, p = this.p, T = this.T, cap = this.ropeLen;
    const entry = (binding, type) => ({ binding, visibility: 4 /* COMPUTE */, buffer: { type } });
    this.stepLayout = d.createBindGroupLayout({ entries: [entry(0, "read-only-storage"), entry(1, "read-only-storage")] });
    const layout = (types) => d.createBindGroupLayout({ entries: types.map((t, i) => entry(i, t)) });
    const ro = "read-only-storage", rw = "storage";
    this.mvLayout = layout([ro, ro, ro, rw, ro, rw, "uniform"]);
    this.attLayout = layout([ro, ro, rw, "uniform"]);
    this.embLayout = layout([ro, ro, rw]);
    this.argLayout = layout([ro, rw]);
    const make = (code, lay) => d.createComputePipeline({
      layout: d.createPipelineLayout({ bindGroupLayouts: lay === this.argLayout ? [lay] : [lay, this.stepLayout] }),
      compute: { module: d.createShaderModule({ code }), entryPoint: "main" } });
    const base = { eps: p.eps, T, HD: p.HD, NH: p.NH, KVH: p.KVH, L: p.L, cap, LN: this.LN };
    const mv = (kind, norm, epi, K, N) => make(matvecShader({ ...base, kind, norm, epi, K, N }), this.mvLayout);
    const l0 = p.layers[0];
    this.kinds = new Set(p.layers.flatMap((l) => [l.qkv.kind, l.o.kind, l.gateUp.kind, l.down.kind]));
    if (this.kinds.size !== 1) throw new KernelError("realm kernels: layers of mixed block kinds");
    const k = l0.qkv.kind;
    this.pipe = {
      qkv: mv(k, true, "qkv", p.H, (p.NH + 2 * p.KVH) * p.HD),
      o: mv(k, false, "resid", p.NH * p.HD, p.H),
      glu: mv(k, true, "glu", p.H, p.I),
      down: mv(k, false, "resid", p.I, p.H),
      head: mv(p.head.kind, true, "logits", p.H, p.V),
      attn: make(attentionShader(base), this.attLayout),
      embed: make(embedShader({ kind: p.embed.kind, T, H: p.H }), this.embLayout),
      argmax: make(argmaxShader({ V: p.V }), this.argLayout),
    };
    const LN = this.LN;
    this.gx = { qkv: matvecGroups("qkv", (p.NH + 2 * p.KVH) * p.HD, p.HD, LN), o: matvecGroups("resid", p.H, p.HD, LN),
                glu: matvecGroups("glu", p.I, p.HD, LN), down: matvecGroups("resid", p.H, p.HD, LN),
                head: matvecGroups("logits", p.V, p.HD, LN) };
    this.stepGroup = d.createBindGroup({ layout: this.stepLayout, entries: [{ binding: 0, resource: { buffer: this.stepBuf } }, { binding: 1, resource: { buffer: this.rope } }] });
  }

  /** Bind groups over the current KV pool (made again when it grows). */
  bindGroups() {
    const d = this.device;
    const g = (layout, bufs) => d.createBindGroup({ layout, entries: bufs.map((b, i) => ({ binding: i, resource: { buffer: b } })) });
    const mv = (x, w, y, gnorm, kv, lp) => g(this.mvLayout, [x, w.q, w.s, y, gnorm ?? this.dummy, kv ?? this.dummyRw, lp]);
    const lp0 = this.layers[0].lp;
    this.groups = {
      layers: this.layers.map((l) => ({
        qkv: mv(this.x, l.qkv, this.q, l.attnNorm, this.pool, l.lp),
        attn: g(this.attLayout, [this.q, this.pool, this.att, l.lp]),
        o: mv(this.att, l.o, this.x, null, null, l.lp),
        glu: mv(this.x, l.gateUp, this.act, l.mlpNorm, null, l.lp),
        down: mv(this.act, l.down, this.x, null, null, l.lp),
      })),
      head: mv(this.x, this.head, this.logits, this.norm, null, lp0),
      embed: g(this.embLayout, [this.embed.q, this.embed.s, this.x]),
      argmax: g(this.argLayout, [this.logits, this.ids]),
    };
    if (this.lora) this.loraBindGroups();
  }

  /** A KV pool of `slots` regions of `cap` positions, keeping what the old one held. */
  growPool(slots, cap) {
    const E = this.E, bytes = slots * cap * E * 4;
    const lim = this.device.limits;
    if (bytes > lim.maxStorageBufferBindingSize || bytes > lim.maxBufferSize)
      throw new KernelError(`the KV cache would need ${(bytes / 2 ** 20).toFixed(0)} MiB (${slots} slots x ${cap} positions); this GPU binds at most ${(lim.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB`);
    const pool = this.device.createBuffer({ size: bytes, usage: U.STORAGE | U.COPY_SRC | U.COPY_DST });
    if (this.pool) {
      const enc = this.device.createCommandEncoder();
      for (const [slot, n] of this.lengths) if (n > 0) enc.copyBufferToBuffer(this.pool, slot * this.cap * E * 4, pool, slot * cap * E * 4, n * E * 4);
      this.device.queue.submit([enc.finish()]);
      this.pool.destroy();
    }
    Object.assign(this, { pool, slots, cap });
    this.bindGroups();
  }

  /** Make room for `slot` holding `positions`. */
  ensure(slot, positions) {
    if (positions > this.ropeLen) throw new KernelError(`position ${positions - 1} is past the model's ${this.ropeLen}`);
    if (slot < this.slots && positions <= this.cap) return;
    let cap = this.cap;
    while (cap < positions) cap *= 2;
    this.growPool(Math.max(this.slots, slot + 1), Math.min(cap, this.ropeLen));
  }

  /** Positions [0, length) of slot `src` become slot `dst`'s. */
  copy(src, dst, length) {
    this.ensure(Math.max(src, dst), length);
    if (length > 0) {  // through a scratch buffer: a copy within one buffer is not allowed
      const d = this.device, enc = d.createCommandEncoder(), E4 = this.E * 4, bytes = length * E4;
      const tmp = d.createBuffer({ size: bytes, usage: U.COPY_SRC | U.COPY_DST });
      enc.copyBufferToBuffer(this.pool, src * this.cap * E4, tmp, 0, bytes);
      enc.copyBufferToBuffer(tmp, 0, this.pool, dst * this.cap * E4, bytes);
      d.queue.submit([enc.finish()]);
      tmp.destroy();
    }
    this.lengths.set(dst, length);
  }

  release(slot) {
    this.lengths.delete(slot);
  }

  /** One forward over `rows` ([{slot, start, tokens, logits: [index into tokens, ...]}], all
   * their tokens together at most maxTokens, their logits rows at most maxLogits): each row's
   * tokens go into its slot from `start` on. `greedy`: return the argmax id of each logits row
   * (Int32Array) instead of the logits (Float32Array, rows x vocab). */
  async forward(rows, greedy) {
    const { T, E, p } = this;
    const M = rows.reduce((a, q) => a + q.tokens.length, 0), Ml = rows.reduce((a, q) => a + q.logits.length, 0);
    if (this.failure) throw new KernelError(`WebGPU failed: ${this.failure}`);
    if (M === 0 || M > T) throw new KernelError(`${M} tokens in one forward (1 to ${T})`);
    if (Ml > this.maxLogits) throw new KernelError(`${Ml} logits rows in one forward (at most ${this.maxLogits})`);
    const lora = rows.some((q) => q.entry);
    for (const q of rows) {
      if (q.entry && !(this.lora && Number.isInteger(q.entry) && q.entry >= 1 && q.entry <= this.lora.entries))
        throw new KernelError(`adapter table entry ${q.entry} is not loaded (${this.lora ? `1 to ${this.lora.entries}` : "no LoRA tables"})`);
      const bad = q.tokens.find((tok) => !(Number.isInteger(tok) && tok >= 0 && tok < p.V));
      if (bad !== undefined) throw new KernelError(`token ${bad} is not in the vocabulary`);
      if (q.logits.some((x) => !(x >= 0 && x < q.tokens.length))) throw new KernelError("a logits position outside the row's tokens");
    }
    for (const q of rows) this.ensure(q.slot, q.start + q.tokens.length);
    const s = new Uint32Array(stepWords(T));
    s[0] = M; s[1] = Ml;
    let m = 0, j = 0;
    for (const q of rows) {
      const base = q.slot * this.cap * E;
      for (const x of q.logits) s[4 + 3 * T + j++] = m + x;
      const entry = q.entry ?? 0;
      q.tokens.forEach((tok, k) => {
        s[4 + m] = tok; s[4 + T + m] = q.start + k; s[4 + 2 * T + m] = base + (q.start + k) * E; s[4 + 4 * T + m] = entry; m++;
      });
      this.lengths.set(q.slot, q.start + q.tokens.length);
    }
    const d = this.device;
    d.queue.writeBuffer(this.stepBuf, 0, s.buffer, 0, 4 * stepWords(T));
    const enc = d.createCommandEncoder();
    const ts = this.timestamps();
    const pass = enc.beginComputePass(ts ? { timestampWrites: { querySet: ts.set, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } } : {});
    const ty = Math.ceil(M / MT);
    const run = (pipe, group, x, y) => { pass.setPipeline(pipe); pass.setBindGroup(0, group); pass.dispatchWorkgroups(x, y); };
    pass.setBindGroup(1, this.stepGroup);
    run(this.pipe.embed, this.groups.embed, Math.ceil(p.H / 32 / 32), M);
    const x = this.gx;
    if (lora) this.loraLayers(run, M, ty, new Set(rows.map((q) => q.entry).filter((e) => e)));
    else for (const g of this.groups.layers) {
      run(this.pipe.qkv, g.qkv, x.qkv, ty);
      run(this.pipe.attn, g.attn, p.NH, M);
      run(this.pipe.o, g.o, x.o, ty);
      run(this.pipe.glu, g.glu, x.glu, ty);
      run(this.pipe.down, g.down, x.down, ty);
    }
    if (Ml) run(this.pipe.head, this.groups.head, x.head, Math.ceil(Ml / MT));
    if (Ml && greedy) {
      pass.setPipeline(this.pipe.argmax); pass.setBindGroup(0, this.groups.argmax); pass.dispatchWorkgroups(Ml);
    }
    pass.end();
    const bytes = Ml ? (greedy ? 4 * Ml : 4 * Ml * p.V) : 0;
    let rb = null;
    if (bytes) {
      if (!this.readback || this.readback.size < bytes) {
        this.readback?.destroy();
        this.readback = d.createBuffer({ size: Math.max(bytes, 4 * p.V), usage: U.MAP_READ | U.COPY_DST });
      }
      rb = this.readback;
      enc.copyBufferToBuffer(greedy ? this.ids : this.logits, 0, rb, 0, bytes);
    }
    if (ts) { enc.resolveQuerySet(ts.set, 0, 2, ts.resolve, 0); enc.copyBufferToBuffer(ts.resolve, 0, ts.read, 0, 16); }
    d.queue.submit([enc.finish()]);
    let out = null;
    if (rb) {
      await rb.mapAsync(1 /* READ */, 0, bytes);
      out = greedy ? new Int32Array(rb.getMappedRange(0, bytes).slice(0)) : new Float32Array(rb.getMappedRange(0, bytes).slice(0));
      rb.unmap();
    } else await d.queue.onSubmittedWorkDone();
    if (this.failure) throw new KernelError(`WebGPU failed: ${this.failure}`);
    if (ts) {
      await ts.read.mapAsync(1);
      const [a, b] = new BigUint64Array(ts.read.getMappedRange().slice(0));
      ts.read.unmap();
      this.gpuMs.push(Number(b - a) / 1e6);
    }
    return out;
  }

  /** LoRA tables for `entries` adapters of rank at most `maxRank` (realm.json's LoRA contract,
   * bridge_config's `lora`: `groups` [{name, in, outs}]), their pipelines and bind groups; the
   * adapters go in with loadLora. */
  enableLora({ maxRank: R, groups }, entries) {
    if (this.lora) return;
    const d = this.device, p = this.p, T = this.T;
    const where = { // group -> the fused matvec it changes: its input, norm, epilogue, output
      qkv: { norm: true, epi: "qkv", K: p.H, NT: (p.NH + 2 * p.KVH) * p.HD, N: (p.NH + 2 * p.KVH) * p.HD },
      o: { norm: false, epi: "resid", K: p.NH * p.HD, NT: p.H, N: p.H },
      gate_up: { norm: true, epi: "glu", K: p.H, NT: 2 * p.I, N: p.I },
      down: { norm: false, epi: "resid", K: p.I, NT: p.H, N: p.H },
    };
    const gs = groups.map((g) => {
      const w = where[g.name], NT = g.outs.reduce((a, b) => a + b, 0);
      if (!w || g.in !== w.K || NT !== w.NT) throw new KernelError(`realm kernels: LoRA group ${g.name} (${g.in} -> ${NT}) is not one they run`);
      const bounds = g.outs.slice(0, -1).map((_, k) => g.outs.slice(0, k + 1).reduce((a, b) => a + b, 0));
      return { ...w, name: g.name, C: g.outs.length * R, bounds };
    });
    const Cmax = Math.max(...gs.map((g) => g.C)), NTmax = Math.max(...gs.map((g) => g.NT));
    const entry = (binding, type) => ({ binding, visibility: 4, buffer: { type } });
    const layout = (types) => d.createBindGroupLayout({ entries: types.map((t, i) => entry(i, t)) });
    const ro = "read-only-storage", rw = "storage";
    const shrinkLayout = layout([ro, ro, rw, ro]), expandLayout = layout([ro, ro, ro, rw, rw, "uniform"]);
    const make = (code, lay) => d.createComputePipeline({
      layout: d.createPipelineLayout({ bindGroupLayouts: [lay, this.stepLayout] }),
      compute: { module: d.createShaderModule({ code }), entryPoint: "main" } });
    const base = { eps: p.eps, T, HD: p.HD, NH: p.NH, KVH: p.KVH, L: p.L, cap: this.ropeLen, LN: this.LN };
    const kind = p.layers[0].qkv.kind;
    const pipes = {};
    for (const g of gs) pipes[g.name] = {
      shrink: make(loraShrinkShader({ T, K: g.K, C: g.C, norm: g.norm, eps: p.eps }), shrinkLayout),
      raw: make(matvecShader({ ...base, kind, norm: g.norm, epi: "plain", K: g.K, N: g.NT }), this.mvLayout),
      expand: make(loraExpandShader({ ...base, epi: g.epi, N: g.N, NT: g.NT, R, C: g.C, bounds: g.bounds }), expandLayout),
      gShrink: Math.ceil(g.C / 64), gRaw: matvecGroups("plain", g.NT, p.HD, this.LN), gExpand: Math.ceil(units(g.epi, g.N, p.HD) / 64),
    };
    const buf = (size, usage = U.STORAGE | U.COPY_DST) => d.createBuffer({ size: Math.max(16, size), usage });
    let bytes = 0;
    const layers = this.layers.map(() => Object.fromEntries(gs.map((g) => {
      const a = buf(4 * entries * g.C * g.K), b = buf(4 * entries * g.NT * R);
      bytes += a.size + b.size;
      return [g.name, { a, b }];
    })));
    this.lora = { R, entries, groups: gs, pipes, shrinkLayout, expandLayout, layers, bytes,
                  present: Array.from({ length: entries }, () => new Set()), // entry - 1 -> "layer.group"s it changes
                  h: buf(4 * T * Cmax, U.STORAGE), y: buf(4 * T * NTmax, U.STORAGE) };
    this.loraBindGroups();
  }

  /** Adapter table entry `entry` (1-based) from `tables`: "layer.group" -> [A^T {data: (members x
   * R, in)}, then each member's B^T {data: (out_k, R)}] (bridge.mjs LoraTables of one entry). */
  loadLora(entry, tables) {
    const lo = this.lora;
    if (!lo) throw new KernelError("realm kernels: no LoRA tables (enableLora first)");
    if (!(Number.isInteger(entry) && entry >= 1 && entry <= lo.entries)) throw new KernelError(`adapter entry ${entry} is not in [1, ${lo.entries}]`);
    const q = this.device.queue, present = new Set();
    lo.layers.forEach((l, i) => lo.groups.forEach((g) => {
      const ts = tables.get(`${i}.${g.name}`);
      if (!ts || ts[0].data.length !== g.C * g.K) throw new KernelError(`realm kernels: adapter tables lack layer ${i} ${g.name}`);
      if (ts.some((t) => t.data.some((v) => v !== 0))) present.add(`${i}.${g.name}`);
      const bs = new Float32Array(g.NT * lo.R);
      let at = 0;
      for (const t of ts.slice(1)) { bs.set(t.data, at); at += t.data.length; }
      if (at !== bs.length) throw new KernelError(`realm kernels: adapter ${g.name} B tables of ${at} values, not ${bs.length}`);
      q.writeBuffer(l[g.name].a, 4 * (entry - 1) * g.C * g.K, ts[0].data.buffer, ts[0].data.byteOffset, ts[0].data.byteLength);
      q.writeBuffer(l[g.name].b, 4 * (entry - 1) * g.NT * lo.R, bs.buffer, 0, bs.byteLength);
    }));
    lo.present[entry - 1] = present;
  }

  loraBindGroups() {
    const d = this.device, lo = this.lora;
    const g = (layout, bufs) => d.createBindGroup({ layout, entries: bufs.map((b, i) => ({ binding: i, resource: { buffer: b } })) });
    const io = (l, w) => ({ // a group's input, norm weights, output, KV (qkv only)
      qkv: [this.x, l.attnNorm, this.q, this.pool], o: [this.att, this.dummy, this.x, this.dummyRw],
      gate_up: [this.x, l.mlpNorm, this.act, this.dummyRw], down: [this.act, this.dummy, this.x, this.dummyRw] })[w];
    const weights = { qkv: "qkv", o: "o", gate_up: "gateUp", down: "down" };
    lo.bind = this.layers.map((l, i) => lo.groups.map((gr) => {
      const [x, norm, out, kv] = io(l, gr.name), t = lo.layers[i][gr.name], w = l[weights[gr.name]];
      return { name: gr.name, shrink: g(lo.shrinkLayout, [x, t.a, lo.h, norm]),
               raw: g(this.mvLayout, [x, w.q, w.s, lo.y, norm, this.dummyRw, l.lp]),
               expand: g(lo.expandLayout, [lo.y, lo.h, t.b, out, kv, l.lp]) };
    }));
  }

  /** The layers of a step with adapter rows on table `entries`: each group one of them changes
   * as shrink, matvec, expand (see "LoRA"); the others (e.g. o and the MLP under an adapter of q
   * and v only) as the fused kernel, which is what their zero tables would add up to. */
  loraLayers(run, M, ty, entries) {
    const lo = this.lora, p = this.p;
    const used = [...entries].map((e) => lo.present[e - 1]);
    const group = (b) => {
      const pp = lo.pipes[b.name];
      run(pp.shrink, b.shrink, pp.gShrink, M);
      run(pp.raw, b.raw, pp.gRaw, ty);
      run(pp.expand, b.expand, pp.gExpand, M);
    };
    this.groups.layers.forEach((g, i) => {
      const [qkv, o, gu, down] = ["qkv", "o", "gate_up", "down"].map((n) => used.some((s) => s.has(`${i}.${n}`)) && lo.bind[i].find((b) => b.name === n));
      if (qkv) group(qkv); else run(this.pipe.qkv, g.qkv, this.gx.qkv, ty);
      run(this.pipe.attn, g.attn, p.NH, M);
      if (o) group(o); else run(this.pipe.o, g.o, this.gx.o, ty);
      if (gu) group(gu); else run(this.pipe.glu, g.glu, this.gx.glu, ty);
      if (down) group(down); else run(this.pipe.down, g.down, this.gx.down, ty);
    });
  }

  /** With `profile` on and the device's "timestamp-query": a query set timing each forward's
   * pass on the GPU (into gpuMs). */
  timestamps() {
    if (!this.profile || !this.device.features.has("timestamp-query")) return null;
    if (!this._ts) {
      const d = this.device;
      this._ts = { set: d.createQuerySet({ type: "timestamp", count: 2 }),
                   resolve: d.createBuffer({ size: 16, usage: 0x0200 /* QUERY_RESOLVE */ | U.COPY_SRC }),
                   read: d.createBuffer({ size: 16, usage: U.MAP_READ | U.COPY_DST }) };
    }
    return this._ts;
  }

  /** GPU memory this decoder holds, in bytes (weights, KV pool). */
  memory() {
    return { weights: this.weightBytes, kv: this.slots * this.cap * this.E * 4, lora: this.lora?.bytes ?? 0 };
  }

  destroy() {
    for (const b of [this.pool, this.readback, this.stepBuf, this.x, this.q, this.att, this.act, this.logits, this.ids]) b?.destroy();
    if (this.lora) for (const b of [this.lora.h, this.lora.y, ...this.lora.layers.flatMap((l) => Object.values(l).flatMap((t) => [t.a, t.b]))]) b.destroy();
  }
}

/** Lanes per output unit for `device`: 1 on a CPU adapter (SwiftShader), else 8 (on the lent H100:
 * 3.63 ms a decode step and 7.1 ms for a 20-token prompt, against 3.9 / 18.4 ms with 32 lanes and 3.61 /
 * 11.5 with 16; bench/reference/webgpu_kernels_h100_vs_transformersjs.json). */
export function lanesFor(device) {
  const info = device.adapterInfo || {};
  const cpu = info.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe|cpu/i.test(`${info.vendor} ${info.architecture} ${info.device} ${info.description}`);
  return cpu ? 1 : 8;
}

/** One tensor's blocks as [q words, float32 scales]: Q4_1 -> 4 words and (d, m) per block,
 * Q8_0 -> 8 words and d per block, rows of blocks in the file's order. */
export function regroup(t, data) {
  const F16 = halfTable();
  const nb = (t.rows * t.cols) / 32;
  if (t.kind === "q4_1") {
    if (data.length !== nb * 20) throw new PackedError(`tensor ${t.name}: sizes do not match`);
    const q = new Uint8Array(nb * 16), s = new Float32Array(nb * 2);
    for (let b = 0, p = 0; b < nb; b++, p += 20) {
      s[2 * b] = F16[data[p] | (data[p + 1] << 8)];
      s[2 * b + 1] = F16[data[p + 2] | (data[p + 3] << 8)];
      q.set(data.subarray(p + 4, p + 20), b * 16);
    }
    return [new Uint32Array(q.buffer), s];
  }
  if (t.kind === "q8_0") {
    if (data.length !== nb * 34) throw new PackedError(`tensor ${t.name}: sizes do not match`);
    const q = new Uint8Array(nb * 32), s = new Float32Array(nb);
    for (let b = 0, p = 0; b < nb; b++, p += 34) {
      s[b] = F16[data[p] | (data[p + 1] << 8)];
      q.set(data.subarray(p + 2, p + 34), b * 32);
    }
    return [new Uint32Array(q.buffer), s];
  }
  throw new PackedError(`tensor ${t.name}: block kind ${t.kind}`);
}
