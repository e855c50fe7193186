// realm-web in Node.js: the Python core in Pyodide, the model on onnxruntime-web (WASM).
//
//   import { createRealm } from "realm-web/node";
//   const realm = await createRealm({ modelDir, wheel });
//   const r = await realm.generate("What is the capital of France?", { maxTokens: 32 });
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadPyodide } from "pyodide";
import * as ort from "onnxruntime-web";
import { Bridge } from "./bridge.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const MODEL_FILES = ["realm.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];

function defaultWheel() {
  const dist = path.join(here, "..", "dist");
  const whl = fs.existsSync(dist) && fs.readdirSync(dist).find((f) => f.endsWith(".whl"));
  if (!whl) throw new Error(`no realm_web wheel in ${dist}: run python tools/build_core_wheel.py`);
  return path.join(dist, whl);
}

export async function createRealm({ modelDir, wheel, backend = "wasm", threads = 1, dtype = null,
                                    maxSlots = 4, maxLength = null } = {}) {
  if (!modelDir || !fs.existsSync(path.join(modelDir, "realm.json")))
    throw new Error(`${modelDir}: not a realm-web model directory (no realm.json)`);
  if (backend !== "wasm") throw new Error(`backend ${backend} is not available in Node (use "wasm")`);
  ort.env.wasm.numThreads = threads;
  const py = await loadPyodide();
  py.unpackArchive(new Uint8Array(fs.readFileSync(wheel || defaultWheel())), "wheel");
  py.FS.mkdirTree("/model");
  for (const f of MODEL_FILES) {
    const p = path.join(modelDir, f);
    if (fs.existsSync(p)) py.FS.writeFile(`/model/${f}`, new Uint8Array(fs.readFileSync(p)));
  }
  const web = py.pyimport("realm_web.web");
  const cfg = JSON.parse(web.config("/model", backend, dtype));
  const bridge = await Bridge.create(ort, fs.readFileSync(path.join(modelDir, cfg.file)), cfg);
  const info = JSON.parse(web.start("/model", bridge, JSON.stringify({ maxSlots, maxLength })));
  return {
    info: { ...info, ...cfg },
    bridge,
    pyodide: py,
    async generate(prompt, options = {}) {
      return JSON.parse(await web.generate(JSON.stringify(prompt), JSON.stringify(options)));
    },
    async stream(prompt, options = {}, onDelta = () => {}) {
      return JSON.parse(await web.stream(JSON.stringify(prompt), JSON.stringify(options),
                                         (d) => onDelta(JSON.parse(d))));
    },
    async close() { await bridge.dispose(); },
  };
}
