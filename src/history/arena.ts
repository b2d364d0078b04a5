/**
 * The bytes of the single node's history entries, outside the V8 heap.
 *
 * A node holds up to HISTORY_MAX_ENTRIES (200,000) notifications for minutes. As JavaScript objects each
 * was three (the entry, its id, its data): the young-generation collector copied every one of them twice
 * (survivor space, then the old generation) and every major collection marked them all. Under
 * `POST /notify/batch` that was a third of everything the scavenges copied (BENCHMARKS.md, eighteenth
 * session). Here an entry is one record in a large Buffer, which the collector never looks into; a stream
 * keeps its entries' positions (numbers) instead of objects.
 *
 * Records are appended to the current segment; a segment is given back once none of its records is
 * live (entries leave by size, TTL and the global limit, mostly oldest first). The few that outlive
 * their neighbours (a quiet stream with a long TTL) would keep whole segments alive: when the segments
 * held exceed twice the live bytes by more than a few segments, the history moves the live records of
 * the sparse segments to the current one (`sparse`, `move`), a slice of a few milliseconds per turn of the
 * event loop (MemoryHistory.compactStep).
 */

/** Size of a segment; a record larger than that gets a segment of its own size. */
export const SEGMENT_BYTES = 1 << 20;
/**
 * A position is `segment number × SPAN + offset in the segment`: a double holds it exactly (SPAN × NUMBERS
 * = 2^52), and SPAN is larger than any record (MAX_PAYLOAD_BYTES is at most 64 MiB of JSON, which its
 * ASCII escaping makes at most 6 × as long, stored at most 2 bytes per character).
 */
const SPAN = 2 ** 31;
/** Emptied segments kept for reuse. */
const SPARES = 4;
/** Segment numbers wrap after this many; a number still in use is skipped. */
const NUMBERS = 2 ** 21;

/**
 * Record header: u32 record length, u32 references (the streams holding it: a notification to a topic
 * and a user is one record in both), f64 ts, u8 flags, u32 id length in bytes.
 */
const HEADER = 21;
const REFS = 4;
const TS = 8;
const FLAGS = 16;
const ID_LENGTH = 17;
const ACK = 1;
/** The id or data is stored as UTF-16 (it is not all ASCII); else one byte per character. */
const ID_UTF16 = 2;
const DATA_UTF16 = 4;

interface Segment {
  readonly no: number;
  readonly buf: Buffer;
  used: number;
  /** Live records and their bytes. */
  live: number;
  liveBytes: number;
}

/** What a record holds: what a replay sends. */
export interface ArenaEntry {
  id: string;
  ts: number;
  data: string;
  ack: boolean;
}

/** A string's encoding in a record: latin1 (one byte per character) when all ASCII, else UTF-16. */
const isAscii = (s: string): boolean => Buffer.byteLength(s, 'utf8') === s.length;

export class EntryArena {
  private readonly segments = new Map<number, Segment>();
  private current: Segment;
  private nextNo = 0;
  /**
   * Emptied standard segments kept for the next ones (up to SPARES): a node under load would otherwise
   * allocate 1 MiB every few thousand entries, and V8 counts such buffers as external memory, a reason
   * for a major collection, until the collector frees them.
   */
  private readonly spares: Buffer[] = [];
  /** Bytes of live records. */
  liveBytes = 0;
  /** Bytes of the segments held (live or not). */
  heldBytes = 0;

  constructor() {
    this.current = this.newSegment(SEGMENT_BYTES);
  }

  /** Stores an entry, held once (see `retain`); returns its position. */
  append(id: string, ts: number, data: string, ack: boolean): number {
    const idAscii = isAscii(id);
    const dataAscii = isAscii(data);
    const idBytes = idAscii ? id.length : 2 * id.length;
    const dataBytes = dataAscii ? data.length : 2 * data.length;
    const size = HEADER + idBytes + dataBytes;
    const seg = this.room(size);
    const b = seg.buf;
    const at = seg.used;
    b.writeUInt32LE(size, at);
    b.writeUInt32LE(1, at + REFS);
    b.writeDoubleLE(ts, at + TS);
    b[at + FLAGS] = (ack ? ACK : 0) | (idAscii ? 0 : ID_UTF16) | (dataAscii ? 0 : DATA_UTF16);
    b.writeUInt32LE(idBytes, at + ID_LENGTH);
    if (idBytes > 0) b.write(id, at + HEADER, idBytes, idAscii ? 'latin1' : 'utf16le');
    if (dataBytes > 0) b.write(data, at + HEADER + idBytes, dataBytes, dataAscii ? 'latin1' : 'utf16le');
    seg.used = at + size;
    seg.live++;
    seg.liveBytes += size;
    this.liveBytes += size;
    return seg.no * SPAN + at;
  }

  /** The time (`ts`) of the entry at `pos`. */
  ts(pos: number): number {
    const no = Math.floor(pos / SPAN);
    return this.segment(no).buf.readDoubleLE(pos - no * SPAN + TS);
  }

  read(pos: number): ArenaEntry {
    const no = Math.floor(pos / SPAN);
    const b = this.segment(no).buf;
    const at = pos - no * SPAN;
    const size = b.readUInt32LE(at);
    const flags = b[at + FLAGS] as number;
    const idBytes = b.readUInt32LE(at + ID_LENGTH);
    const dataAt = at + HEADER + idBytes;
    return {
      id: b.toString(flags & ID_UTF16 ? 'utf16le' : 'latin1', at + HEADER, dataAt),
      ts: b.readDoubleLE(at + TS),
      data: b.toString(flags & DATA_UTF16 ? 'utf16le' : 'latin1', dataAt, at + size),
      ack: (flags & ACK) !== 0,
    };
  }

  /** One more stream holds the entry at `pos`. */
  retain(pos: number): void {
    const no = Math.floor(pos / SPAN);
    const b = this.segment(no).buf;
    const at = pos - no * SPAN + REFS;
    b.writeUInt32LE(b.readUInt32LE(at) + 1, at);
  }

  /**
   * One stream less holds the entry at `pos`; the record is gone when none does, and its segment once
   * none of its records is live.
   */
  free(pos: number): void {
    const no = Math.floor(pos / SPAN);
    const seg = this.segment(no);
    const at = pos - no * SPAN;
    const refs = seg.buf.readUInt32LE(at + REFS) - 1;
    if (refs > 0) {
      seg.buf.writeUInt32LE(refs, at + REFS);
      return;
    }
    seg.buf.writeUInt32LE(0, at + REFS);
    const size = seg.buf.readUInt32LE(at);
    seg.live--;
    seg.liveBytes -= size;
    this.liveBytes -= size;
    if (seg.live > 0) return;
    if (seg === this.current) {
      seg.used = 0; // nothing in it is live: written again from the start
      return;
    }
    this.segments.delete(no);
    this.heldBytes -= seg.buf.length;
    this.giveBack(seg.buf);
  }

  /**
   * Whether segments hold much more than the live records (more than twice their bytes, plus four
   * segments), and moving the live records of the sparse ones (`sparse`) would give memory back.
   */
  fragmented(): boolean {
    return this.heldBytes > 2 * this.liveBytes + 4 * SEGMENT_BYTES;
  }

  /** Numbers of the segments, other than the current one, less than half full of live records. */
  sparse(): Set<number> {
    const out = new Set<number>();
    for (const seg of this.segments.values()) {
      if (seg !== this.current && seg.liveBytes * 2 < seg.buf.length) out.add(seg.no);
    }
    return out;
  }

  /** The number of the segment holding `pos`. */
  segmentOf(pos: number): number {
    return Math.floor(pos / SPAN);
  }

  /**
   * Moves one stream's hold on the record at `pos` to a copy in the current segment and answers the
   * copy's position. `moved` maps the records already copied in this pass to their copies, so that a
   * record held by several streams is copied once.
   */
  move(pos: number, moved: Map<number, number>): number {
    let to = moved.get(pos);
    if (to !== undefined) this.retain(to);
    else {
      const no = Math.floor(pos / SPAN);
      const from = this.segment(no);
      const at = pos - no * SPAN;
      const size = from.buf.readUInt32LE(at);
      const seg = this.room(size);
      from.buf.copy(seg.buf, seg.used, at, at + size);
      seg.buf.writeUInt32LE(1, seg.used + REFS);
      to = seg.no * SPAN + seg.used;
      seg.used += size;
      seg.live++;
      seg.liveBytes += size;
      this.liveBytes += size;
      moved.set(pos, to);
    }
    this.free(pos);
    return to;
  }

  /** Segments held now. */
  get segmentCount(): number {
    return this.segments.size;
  }

  private segment(no: number): Segment {
    const seg = this.segments.get(no);
    if (!seg) throw new Error(`history arena: no segment ${no}`);
    return seg;
  }

  /** The current segment when the record fits in it, else a new current segment. */
  private room(size: number): Segment {
    const cur = this.current;
    if (cur.used + size <= cur.buf.length) return cur;
    if (cur.live === 0 && size <= cur.buf.length) {
      cur.used = 0;
      return cur;
    }
    this.current = this.newSegment(Math.max(SEGMENT_BYTES, size));
    if (cur.live === 0) {
      // Left empty (its records all freed while it was current): given back now.
      this.segments.delete(cur.no);
      this.heldBytes -= cur.buf.length;
      this.giveBack(cur.buf);
    }
    return this.current;
  }

  private giveBack(buf: Buffer): void {
    if (buf.length === SEGMENT_BYTES && this.spares.length < SPARES) this.spares.push(buf);
  }

  private newSegment(bytes: number): Segment {
    let no = this.nextNo;
    while (this.segments.has(no)) no = (no + 1) % NUMBERS;
    this.nextNo = (no + 1) % NUMBERS;
    const buf = (bytes === SEGMENT_BYTES ? this.spares.pop() : undefined) ?? Buffer.allocUnsafeSlow(bytes);
    const seg: Segment = { no, buf, used: 0, live: 0, liveBytes: 0 };
    this.segments.set(no, seg);
    this.heldBytes += bytes;
    return seg;
  }
}
