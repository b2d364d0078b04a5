/**
 * A Socket.IO event encoded once and shared by every recipient: the Socket.IO packet text (for the
 * HTTP long-polling transport) and the finished WebSocket frame (for the WebSocket transport, written
 * as is without encoding it again per socket).
 */
export interface Frame {
  packet: string;
  /** The whole WebSocket frame (header and payload) in one buffer, as engine.io's wsPreEncodedFrame. */
  ws: [Buffer];
}

/**
 * Encodes `[event, ...args]` (args given as JSON text) for namespace `/<appId>`: one allocation for
 * the unmasked text frame, header and payload together, so that a socket write is one buffer.
 */
export function encodeEvent(appId: string, event: string, argsJson: readonly string[]): Frame {
  // Socket.IO v4 packet: type 2 (EVENT), namespace, comma, JSON array. Engine.IO adds type 4 (MESSAGE).
  const packet = `2/${appId},[${JSON.stringify(event)}${argsJson.length ? ',' : ''}${argsJson.join(',')}]`;
  const size = Buffer.byteLength(packet) + 1;
  const head = size < 126 ? 2 : size < 65_536 ? 4 : 10;
  const wire = Buffer.allocUnsafe(head + size);
  wire[0] = 0x81; // FIN, text
  if (head === 2) wire[1] = size;
  else if (head === 4) {
    wire[1] = 126;
    wire.writeUInt16BE(size, 2);
  } else {
    wire[1] = 127;
    wire.writeUInt32BE(Math.floor(size / 2 ** 32), 2);
    wire.writeUInt32BE(size >>> 0, 6);
  }
  wire[head] = 0x34; // '4'
  wire.write(packet, head + 1);
  return { packet, ws: [wire] };
}
