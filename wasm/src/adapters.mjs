// LoRA adapter files for the Python core in Pyodide, shared by the Node package (realm.mjs) and
// the browser worker (static/worker.mjs): fetch them over HTTP, put them in Pyodide's file system,
// have realm_web.web load them, and take the copies out again (the core keeps the weights).

/** Python exception types of adapters (realm_web.lora, realm_web.engine) -> error codes. */
export const ADAPTER_CODES = { AdapterNotFound: "adapter_not_found", AdapterInUse: "adapter_in_use",
                               AdapterError: "bad_adapter", UnsupportedError: "unsupported" };

/** A PEFT adapter directory's files. */
export const PEFT_FILES = ["adapter_config.json", "adapter_model.safetensors"];

/** An adapter's files over HTTP: a URL ending in .gguf, or a PEFT directory's URL (its two files
 * under it, e.g. a realm-web server's /adapters/{name}/). Returns {data: {file: bytes}, gguf: the
 * GGUF's file name or null, where}; errors come from `fail(code, message, cause, field)`. */
export async function fetchAdapter(url, headers, fail) {
  const get = async (u) => {
    let r;
    try { r = await fetch(u, { headers: headers || {} }); } catch (e) { throw fail("bad_adapter", `${u}: ${e.message}`, e, "path"); }
    if (!r.ok) throw fail("bad_adapter", `${u}: HTTP ${r.status}`, undefined, "path");
    return new Uint8Array(await r.arrayBuffer());
  };
  if (/\.gguf(\?|$)/i.test(url)) return { data: { "adapter.gguf": await get(url) }, gguf: "adapter.gguf", where: url };
  const base = url.endsWith("/") ? url : `${url}/`;
  const data = {};
  for (const f of PEFT_FILES) data[f] = await get(base + f);
  return { data, gguf: null, where: url };
}

let seq = 0;

/** Load `files` (as fetchAdapter returns them) under `name` through realm_web.web.load_adapter;
 * returns its JSON answer ({adapter} or {error}). */
export function loadAdapterFiles(py, web, name, files) {
  const dir = `/adapters/${++seq}`;
  py.FS.mkdirTree(dir);
  try {
    for (const [f, bytes] of Object.entries(files.data)) py.FS.writeFile(`${dir}/${f}`, bytes);
    return web.load_adapter(name, files.gguf ? `${dir}/${files.gguf}` : dir);
  } finally {
    for (const f of py.FS.readdir(dir)) if (f !== "." && f !== "..") py.FS.unlink(`${dir}/${f}`);
    py.FS.rmdir(dir);
  }
}
