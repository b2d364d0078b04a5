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
import { PGlite } from '@electric-sql/pglite';

/** @type {{ dir: string, schema: string, templatePath: string | undefined }} */
const init = workerData;
const port = parentPort;
if (!port) throw new Error('pglite-worker must run in a worker thread');

const INT8 = 20;

async function open() {
  mkdirSync(init.dir, { recursive: true });
  const fresh = !existsSync(join(init.dir, 'PG_VERSION'));
  const options = { parsers: { [INT8]: (/** @type {string} */ v) => Number(v) } };
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
  await db.exec(`CREATE SCHEMA IF NOT EXISTS "${init.schema}"; SET search_path TO "${init.schema}", public;`);
  port.postMessage({ id: 0, ready: true, ms: Date.now() - started });
} catch (err) {
  port.postMessage({ id: 0, fatal: /** @type {Error} */ (err).message });
  throw err;
}

port.on(
  'message',
  async (/** @type {{ id: number, op: string, sql?: string, params?: unknown[] }} */ req) => {
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
      const res = await db.query(req.sql ?? '', req.params ?? []);
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
