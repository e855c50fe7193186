"""For bench/webgpu_capture.mjs: the decoder graph with GroupQueryAttention's seqlens_k and
total_seq_len as int32 graph inputs instead of computed from attention_mask by ops that
onnxruntime-web places on the CPU (which a captured WebGPU graph cannot contain).

    python3 bench/webgpu_capture_graph.py model_fp16.onnx direct.onnx
"""
import sys, onnx
from onnx import helper, TensorProto
src, dst = sys.argv[1], sys.argv[2]
m = onnx.load(src)
g = m.graph
keep = [n for n in g.node if not ({"seqlens_k", "total_seq_len"} & set(n.output))]
# drop the now-dead producers (anything whose outputs nobody reads), repeatedly
while True:
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    new = [n for n in keep if any(o in used for o in n.output)]
    if len(new) == len(keep):
        break
    keep = new
del g.node[:]
g.node.extend(keep)
g.input.append(helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch_size"]))
g.input.append(helper.make_tensor_value_info("total_seq_len", TensorProto.INT32, []))
used = {i for n in g.node for i in n.input}
for inp in list(g.input):
    if inp.name not in used and inp.name != "attention_mask":
        print("unused input", inp.name)
onnx.save(m, dst)
print("nodes", len(g.node), "inputs", [i.name for i in g.input][:3], "...", [i.name for i in g.input][-3:])
