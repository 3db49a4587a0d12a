/**
 * Session messages: the plaintext inside each sealed frame. The first byte is the type; control messages carry
 * JSON, bulk messages a small binary header. Pure codec with hostile-input limits.
 */
import { fail, ErrorCodes } from '../util/errors.js';

export const MsgType = {
  OPEN: 1,
  MANIFEST: 2,
  MANIFEST_PART: 3,
  GET: 4,
  DATA: 5,
  ERROR: 6,
  BYE: 7,
  STALE: 8,
  PATCH_GET: 9,
  PATCH: 10,
  PING: 11,
  PONG: 12,
  READY: 13,
  FOLLOW: 14,
  CHANGED: 15,
} as const;

/** Largest plaintext of any frame; the transport refuses bigger messages before they are buffered. */
export const MAX_FRAME = 8 << 20;
/** Limits on a GET: ranges per request and raw bytes per request (the server enforces both). */
export const MAX_GET_RANGES = 4096;
export const MAX_GET_BYTES = 8 << 20;

/** Puller -> server: which company, and what the puller already holds. */
export interface OpenMsg {
  company: string;
  /** Root hash of the generation the puller holds, if any: lets the server send a smaller manifest later. */
  have?: string;
  /** Ask for zstd level; undefined lets the server choose. */
  level?: number;
}

/** Server -> puller: the generation about to be sent. */
export interface ManifestMsg {
  company: string;
  generation: number;
  rootHash: string;
  /** Bytes of the canonical manifest encoding. */
  encodedSize: number;
  /** Number of MANIFEST_PART messages that follow. */
  parts: number;
  /**
   * Files the site held back (they kept changing past its settle budget): in this generation as they were in the last
   * one, or not yet if new. At most MAX_HELD_NAMES; heldBackCount says how many in all.
   */
  heldBack?: string[];
  heldBackCount?: number;
}

/** Names of held-back files a manifest header carries at most (the rest are counted). */
export const MAX_HELD_NAMES = 20;

/** Held-back files in words (site log, pull summary): `names` the first of `count`. */
export function heldBackText(names: readonly string[], count = names.length): string {
  const more = count > names.length ? ` and ${count - names.length} more` : '';
  return `${count} file${count === 1 ? '' : 's'} held back, kept changing at the site (each as the generation before had it, or not yet if new): ${names.join(', ')}${more}`;
}

/**
 * The held-back names of a manifest header from a site, checked (a hostile site's header gets no further than this):
 * undefined when there are none.
 */
export function heldBackOf(head: { heldBack?: unknown; heldBackCount?: unknown }): { names: string[]; count: number } | undefined {
  if (head.heldBack === undefined) return undefined;
  const names = head.heldBack;
  const count = head.heldBackCount;
  if (!Array.isArray(names) || names.length === 0 || names.length > MAX_HELD_NAMES || !names.every((n) => typeof n === 'string' && n.length > 0 && n.length <= 4096)) {
    fail(ErrorCodes.PROTOCOL, 'malformed held-back list in the manifest header');
  }
  if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < names.length) fail(ErrorCodes.PROTOCOL, 'malformed held-back count in the manifest header');
  return { names: names as string[], count };
}

export interface ErrorMsg {
  code: string;
  message: string;
}

/** A GET: request id and [start, end) ranges of global chunk indices. */
export interface GetMsg {
  reqId: number;
  ranges: Array<[number, number]>;
}

/** A DATA: the chunks of a GET concatenated in order, zstd-compressed when flagged. */
export interface DataMsg {
  reqId: number;
  compressed: boolean;
  rawLen: number;
  payload: Buffer;
}

/** One run of a PATCH_GET: consecutive chunks [chunk, chunk+count) of one file and the puller's block signatures. */
export interface PatchRunReq {
  chunk: number;
  count: number;
  /** xxh32 of each block of the puller's old bytes at the same file offsets. */
  sigs: Uint32Array;
}

/** A PATCH_GET: several runs (of any files), one block size. */
export interface PatchGetMsg {
  reqId: number;
  blockSize: number;
  runs: PatchRunReq[];
}

/** A PATCH: per run, a bitmap of the blocks that differ; then all their bytes, compressed together when flagged. */
export interface PatchMsg {
  reqId: number;
  compressed: boolean;
  rawLen: number;
  bitmaps: Buffer[];
  payload: Buffer;
}

/** Runs per PATCH_GET, at most. */
export const MAX_PATCH_RUNS = 256;

export function encodeJson(type: number, body: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(body), 'utf8');
  const b = Buffer.allocUnsafe(1 + json.length);
  b[0] = type;
  json.copy(b, 1);
  return b;
}

/**
 * A field of a peer's JSON as text: a string as it is, anything else as its JSON. String() would throw for an object
 * whose toString is not a function ({"toString": 1}), as an internal error of ours.
 */
export function textOf(v: unknown): string {
  return typeof v === 'string' ? v : (JSON.stringify(v) ?? 'undefined');
}

/** A field of a peer's JSON as a number: a number, or a numeric string; NaN for anything else (Number() could throw). */
export function numberOf(v: unknown): number {
  return typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : NaN;
}

/** Parses a JSON control message body, limited to 64 KiB. */
export function decodeJson<T>(msg: Buffer): T {
  if (msg.length > 65536) fail(ErrorCodes.PROTOCOL, 'control message too large');
  try {
    const v = JSON.parse(msg.subarray(1).toString('utf8'));
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as T;
  } catch {
    return fail(ErrorCodes.PROTOCOL, 'malformed control message');
  }
}

export function encodeGet(m: GetMsg): Buffer {
  const b = Buffer.allocUnsafe(9 + m.ranges.length * 8);
  b[0] = MsgType.GET;
  b.writeUInt32BE(m.reqId, 1);
  b.writeUInt32BE(m.ranges.length, 5);
  let o = 9;
  for (const [s, e] of m.ranges) {
    b.writeUInt32BE(s, o);
    b.writeUInt32BE(e, o + 4);
    o += 8;
  }
  return b;
}

export function decodeGet(b: Buffer): GetMsg {
  if (b.length < 9) fail(ErrorCodes.PROTOCOL, 'malformed GET');
  const reqId = b.readUInt32BE(1);
  const n = b.readUInt32BE(5);
  if (n === 0 || n > MAX_GET_RANGES || b.length !== 9 + n * 8) fail(ErrorCodes.PROTOCOL, 'malformed GET');
  const ranges: Array<[number, number]> = [];
  for (let i = 0, o = 9; i < n; i++, o += 8) {
    const s = b.readUInt32BE(o);
    const e = b.readUInt32BE(o + 4);
    if (e <= s) fail(ErrorCodes.PROTOCOL, 'malformed GET range');
    ranges.push([s, e]);
  }
  return { reqId, ranges };
}

/** DATA header: type, reqId, flags, rawLen. The payload is passed separately so it is never copied. */
export function encodeDataHeader(reqId: number, compressed: boolean, rawLen: number): Buffer {
  const b = Buffer.allocUnsafe(10);
  b[0] = MsgType.DATA;
  b.writeUInt32BE(reqId, 1);
  b[5] = compressed ? 1 : 0;
  b.writeUInt32BE(rawLen, 6);
  return b;
}

export function decodeData(b: Buffer): DataMsg {
  if (b.length < 10) fail(ErrorCodes.PROTOCOL, 'malformed DATA');
  const rawLen = b.readUInt32BE(6);
  if (rawLen > MAX_GET_BYTES) fail(ErrorCodes.LIMIT, 'DATA larger than any request');
  if (b[5]! > 1) fail(ErrorCodes.PROTOCOL, 'DATA with unknown flags');
  return { reqId: b.readUInt32BE(1), compressed: b[5] === 1, rawLen, payload: b.subarray(10) };
}

export function encodePatchGet(m: PatchGetMsg): Buffer {
  let size = 13;
  for (const r of m.runs) size += 12 + r.sigs.length * 4;
  const b = Buffer.allocUnsafe(size);
  b[0] = MsgType.PATCH_GET;
  b.writeUInt32BE(m.reqId, 1);
  b.writeUInt32BE(m.blockSize, 5);
  b.writeUInt32BE(m.runs.length, 9);
  let o = 13;
  for (const r of m.runs) {
    b.writeUInt32BE(r.chunk, o);
    b.writeUInt32BE(r.count, o + 4);
    b.writeUInt32BE(r.sigs.length, o + 8);
    o += 12;
    for (let i = 0; i < r.sigs.length; i++, o += 4) b.writeUInt32BE(r.sigs[i]!, o);
  }
  return b;
}

export function decodePatchGet(b: Buffer): PatchGetMsg {
  if (b.length < 13) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET');
  const blockSize = b.readUInt32BE(5);
  if (blockSize < 256 || blockSize > 65536) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET block size');
  const n = b.readUInt32BE(9);
  if (n === 0 || n > MAX_PATCH_RUNS) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET run count');
  const runs: PatchRunReq[] = [];
  let o = 13;
  for (let k = 0; k < n; k++) {
    if (o + 12 > b.length) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET');
    const chunk = b.readUInt32BE(o);
    const count = b.readUInt32BE(o + 4);
    const nSigs = b.readUInt32BE(o + 8);
    o += 12;
    if (count === 0 || count > MAX_GET_RANGES) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET chunk count');
    if (o + nSigs * 4 > b.length) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET');
    const sigs = new Uint32Array(nSigs);
    for (let i = 0; i < nSigs; i++, o += 4) sigs[i] = b.readUInt32BE(o);
    runs.push({ chunk, count, sigs });
  }
  if (o !== b.length) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET');
  return { reqId: b.readUInt32BE(1), blockSize, runs };
}

/** Bytes of a PATCH answer's fixed header (each run then adds 4 and its bitmap). */
export const PATCH_HEADER_BYTES = 14;

/** PATCH header: type, reqId, flags, rawLen, run count, then each run's bitmap length and bitmap. */
export function encodePatchHeader(reqId: number, compressed: boolean, rawLen: number, bitmaps: Uint8Array[]): Buffer {
  let size = PATCH_HEADER_BYTES;
  for (const bm of bitmaps) size += 4 + bm.length;
  const b = Buffer.allocUnsafe(size);
  b[0] = MsgType.PATCH;
  b.writeUInt32BE(reqId, 1);
  b[5] = compressed ? 1 : 0;
  b.writeUInt32BE(rawLen, 6);
  b.writeUInt32BE(bitmaps.length, 10);
  let o = 14;
  for (const bm of bitmaps) {
    b.writeUInt32BE(bm.length, o);
    b.set(bm, o + 4);
    o += 4 + bm.length;
  }
  return b;
}

export function decodePatch(b: Buffer): PatchMsg {
  if (b.length < 14 || b[5]! > 1) fail(ErrorCodes.PROTOCOL, 'malformed PATCH');
  const rawLen = b.readUInt32BE(6);
  const n = b.readUInt32BE(10);
  if (rawLen > MAX_GET_BYTES || n > MAX_PATCH_RUNS) fail(ErrorCodes.PROTOCOL, 'malformed PATCH');
  const bitmaps: Buffer[] = [];
  let o = 14;
  for (let k = 0; k < n; k++) {
    if (o + 4 > b.length) fail(ErrorCodes.PROTOCOL, 'malformed PATCH');
    const len = b.readUInt32BE(o);
    if (o + 4 + len > b.length) fail(ErrorCodes.PROTOCOL, 'malformed PATCH');
    bitmaps.push(b.subarray(o + 4, o + 4 + len));
    o += 4 + len;
  }
  return { reqId: b.readUInt32BE(1), compressed: b[5] === 1, rawLen, bitmaps, payload: b.subarray(o) };
}
