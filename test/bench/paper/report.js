// Turns the paper benchmark's runs into test/bench/results/paper.md and a
// gnuplot PNG.
//
//   node report.js RUNS.tsv OUT.md OUT.png "header line"
//
// RUNS.tsv: one run a line, "op system mode clients ops retries elapsed
// tput p50 p90 p99 wal stmts" (latencies in ms; mode closed or open; wal
// and stmts: server-wide WAL bytes and top-level statements per operation).
'use strict';

const fs = require('fs');
const { execFileSync } = require('child_process');

const [runsFile, mdFile, pngFile, header] = process.argv.slice(2);
const runs = fs.readFileSync(runsFile, 'utf8').trim().split('\n').filter(Boolean).map((l) => {
  const f = l.trim().split(/\s+/);
  return {
    op: f[0], sys: f[1], mode: f[2], clients: +f[3], ops: +f[4], retries: +f[5],
    elapsed: +f[6], tput: +f[7], p50: +f[8], p90: +f[9], p99: +f[10], wal: +f[11], stmts: +f[12],
  };
});
const closed = runs.filter((r) => r.mode === 'closed');
const open = runs.filter((r) => r.mode === 'open');
const opsOrder = [...new Set(closed.map((r) => r.op))];
const clientCounts = [...new Set(closed.map((r) => r.clients))].sort((a, b) => a - b);
const sysNames = { apiary: 'apiary', interactive: 'interactive', raw: 'raw pgbench', dbos: 'DBOS' };
const get = (op, sys, c) => closed.find((r) => r.op === op && r.sys === sys && r.clients === c);
const x = (v) => (v === undefined ? '—' : `${v >= 10 ? v.toFixed(1) : v.toFixed(2)}×`);
const ms = (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const ratio = (a, b) => (a && b ? a.tput / b.tput : undefined);
const workload = {
  browse: 'shop browse', cart: 'shop add to cart', checkout: 'shop checkout (3-step workflow)',
  search: 'hotel search', recommend: 'hotel recommend', reserve: 'hotel reserve',
  post: 'retwis post', follow: 'retwis follow', timeline: 'retwis timeline (fan-out workflow)',
  increment: 'increment',
};

const md = [];
md.push('# paper workloads: apiary against its peers', '', header, '');
md.push(`Every one of the ${runs.length} runs below passed its data checks: nothing lost or duplicated ` +
  '(orders = payments = completed checkouts, stock and bookings balance, posts, follows and counters add up, ' +
  'every apiary workflow done).', '');
md.push('## Ratios', '');
md.push('Throughput of apiary ÷ each baseline (completed operations/s, closed loop); ' +
  'the last column is DBOS\'s p50 latency ÷ apiary\'s (higher is better for apiary).', '');
md.push('| workload | clients | apiary ops/s | apiary p50 / p99 ms | ÷ interactive | ÷ raw pgbench | ÷ DBOS | DBOS p50 ÷ apiary p50 |');
md.push('|---|---:|---:|---:|---:|---:|---:|---:|');
for (const op of opsOrder) {
  for (const c of clientCounts) {
    const a = get(op, 'apiary', c);
    if (!a) continue;
    const d = get(op, 'dbos', c);
    md.push(`| ${workload[op] || op} | ${c} | ${a.tput.toFixed(0)} | ${ms(a.p50)} / ${ms(a.p99)} | ` +
      `${x(ratio(a, get(op, 'interactive', c)))} | ${x(ratio(a, get(op, 'raw', c)))} | ` +
      `${x(ratio(a, d))} | ${d ? x(d.p50 / a.p50) : '—'} |`);
  }
}
md.push('');

// the targets, at 8 clients
md.push('## Targets (8 clients)', '');
md.push('| target | measured | |', '|---|---:|---|');
const verdict = (ok) => (ok === undefined ? 'not measured' : ok ? 'met' : '**missed**');
{
  const a = get('checkout', 'apiary', 8);
  const d = get('checkout', 'dbos', 8);
  const r = ratio(a, d);
  md.push(`| checkout workflows/s ≥ 10× DBOS Transact | ${x(r)} (${a ? a.tput.toFixed(0) : '—'} vs ${d ? d.tput.toFixed(0) : '—'}/s) | ${verdict(r === undefined ? undefined : r >= 10)} |`);
  const l = a && d ? d.p50 / a.p50 : undefined;
  md.push(`| checkout p50 ≤ 1/10 of DBOS's | ${a ? ms(a.p50) : '—'} vs ${d ? ms(d.p50) : '—'} ms (${x(l)}) | ${verdict(l === undefined ? undefined : l >= 10)} |`);
}
for (const op of opsOrder) {
  const a = get(op, 'apiary', 8);
  const r = ratio(a, get(op, 'interactive', 8));
  md.push(`| ${workload[op] || op} ≥ 2× interactive | ${x(r)} | ${verdict(r === undefined ? undefined : r >= 2)} |`);
}
for (const op of opsOrder) {
  const a = get(op, 'apiary', 8);
  const r = ratio(a, get(op, 'raw', 8));
  md.push(`| ${workload[op] || op} within 2× of raw pgbench (≥ 0.5×) | ${x(r)} | ${verdict(r === undefined ? undefined : r >= 0.5)} |`);
}
md.push('');

if (open.length) {
  md.push('## Open loop', '');
  md.push('Poisson arrivals at a fixed rate, served by a pool of connections; latency counts from the arrival, so queueing shows.', '');
  md.push('| workload | system | offered /s | connections | completed /s | p50 ms | p90 ms | p99 ms |');
  md.push('|---|---|---:|---:|---:|---:|---:|---:|');
  for (const r of open) {
    const offered = (r.ops / r.elapsed).toFixed(0);
    md.push(`| ${r.op} | ${sysNames[r.sys]} | ${process.env.BENCH_RATE || '50'} | ${r.clients} | ${offered} | ${ms(r.p50)} | ${ms(r.p90)} | ${ms(r.p99)} |`);
  }
  md.push('');
}

md.push('## All runs (closed loop)', '');
md.push('WAL/op and statements/op are server-wide: WAL bytes inserted, and pg_stat_statements calls at top level, ' +
  'which count BEGIN and COMMIT, and every statement an executor runs for a task. DBOS\'s are measured over its timed window only.', '');
md.push('| workload | system | clients | ops | ops/s | p50 ms | p90 ms | p99 ms | retries | WAL bytes/op | statements/op |');
md.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const op of opsOrder) {
  for (const c of clientCounts) {
    for (const s of Object.keys(sysNames)) {
      const r = get(op, s, c);
      if (r) md.push(`| ${op} | ${sysNames[s]} | ${c} | ${r.ops} | ${r.tput.toFixed(0)} | ${ms(r.p50)} | ${ms(r.p90)} | ${ms(r.p99)} | ${r.retries} | ${r.wal} | ${r.stmts} |`);
    }
  }
}
md.push('', `Plot: [${require('path').basename(pngFile)}](${require('path').basename(pngFile)}).`, '');
fs.writeFileSync(mdFile, md.join('\n'));

// the plot: per workload, throughput and p99 against clients
const cols = Math.min(5, opsOrder.length);
const rowsOfOps = Math.ceil(opsOrder.length / cols);
const gp = [];
gp.push(`set terminal pngcairo size ${360 * cols},${560 * rowsOfOps} font "sans,9"`);
gp.push(`set output "${pngFile}"`);
const styles = { apiary: 'lc rgb "#d62728" lw 2 pt 7', interactive: 'lc rgb "#1f77b4" lw 1.5 pt 5',
  raw: 'lc rgb "#2ca02c" lw 1.5 pt 9', dbos: 'lc rgb "#9467bd" lw 1.5 pt 11' };
for (const op of opsOrder) {
  for (const s of Object.keys(sysNames)) {
    const pts = clientCounts.map((c) => get(op, s, c)).filter(Boolean);
    if (!pts.length) continue;
    gp.push(`$d_${op}_${s} << EOD`);
    for (const r of pts) gp.push(`${r.clients} ${r.tput} ${r.p99}`);
    gp.push('EOD');
  }
}
gp.push(`set multiplot layout ${2 * rowsOfOps},${cols} title "apiary vs baselines: throughput (top) and p99 latency (bottom) against clients"`);
gp.push('set logscale xy', `set xtics (${clientCounts.join(',')})`, `set xrange [${clientCounts[0] * 0.8}:${clientCounts[clientCounts.length - 1] * 1.25}]`);
gp.push('set key top left font "sans,7"', 'set grid');
for (let row = 0; row < rowsOfOps; row++) {
  const these = opsOrder.slice(row * cols, row * cols + cols);
  for (const [metric, col, label] of [['tput', 2, 'ops/s'], ['p99', 3, 'p99 ms']]) {
    for (let i = 0; i < cols; i++) {
      const op = these[i];
      if (!op) { gp.push('set multiplot next'); continue; }
      gp.push(`set title "${workload[op] || op}"`, `set ylabel "${label}"`, 'set xlabel "clients"');
      const plots = Object.keys(sysNames).filter((s) => clientCounts.some((c) => get(op, s, c)))
        .map((s) => `$d_${op}_${s} using 1:${col} with linespoints ${styles[s]} title "${sysNames[s]}"`);
      gp.push(`plot ${plots.join(', ')}`);
    }
    void metric;
  }
}
gp.push('unset multiplot');
execFileSync('gnuplot', [], { input: gp.join('\n') });
