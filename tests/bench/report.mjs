// Reads the `JSON {...}` lines of agents-bench runs (several rounds; servers
// `ours`, `ours-disk`, `limit`, `baseline`) from stdin and prints medians,
// ratios and the targets of issues #11 and #12 as Markdown. A ratio is the
// median of the per-round ratios (each round runs every server once, so the
// two figures of a ratio were measured minutes apart, not tens of minutes).
import { createInterface } from "node:readline";

const LABELS = ["ours", "ours-disk", "limit", "baseline"];
const rows = [];
for await (const line of createInterface({ input: process.stdin })) {
  if (line.startsWith("JSON ")) rows.push(JSON.parse(line.slice(5)));
}
const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return undefined;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
// bench -> label -> round -> row
const runs = new Map();
for (const r of rows) {
  if (!runs.has(r.bench)) runs.set(r.bench, new Map());
  const byLabel = runs.get(r.bench);
  if (!byLabel.has(r.label)) byLabel.set(r.label, new Map());
  byLabel.get(r.label).set(r.round ?? byLabel.get(r.label).size + 1, r);
}
const figure = (bench, label, key) =>
  median([...(runs.get(bench)?.get(label)?.values() ?? [])].map((r) => r[key]));
// Per-round ratios a/b of `key`.
const ratios = (bench, key, a, b) => {
  const ra = runs.get(bench)?.get(a);
  const rb = runs.get(bench)?.get(b);
  if (!ra || !rb) return [];
  return [...ra].filter(([round]) => rb.has(round)).map(([round, r]) => r[key] / rb.get(round)[key]);
};
const ratio = (bench, key, a, b) => median(ratios(bench, key, a, b));
const range = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x));
  return s.length > 1 ? ` (${Math.min(...s).toFixed(2)}–${Math.max(...s).toFixed(2)})` : "";
};
const fmt = (v) =>
  v === undefined ? "–" : Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(2);
const fmtRatio = (v) => (v === undefined ? "–" : `${v.toFixed(2)}×`);
const rounds = Math.max(0, ...rows.map((r) => r.round ?? 1));

console.log(`\n## All figures (medians of ${rounds} rounds; ratios: median of per-round ratios)\n`);
console.log(`| scenario | figure | ${LABELS.join(" | ")} | ours/limit | ours/baseline |`);
console.log(`|---|---|${LABELS.map(() => "---:").join("|")}|---:|---:|`);
for (const [bench, byLabel] of runs) {
  const keys = [];
  for (const label of LABELS)
    for (const r of byLabel.get(label)?.values() ?? [])
      for (const k of Object.keys(r)) if (typeof r[k] === "number" && k !== "round" && !keys.includes(k)) keys.push(k);
  for (const k of keys) {
    const cells = LABELS.map((l) => fmt(figure(bench, l, k)));
    console.log(
      `| ${bench} | ${k} | ${cells.join(" | ")} | ${fmtRatio(ratio(bench, k, "ours", "limit"))} | ${fmtRatio(ratio(bench, k, "ours", "baseline"))} |`,
    );
  }
}

// The targets of issues #12 (speed and memory) and #11 (storage).
const TARGETS = [
  { what: "echo, 50 sockets on one instance ≥ 0.85× limit", bench: "echo-shared", key: "rt_per_s", min: 0.85 },
  { what: "echo, one instance per socket ≥ 0.85× limit", bench: "echo-per-conn", key: "rt_per_s", min: 0.85 },
  { what: "pipelined echo, 16 in flight ≥ 0.8× limit", bench: "echo-pipelined", key: "rt_per_s", min: 0.8 },
  { what: "broadcast to 200 sockets, one at a time ≥ 0.9× limit", bench: "broadcast-200", key: "deliveries_per_s", min: 0.9 },
  { what: "burst: 100 broadcasts in one write, 200 sockets ≥ 0.5× limit", bench: "broadcast-burst", key: "deliveries_per_s", min: 0.5 },
  { what: "connects (+ identity frame) ≥ 0.85× limit", bench: "connect", key: "connects_per_s", min: 0.85 },
  { what: "idle memory ≤ 8 KiB per connection (10,000 held)", bench: "idle-memory", key: "bytes_per_conn", label: "ours", max: 8192 },
  { what: "rpc: server CPU per call ≤ 40 µs (in memory)", bench: "rpc", key: "server_us_per_op", label: "ours", max: 40 },
  { what: "rpc: data dir calls/s ≥ 0.8× in memory", bench: "rpc", key: "calls_per_s", a: "ours-disk", b: "ours", min: 0.8 },
  { what: "neighbour: echo p99 ≤ 2× without (data dir)", bench: "neighbour", key: "p99_ratio", label: "ours-disk", max: 2 },
  { what: "neighbour: echo p99 ≤ 2× without (in memory)", bench: "neighbour", key: "p99_ratio", label: "ours", max: 2 },
];
console.log(`\n## Targets\n`);
console.log("| target | result: median (range over rounds) | server CPU µs/op: measured · reference (reference/measured) | met? |\n|---|---:|---|---|");
for (const t of TARGETS) {
  let value;
  let shown;
  if (t.label) {
    value = figure(t.bench, t.label, t.key);
    const all = [...(runs.get(t.bench)?.get(t.label)?.values() ?? [])].map((r) => r[t.key]);
    shown = `${fmt(value)}${range(all)} (${t.key}, ${t.label})`;
  } else {
    const rs = ratios(t.bench, t.key, t.a ?? "ours", t.b ?? "limit");
    value = median(rs);
    shown = `${fmtRatio(value)}${range(rs)} (${t.key})`;
  }
  const ours = figure(t.bench, t.a ?? t.label ?? "ours", "server_us_per_op");
  const limit = figure(t.bench, t.b ?? "limit", "server_us_per_op");
  const eff = ratio(t.bench, "server_us_per_op", t.b ?? "limit", t.a ?? t.label ?? "ours");
  const cpu = ours === undefined ? "–" : `${fmt(ours)} · ${fmt(limit)} (${fmtRatio(eff)})`;
  const met = value === undefined ? "–" : (t.min !== undefined ? value >= t.min : value <= t.max) ? "met" : "**not met**";
  console.log(`| ${t.what} | ${shown} | ${cpu} | ${met} |`);
}
console.log(`\n(medians of ${rounds} rounds)`);
for (const [bench, byLabel] of runs)
  for (const [label, byRound] of byLabel) {
    const out = { bench, label, runs: byRound.size };
    for (const k of Object.keys([...byRound.values()][0]))
      if (typeof [...byRound.values()][0][k] === "number" && k !== "round") out[k] = figure(bench, label, k);
    console.log(`MEDIAN ${JSON.stringify(out)}`);
  }
