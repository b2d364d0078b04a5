/** The Overview's node list: every node of the deployment (this one alone on a single node). */
import type { NodeList, NodeRow } from '../../../src/console/types.js';
import { Badge, Card, Empty, fmtBytes, fmtDuration, fmtNum, Loading, stateTone } from '../ui.js';

/** "now", "3s ago", "2m 5s ago": how long before the list was read the node last heartbeated. */
function ago(ms: number): string {
  if (ms < 1000) return 'now';
  return `${fmtDuration(Math.round(ms / 1000))} ago`;
}

function LastSeen({ row, list }: { row: NodeRow; list: NodeList }) {
  if (row.lastSeen === null) {
    return <span class="muted">{list.mode === 'single' ? 'single node' : '–'}</span>;
  }
  // Relative to the node's own clock when it read the list, so the browser's clock does not matter.
  const text = ago(Math.max(0, list.readAt - row.lastSeen));
  return row.stale ? (
    <span title="Missed heartbeats: it leaves the list when silent for the presence TTL">
      <Badge tone="warn">late</Badge> {text}
    </span>
  ) : (
    <span title={new Date(row.lastSeen).toLocaleString()}>{text}</span>
  );
}

function Checks({ row }: { row: NodeRow }) {
  const checks = Object.entries(row.info.health ?? {});
  if (checks.length === 0) return <small class="muted">checks pending</small>;
  return (
    <>
      {checks.map(([name, c]) => (
        <span key={name} title={c.error ?? `${name} healthy`} data-check={name}>
          <Badge tone={c.ok ? 'ok' : c.critical ? 'bad' : 'warn'}>
            {name === 'bus' && row.info.bus === 'redis' ? 'redis' : name} {c.ok ? '✓' : '✗'}
          </Badge>
        </span>
      ))}
    </>
  );
}

function uptime(row: NodeRow, list: NodeList): string {
  const { startedAt, uptime: up } = row.info;
  if (startedAt !== undefined) return fmtDuration(Math.max(0, Math.round((list.readAt - startedAt) / 1000)));
  return up !== undefined ? fmtDuration(up) : '–';
}

function NodeTableRow({ row, list }: { row: NodeRow; list: NodeList }) {
  const i = row.info;
  return (
    <tr
      data-node={row.id}
      data-self={row.self ? 'true' : undefined}
      class={`${row.self ? 'self' : ''} ${row.stale ? 'stale' : ''}`}
    >
      <td data-label="Node" class="node-name">
        <div>
          <b>{i.host ?? row.id}</b> {row.self && <Badge tone="info">this node</Badge>}
        </div>
        <div class="muted node-meta">
          <code>{row.id}</code>
        </div>
        <div class="muted node-meta">
          {[
            i.pid !== undefined ? `pid ${i.pid}` : undefined,
            i.version !== undefined ? `Herald ${i.version}` : undefined,
            i.nodeVersion !== undefined ? `Node ${i.nodeVersion}` : undefined,
          ]
            .filter(Boolean)
            .join(' · ') || 'no details yet'}
        </div>
      </td>
      <td data-label="Status">
        <span class="node-status">
          <Badge tone={stateTone(i.status)}>{i.status ?? 'unknown'}</Badge>
          <Checks row={row} />
        </span>
      </td>
      <td class="num" data-label="Connections" data-col="connections">
        {fmtNum(i.connections)}
      </td>
      <td class="num" data-label="Subscriptions">
        {fmtNum(i.subscriptions)}
      </td>
      <td class="num" data-label="Apps">
        {fmtNum(i.apps)}
      </td>
      <td class="num" data-label="Notifications/s">
        {fmtNum(i.notifyRate)}
      </td>
      <td class="num" data-label="Deliveries/s">
        {fmtNum(i.deliveryRate)}
      </td>
      <td class="num" data-label="Loop p99">
        {i.loopP99 !== undefined ? `${fmtNum(i.loopP99)} ms` : '–'}
      </td>
      <td class="num" data-label="RSS">
        {i.rssBytes !== undefined ? fmtBytes(i.rssBytes) : '–'}
      </td>
      <td
        class="num"
        data-label="Uptime"
        title={i.startedAt !== undefined ? `started ${new Date(i.startedAt).toLocaleString()}` : undefined}
      >
        {uptime(row, list)}
      </td>
      <td data-label="Last seen" data-col="last-seen">
        <LastSeen row={row} list={list} />
      </td>
    </tr>
  );
}

/** The "Nodes" card: the node list with totals, and the state of the cluster read. */
export function NodesCard({ list }: { list: NodeList | undefined }) {
  const title = list ? `Nodes (${list.nodes.length})` : 'Nodes';
  const mode = list ? (
    list.mode === 'cluster' ? (
      <Badge tone={list.state === 'ok' ? 'ok' : 'bad'}>
        {list.state === 'ok' ? 'cluster on Redis' : 'cluster unreachable'}
      </Badge>
    ) : (
      <Badge tone="muted">single node</Badge>
    )
  ) : undefined;
  return (
    <Card title={title} actions={mode} class="span-all" id="nodes">
      <div data-testid="nodes" data-state={list?.state} data-mode={list?.mode}>
        {!list ? (
          <Loading what="Reading the node list" />
        ) : (
          <>
            {list.state === 'unreachable' && (
              <div class="state error" role="alert" data-testid="nodes-unreachable">
                {list.error ??
                  'Cluster unreachable: cannot read the node list from Redis. Showing this node only.'}
              </div>
            )}
            <div class="totals">
              <span>
                <b data-testid="nodes-total-connections">{list.totals.connections}</b> connections
              </span>
              <span>
                <b>{list.totals.subscriptions}</b> subscriptions
              </span>
              <span>
                <b data-testid="nodes-total-notify">{fmtNum(list.totals.notifyRate)}</b> notifications/s
              </span>
              <span>
                <b data-testid="nodes-total-deliveries">{fmtNum(list.totals.deliveryRate)}</b> deliveries/s
              </span>
              <span>
                over <b data-testid="nodes-count">{list.nodes.length}</b>{' '}
                {list.nodes.length === 1 ? 'node' : 'nodes'}
              </span>
            </div>
            {list.nodes.length === 0 ? (
              <Empty>No node has reported to the cluster yet.</Empty>
            ) : (
              <div class="table-wrap">
                <table class="stack" data-testid="nodes-table">
                  <thead>
                    <tr>
                      <th>Node</th>
                      <th>Status</th>
                      <th class="num">
                        <abbr title="Connections">Conns</abbr>
                      </th>
                      <th class="num">
                        <abbr title="Subscriptions">Subs</abbr>
                      </th>
                      <th class="num">Apps</th>
                      <th class="num">
                        <abbr title="Notifications per second">Notify/s</abbr>
                      </th>
                      <th class="num">
                        <abbr title="Deliveries (socket writes) per second">Deliver/s</abbr>
                      </th>
                      <th class="num">Loop p99</th>
                      <th class="num">RSS</th>
                      <th class="num">Uptime</th>
                      <th>Last seen</th>
                    </tr>
                  </thead>
                  <tbody>
                    {list.nodes.map((row) => (
                      <NodeTableRow key={row.id} row={row} list={list} />
                    ))}
                  </tbody>
                </table>
              </div>
            )}
            <p class="note">
              {list.mode === 'cluster'
                ? `Nodes with a heartbeat within the presence TTL (${fmtDuration(Math.round((list.presenceTtlMs ?? 0) / 1000))}); figures are each node's last one-second sample, sent every ${fmtNum((list.heartbeatMs ?? 0) / 1000)} s. A node that stops leaves the list at once, one that dies within the TTL.`
                : 'Single node (no REDIS_URL): this node serves every client.'}
            </p>
          </>
        )}
      </div>
    </Card>
  );
}
