// The fp16 export's weights from the packed blocks (packed.mjs, as the tab expands them), written
// to a file: for bench/transformersjs_webgpu.mjs's model on a machine without Python's exporter.
//   node expand_half.mjs PACKED_MJS REALM_JSON BLOCKS OUT
import fs from "node:fs";
const [packedMjs, realmJson, blocksPath, out] = process.argv.slice(2);
const { PackedExpander } = await import(packedMjs);
const p = JSON.parse(fs.readFileSync(realmJson, "utf8")).variants.fp16.packed;
const blocks = fs.readFileSync(blocksPath);
const ex = new PackedExpander(blocks.length, { half: true, derived: p.derived, weightsBytes: p.weights_bytes });
for (let i = 0; i < blocks.length; i += 1 << 22) ex.push(blocks.subarray(i, i + (1 << 22)));
fs.writeFileSync(out, ex.finish());
