// Ask a running realm-web server (`make serve`) with the Node SDK, over HTTP and over the WebSocket.
//   node examples/paris/nodejs-sdk/paris.mjs [http://127.0.0.1:8000] [api-key]
import { RealmClient } from "../../../wasm/src/client.mjs";

const client = new RealmClient({ baseUrl: process.argv[2] || "http://127.0.0.1:8000", apiKey: process.argv[3] || null });
const q = "What is the capital of France?";
console.log("http:", (await client.chat(q, { temperature: 0, maxTokens: 32 })).text);
const ws = await client.websocket();
console.log("ws:  ", (await ws.generate(q, { temperature: 0, maxTokens: 32 })).text);
ws.close();
