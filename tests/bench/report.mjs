// Reads `JSON {...}` lines of agents-bench runs (several rounds, both
// servers) from stdin and prints medians and our/baseline ratios.
import { createInterface } from "node:readline";

const rows = [];
for await (const line of createInterface({ input: process.stdin })) {
  if (line.startsWith("JSON ")) rows.push(JSON.parse(line.slice(5)));
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const groups = new Map();
for (const r of rows) {
  const key = `${r.bench}\u0000${r.label}`;
  if (!groups.has(key)) groups.set(key, []);
  groups.get(key).push(r);
}
const med = new Map();
for (const [key, rs] of groups) {
  const out = {};
  for (const k of Object.keys(rs[0])) if (typeof rs[0][k] === "number") out[k] = median(rs.map((r) => r[k]));
  out.runs = rs.length;
  med.set(key, out);
}
const benches = [...new Set(rows.map((r) => r.bench))];
const fmt = (v) => (v === undefined ? "-" : v >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(2));
console.log("\n| bench | figure | ours | baseline | ours/baseline |\n|---|---|---:|---:|---:|");
for (const b of benches) {
  const ours = med.get(`${b}\u0000ours`) ?? {};
  const base = med.get(`${b}\u0000baseline`) ?? {};
  for (const k of Object.keys(ours)) {
    if (k === "runs") continue;
    const ratio = base[k] ? (ours[k] / base[k]).toFixed(2) : "-";
    console.log(`| ${b} | ${k} | ${fmt(ours[k])} | ${fmt(base[k])} | ${ratio} |`);
  }
}
console.log(`\n(medians of ${Math.max(...[...med.values()].map((m) => m.runs))} runs)`);
for (const [key, m] of med) console.log(`MEDIAN ${JSON.stringify({ bench: key.split("\u0000")[0], label: key.split("\u0000")[1], ...m })}`);
