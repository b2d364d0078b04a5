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
  return encodePacket(
    `2/${appId},[${JSON.stringify(event)}${argsJson.length ? ',' : ''}${argsJson.join(',')}]`,
  );
}

/**
 * The answer to a client's event that asked for one (Socket.IO ACK, type 3): `3/<appId>,<id>[...]`, the
 * same text Socket.IO's encoder makes for arguments without binary data.
 */
export function encodeAck(appId: string, id: number, argsJson: string): Frame {
  return encodePacket(`3/${appId},${id}${argsJson}`);
}

/** A Socket.IO packet's text as a Frame (Engine.IO MESSAGE, unmasked WebSocket text frame). */
export function encodePacket(packet: string): Frame {
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
