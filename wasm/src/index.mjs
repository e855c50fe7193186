// The npm package realm-web (Node.js 20+, ES modules):
//   Realm            the model in this process: the Python core in Pyodide over onnxruntime-web
//                    (engine "wasm") or onnxruntime-node (engine "native")          (./realm.mjs)
//   RealmClient      a client for a realm-web server (HTTP + SSE, WebSocket)          (./client.mjs)
//   RealmError       every error of the package has this class (and a `code`);
//                    RealmEngineError: the in-process engine's (status null)
export { Realm, RealmEngineError, defaultModelDir, realmHome, DEFAULT_MODEL } from "./realm.mjs";
export { RealmClient, RealmError } from "./client.mjs";
