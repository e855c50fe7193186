// Paris from Node.js: the Python core in Pyodide, the model on onnxruntime-web (WASM).
//   make model web && node examples/paris/nodejs-wasm/paris.mjs "$(.venv/bin/realm-web pull)"
import { createRealm } from "../../../wasm/src/node.mjs";

const realm = await createRealm({ modelDir: process.argv[2] });
const r = await realm.generate("What is the capital of France?", { maxTokens: 32 });
console.log(r.text);
await realm.close();
