// @ts-check
/**
 * Runs PGlite (PostgreSQL compiled to WebAssembly) in a worker thread so that SQL never blocks the
 * event loop that serves sockets. The main thread talks to it with small request/response messages
 * (see WorkerRequest / WorkerResponse in embedded.ts). Plain JavaScript so that the same file runs
 * under tsx (development, tests) and from dist (production).
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { PGlite, parse as pgParse, protocol } from '@electric-sql/pglite';

/** @type {{ dir: string, schema: string, templatePath: string | undefined, settings: Record<string, string> }} */
const init = workerData;
const port = parentPort;
if (!port) throw new Error('pglite-worker must run in a worker thread');

const INT8 = 20;

async function open() {
  mkdirSync(init.dir, { recursive: true });
  const fresh = !existsSync(join(init.dir, 'PG_VERSION'));
  const options = {
    parsers: { [INT8]: (/** @type {string} */ v) => Number(v) },
    // PGlite's own start parameters, then the store's settings (see EMBEDDED_SETTINGS in embedded.ts).
    startParams: [
      ...PGlite.defaultStartParams,
      ...Object.entries(init.settings).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
    ],
  };
  if (fresh && init.templatePath && existsSync(init.templatePath)) {
    // A ready-made empty cluster: about 5x faster than running initdb again.
    const blob = new Blob([readFileSync(init.templatePath)]);
    return PGlite.create(init.dir, { ...options, loadDataDir: blob });
  }
  const db = await PGlite.create(init.dir, options);
  if (fresh && init.templatePath) {
    try {
      const dump = await db.dumpDataDir('none');
      const tmp = `${init.templatePath}.${process.pid}.tmp`;
      writeFileSync(tmp, Buffer.from(await dump.arrayBuffer()));
      renameSync(tmp, init.templatePath);
    } catch {
      // The template is only a speed-up; failing to write it changes nothing else.
    }
  }
  return db;
}

const started = Date.now();
/** @type {PGlite} */
let db;
try {
  db = await open();
  await db.exec(
    `CREATE SCHEMA IF NOT EXISTS "${init.schema}"; SET search_path TO "${init.schema}", public; SET plan_cache_mode TO force_custom_plan;`,
  );
  port.postMessage({ id: 0, ready: true, ms: Date.now() - started });
} catch (err) {
  port.postMessage({ id: 0, fatal: /** @type {Error} */ (err).message });
  throw err;
}

/**
 * Statements prepared on this connection (see `statement()` in types.ts): name -> parameter type OIDs.
 * PGlite's `query` parses its text every time, and parsing a large statement costs WebAssembly
 * PostgreSQL more than running it: the payment batch write, ~4 ms of a 5.5 ms batch of one event
 * (`bench/tools/pglite-cost.mts`). Prepared once, run with Bind/Execute; planned at every run
 * (`plan_cache_mode`, set at start: PGlite keeps no statistics, and a plan cached for one batch's sizes
 * could be a bad one for the next).
 */
const prepared = new Map();
const { serialize } = protocol;
const quiet = { syncToFs: false };

const encoder = new TextEncoder();
/** The Bind message's buffer, reused (see bindMessage); grown when a message needs more. */
let scratch = new Uint8Array(64 * 1024);
let scratchView = new DataView(scratch.buffer);

/**
 * The Bind message of a prepared statement with text parameters, written into one reused buffer.
 * pg-protocol's serializer (PGlite's `serialize.bind`) grows a fresh ArrayBuffer by half at a time for
 * every message and copies it twice more: for the payment batch write (tens of KB of JSON parameters,
 * ~100 statements a second) that was megabytes of short-lived external memory a second, and V8 answers
 * external memory with full collections (this worker ran a mark-compact every ~0.5 s under
 * `npm run bench -- payments`, each pausing the store). The buffer is read synchronously by
 * `execProtocol` before it returns, so reusing it is safe (statements run one at a time).
 * @param {string} name @param {(string | null)[]} values
 */
function bindMessage(name, values) {
  // Worst case UTF-8: 3 bytes per UTF-16 code unit.
  let max = 16 + name.length * 3 + values.length * 4;
  for (const v of values) if (v !== null) max += v.length * 3;
  if (scratch.length < max) {
    scratch = new Uint8Array(Math.max(max, scratch.length * 2));
    scratchView = new DataView(scratch.buffer);
  }
  const b = scratch;
  const view = scratchView;
  let o = 5; // 'B' and the length, written last
  b[o++] = 0; // unnamed portal
  o += encoder.encodeInto(name, b.subarray(o)).written;
  b[o++] = 0;
  view.setInt16(o, 0); // no parameter format codes: all text
  o += 2;
  view.setInt16(o, values.length);
  o += 2;
  for (const v of values) {
    if (v === null) {
      view.setInt32(o, -1);
      o += 4;
    } else {
      const n = encoder.encodeInto(v, b.subarray(o + 4)).written;
      view.setInt32(o, n);
      o += 4 + n;
    }
  }
  view.setInt16(o, 0); // no result format codes: all text
  o += 2;
  b[0] = 0x42; // 'B'
  view.setInt32(1, o - 1);
  return b.subarray(0, o);
}

/**
 * Runs a named statement with the extended protocol, as PGlite's `query` does for an unnamed one
 * (Parse once, then Bind, Describe, Execute and Sync), and parses the rows with the same type parsers.
 * @param {string} name @param {string} text @param {unknown[]} params
 */
async function runNamed(name, text, params) {
  return db.runExclusive(async () => {
    let types = prepared.get(name);
    if (!types) {
      /** @type {{ name: string }[]} */
      let described = [];
      try {
        await db.execProtocol(serialize.parse({ name, text, types: [] }), quiet);
        described = (await db.execProtocol(serialize.describe({ type: 'S', name }), quiet)).messages;
      } finally {
        await db.execProtocol(serialize.sync(), { ...quiet, throwOnError: false });
      }
      const pd = /** @type {{ dataTypeIDs?: number[] } | undefined} */ (
        described.find((m) => m.name === 'parameterDescription')
      );
      types = pd?.dataTypeIDs ?? [];
      prepared.set(name, types);
    }
    const oids = /** @type {number[]} */ (types);
    const values = params.map((v, i) => {
      if (v === null || v === undefined) return null;
      const s = db.serializers[/** @type {number} */ (oids[i])];
      return s ? s(v) : String(v);
    });
    /** @type {Parameters<typeof pgParse.parseResults>[0]} */
    const messages = [];
    try {
      const bind = values.every((v) => v === null || typeof v === 'string')
        ? bindMessage(name, /** @type {(string | null)[]} */ (values))
        : serialize.bind({ statement: name, values });
      messages.push(...(await db.execProtocol(bind, quiet)).messages);
      messages.push(...(await db.execProtocol(serialize.describe({ type: 'P' }), quiet)).messages);
      messages.push(...(await db.execProtocol(serialize.execute({}), quiet)).messages);
    } finally {
      messages.push(...(await db.execProtocol(serialize.sync(), { ...quiet, throwOnError: false })).messages);
    }
    if (!db.isInTransaction()) await db.syncToFs();
    const result = pgParse.parseResults(messages, db.parsers)[0];
    if (!result) throw new Error(`statement ${name} gave no result`);
    return result;
  });
}

port.on(
  'message',
  async (/** @type {{ id: number, op: string, sql?: string, params?: unknown[], name?: string }} */ req) => {
    try {
      if (req.op === 'close') {
        await db.close();
        port.postMessage({ id: req.id, ok: true, rows: [], rowCount: 0 });
        port.close();
        return;
      }
      if (req.op === 'exec') {
        await db.exec(req.sql ?? '');
        port.postMessage({ id: req.id, ok: true, rows: [], rowCount: 0 });
        return;
      }
      const res = req.name
        ? await runNamed(req.name, req.sql ?? '', req.params ?? [])
        : await db.query(req.sql ?? '', req.params ?? []);
      port.postMessage({
        id: req.id,
        ok: true,
        rows: res.rows,
        rowCount: res.affectedRows ?? res.rows.length,
      });
    } catch (err) {
      const e = /** @type {Error & { code?: string, detail?: string }} */ (err);
      port.postMessage({ id: req.id, ok: false, message: e.message, code: e.code, detail: e.detail });
    }
  },
);
