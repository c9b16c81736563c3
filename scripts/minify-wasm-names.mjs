// Applies wasm-opt's `--minify-imports-and-exports-and-modules` renaming (the JSON map
// it prints) to wasm-bindgen's JavaScript glue, so the long hashed import
// and export names (`__wbg_send_cd51063ca1be4d0f`, `agentclient_new`, …)
// become one or two letters in both files.
//
// usage: node minify-wasm-names.mjs <map.json> <glue.js> <module.wasm>
// (rewrites glue.js, then checks it against the imports the wasm declares)
import { readFileSync, writeFileSync } from "node:fs";

const [mapFile, glueFile, wasmFile] = process.argv.slice(2);
const text = readFileSync(mapFile, "utf8");
// wasm-opt may print other lines around the map: take the JSON object.
const map = JSON.parse(text.slice(text.indexOf("{"), text.lastIndexOf("}") + 1));
let glue = readFileSync(glueFile, "utf8");

function rename(pairs, pattern, write) {
  const names = new Map(pairs);
  let count = 0;
  glue = glue.replace(pattern, (whole, name, rest) => {
    if (!names.has(name)) return whole;
    count++;
    return write(names.get(name), rest);
  });
  return count;
}

// Imports are the keys of the object handed to WebAssembly.instantiate:
// `__wbg_send_…: function(`; exports are read as `wasm.name`.
const imports = rename(
  map.imports.map(([, from, to]) => [from, to]),
  /\b([A-Za-z_$][\w$]*)(\s*:\s*function\b)/g,
  (to, rest) => to + rest,
);
if (imports !== map.imports.length) {
  throw new Error(`renamed ${imports} of ${map.imports.length} imports in ${glueFile}`);
}
rename(map.exports, /\bwasm\.([A-Za-z_$][\w$]*)\b/g, (to) => `wasm.${to}`);
const left = map.exports.filter(([from]) => new RegExp(`\\bwasm\\.${from}\\b`).test(glue));
if (left.length) {
  throw new Error(`exports left unrenamed in ${glueFile}: ${left.map(([f]) => f).join(", ")}`);
}
// `-and-modules` also renames the import module ("./agents_client_bg.js").
const declared = WebAssembly.Module.imports(new WebAssembly.Module(readFileSync(wasmFile)));
const modules = new Set(declared.map((i) => i.module));
const [from] = new Set(map.imports.map(([module]) => module));
if (modules.size !== 1 || !glue.includes(JSON.stringify(from))) {
  throw new Error(`expected one import module, "${from}" in the glue; wasm has ${[...modules]}`);
}
const [to] = modules;
glue = glue.replaceAll(JSON.stringify(from), JSON.stringify(to));
for (const { name } of declared) {
  if (!new RegExp(`[{,\\s]${name.replace(/\$/g, "\\$")}\\s*:\\s*function\\b`).test(glue)) {
    throw new Error(`the glue provides no import "${name}"`);
  }
}
writeFileSync(glueFile, glue);
