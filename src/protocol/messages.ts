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

/**
 * A PATCH_GET: a run of consecutive chunks of one file [chunk, chunk+count), the block size, and xxh32 signatures of
 * the puller's old bytes at the same file offsets.
 */
export interface PatchGetMsg {
  reqId: number;
  chunk: number;
  count: number;
  blockSize: number;
  sigs: Uint32Array;
}

/** A PATCH: which blocks differ (bitmap) and their bytes, zstd-compressed when flagged. */
export interface PatchMsg {
  reqId: number;
  compressed: boolean;
  rawLen: number;
  bitmap: Buffer;
  payload: Buffer;
}

export function encodeJson(type: number, body: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(body), 'utf8');
  const b = Buffer.allocUnsafe(1 + json.length);
  b[0] = type;
  json.copy(b, 1);
  return b;
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
  const b = Buffer.allocUnsafe(17 + m.sigs.length * 4);
  b[0] = MsgType.PATCH_GET;
  b.writeUInt32BE(m.reqId, 1);
  b.writeUInt32BE(m.chunk, 5);
  b.writeUInt32BE(m.count, 9);
  b.writeUInt32BE(m.blockSize, 13);
  for (let i = 0; i < m.sigs.length; i++) b.writeUInt32BE(m.sigs[i]!, 17 + i * 4);
  return b;
}

export function decodePatchGet(b: Buffer): PatchGetMsg {
  if (b.length < 17 || (b.length - 17) % 4 !== 0) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET');
  const count = b.readUInt32BE(9);
  const blockSize = b.readUInt32BE(13);
  if (blockSize < 256 || blockSize > 65536) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET block size');
  if (count === 0 || count > MAX_GET_RANGES) fail(ErrorCodes.PROTOCOL, 'malformed PATCH_GET chunk count');
  const n = (b.length - 17) / 4;
  const sigs = new Uint32Array(n);
  for (let i = 0; i < n; i++) sigs[i] = b.readUInt32BE(17 + i * 4);
  return { reqId: b.readUInt32BE(1), chunk: b.readUInt32BE(5), count, blockSize, sigs };
}

export function encodePatchHeader(reqId: number, compressed: boolean, rawLen: number, bitmap: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(14 + bitmap.length);
  b[0] = MsgType.PATCH;
  b.writeUInt32BE(reqId, 1);
  b[5] = compressed ? 1 : 0;
  b.writeUInt32BE(rawLen, 6);
  b.writeUInt32BE(bitmap.length, 10);
  b.set(bitmap, 14);
  return b;
}

export function decodePatch(b: Buffer): PatchMsg {
  if (b.length < 14) fail(ErrorCodes.PROTOCOL, 'malformed PATCH');
  const rawLen = b.readUInt32BE(6);
  const bl = b.readUInt32BE(10);
  if (rawLen > MAX_GET_BYTES || 14 + bl > b.length || b[5]! > 1) fail(ErrorCodes.PROTOCOL, 'malformed PATCH');
  return {
    reqId: b.readUInt32BE(1),
    compressed: b[5] === 1,
    rawLen,
    bitmap: b.subarray(14, 14 + bl),
    payload: b.subarray(14 + bl),
  };
}
