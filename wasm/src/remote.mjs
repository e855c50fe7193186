// A model from a URL, for Node: realm.json and the tokenizer files, and the graph the engine will
// run, kept in a local mirror ($REALM_WEB_HOME/remote/...). A packed export (realm_web/export/
// packed.py) downloads as the GGUF's blocks and is expanded while it downloads (packed.mjs) into
// the fp32 weights file next to its graph; a later load whose realm.json is unchanged reads the
// mirror and downloads nothing but realm.json.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { download } from "./download.mjs";
import { PackedExpander } from "./packed.mjs";

const SMALL_FILES = ["realm.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];

async function get(url, fail) {
  let r;
  try { r = await fetch(url); } catch (e) { throw fail("model_not_found", `${url}: ${e.cause?.message || e.message}`, e); }
  return r;
}

function writeAtomic(file, data) {
  const tmp = `${file}.part`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

/** A local mirror of the model at a URL: `open` fetches realm.json (and, when it changed, the
 * tokenizer files); `fetchWeights(cfg)` then gets what the engine runs and completes the mirror. */
export class Mirror {
  static async open(url, home, fail) {
    const base = url.replace(/\/+$/, "");
    const key = crypto.createHash("sha256").update(base).digest("hex").slice(0, 16);
    const dir = path.join(home, "remote", `${new URL(base).host.replace(/[^\w.-]/g, "_")}-${key}`);
    fs.mkdirSync(dir, { recursive: true });
    const r = await get(`${base}/realm.json`, fail);
    if (!r.ok) throw fail("model_not_found", `${base}/realm.json: HTTP ${r.status} (not a realm-web model URL?)`);
    const manifestText = await r.text();
    try { JSON.parse(manifestText); } catch (e) { throw fail("model_not_found", `${base}/realm.json: not JSON`, e); }
    const mpath = path.join(dir, "realm.json");
    const same = fs.existsSync(mpath) && fs.readFileSync(mpath, "utf8") === manifestText;
    let downloaded = Buffer.byteLength(manifestText);
    if (!same) {
      for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { force: true }); // another model now
      for (const f of SMALL_FILES.slice(1)) {
        const rf = await get(`${base}/${f}`, fail);
        if (rf.ok) {
          const b = new Uint8Array(await rf.arrayBuffer());
          writeAtomic(path.join(dir, f), b);
          downloaded += b.length;
        }
      }
    }
    return new Mirror(base, dir, manifestText, same, downloaded, fail);
  }

  constructor(base, dir, manifestText, same, downloaded, fail) {
    Object.assign(this, { base, dir, manifestText, same, downloaded, fail });
  }

  /** The bytes of `name` as the Python core reads it (realm.json from memory until complete). */
  file(name) {
    if (name === "realm.json") return new TextEncoder().encode(this.manifestText);
    const p = path.join(this.dir, name);
    return fs.existsSync(p) ? new Uint8Array(fs.readFileSync(p)) : null;
  }

  /** Download what `cfg` (realm_web.web.config) runs: a packed export as blocks expanded into its
   * weights file (when `packed`), or the blocks file itself (`blocks`: WebGPU's realm kernels), else
   * the graph file itself; then write realm.json. */
  async fetchWeights(cfg, { packed = true, blocks = false, onProgress = null } = {}) {
    const { base, dir, fail } = this;
    const bad = (message, cause) => fail("model_not_found", message, cause);
    const have = (f, n) => fs.existsSync(path.join(dir, f)) && fs.statSync(path.join(dir, f)).size === n;
    const fetchFile = async (f, n) => {
      if (have(f, n)) return;
      const chunks = [];
      await download(`${base}/${f}`, n, (c) => chunks.push(c), { onBytes: (got, total) => onProgress?.({ stage: "download", file: f, got, total }), fail: bad });
      writeAtomic(path.join(dir, f), Buffer.concat(chunks));
      this.downloaded += n;
    };
    this.fetchFile = fetchFile; // the LoRA twin of a plain export is fetched when an adapter first runs
    const p = packed ? cfg.packed : null;
    if (blocks) {  // the GGUF blocks as they are (the realm kernels read them)
      if (!cfg.packed) throw bad(`${base}: the export has no packed blocks`);
      await fetchFile(cfg.packed.blocks, cfg.packed.blocksBytes);
    } else if (p) {
      await fetchFile(p.file, p.bytes);
      if (p.loraFile) await fetchFile(p.loraFile, p.loraBytes);
      if (!have(p.weights, p.weightsBytes)) {
        const ex = new PackedExpander(p.blocksBytes, { half: p.element === "f16", derived: p.derived, weightsBytes: p.weightsBytes });
        await download(`${base}/${p.blocks}`, p.blocksBytes, (c) => ex.push(c),
                       { onBytes: (got, total) => onProgress?.({ stage: "download", file: p.blocks, got, total }), fail: bad });
        onProgress?.({ stage: "expand", file: p.weights });
        writeAtomic(path.join(dir, p.weights), ex.finish());
        this.downloaded += p.blocksBytes;
      }
    } else {
      await fetchFile(cfg.file, cfg.bytes);
    }
    if (!this.same) writeAtomic(path.join(dir, "realm.json"), this.manifestText); // last: the mirror is complete
    return { packed: !!p };
  }
}
