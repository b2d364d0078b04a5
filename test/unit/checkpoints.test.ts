import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type CheckpointPolicy, EmbeddedStore } from '../../src/store/embedded.js';

/**
 * The embedded store checkpoints by itself (PGlite runs PostgreSQL without its checkpointer): its WAL
 * folder stays bounded while a node writes, and its settings are those of EMBEDDED_SETTINGS.
 */
describe('embedded store: checkpoints and WAL', () => {
  const root = mkdtempSync(join(tmpdir(), 'herald-checkpoints-'));
  const stores: EmbeddedStore[] = [];
  after(async () => {
    for (const s of stores) await s.close();
    rmSync(root, { recursive: true, force: true });
  });
  const open = async (name: string, checkpoints: CheckpointPolicy, settings?: Record<string, string>) => {
    const store = await EmbeddedStore.open(join(root, name), 'herald', { checkpoints, settings });
    stores.push(store);
    return store;
  };
  const never: CheckpointPolicy = {
    walBytes: Number.MAX_SAFE_INTEGER,
    intervalMs: Number.MAX_SAFE_INTEGER,
    checkMs: 60_000,
  };
  /** Bytes of the files in pg_wal, as allocated on disk. */
  const walOnDisk = (name: string) => {
    const dir = join(root, name, 'pg', 'pg_wal');
    let bytes = 0;
    for (const f of readdirSync(dir)) {
      const st = statSync(join(dir, f));
      if (st.isFile()) bytes += st.blocks * 512;
    }
    return bytes;
  };
  /** About `mb` MB of WAL: rows of 1 KB of text that does not compress. */
  const writeWal = async (store: EmbeddedStore, mb: number) => {
    await store.query('CREATE TABLE IF NOT EXISTS wal_fill (id serial PRIMARY KEY, body text)');
    for (let i = 0; i < mb; i++) {
      await store.query(
        `INSERT INTO wal_fill (body)
           SELECT string_agg(md5(random()::text || g::text || s::text), '')
           FROM generate_series(1, 900) g, generate_series(1, 32) s GROUP BY g`,
      );
    }
  };

  it('runs with its own settings on top of PGlite’s', async () => {
    const store = await open('settings', never);
    const show = async (name: string) =>
      (await store.query<Record<string, string>>(`SHOW ${name}`)).rows[0]?.[name];
    assert.equal(await show('wal_init_zero'), 'off');
    assert.equal(await show('full_page_writes'), 'off');
    assert.equal(await show('max_wal_size'), '512MB');
    // One can be changed at open (bench/tools/wal-cost.mts compares them).
    const other = await open('settings-2', never, { wal_init_zero: 'on' });
    assert.equal(
      (await other.query<{ wal_init_zero: string }>('SHOW wal_init_zero')).rows[0]?.wal_init_zero,
      'on',
    );
  });

  it('checkpoints when the WAL written passes the policy’s size, so the WAL folder stays bounded', async () => {
    const writtenMb = 96;
    // Before: no checkpoint, the WAL folder holds all of it.
    const without = await open('unbounded', never);
    await writeWal(without, writtenMb);
    assert.equal(await without.checkpointIfDue(), false);
    assert.equal(without.checkpointStats.checkpoints, 0);
    assert.ok(walOnDisk('unbounded') > writtenMb * 1e6, `WAL without checkpoints: ${walOnDisk('unbounded')}`);

    const store = await open(
      'bounded',
      { walBytes: 8 * 2 ** 20, intervalMs: Number.MAX_SAFE_INTEGER, checkMs: 20 },
      {
        min_wal_size: '32MB',
      },
    );
    const turns: string[] = [];
    store.observe((op) => turns.push(op));
    const redo = async () =>
      (await store.query<{ lsn: string }>('SELECT (pg_control_checkpoint()).redo_lsn::text AS lsn')).rows[0]
        ?.lsn;
    const before = await redo();
    await writeWal(store, writtenMb);
    // Each INSERT above takes a few ms and the check runs every 20 ms: several checkpoints ran meanwhile.
    await sleep(100);
    assert.ok(store.checkpointStats.checkpoints >= 3, `checkpoints: ${store.checkpointStats.checkpoints}`);
    assert.equal(store.checkpointStats.failures, 0);
    assert.notEqual(await redo(), before);
    assert.ok(turns.includes('checkpoint'), 'a checkpoint is a turn of its own in the store metrics');
    assert.ok(turns.includes('herald_wal_since_checkpoint'));
    const bounded = walOnDisk('bounded');
    assert.ok(
      bounded < 64 * 1e6,
      `WAL folder with checkpoints: ${bounded} bytes for ${writtenMb} MB written`,
    );
    // Nothing is lost: every row is there after a restart.
    const rows = (await store.query<{ n: number }>('SELECT count(*)::int AS n FROM wal_fill')).rows[0]?.n;
    assert.equal(rows, writtenMb * 900);
    await store.close();
    const again = await open('bounded', never);
    assert.equal(
      (await again.query<{ n: number }>('SELECT count(*)::int AS n FROM wal_fill')).rows[0]?.n,
      rows,
    );
  });

  it('checkpoints a little WAL once the interval has passed, and an idle store not again', async () => {
    const store = await open('timed', { walBytes: Number.MAX_SAFE_INTEGER, intervalMs: 300, checkMs: 50 });
    await sleep(400);
    // Nothing written yet (opening writes a few hundred bytes at most): no checkpoint.
    assert.equal(store.checkpointStats.checkpoints, 0);
    await writeWal(store, 1);
    const deadline = Date.now() + 3000;
    while (store.checkpointStats.checkpoints === 0 && Date.now() < deadline) await sleep(25);
    assert.equal(store.checkpointStats.checkpoints, 1);
    // Idle: the interval passes again and again, nothing was written, no more checkpoints.
    await sleep(800);
    assert.equal(store.checkpointStats.checkpoints, 1);
    assert.ok(store.checkpointStats.walBytes < 65_536);
  });
});
