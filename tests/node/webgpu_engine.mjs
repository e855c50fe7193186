// Realm's engine "webgpu" (the realm kernels through gpu_bridge.mjs) in Node on dawn.node (npm
// `webgpu`), driven by tests/test_node_webgpu.py, which runs it with Vulkan pointed at Chromium's
// SwiftShader (software: slow but real). Reads a JSON job from argv[2]: {model, wheel, adapters:
// {name: PEFT dir}, jobs: [[prompt, adapter or null], ...], maxTokens, alone: [prompt, adapter]};
// loads the adapters, runs the jobs all at once (one batch, mixing adapters), then `alone` on its own,
// seeded, with logprobs (the logits read back); prints JSON.
import fs from "node:fs";
import { create, globals } from "webgpu";
import { Realm } from "../../wasm/src/realm.mjs";

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
Object.assign(globalThis, globals);
// the GPU object handed over and not kept here: Realm must keep it (dawn.node tears its instance down
// when it is collected), so collect garbage now (node --expose-gc) rather than whenever V8 would
const llm = await Realm.load({ model: job.model, wheel: job.wheel, engine: "webgpu", gpu: create([]), maxSlots: 4 });
for (let i = 0; i < 3; i++) { globalThis.gc?.(); await new Promise((r) => setTimeout(r, 100)); }
const out = { info: { engine: llm.info.engine, kernels: llm.info.kernels, dtype: llm.info.dtype, adapters: llm.info.adapters,
                      runtime: llm.info.runtime } };
for (const [name, dir] of Object.entries(job.adapters)) await llm.loadAdapter(name, dir);
out.batch = (await Promise.all(job.jobs.map(([p, a]) => llm.generate(p, { maxTokens: job.maxTokens, adapter: a }))))
  .map((r) => r.tokenIds);
const [p, a] = job.alone;
const r = await llm.generate(p, { maxTokens: 3, adapter: a, logprobs: true, temperature: 0.7, seed: 4 });
out.alone = { tokenIds: r.tokenIds, logprobs: r.logprobs };
await llm.close();
console.log(JSON.stringify(out));
process.exit(0);
