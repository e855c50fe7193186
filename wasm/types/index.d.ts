// Types of the npm package realm-web (Node.js 20+, ES modules).

/** Every error of the package. `status`: the HTTP status for a server's answer (0 on a
 * WebSocket), null for the in-process engine. */
export class RealmError extends Error {
  constructor(status: number | null, code: string, message: string, retryAfterS?: number | null);
  readonly status: number | null;
  readonly code: string;
  readonly retryAfterS: number | null;
}

export type RealmEngineErrorCode =
  | "model_not_found"    // no such directory, no realm.json, or a file it names is missing
  | "bad_option"         // unknown option name or a bad value (engine, dtype, maxTokens, ...)
  | "bad_prompt"         // empty prompt, token ids out of range, prompt longer than the context
  | "engine_unavailable" // onnxruntime-node / onnxruntime-web / the core wheel cannot be loaded
  | "closed"             // the Realm was closed
  | "aborted"            // the request's AbortSignal fired
  | "bad_adapter"        // an adapter realm-web cannot serve (missing, corrupt, another base, too large a rank): see `field`
  | "adapter_not_found"  // no adapter of that name is loaded
  | "adapter_in_use"     // requests use the adapter: it cannot be unloaded or replaced now
  | "unsupported"        // the export has no LoRA-capable graph (`realm-web pull` makes one)
  | "runtime";           // anything else (the Python traceback is in `cause`)

/** An error of the in-process engine (Realm). */
export class RealmEngineError extends RealmError {
  constructor(code: RealmEngineErrorCode, message: string, options?: { cause?: unknown });
  readonly status: null;
  readonly code: RealmEngineErrorCode;
  /** For "bad_adapter": what is wrong (a config key such as "r" or "target_modules", "path", "hidden_size", ...). */
  readonly field: string | null;
}

export type Engine = "wasm" | "native" | "webgpu";

export interface LoadOptions {
  /** Model directory (realm.json + the ONNX exports); default: the one `realm-web pull` makes,
   * $REALM_WEB_HOME/models/smollm2-135m-instruct (REALM_WEB_HOME defaults to ~/.cache/realm-web). */
  model?: string;
  /** "wasm": onnxruntime-web's WebAssembly build (default); "native": onnxruntime-node (CPU);
   * "webgpu": realm-web's own WebGPU kernels over the export's GGUF blocks (navigator.gpu, or
   * dawn.node from npm `webgpu`; LoRA adapters in the kernels' own tables). */
  engine?: Engine;
  /** engine "webgpu": the GPU object to use (default: navigator.gpu, else dawn.node's). */
  gpu?: unknown;
  /** Which export to run ("fp32", "fp16", "int8", "int4"); default: the one realm.json prefers for
   * the engine (wasm: fp32, else fp16; native: int4). */
  dtype?: string | null;
  /** Compute threads (wasm default 1; native default min(4, cores)). onnxruntime-web's WASM runtime
   * takes its thread count once per process. */
  threads?: number;
  /** Requests that run at once (default 8); more wait in the queue. */
  maxSlots?: number;
  /** Context length (default: the model's). */
  maxLength?: number | null;
  /** Prompt tokens per step (the prefill chunk, default 256). */
  maxTokensPerStep?: number;
  /** Run the decode steps of concurrent requests as one batched session.run (default true). */
  batching?: boolean;
  /** Run a lone decode row with a phantom row, so that a request's tokens never depend on
   * whether it ran alone (default: where this CPU's quantized kernels compute one row otherwise
   * than a batch of two, checked at load; false is faster there). */
  padLoneRows?: boolean;
  /** LoRA adapters that one step may mix (the adapter table's entries, default 8). */
  maxLoras?: number;
  /** Speculative decoding: "ngram" (prompt lookup), or its settings. Output is the same as
   * without it; only the speed changes. */
  speculative?: "ngram" | SpeculativeOptions | null;
  /** The realm_web core wheel that Pyodide installs (default: the one in the package's dist/). */
  wheel?: string;
  /** With a URL `model`: download a packed fp32 export as its quantized blocks, expanded here
   * (default true); false downloads the plain file. */
  packed?: boolean;
  /** Keep a finished request's cache on its slot: a prompt that begins with the same tokens (the
   * next turn of a chat) computes only the rest (default false). */
  prefixCaching?: boolean;
  /** Download progress of a URL `model`. */
  onProgress?: (p: { stage: "download" | "expand"; file: string; got?: number; total?: number }) => void;
}

/** realm_web.speculative.SpeculativeConfig in camelCase. */
export interface SpeculativeOptions {
  method: "ngram";
  /** The most draft tokens a verify step feeds (default 4, at most 16). */
  numSpeculativeTokens?: number;
  /** The n-gram lengths the lookup tries, longest first (default 1..4). */
  ngramMin?: number;
  ngramMax?: number;
  /** Size drafts per request from its acceptance and per step from the batch (default true). */
  adaptive?: boolean;
}

export interface SpeculativeStats {
  verify_steps: number;
  draft_tokens: number;
  accepted_tokens: number;
  emitted_tokens: number;
}

/** The same names as the browser's window.realm API and the Python SamplingParams. */
export interface GenerateOptions {
  /** Most new tokens (default 256). */
  maxTokens?: number;
  /** 0 (default): greedy. */
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  /** Seeded sampling gives the same tokens on every engine whose logits agree. */
  seed?: number | null;
  /** Stop strings (not included in the text). */
  stop?: string | string[];
  stopTokenIds?: number[];
  ignoreEos?: boolean;
  /** Ask for the sampled tokens' log-probabilities (engine side; not yet in the result). */
  logprobs?: boolean;
  /** The prompt string is plain text: no chat template. */
  raw?: boolean;
  /** A system message put before the chat prompt. */
  system?: string;
  /** A loaded adapter's name (Realm.loadAdapter); null or absent: the base model. */
  adapter?: string | null;
  /** Cancels the request (it rejects with code "aborted"). */
  signal?: AbortSignal;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | string;
  content: string;
}

/** A user message (through the chat template), chat messages, or token ids. */
export type Prompt = string | ChatMessage[] | number[];

export type FinishReason = "stop" | "length" | "abort" | null;

export interface Completion {
  text: string;
  tokenIds: number[];
  promptTokenIds: number[];
  finishReason: FinishReason;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  timings: { ttft_s: number; decode_s: number; total_s: number; decode_tokens_per_s: number };
}

export interface Delta {
  text: string;
  tokenIds: number[];
  /** Set on the last delta. */
  finishReason: FinishReason;
}

export interface RealmInfo {
  name: string;
  engine: Engine;
  dtype: string;
  file: string;
  /** The local directory (for a URL model: its mirror under $REALM_WEB_HOME/remote). */
  modelDir: string;
  /** The model's URL, when it was loaded from one. */
  url: string | null;
  /** Whether it runs a packed export (weights expanded from the GGUF's blocks). */
  packed: boolean;
  /** Bytes this load downloaded (0 for a local directory; a warm mirror: realm.json only). */
  downloadedBytes: number;
  /** Whether prefix caching is on. */
  prefixCaching: boolean;
  threads: number;
  maxSlots: number;
  maxLength: number;
  vocabSize: number;
  eosTokenIds: number[];
  runtime: string;
  /** Whether lone decode rows run with a phantom row (see padLoneRows). */
  padLoneRows?: boolean;
  /** engine "webgpu": "realm" (the kernels), and the adapter's vendor and device. */
  kernels?: "realm";
  adapter?: string;
  loadMs: number;
  /** Whether the export has a LoRA-capable graph (loadAdapter works). */
  adapters: boolean;
  maxLoras: number;
  /** The speculative settings in force (snake_case, as realm_web.speculative), or null. */
  speculative: Record<string, unknown> | null;
  /** With speculation: the step costs measured at load that price a verify row for the policy
   * (a run's fixed seconds and the seconds per fed token), else null. */
  stepCosts: { run_seconds: number; token_seconds: number } | null;
}

export interface AdapterInfo {
  name: string;
  /** The largest rank of its modules. */
  rank: number;
  /** The modules it changes (q_proj, k_proj, ...). */
  targets: string[];
}

export interface RealmStats {
  /** Awaited calls from the Python core (one per scheduler step). */
  steps: number;
  /** session.run calls; batchedRuns of them decoded several requests at once. */
  runs: number;
  batchedRuns: number;
  /** The most requests one run carried. */
  maxRows: number;
  rowsRun: number;
  runMs: number;
  sampleMs: number;
  gatherMs: number;
  inflight: number;
  /** Speculative counters, when speculative decoding is on. */
  speculative: SpeculativeStats | null;
}

/** A model loaded in this process: the Python core in Pyodide over onnxruntime-web or -node. */
export class Realm {
  static load(options?: LoadOptions): Promise<Realm>;
  private constructor();
  readonly info: Readonly<RealmInfo>;
  /** Concurrent calls share the engine: the core batches them (continuous batching). */
  generate(prompt: Prompt, options?: GenerateOptions): Promise<Completion>;
  /** Yields deltas; returns the Completion. Leaving the loop early cancels the request. */
  stream(prompt: Prompt, options?: GenerateOptions): AsyncGenerator<Delta, Completion, undefined>;
  /** Load a LoRA adapter (a PEFT directory or a GGUF LoRA file: a path, or an http(s) URL such as
   * a realm-web server's /adapters/{name}/, fetched with `options.headers`) for `{adapter: name}`. Requests
   * on different adapters and on none run together in one batch. */
  loadAdapter(name: string, source: string, options?: { headers?: Record<string, string> }): Promise<AdapterInfo>;
  /** Forget an adapter (rejects with "adapter_in_use" while requests use it). */
  unloadAdapter(name: string): Promise<void>;
  /** The loaded adapters' names. */
  adapters(): string[];
  stats(): RealmStats;
  /** Cancels what runs and frees the model. */
  close(): Promise<void>;
}

export const DEFAULT_MODEL: string;
/** $REALM_WEB_HOME, default ~/.cache/realm-web. */
export function realmHome(): string;
/** Where `realm-web pull` puts the default model. */
export function defaultModelDir(): string;

// -- a client for a realm-web server (src/client.mjs) ------------------------------------------

export interface ClientOptions {
  baseUrl?: string;
  apiKey?: string | null;
  model?: string | null;
  WebSocket?: unknown;
}

export interface ClientCompletion {
  text: string;
  finishReason: string | null;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  raw: unknown;
}

export type ClientOptionsGenerate = Omit<GenerateOptions, "raw" | "system"> & Record<string, unknown>;

export class RealmClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  apiKey: string | null;
  health(): Promise<unknown>;
  models(): Promise<string[]>;
  model(): Promise<string>;
  chat(prompt: string | ChatMessage[], options?: ClientOptionsGenerate): Promise<ClientCompletion>;
  complete(prompt: string, options?: ClientOptionsGenerate): Promise<ClientCompletion>;
  streamChat(prompt: string | ChatMessage[], options?: ClientOptionsGenerate & { signal?: AbortSignal }):
    AsyncGenerator<{ text: string; index: number; finishReason: string | null }, void, undefined>;
  websocket(): Promise<RealmSocket>;
}

export class RealmSocket {
  readonly opened: Promise<void>;
  call(fn: string, params?: Record<string, unknown>): Promise<unknown>;
  stream(prompt: string | ChatMessage[], options?: ClientOptionsGenerate):
    AsyncGenerator<{ text: string; index: number; tokenId: number; isFinal: boolean },
                   { text: string; finishReason: string | null; tokenIds: number[]; promptTokenIds: number[];
                     tokensGenerated: number; promptTokens: number; timeMs: number; cancelled: boolean }, undefined>;
  generate(prompt: string | ChatMessage[], options?: ClientOptionsGenerate): Promise<{ text: string; finishReason: string | null; tokenIds: number[] }>;
  health(): Promise<unknown>;
  metadata(): Promise<unknown>;
  close(): void;
}
