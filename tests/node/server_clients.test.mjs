// Node clients against a running realm-web server (REALM_SERVER_URL, REALM_API_KEY): the official
// `openai` npm package, unmodified, and realm-web's own RealmClient (HTTP + WebSocket).
// Run by tests/test_server_node.py, which starts the server.
import test from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { RealmClient, RealmError } from "../../wasm/src/client.mjs";

const URL_ = process.env.REALM_SERVER_URL;
const KEY = process.env.REALM_API_KEY;
const Q = "What is the capital of France?";
const MODEL = "smollm2-135m-instruct";

test("the official openai package: chat, stream with usage, completions, models", async () => {
  const client = new OpenAI({ baseURL: `${URL_}/v1`, apiKey: KEY });
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
  const r = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: Q }], temperature: 0, max_tokens: 24 });
  assert.match(r.choices[0].message.content, /Paris/);
  let streamed = "", usage = null;
  const s = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: Q }], temperature: 0,
                                                  max_tokens: 24, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of s) {
    streamed += chunk.choices[0]?.delta?.content || "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(streamed, r.choices[0].message.content);
  assert.equal(usage.completion_tokens, r.usage.completion_tokens);
  const c = await client.completions.create({ model: MODEL, prompt: "The capital of France is", max_tokens: 4, temperature: 0 });
  assert.match(c.choices[0].text, /Paris/);
  await assert.rejects(client.chat.completions.create({ model: MODEL, messages: [], temperature: 0 }),
                       (e) => e.status === 400 && e.error?.code === "invalid_value");
  await assert.rejects(new OpenAI({ baseURL: `${URL_}/v1`, apiKey: "sk-not-a-key" }).models.list(), (e) => e.status === 401);
});

test("RealmClient over HTTP and WebSocket", async () => {
  const c = new RealmClient({ baseUrl: URL_, apiKey: KEY });
  assert.deepEqual(await c.models(), [MODEL]);
  const r = await c.chat(Q, { temperature: 0, maxTokens: 24 });
  assert.match(r.text, /Paris/);
  let s = "";
  for await (const d of c.streamChat(Q, { temperature: 0, maxTokens: 24 })) s += d.text;
  assert.equal(s, r.text);
  const ws = await c.websocket();
  try {
    const [a, b] = await Promise.all([ws.generate(Q, { temperature: 0, maxTokens: 24 }),
                                      ws.generate("Name a color.", { temperature: 0, maxTokens: 8 })]);
    assert.equal(a.text, r.text);
    assert.equal(a.tokenIds.length, a.tokensGenerated);
    assert.ok(b.text.length > 0);
    const toks = [];
    const it = ws.stream("Count from one to one hundred.", { temperature: 0, maxTokens: 200, ignoreEos: true });
    for await (const t of it) { toks.push(t); if (toks.length === 3) break; } // leaving cancels it
    assert.deepEqual(toks.map((t) => t.index), [0, 1, 2]);
    assert.equal((await ws.health()).status, "ok");
    await assert.rejects(ws.generate(Q, { temperature: 7 }), (e) => e instanceof RealmError && e.code === "invalid_value");
  } finally { ws.close(); }
  await assert.rejects(new RealmClient({ baseUrl: URL_, apiKey: "sk-wrong-key-1" }).models(),
                       (e) => e instanceof RealmError && e.status === 401);
});
