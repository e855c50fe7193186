"""A decode-only variant of an export for onnxruntime-web's WebGPU graph capture (an experiment,
bench/webgpu_capture.sh): seqlens_k / total_seq_len as int32 inputs (the mask arithmetic and
Shape/Gather that onnxruntime places on the CPU go), no logits_index (logits of the one fed
position), lm_head as a plain MatMul (FusedMatMul with transB falls back to the CPU on WebGPU).
With these, Chromium's verbose log shows every node on WebGpuExecutionProvider and no Memcpy.
    python tools/webgpu_capture_variant.py SRC.onnx DST.onnx   (external weights stay external)"""
import sys
import numpy as np
import onnx
from onnx import helper, TensorProto, numpy_helper
src, dst = sys.argv[1], sys.argv[2]
m = onnx.load(src, load_external_data=False)
g = m.graph
drop = {"attention_mask", "logits_index"}
# walk back from seqlens_k / total_seq_len: the nodes that make them from the mask
prod = {o: n for n in g.node for o in n.output}
def back(t):
    n = prod.get(t)
    if n is None or n.name in kill2: return
    kill2.add(n.name)
    for i in n.input: back(i)
kill2 = set()
back("seqlens_k"); back("total_seq_len")
gnd = next(n for n in g.node if n.op_type == "GatherND")
unsq = prod[gnd.input[1]]
kill2 |= {gnd.name, unsq.name}
hidden = gnd.input[0]
head = next(n for n in g.node if n.input and n.input[0] == gnd.output[0])
new_nodes = []
for n in g.node:
    if n.name in kill2: continue
    if n is head:
        if n.op_type == "FusedMatMul":  # x @ E^T on the CPU in WebGPU: a MatMul over E^T instead
            E = next(numpy_helper.to_array(t) for t in g.initializer if t.name == n.input[1])
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(E.T), "lm_head_T"))
            n = helper.make_node("MatMul", [hidden, "lm_head_T"], list(n.output), name="lm_head")
        else:
            n.input[0] = hidden
    new_nodes.append(n)
del g.node[:]
g.node.extend(new_nodes)
ins = [i for i in g.input if i.name not in drop]
del g.input[:]
g.input.extend(ins)
g.input.append(helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]))
g.input.append(helper.make_tensor_value_info("total_seq_len", TensorProto.INT32, []))
onnx.save(m, dst)
print("removed", sorted(kill2))
