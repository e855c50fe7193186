// Paris from Node.js: the realm-web npm package (wasm/) runs the Python core in Pyodide and the
// model on onnxruntime-web (WASM), or on onnxruntime-node with --engine native.
//   make model web && node examples/paris/nodejs-wasm/index.mjs [MODEL_DIR] [--engine wasm|native]
// MODEL_DIR defaults to the directory `realm-web pull` fills ($REALM_WEB_HOME/models/smollm2-135m-instruct).
import { Realm, RealmError } from "../../../wasm/src/index.mjs"; // in a project: from "realm-web"

const args = process.argv.slice(2);
const i = args.indexOf("--engine");
const engine = i >= 0 ? args.splice(i, 2)[1] : "wasm";
try {
  const llm = await Realm.load({ model: args[0], engine });
  const r = await llm.generate("What is the capital of France?", { maxTokens: 32 });
  console.log(r.text);
  await llm.close();
} catch (e) {
  if (!(e instanceof RealmError)) throw e;
  console.error(`error (${e.code}): ${e.message}`);
  process.exitCode = 1;
}
