// The DBOS Transact baseline of apiary's paper benchmark.
//
//   node bench.js --port P --op checkout|increment --clients N --secs S [--rate R] [--seed K]
//                 [--shop-users N] [--counters N]
//
// The application database is the benchmark server's "postgres" database
// (the same tables apiary's functions use); DBOS keeps its workflow state in
// a system database "dbos_sys" on the same server, which it creates.
//
//   checkout   a workflow of three transactional steps: reserve stock,
//              create the order, charge the payment (the same statements
//              as apiary's shop_checkout, shop_create_order, shop_charge)
//   increment  a single-step workflow: one transaction
//
// Closed loop (no --rate): N concurrent callers, each awaiting its workflow
// and starting the next.  Open loop (--rate R): Poisson arrivals at R/s,
// at most N workflows in flight; latency counts from the arrival.  Prints
// the same line as the C driver:
//   ops=N retries=0 elapsed=S tput=OPS/S p50=MS p90=MS p99=MS
// after a line "warmup=N wal=BYTES/OP stmts=STATEMENTS/OP" (workflows run
// before the clock started, and the server's cost per workflow in the timed
// window), and exits non-zero on any failure.
'use strict';

const { DBOS } = require('@dbos-inc/dbos-sdk');
const { PostgresDataSource } = require('@dbos-inc/postgres-datasource');
const postgres = require('postgres'); // the datasource's client library

const opts = {
  port: 5432, op: 'checkout', clients: 8, secs: 5, rate: 0, seed: 1,
  'shop-users': 10000, counters: 10000,
};
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i].replace(/^--/, '');
  if (!(k in opts)) fail(`unknown option --${k}`);
  opts[k] = typeof opts[k] === 'number' ? Number(process.argv[i + 1]) : process.argv[i + 1];
}

function fail(msg) {
  console.error(`dbos bench: ${msg}`);
  process.exit(1);
}

// splitmix64 over BigInt would be slow; a 32-bit mulberry is plenty here
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ds = new PostgresDataSource('app', {
  host: '127.0.0.1', port: opts.port, username: 'postgres', database: 'postgres',
  max: Math.max(10, opts.clients), onnotice: () => {},
});

const reserve = ds.registerTransaction(async (uid) => {
  const sql = ds.client;
  await sql`SELECT 1 FROM items WHERE id IN (SELECT item FROM carts WHERE uid = ${uid}) ORDER BY id FOR UPDATE`;
  const r = await sql`WITH u AS (UPDATE items i SET stock = i.stock - c.qty FROM carts c
                        WHERE c.uid = ${uid} AND i.id = c.item RETURNING c.qty * i.price AS amount)
                      SELECT sum(amount)::text AS total FROM u`;
  return r[0].total;
}, { name: 'reserve' });

const createOrder = ds.registerTransaction(async (uid, total) => {
  const sql = ds.client;
  const o = await sql`INSERT INTO orders (uid, total) VALUES (${uid}, ${total}) RETURNING id::text`;
  await sql`INSERT INTO order_lines SELECT ${o[0].id}, c.item, c.qty, i.price
            FROM carts c JOIN items i ON i.id = c.item WHERE c.uid = ${uid}`;
  return o[0].id;
}, { name: 'createOrder' });

const charge = ds.registerTransaction(async (oid, amount) => {
  const r = await ds.client`INSERT INTO payments VALUES (${oid}, ${amount}) RETURNING oid::text`;
  return r[0].oid;
}, { name: 'charge' });

const checkout = DBOS.registerWorkflow(async (uid) => {
  const total = await reserve(uid);
  const oid = await createOrder(uid, total);
  return await charge(oid, total);
}, { name: 'checkout' });

const incrementStep = ds.registerTransaction(async (id) => {
  const r = await ds.client`UPDATE counters SET n = n + 1 WHERE id = ${id} RETURNING n::text`;
  if (r.length !== 1) throw new Error(`counter ${id} does not exist`);
  return r[0].n;
}, { name: 'increment' });

const increment = DBOS.registerWorkflow(async (id) => incrementStep(id), { name: 'incrementWorkflow' });

async function main() {
  DBOS.setConfig({
    name: 'apiary-paper',
    systemDatabaseUrl: `postgresql://postgres@127.0.0.1:${opts.port}/dbos_sys`,
    systemDatabasePoolSize: Math.max(20, 2 * opts.clients),
    logLevel: 'error',
    runAdminServer: false,
  });
  await DBOS.launch();

  const rand = rng(opts.seed);
  const shopHalf = Math.floor(opts['shop-users'] / 2);
  let op;
  if (opts.op === 'checkout') op = () => checkout(1 + Math.floor(rand() * shopHalf));
  else if (opts.op === 'increment') op = () => increment(1 + Math.floor(rand() * opts.counters));
  else fail(`unknown op ${opts.op}`);

  // warm-up: every caller runs two workflows first, so that the pools'
  // connections are open and the code is compiled before the clock starts,
  // as the C driver's connections are
  let warmup = 0;
  await Promise.all(Array.from({ length: opts.clients }, async () => {
    for (let i = 0; i < 2; i++) { await op(); warmup++; }
  }));
  // the cost of the timed window: WAL bytes and top-level statements
  const probe = postgres({ host: '127.0.0.1', port: opts.port, username: 'postgres', database: 'postgres', max: 1 });
  const cost = async () => (await probe`SELECT (pg_current_wal_insert_lsn() - '0/0')::text AS wal,
    (SELECT sum(calls) FROM pg_stat_statements)::text AS stmts`)[0];
  const c0 = await cost();

  const lat = [];
  const t0 = performance.now();
  const tEnd = t0 + opts.secs * 1000;
  if (opts.rate > 0) {
    // open loop: arrivals queue for one of the N slots
    const arrivals = [];
    let t = t0;
    for (;;) {
      t += (-Math.log(1 - rand()) / opts.rate) * 1000;
      if (t >= tEnd) break;
      arrivals.push(t);
    }
    let next = 0;
    const slot = async () => {
      while (next < arrivals.length) {
        const at = arrivals[next++];
        const wait = at - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        await op();
        lat.push(performance.now() - at);
      }
    };
    await Promise.all(Array.from({ length: opts.clients }, slot));
  } else {
    const loop = async () => {
      while (performance.now() < tEnd) {
        const b = performance.now();
        await op();
        lat.push(performance.now() - b);
      }
    };
    await Promise.all(Array.from({ length: opts.clients }, loop));
  }
  const elapsed = (performance.now() - t0) / 1000;
  const c1 = await cost();
  await probe.end();
  await DBOS.shutdown();

  if (lat.length === 0) fail('no workflow completed');
  lat.sort((a, b) => a - b);
  const pct = (q) => lat[Math.max(0, Math.ceil(q * lat.length) - 1)].toFixed(3);
  // the statement that reads the cost counts once in the window
  console.log(`warmup=${warmup} wal=${((c1.wal - c0.wal) / lat.length).toFixed(0)} ` +
    `stmts=${((c1.stmts - c0.stmts - 1) / lat.length).toFixed(1)}`);
  console.log(`ops=${lat.length} retries=0 elapsed=${elapsed.toFixed(3)} ` +
    `tput=${(lat.length / elapsed).toFixed(1)} p50=${pct(0.5)} p90=${pct(0.9)} p99=${pct(0.99)}`);
}

main().then(() => process.exit(0), (e) => fail(e && e.stack ? e.stack : String(e)));
