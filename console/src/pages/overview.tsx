import { useState } from 'preact/hooks';
import type { StatsPoint, StatsSnapshot } from '../../../src/console/types.js';
import { useLive } from '../live.js';
import { Badge, Card, Empty, fmtBytes, fmtDuration, fmtNum, Loading, Sparkline, stateTone } from '../ui.js';
import { NodesCard } from './nodes.js';

const WINDOW = 120;

/** Live stats of this node: the last snapshot and the points of the charts. */
export function useStats(): { snap: StatsSnapshot | undefined; points: StatsPoint[] } {
  const [snap, setSnap] = useState<StatsSnapshot | undefined>(undefined);
  const [points, setPoints] = useState<StatsPoint[]>([]);
  useLive('stats', 'history', (h) => setPoints(h.slice(-WINDOW)));
  useLive('stats', 'stats', (s) => {
    setSnap(s);
    setPoints((prev) => {
      if (prev.length && (prev[prev.length - 1] as StatsPoint).ts >= s.ts) return prev;
      const next = [
        ...prev,
        {
          ts: s.ts,
          notifyRate: s.notifyRate,
          deliveryRate: s.deliveryRate,
          connections: s.totals.connections,
          loopP99: s.loop.p99,
        },
      ];
      return next.length > WINDOW ? next.slice(next.length - WINDOW) : next;
    });
  });
  return { snap, points };
}

function Health({ snap }: { snap: StatsSnapshot }) {
  const checks = Object.entries(snap.health);
  return (
    <div class="health">
      <div class="kv">
        <span>Status</span>
        <Badge tone={stateTone(snap.status)}>{snap.status}</Badge>
      </div>
      {checks.length === 0 && (
        <div class="kv">
          <span>Checks</span>
          <span class="muted">running…</span>
        </div>
      )}
      {checks.map(([name, c]) => (
        <div class="kv" key={name} data-testid={`health-${name}`}>
          <span>
            {name === 'store'
              ? `Store (${snap.node.store})`
              : name === 'bus'
                ? `Bus (${snap.node.bus === 'redis' ? 'Redis' : 'memory'})`
                : name}
          </span>
          <span>
            <Badge tone={c.ok ? 'ok' : c.critical ? 'bad' : 'warn'}>{c.ok ? 'healthy' : 'failing'}</Badge>
            {c.error && <small class="muted"> {c.error}</small>}
          </span>
        </div>
      ))}
    </div>
  );
}

export function OverviewPage() {
  const { snap, points } = useStats();
  if (!snap) return <Loading what="Waiting for the first stats of this node" />;
  const series = (k: keyof StatsPoint) => points.map((p) => p[k] as number);
  return (
    <div class="grid">
      <div class="metrics span-all">
        <Card>
          <Sparkline label="Connections" values={series('connections')} testId="metric-connections" />
        </Card>
        <Card>
          <Sparkline
            label="Notifications"
            unit="/s"
            values={series('notifyRate')}
            color="var(--c2)"
            testId="metric-notify"
          />
        </Card>
        <Card>
          <Sparkline
            label="Deliveries"
            unit="/s"
            values={series('deliveryRate')}
            color="var(--c3)"
            testId="metric-deliveries"
          />
        </Card>
        <Card>
          <Sparkline
            label="Event-loop delay p99"
            unit="ms"
            values={series('loopP99')}
            color="var(--c4)"
            testId="metric-loop"
          />
        </Card>
      </div>

      <NodesCard list={snap.nodes} />

      <Card title="This node">
        <div class="kv">
          <span>Version</span>
          <span>Herald {snap.node.version}</span>
        </div>
        <div class="kv">
          <span>Uptime</span>
          <span>{fmtDuration(snap.node.uptime)}</span>
        </div>
        <div class="kv">
          <span>Process</span>
          <span>
            pid {snap.node.pid} · Node {snap.node.nodeVersion}
          </span>
        </div>
        <div class="kv">
          <span>Memory</span>
          <span>
            {fmtBytes(snap.node.rssBytes)} RSS · {fmtBytes(snap.node.heapUsedBytes)} heap
          </span>
        </div>
        <div class="kv">
          <span>Event loop</span>
          <span>
            p50 {fmtNum(snap.loop.p50)} ms · p99 {fmtNum(snap.loop.p99)} ms · max {fmtNum(snap.loop.max)} ms
          </span>
        </div>
        <div class="kv">
          <span>Access</span>
          <span>
            {snap.node.accessMode === 'open' ? 'open mode (any app)' : 'apps mode'} ·{' '}
            {snap.node.adminToken ? 'admin token set' : <Badge tone="warn">no ADMIN_TOKEN</Badge>}
          </span>
        </div>
        <div class="kv">
          <span>Consoles</span>
          <span>{snap.consoles} connected</span>
        </div>
      </Card>

      <Card title="Health">
        <Health snap={snap} />
        <p class="note">
          {snap.node.bus === 'redis'
            ? 'Cluster mode: the charts and apps on this page are this node’s; the Nodes card lists every node.'
            : 'Single node: in-memory fan-out.'}
        </p>
      </Card>

      <Card title={`Apps on this node (${snap.totals.apps})`} class="span-all" id="apps">
        <div class="totals">
          <span>
            <b data-testid="total-connections">{snap.totals.connections}</b> connections
          </span>
          <span>
            <b data-testid="total-subscriptions">{snap.totals.subscriptions}</b> subscriptions
          </span>
          <span>
            <b>{snap.totals.topics}</b> topics
          </span>
        </div>
        {snap.apps.length === 0 ? (
          <Empty>No client is connected to this node. Apps appear here as soon as one connects.</Empty>
        ) : (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>App</th>
                  <th class="num">Connections</th>
                  <th class="num">Subscriptions</th>
                  <th class="num">Topics</th>
                  <th class="num">Notifications/s</th>
                  <th class="num">Deliveries/s</th>
                </tr>
              </thead>
              <tbody>
                {snap.apps.map((a) => (
                  <tr key={a.appId} data-app={a.appId}>
                    <td>
                      <code>{a.appId}</code>
                    </td>
                    <td class="num" data-col="connections">
                      {a.connections}
                    </td>
                    <td class="num">{a.subscriptions}</td>
                    <td class="num">{a.topics}</td>
                    <td class="num">{fmtNum(a.notifyRate)}</td>
                    <td class="num">{fmtNum(a.deliveryRate)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Card>
    </div>
  );
}
