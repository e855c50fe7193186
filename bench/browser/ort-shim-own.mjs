// transformers.js's own onnxruntime-web (its package.json pin), with the logits_index adapter.
export * from "./node_modules/onnxruntime-web/dist/ort.webgpu.min.mjs";
import * as ort from "./node_modules/onnxruntime-web/dist/ort.webgpu.min.mjs";
import { adaptedSessions } from "./ort-adapter.mjs";
export const InferenceSession = adaptedSessions(ort);
export const ORT_DIST = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
