// The chat page over window.realm (realm.js).
import realm from "./realm.js";

const $ = (id) => document.getElementById(id);
const chat = $("chat"), input = $("input"), send = $("send"), stop = $("stop");
const history = [];
let busy = false;
let inTab = new Set(); // adapters loaded into this tab's model (reset when the backend changes)
const adapterUrl = new Map(); // server adapter -> where the tab downloads it

let readyText = ""; // the status line once the model is ready
function status(text, error = false) { $("statusText").textContent = text; $("status").classList.toggle("error", error); }
function mb(n) { return (n / 1e6).toFixed(1) + " MB"; }
function bubble(role, text) {
  const d = document.createElement("div");
  d.className = `msg ${role}`;
  d.textContent = text;
  chat.appendChild(d);
  chat.scrollTop = chat.scrollHeight;
  return d;
}
function enable(on) { input.disabled = send.disabled = !on; }

realm.onprogress = (p) => {
  if (p.stage === "download") {
    $("bar").style.width = `${p.total ? (100 * p.got) / p.total : 0}%`;
    const speed = p.seconds > 0.5 ? `, ${(p.got / 1e6 / p.seconds).toFixed(1)} MB/s` : "";
    status(p.text || `Downloading ${p.file}: ${mb(p.got)} of ${mb(p.total)}${speed}`);
  } else status(p.text || p.stage);
};

async function start() {
  enable(false);
  $("backend").value = realm.backend;
  $("speculative").checked = !!realm.speculative;
  $("speculative").disabled = realm.backend === "server";
  $("bar").style.width = "0%";
  try {
    const info = await realm.ready;
    $("bar").style.width = "100%";
    if (info.backend === "server") status(`Ready: ${info.name} (${info.dtype}) on the realm-web server (${info.device})`);
    else status(`Ready: ${info.name} (${info.dtype}${info.packed ? ", packed" : ""}, ` +
                `${info.fromCache ? "from the browser's storage" : `${mb(info.wireBytes)} downloaded`}) on ` +
                `${info.backend === "webgpu" ? (info.kernels === "realm" ? "WebGPU, realm kernels" : "WebGPU, onnxruntime-web")
                                              : `WASM, ${info.threads} thread${info.threads > 1 ? "s" : ""}`}` +
                ` in ${info.loadSeconds.toFixed(1)} s`);
    readyText = $("statusText").textContent;
    $("model").textContent = `${info.name} · ${info.file}`;
    inTab = new Set();
    await listAdapters();
    enable(true);
    input.focus();
  } catch (e) {
    status(e.message, true);
  }
}

// The server's LoRA adapters (a page served by `realm-web serve --lora-modules ...`).
async function listAdapters() {
  const sel = $("adapter"), keep = sel.value;
  for (const o of [...sel.options].slice(1)) o.remove();
  for (const a of await realm.serverAdapters()) {
    const files = a.files || [];
    adapterUrl.set(a.id, files.length === 1 ? files[0] : `./adapters/${encodeURIComponent(a.id)}/`);
    sel.add(new Option(a.id, a.id));
  }
  sel.value = [...sel.options].some((o) => o.value === keep) ? keep : "";
}

// The chosen adapter, loaded into the tab first when the model runs here.
async function adapterOption() {
  const a = $("adapter").value || null;
  if (!a || realm.backend === "server" || inTab.has(a)) return a;
  status(`Loading adapter ${a} into this tab…`);
  const r = await realm.loadAdapter(a, adapterUrl.get(a));
  inTab.add(a);
  status(`Adapter ${a} (rank ${r.rank}, ${r.targets.length} modules) runs in this tab`);
  return a;
}

$("speculative").onchange = async () => {
  if (realm.backend === "server") return;
  enable(false);
  status($("speculative").checked ? "Turning on speculative decoding…" : "Turning off speculative decoding…");
  try {
    await realm.setSpeculative($("speculative").checked ? "ngram" : null);
    specSeen = { draft_tokens: 0, accepted_tokens: 0 }; // a new worker counts from zero
  } catch (e) { status(e.message, true); }
  await start();
};

// What speculative decoding did in the last answer: drafted and accepted tokens since the one before.
let specSeen = { draft_tokens: 0, accepted_tokens: 0 };
async function speculationNote() {
  if (!$("speculative").checked || realm.backend === "server") return "";
  const s = (await realm.stats()).speculative;
  if (!s) return "";
  const d = s.draft_tokens - specSeen.draft_tokens, a = s.accepted_tokens - specSeen.accepted_tokens;
  specSeen = s;
  return d ? ` · speculative: ${a} of ${d} drafted tokens accepted (${Math.round((100 * a) / d)}%)` : " · speculative: nothing drafted";
}

// The answer format: free text, or JSON following the schema typed under "Answer as JSON"
// ({} or {"type": "object"} with nothing more: any JSON object). A schema that is not JSON is
// the user's to fix: the message is not sent.
function formatOption() {
  const text = $("schema").value.trim();
  if (!text) return {};
  let schema;
  try { schema = JSON.parse(text); } catch (e) { throw Object.assign(new Error(`The JSON schema is not valid JSON: ${e.message}`), { code: "bad_schema" }); }
  if (typeof schema !== "object" || schema === null || Array.isArray(schema)) throw new Error("The JSON schema must be a JSON object");
  return Object.keys(schema).length === 0 ? { responseFormat: { type: "json_object" } } : { jsonSchema: schema };
}
$("schema").oninput = () => { $("formatNote").textContent = $("schema").value.trim() ? "(on)" : ""; };

$("backend").onchange = async () => {
  const b = $("backend").value;
  realm.ready = realm._switch(b);
  await start();
};

$("form").onsubmit = async (ev) => {
  ev.preventDefault();
  const text = input.value.trim();
  if (!text || busy) return;
  let format;
  try { format = formatOption(); } catch (e) { status(e.message, true); $("format").open = true; $("schema").focus(); return; }
  if ($("status").classList.contains("error") && readyText) status(readyText);
  input.value = "";
  busy = true;
  enable(false);
  stop.disabled = false;
  bubble("user", text);
  history.push({ role: "user", content: text });
  const out = bubble("assistant", "");
  const t0 = performance.now();
  let n = 0, first = 0;
  try {
    const adapter = await adapterOption();
    const r = await realm.stream(history, { temperature: Number($("temperature").value), maxTokens: Number($("maxTokens").value),
                                            adapter, ...format }, (d) => {
      if (!first && d.tokenIds.length) first = performance.now();
      n += d.tokenIds.length;
      out.textContent += d.text;
      chat.scrollTop = chat.scrollHeight;
      if (n > 1) $("speed").textContent = `${((n - 1) / ((performance.now() - first) / 1000)).toFixed(1)} tokens/s · first token ${((first - t0) / 1000).toFixed(2)} s`;
    });
    history.push({ role: "assistant", content: r.text });
    if (r.finishReason === "abort") out.textContent += " [stopped]";
    $("speed").textContent += await speculationNote();
  } catch (e) {
    out.remove();
    bubble("error", e.message);
  }
  busy = false;
  stop.disabled = true;
  enable(true);
  input.focus();
};

input.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); } });
stop.onclick = () => realm.stop();
start();
