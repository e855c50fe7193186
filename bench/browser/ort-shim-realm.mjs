// The onnxruntime-web that realm-web's page uses (wasm/package-lock.json, served at /ort/),
// with the logits_index adapter.
export * from "/ort/ort.webgpu.min.mjs";
import * as ort from "/ort/ort.webgpu.min.mjs";
import { adaptedSessions } from "./ort-adapter.mjs";
export const InferenceSession = adaptedSessions(ort);
export const ORT_DIST = new URL("/ort/", import.meta.url).href;
