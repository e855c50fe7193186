// navigator.gpu in Node from dawn.node (npm `webgpu`), with the fixes ../shared/webgpu/README.md lists:
// f16 on NVIDIA Vulkan (DAWN_OPTS overrides the toggles) and writeBuffer of SharedArrayBuffer views
// copied first (onnxruntime-web's heap is one). Shared by bench/webgpu_node.mjs and
// bench/webgpu_capture_decode.mjs; returns the GPU object.
export async function installNavigatorGpu() {
  const { create, globals } = await import("webgpu");
  Object.assign(globalThis, globals);
  const gpu = create((process.env.DAWN_OPTS ?? "enable-dawn-features=vulkan_enable_f16_on_nvidia").split(" ").filter(Boolean));
  const patchQueue = (proto) => {
    if (!proto || proto.__sabPatched) return;
    const wb = proto.writeBuffer;
    proto.writeBuffer = function (...a) {
      const d = a[2];
      if (d instanceof SharedArrayBuffer) a[2] = new Uint8Array(d).slice().buffer;
      else if (ArrayBuffer.isView(d) && d.buffer instanceof SharedArrayBuffer) a[2] = d.slice();
      return wb.apply(this, a);
    };
    proto.__sabPatched = true;
  };
  patchQueue(globalThis.GPUQueue?.prototype);
  const reqAdapter = gpu.requestAdapter.bind(gpu);
  gpu.requestAdapter = async (o) => {
    const ad = await reqAdapter(o);
    if (ad) { const rd = ad.requestDevice.bind(ad); ad.requestDevice = async (d) => { const dev = await rd(d); patchQueue(Object.getPrototypeOf(dev.queue)); return dev; }; }
    return ad;
  };
  Object.defineProperty(globalThis, "navigator", { value: { gpu }, configurable: true, writable: true });
  return gpu;
}
