// Applies wasm-opt's `--minify-imports-and-exports-and-modules` renaming (the
// JSON map it prints) to wasm-bindgen's `--target bundler` glue
// (`<name>_bg.js`), so the long hashed import and export names
// (`__wbg_send_cd51063ca1be4d0f`, `core_on_`, …) become one or two letters
// in both files. Also exports, from the glue, what the loader needs:
// `imports` (the import object, its functions under their new names) and
// `start()` (which calls the module's `__wbindgen_start`, if it has one).
//
// usage: node minify-wasm-names.mjs <map.json> <glue_bg.js> <module.wasm>
// (rewrites the glue, then checks it against the imports the wasm declares)
import { readFileSync, writeFileSync } from "node:fs";

const [mapFile, glueFile, wasmFile] = process.argv.slice(2);
const text = readFileSync(mapFile, "utf8");
// wasm-opt may print other lines around the map: take the JSON object.
const map = JSON.parse(text.slice(text.indexOf("{"), text.lastIndexOf("}") + 1));
let glue = readFileSync(glueFile, "utf8");

function rename(pairs, pattern, write) {
  const names = new Map(pairs);
  let count = 0;
  glue = glue.replace(pattern, (whole, name) => {
    if (!names.has(name)) return whole;
    count++;
    return write(names.get(name));
  });
  return count;
}

// Replaces the block of lines from the one starting with `head` to the
// next line that is exactly `}` (a top-level function or statement).
function replaceBlock(head, by) {
  const at = glue.indexOf(`\n${head}`);
  const end = glue.indexOf("\n}\n", at);
  if (at < 0 || end < 0) throw new Error(`no "${head}" block in ${glueFile}`);
  glue = glue.slice(0, at + 1) + by + glue.slice(end + 3);
}
// Strings go to the module as `TextEncoder.encode` gives them (the glue's
// own path when there is no `realloc`): its ASCII loop and `encodeInto`
// path (with a fallback for browsers that lack `encodeInto`) are 400 bytes
// of glue for a speed-up on long strings, which the client never passes.
replaceBlock(
  "function passStringToWasm0(",
  `function passStringToWasm0(arg, malloc) {
    const buf = cachedTextEncoder.encode(arg);
    const ptr = malloc(buf.length, 1) >>> 0;
    getUint8ArrayMemory0().set(buf, ptr);
    WASM_VECTOR_LEN = buf.length;
    return ptr;
}
`,
);
replaceBlock("if (!('encodeInto' in cachedTextEncoder))", "");
glue = glue.replaceAll(", wasm.__wbindgen_malloc, wasm.__wbindgen_realloc)", ", wasm.__wbindgen_malloc)");

// Exports are read as `wasm.name`.
rename(map.exports, /\bwasm\.([A-Za-z_$][\w$]*)\b/g, (to) => `wasm.${to}`);
const left = map.exports.filter(([from]) => new RegExp(`\\bwasm\\.${from}\\b`).test(glue));
if (left.length) {
  throw new Error(`exports left unrenamed in ${glueFile}: ${left.map(([f]) => f).join(", ")}`);
}

// Imports are the glue's exported functions: each becomes a method, under
// its new name, of one `imports` object (which the loader hands to
// `WebAssembly.instantiate`): a bundler would otherwise build a namespace
// object with a getter per function. Each function runs from its
// `export function` line to the first line that starts with `}`.
const renamed = new Map(map.imports.map(([, from, to]) => [from, to]));
const methods = [];
const rest = [];
const lines = glue.split("\n");
for (let i = 0; i < lines.length; i++) {
  const head = /^export function ([A-Za-z_$][\w$]*)\((.*)$/.exec(lines[i]);
  if (!head || !renamed.has(head[1])) {
    rest.push(lines[i]);
    continue;
  }
  const body = [`${JSON.stringify(renamed.get(head[1]))}(${head[2]}`];
  while (!lines[i].startsWith("}")) body.push(lines[++i]);
  methods.push(body.join("\n"));
}
if (methods.length !== map.imports.length) {
  throw new Error(`found ${methods.length} of ${map.imports.length} imports in ${glueFile}`);
}
glue = rest.join("\n");
// (Only a module with an externref table has a start function, which fills
// the table's first slots.)
const start = map.exports.find(([from]) => from === "__wbindgen_start");
const declared = WebAssembly.Module.imports(new WebAssembly.Module(readFileSync(wasmFile)));
const modules = new Set(declared.map((i) => i.module));
if (modules.size !== 1) throw new Error(`expected one import module, the wasm has ${[...modules]}`);
const provided = new Set(map.imports.map(([, , to]) => to));
for (const { name } of declared) {
  if (!provided.has(name)) throw new Error(`the glue provides no import "${name}"`);
}
glue += `\nexport const imports = { ${JSON.stringify([...modules][0])}: {\n${methods.join(",\n")}\n} };\n`;
glue += `export function start() {\n    ${start ? `wasm.${start[1]}();` : ""}\n}\n`;
writeFileSync(glueFile, glue);
