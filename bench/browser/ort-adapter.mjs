// The thin adapter that lets transformers.js run realm-web's ONNX graph unchanged.
//
// Our graph has one input transformers.js does not know: `logits_index` (int64, batch x k), the
// positions of this step whose logits the graph returns (GatherND, batch_dims=1). Sessions made
// through this module hide it from `inputNames` / `inputMetadata` (so transformers.js neither
// asks for it nor warns) and `run()` adds `logits_index = [[seq_len - 1]]` per row: the logits
// of the last position, which is all a causal LM's generate() reads (`logits[:, -1, :]`; with
// left padding the last position is the last column for every row). The graph has no
// position_ids input (GroupQueryAttention derives positions from attention_mask), so
// transformers.js sends none. Graphs without `logits_index` pass through untouched.
export const adapterStats = { sessions: 0, adapted: 0, runs: 0, runMs: 0, trace: null }; // trace: [] -> run ms

export function adaptedSessions(ort) {
  const create = async (...args) => {
    const session = await ort.InferenceSession.create(...args);
    adapterStats.sessions++;
    return adapt(ort, session);
  };
  return { ...ort.InferenceSession, create };
}

function adapt(ort, session) {
  if (!session.inputNames.includes("logits_index")) return session;
  adapterStats.adapted++;
  const inputNames = session.inputNames.filter((n) => n !== "logits_index");
  const inputMetadata = session.inputMetadata?.filter((m) => m.name !== "logits_index");
  const run = async (feeds, ...rest) => {
    const [batch, seq] = feeds.input_ids.dims;
    const index = new ort.Tensor("int64", new BigInt64Array(batch).fill(BigInt(seq - 1)), [batch, 1]);
    const t0 = performance.now();
    const out = await session.run({ ...feeds, logits_index: index }, ...rest);
    const ms = performance.now() - t0;
    adapterStats.runs++;
    adapterStats.runMs += ms;
    adapterStats.trace?.push(ms);
    return out;
  };
  return new Proxy(session, {
    get(target, prop) {
      if (prop === "inputNames") return inputNames;
      if (prop === "inputMetadata") return inputMetadata;
      if (prop === "run") return run;
      const v = Reflect.get(target, prop);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}
