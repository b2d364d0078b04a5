import { randomUUID } from 'node:crypto';
import { isStorableText } from '../input.js';
import type { Logger } from '../logger.js';
import { type Queryable, SqlError, type Store } from '../store/index.js';

/** A machine's presence as published to `devices:<merchantId>` and listed by GET /devices. */
export interface MachinePresenceInfo {
  appId: string;
  deviceId: string;
  merchantId: string;
  online: boolean;
  lastSeenAt: string;
  connectedAt: string | null;
  disconnectedAt: string | null;
}

export interface PresenceOptions {
  store: Store;
  logger: Logger;
  /** How often this node confirms its machines in the store; unconfirmed for 3 intervals is offline. */
  intervalMs: number;
  /** Publishes an online/offline change. */
  publish: (change: MachinePresenceInfo) => void;
}

interface LocalMachine {
  appId: string;
  deviceId: string;
  merchantId: string;
  /** Socket ids of this machine on this node. */
  sockets: Set<string>;
}

interface Change {
  appId: string;
  deviceId: string;
  merchantId: string;
  online: boolean;
}

interface MachineRow {
  app_id: string;
  device_id: string;
  merchant_id: string;
  online: boolean;
  last_seen_at: Date;
  connected_at: Date | null;
  disconnected_at: Date | null;
}

const iso = (d: Date | null): string | null => (d === null ? null : new Date(d).toISOString());

function toInfo(r: MachineRow): MachinePresenceInfo {
  return {
    appId: r.app_id,
    deviceId: r.device_id,
    merchantId: r.merchant_id,
    online: r.online,
    lastSeenAt: new Date(r.last_seen_at).toISOString(),
    connectedAt: iso(r.connected_at),
    disconnectedAt: iso(r.disconnected_at),
  };
}

/** How long the heartbeat row of a node that stopped is kept (its machines are offline long before). */
const NODE_ROW_KEEP_MS = 3_600_000;

/** Machines per statement of the reclaim at each heartbeat. */
const RECLAIM_CHUNK = 2000;

const key = (appId: string, deviceId: string) => `${appId}\u0000${deviceId}`;

/**
 * Machine presence: which machines (sockets with a deviceId and a merchantId) are connected, kept in
 * the store so that every node (and GET /devices) sees all of them. Each row names the node that holds
 * the machine. A node proves it is alive by refreshing its own heartbeat row in `payment_presence_nodes`
 * every interval, one row however many machines it holds; a machine online at a node was last seen when
 * that node was (the later of the two stamps). The machines of a node that stopped refreshing turn
 * offline after 3 intervals. Changes are written in batches and published after they are stored; an
 * offline change is published only by the node that still held the machine (not after it moved).
 *
 * Nodes of earlier versions have no heartbeat row: they stamp each machine row every interval and judge
 * other nodes' machines by those stamps alone. While one of them holds machines (a rolling upgrade), this
 * node also stamps its machines, so the older node does not take them for gone.
 */
export class MachinePresence {
  readonly nodeId = randomUUID();
  private readonly local = new Map<string, LocalMachine>();
  private readonly dirty = new Map<string, Change>();
  private flushing: Promise<void> | undefined;
  /** The node of an earlier version seen holding machines at the last tick, if any. */
  private legacySeen: string | undefined;
  private lastPrune = 0;

  constructor(private readonly opts: PresenceOptions) {}

  /** Milliseconds without confirmation after which a machine is offline. */
  get staleMs(): number {
    return this.opts.intervalMs * 3;
  }

  /** Whether a socket is a machine's. */
  isMachineSocket(appId: string, deviceId: string, socketId: string): boolean {
    return this.local.get(key(appId, deviceId))?.sockets.has(socketId) ?? false;
  }

  connected(appId: string, deviceId: string, merchantId: string, socketId: string): void {
    const k = key(appId, deviceId);
    let m = this.local.get(k);
    if (!m || m.merchantId !== merchantId) {
      m = { appId, deviceId, merchantId, sockets: new Set(m?.sockets ?? []) };
      this.local.set(k, m);
    }
    // Written (and published) online even when this node already holds an older socket of the machine:
    // that one may be a dead socket not noticed yet, while the machine went through another node, whose
    // row it now is. When that node then saw its socket go, it turned the machine offline while it was
    // connected here. A machine with one socket per node costs nothing more.
    if (!m.sockets.has(socketId)) this.dirty.set(k, { appId, deviceId, merchantId, online: true });
    m.sockets.add(socketId);
    this.schedule();
  }

  disconnected(appId: string, deviceId: string, socketId: string): void {
    const k = key(appId, deviceId);
    const m = this.local.get(k);
    if (!m?.sockets.delete(socketId) || m.sockets.size > 0) return;
    this.local.delete(k);
    this.dirty.set(k, { appId, deviceId, merchantId: m.merchantId, online: false });
    this.schedule();
  }

  /** Machines connected to this node. */
  localCount(): number {
    return this.local.size;
  }

  private schedule(): void {
    if (this.flushing) return;
    this.flushing = (async () => {
      await new Promise((r) => setImmediate(r));
      try {
        while (this.dirty.size > 0) await this.flushOnce();
      } catch (err) {
        this.opts.logger.warn({ err }, 'machine presence could not be stored; retrying at the next sweep');
      } finally {
        this.flushing = undefined;
      }
    })();
  }

  /** Writes pending changes now (also called by the sweep to retry after a store error). */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.dirty.size > 0) this.schedule();
    while (this.flushing) await this.flushing;
  }

  private async flushOnce(): Promise<void> {
    const changes = [...this.dirty.entries()];
    this.dirty.clear();
    const online = changes.filter(([, c]) => c.online).map(([, c]) => c);
    const offline = changes.filter(([, c]) => !c.online).map(([, c]) => c);
    const { store, publish } = this.opts;
    let published: MachinePresenceInfo[] = [];
    try {
      if (online.length > 0) {
        const { rows } = await store.query<MachineRow>(
          `INSERT INTO payment_machines (app_id, device_id, merchant_id, online, node_id, connected_at, last_seen_at,
             changed_at)
           SELECT a, d, m, true, $4, now(), now(), now() FROM unnest($1::text[], $2::text[], $3::text[]) AS u(a, d, m)
           ON CONFLICT (app_id, device_id) DO UPDATE SET merchant_id = excluded.merchant_id, online = true,
             node_id = excluded.node_id, connected_at = excluded.connected_at, last_seen_at = excluded.last_seen_at,
             changed_at = now()
           RETURNING app_id, device_id, merchant_id, online, last_seen_at, connected_at, disconnected_at`,
          [
            online.map((c) => c.appId),
            online.map((c) => c.deviceId),
            online.map((c) => c.merchantId),
            this.nodeId,
          ],
        );
        published = published.concat(rows.map(toInfo));
      }
      if (offline.length > 0) {
        const { rows } = await store.query<MachineRow>(
          `UPDATE payment_machines SET online = false, disconnected_at = now(), last_seen_at = now(), changed_at = now()
           WHERE (app_id, device_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
             AND node_id = $3 AND online
           RETURNING app_id, device_id, merchant_id, online, last_seen_at, connected_at, disconnected_at`,
          [offline.map((c) => c.appId), offline.map((c) => c.deviceId), this.nodeId],
        );
        published = published.concat(rows.map(toInfo));
      }
    } catch (err) {
      // Put back what is still the latest wish, so the next flush writes it; but not a change the store
      // refused as data (ids it cannot hold; the handshake checks should have), which would hold every
      // other machine's change back with it for good.
      const refused = err instanceof SqlError && err.code?.startsWith('22') === true;
      for (const [k, c] of changes) {
        if (this.dirty.has(k)) continue;
        if (refused && ![c.appId, c.deviceId, c.merchantId].every(isStorableText)) {
          this.opts.logger.warn(
            { appId: c.appId, deviceId: c.deviceId, merchantId: c.merchantId },
            'machine presence: dropped a change whose ids the store cannot hold',
          );
          continue;
        }
        this.dirty.set(k, c);
      }
      throw err;
    }
    for (const p of published) publish(p);
  }

  /** Writes this node's heartbeat: its machines are seen now. */
  async heartbeat(): Promise<void> {
    const { rows } = await this.opts.store.query<{ reaped: boolean }>(
      `WITH was AS (SELECT reaped_at FROM payment_presence_nodes WHERE node_id = $1),
       beat AS (
         INSERT INTO payment_presence_nodes (node_id, seen_at) VALUES ($1, now())
         ON CONFLICT (node_id) DO UPDATE SET seen_at = excluded.seen_at, reaped_at = NULL
         RETURNING 1
       )
       SELECT (SELECT reaped_at FROM was) IS NOT NULL AS reaped, (SELECT count(*) FROM beat)::int AS n`,
      [this.nodeId],
    );
    if (rows[0]?.reaped === true) {
      this.opts.logger.warn(
        { machines: this.local.size },
        'another node took this node for dead (late heartbeat) and turned its machines offline: turning them back online',
      );
    }
    await this.reclaim();
  }

  /**
   * Machines connected here that the store shows offline are turned back online here (and published).
   * Two ways to get there: another node took this one for dead (its heartbeat came late: a store outage
   * longer than 3 intervals, a stalled process) and turned its machines offline; or a machine held
   * connections on two nodes at once (a reconnect through the load balancer before the old connection
   * was noticed gone) and the other node, which the row named, turned it offline when its connection
   * closed. Run at every heartbeat; a machine already online matches nothing (one index probe each).
   */
  private async reclaim(): Promise<void> {
    const machines = [...this.local.values()];
    // In statements of RECLAIM_CHUNK machines: the embedded store's intake waits behind each one
    // (20,000 machines in one statement held it 31-45 ms, `npx tsx bench/tools/presence-cost.mts`).
    for (let i = 0; i < machines.length; i += RECLAIM_CHUNK) {
      const part = machines.slice(i, i + RECLAIM_CHUNK);
      const { rows } = await this.opts.store.query<MachineRow>(
        `UPDATE payment_machines m SET online = true, node_id = $1, connected_at = now(), last_seen_at = now(),
           changed_at = now()
         FROM unnest($2::text[], $3::text[]) AS u(a, d)
         WHERE m.app_id = u.a AND m.device_id = u.d AND NOT m.online
         RETURNING m.app_id, m.device_id, m.merchant_id, m.online, m.last_seen_at, m.connected_at, m.disconnected_at`,
        [this.nodeId, part.map((m) => m.appId), part.map((m) => m.deviceId)],
      );
      for (const r of rows) this.opts.publish(toInfo(r));
    }
  }

  /**
   * Confirms this node's machines (its heartbeat), turns offline those of nodes that stopped confirming
   * theirs, and forgets the heartbeat rows of nodes long gone.
   */
  async tick(): Promise<void> {
    const { store, publish } = this.opts;
    if (this.dirty.size > 0) await this.flush();
    await this.heartbeat();
    const cutoff = `now() - $2::float8 * interval '1 millisecond'`;
    // A machine is gone when neither its own stamp (connect, or an older node's refresh) nor its node's
    // heartbeat is recent. Its disconnect time is the later of the two.
    // The silent nodes are marked reaped, so that one still alive puts its machines back.
    const { rows } = await store.query<MachineRow>(
      `WITH gone AS (
         UPDATE payment_machines m SET online = false, changed_at = now(),
           last_seen_at = greatest(m.last_seen_at, (SELECT n.seen_at FROM payment_presence_nodes n WHERE n.node_id = m.node_id)),
           disconnected_at = greatest(m.last_seen_at, (SELECT n.seen_at FROM payment_presence_nodes n WHERE n.node_id = m.node_id))
         WHERE m.online AND m.node_id IS DISTINCT FROM $1 AND m.last_seen_at < ${cutoff}
           AND NOT EXISTS (SELECT 1 FROM payment_presence_nodes n WHERE n.node_id = m.node_id AND n.seen_at >= ${cutoff})
         RETURNING m.node_id, m.app_id, m.device_id, m.merchant_id, m.online, m.last_seen_at, m.connected_at,
           m.disconnected_at
       ), reaped AS (
         UPDATE payment_presence_nodes SET reaped_at = now() WHERE node_id IN (SELECT node_id FROM gone)
       )
       SELECT app_id, device_id, merchant_id, online, last_seen_at, connected_at, disconnected_at FROM gone`,
      [this.nodeId, this.staleMs],
    );
    for (const r of rows) publish(toInfo(r));
    // A node of an earlier version holds machines (recently stamped rows of a node with no heartbeat
    // row): stamp ours too, since it judges them by their rows only.
    const legacy = await store.query<{ node_id: string }>(
      `SELECT m.node_id FROM payment_machines m
       WHERE m.online AND m.node_id <> $1 AND m.last_seen_at >= ${cutoff}
         AND NOT EXISTS (SELECT 1 FROM payment_presence_nodes n WHERE n.node_id = m.node_id)
       LIMIT 1`,
      [this.nodeId, this.staleMs],
    );
    const legacyNode = legacy.rows[0]?.node_id;
    if (legacyNode !== undefined) {
      if (this.legacySeen !== legacyNode) {
        this.opts.logger.info(
          { node: legacyNode },
          "a node of an earlier version holds machines: stamping this node's machines every interval too",
        );
      }
      await store.query('UPDATE payment_machines SET last_seen_at = now() WHERE node_id = $1 AND online', [
        this.nodeId,
      ]);
    }
    this.legacySeen = legacyNode;
    if (Date.now() - this.lastPrune < this.staleMs * 10) return;
    this.lastPrune = Date.now();
    await store.query(
      `DELETE FROM payment_presence_nodes n
       WHERE n.seen_at < now() - $1::float8 * interval '1 millisecond'
         AND NOT EXISTS (SELECT 1 FROM payment_machines m WHERE m.online AND m.node_id = n.node_id)`,
      [Math.max(NODE_ROW_KEEP_MS, this.staleMs * 2)],
    );
  }

  /**
   * At start-up on the embedded store (one process per data folder), machines still marked online
   * were held by this process's previous life: they are offline until they reconnect.
   */
  async resetAfterRestart(): Promise<void> {
    // Last seen when that life's heartbeat last was (or when they connected, if later).
    const { rows } = await this.opts.store.query<MachineRow>(
      `UPDATE payment_machines m SET online = false, changed_at = now(),
         last_seen_at = greatest(m.last_seen_at, (SELECT n.seen_at FROM payment_presence_nodes n WHERE n.node_id = m.node_id)),
         disconnected_at = greatest(m.last_seen_at, (SELECT n.seen_at FROM payment_presence_nodes n WHERE n.node_id = m.node_id))
       WHERE m.online
       RETURNING app_id, device_id, merchant_id, online, last_seen_at, connected_at, disconnected_at`,
    );
    await this.opts.store.query('DELETE FROM payment_presence_nodes WHERE node_id <> $1', [this.nodeId]);
    for (const r of rows) this.opts.publish(toInfo(r));
  }

  /** Marks this node's machines offline (graceful shutdown) and waits for the store. */
  async close(): Promise<void> {
    for (const [k, m] of this.local) {
      this.dirty.set(k, { appId: m.appId, deviceId: m.deviceId, merchantId: m.merchantId, online: false });
    }
    this.local.clear();
    try {
      await this.flush();
      await this.opts.store.query('DELETE FROM payment_presence_nodes WHERE node_id = $1', [this.nodeId]);
    } catch (err) {
      this.opts.logger.warn({ err }, 'machine presence could not be stored at shutdown');
    }
  }

  /** Lists machines; `online` is false for machines whose node stopped confirming them. */
  async list(
    q: Queryable,
    f: { appId?: string | undefined; merchantId?: string | undefined; online?: boolean | undefined },
    page: number,
    limit: number,
  ): Promise<{ devices: MachinePresenceInfo[]; total: number }> {
    const params: unknown[] = [this.staleMs];
    const parts: string[] = [];
    // Both statements start with the same CTE, so that they take the same parameters.
    const cte = `WITH cfg AS (SELECT now() - $1::float8 * interval '1 millisecond' AS cutoff)`;
    // A machine online at a node was seen when that node last was (its heartbeat), or when it connected.
    const seenExpr = 'greatest(m.last_seen_at, n.seen_at)';
    const onlineExpr = `(m.online AND ${seenExpr} > cfg.cutoff)`;
    const from = `payment_machines m LEFT JOIN payment_presence_nodes n ON m.online AND n.node_id = m.node_id
      CROSS JOIN cfg`;
    if (f.appId !== undefined) {
      params.push(f.appId);
      parts.push(`m.app_id = $${params.length}`);
    }
    if (f.merchantId !== undefined) {
      params.push(f.merchantId);
      parts.push(`m.merchant_id = $${params.length}`);
    }
    if (f.online !== undefined) parts.push(f.online ? onlineExpr : `NOT ${onlineExpr}`);
    const w = parts.length > 0 ? `WHERE ${parts.join(' AND ')}` : '';
    const total = await q.query<{ n: number }>(`${cte} SELECT count(*)::int AS n FROM ${from} ${w}`, params);
    const { rows } = await q.query<MachineRow>(
      `${cte} SELECT m.app_id, m.device_id, m.merchant_id, ${onlineExpr} AS online,
         ${seenExpr} AS last_seen_at, m.connected_at, m.disconnected_at
       FROM ${from} ${w} ORDER BY m.app_id, m.merchant_id, m.device_id
       LIMIT ${limit} OFFSET ${(page - 1) * limit}`,
      params,
    );
    return { devices: rows.map(toInfo), total: Number(total.rows[0]?.n ?? 0) };
  }
}
