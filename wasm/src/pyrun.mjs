// Run a Python file inside Pyodide (Node), with the realm_web wheel and any extra pure-Python
// wheels installed and host directories copied in: how the core's own tests run in Pyodide.
//   node wasm/src/pyrun.mjs --wheel W [--wheel W2 ...] [--copy HOST:DEST ...] [--fetch PY:HOST ...]
//                           script.py [args...]
import fs from "node:fs";
import path from "node:path";
import { loadPyodide } from "pyodide";

const argv = process.argv.slice(2);
const wheels = [], copies = [], fetches = [];
while (argv[0]?.startsWith("--")) {
  const flag = argv.shift(), value = argv.shift();
  if (flag === "--wheel") wheels.push(value);
  else if (flag === "--copy") copies.push(value.split(":"));
  else if (flag === "--fetch") fetches.push(value.split(":"));  // PYODIDE_PATH:HOST_PATH, after the run
  else throw new Error(`unknown flag ${flag}`);
}
const [script, ...args] = argv;

function copyTree(py, host, dest) {
  if (fs.statSync(host).isDirectory()) {
    py.FS.mkdirTree(dest);
    for (const f of fs.readdirSync(host)) {
      if (f === "__pycache__" || f.endsWith(".onnx") || f.endsWith(".onnx.data")) continue;
      copyTree(py, path.join(host, f), `${dest}/${f}`);
    }
  } else {
    py.FS.writeFile(dest, new Uint8Array(fs.readFileSync(host)));
  }
}

const py = await loadPyodide();
py.setStdout({ write: (b) => { process.stdout.write(b); return b.length; } });
py.setStderr({ write: (b) => { process.stderr.write(b); return b.length; } });
for (const w of wheels) py.unpackArchive(new Uint8Array(fs.readFileSync(w)), "wheel");
for (const [host, dest] of copies) copyTree(py, host, dest);
py.globals.set("ARGS", py.toPy([script, ...args]));
const code = fs.readFileSync(script, "utf8");
// The script's last expression is its exit status (it must not call sys.exit).
let rc = 1;
try {
  rc = await py.runPythonAsync(`import sys\nsys.argv = list(ARGS)\n` + code);
} catch (e) {
  console.error(String(e.message || e).slice(-4000));
}
for (const [src, host] of fetches) {
  try { fs.writeFileSync(host, py.FS.readFile(src)); } catch (e) { console.error(`cannot fetch ${src}: ${e}`); rc = 1; }
}
process.exit(typeof rc === "number" ? rc : 1);
