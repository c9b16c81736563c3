// Reads the `JSON {...}` lines of agents-bench runs (several rounds; servers
// `ours`, `ours-disk`, `limit`, `baseline`) from stdin and prints medians,
// ratios and the targets of issues #11 and #12 as Markdown. A ratio is the
// median of the per-round ratios (each round runs every server once, so the
// two figures of a ratio were measured minutes apart, not tens of minutes).
//
// With `--compare a,b` (scripts/bench.sh's comparisons; repeatable, one
// table per pair) it prints the two servers' figures and a/b instead, and
// checks that `a` is within `--tolerance t` of `b` — throughput ≥ (1 − t)×,
// server CPU per operation and memory per connection ≤ (1 + t)× — on the
// benches of `--targets` (default: all).
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: { compare: { type: "string", multiple: true }, tolerance: { type: "string" }, targets: { type: "string" } },
});
const pairs = (opts.compare ?? []).map((p) => p.split(","));
if (pairs.some((p) => p.length !== 2)) throw new Error("--compare takes two labels: a,b");
const LABELS = pairs.length ? pairs.flat() : ["ours", "ours-disk", "limit", "baseline"];
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
const range = (xs, f = (x) => x.toFixed(2)) => {
  const s = xs.filter((x) => Number.isFinite(x));
  return s.length > 1 ? ` (${f(Math.min(...s))}–${f(Math.max(...s))})` : "";
};
const fmt = (v) =>
  v === undefined ? "–" : Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(2);
const fmtRatio = (v) => (v === undefined ? "–" : `${v.toFixed(2)}×`);
const rounds = Math.max(0, ...rows.map((r) => r.round ?? 1));

const keysOf = (byLabel) => {
  const keys = [];
  for (const label of LABELS)
    for (const r of byLabel.get(label)?.values() ?? [])
      for (const k of Object.keys(r)) if (typeof r[k] === "number" && k !== "round" && !keys.includes(k)) keys.push(k);
  return keys;
};
const printMedians = () => {
  console.log(`\n(medians of ${rounds} rounds)`);
  for (const [bench, byLabel] of runs)
    for (const [label, byRound] of byLabel) {
      const out = { bench, label, runs: byRound.size };
      for (const k of Object.keys([...byRound.values()][0]))
        if (typeof [...byRound.values()][0][k] === "number" && k !== "round")
          out[k] = Number(figure(bench, label, k)?.toPrecision(4));
      console.log(`MEDIAN ${JSON.stringify(out)}`);
    }
};

if (pairs.length) {
  for (const [a, b] of pairs) compare(a, b, Number(opts.tolerance ?? 0.05), opts.targets?.split(","));
  // Figures of one server only (the scrapes of /metrics, the fsync probe).
  const single = [...runs].filter(([, byLabel]) => !pairs.some(([a, b]) => byLabel.has(a) && byLabel.has(b)));
  if (single.length) {
    console.log(`\n## Figures of one server (medians of ${rounds} rounds, range)\n`);
    console.log("| bench | server | figure | median |\n|---|---|---|---:|");
    for (const [bench, byLabel] of single)
      for (const [label, byRound] of byLabel)
        for (const k of Object.keys([...byRound.values()][0]).filter((k) => k !== "round" && typeof [...byRound.values()][0][k] === "number"))
          console.log(`| ${bench} | ${label} | ${k} | ${fmt(figure(bench, label, k))}${range([...byRound.values()].map((r) => r[k]), fmt)} |`);
  }
  printMedians();
  process.exit(0);
}

console.log(`\n## All figures (medians of ${rounds} rounds; ratios: median of per-round ratios)\n`);
console.log(`| scenario | figure | ${LABELS.join(" | ")} | ours/limit | ours/baseline |`);
console.log(`|---|---|${LABELS.map(() => "---:").join("|")}|---:|---:|`);
for (const [bench, byLabel] of runs) {
  for (const k of keysOf(byLabel)) {
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
printMedians();

// Two servers of one run: every figure of both, a/b as the median of the
// per-round ratios (range over rounds), and the tolerance check on the
// figures that say how fast or how big: throughput (`*_per_s`, higher is
// better), server CPU per operation and memory per connection (lower is
// better). Latency percentiles are shown, not checked: on a shared
// machine their rounds range too widely to tell 5 % apart. A throughput
// ratio says something about the servers only in rounds where both kept
// their core busy (`server_cpu_pct` ≥ BUSY); otherwise the neighbours on
// the machine set it, so the check uses those rounds alone.
function compare(a, b, tolerance, targets) {
  const BUSY = 80;
  const higher = (k) => /_per_s$/.test(k) && !/^client_/.test(k);
  const lower = (k) => k === "server_us_per_op" || k === "server_us_per_connect" || k === "bytes_per_conn";
  const pct = `${Math.round(tolerance * 100)} %`;
  console.log(`\n## ${a} vs ${b} (medians of ${rounds} rounds; ${a}/${b}: median of per-round ratios, range)\n`);
  console.log(`| scenario | figure | ${a} | ${b} | ${a}/${b} | within ${pct}? |`);
  console.log("|---|---|---:|---:|---:|---|");
  const verdicts = [];
  for (const [bench, byLabel] of runs) {
    if (!byLabel.has(a) || !byLabel.has(b)) continue;
    for (const k of keysOf(byLabel)) {
      const rs = ratios(bench, k, a, b);
      const value = median(rs);
      let check = "";
      const checked = (higher(k) || lower(k)) && (!targets || targets.includes(bench));
      if (checked && value !== undefined && lower(k)) {
        const ok = value <= 1 + tolerance;
        check = ok ? "yes" : "**no**";
        verdicts.push({ bench, k, value, ok });
      } else if (checked && value !== undefined) {
        const ra = byLabel.get(a);
        const rb = byLabel.get(b);
        const busy = [...ra]
          .filter(([round, r]) => rb.has(round) && r.server_cpu_pct >= BUSY && rb.get(round).server_cpu_pct >= BUSY)
          .map(([round, r]) => r[k] / rb.get(round)[k]);
        const n = [...ra.keys()].filter((round) => rb.has(round)).length;
        if (busy.length === 0) {
          check = `– (server-bound in 0/${n} rounds)`;
        } else {
          const v = median(busy);
          const ok = v >= 1 - tolerance;
          check = `${ok ? "yes" : "**no**"}: ${fmtRatio(v)}${range(busy)} in the ${busy.length}/${n} server-bound rounds`;
          verdicts.push({ bench, k, value: v, ok });
        }
      }
      console.log(
        `| ${bench} | ${k} | ${fmt(figure(bench, a, k))} | ${fmt(figure(bench, b, k))} | ${fmtRatio(value)}${range(rs)} | ${check} |`,
      );
    }
  }
  const missed = verdicts.filter((v) => !v.ok);
  console.log(
    `\n${a} within ${pct} of ${b} (throughput ≥ ${(1 - tolerance).toFixed(2)}× in rounds where both servers kept their core ≥ ${BUSY} % busy; CPU per op and memory ≤ ${(1 + tolerance).toFixed(2)}×; medians of per-round ratios): ` +
      (verdicts.length === 0
        ? "nothing to check"
        : missed.length === 0
          ? `met on all ${verdicts.length} figures checked`
          : `**not met** on ${missed.map((v) => `${v.bench} ${v.k} ${fmtRatio(v.value)}`).join(", ")} (of ${verdicts.length} checked)`),
  );
}
