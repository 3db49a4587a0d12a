/**
 * The codec of a pull's next.verified: batches of uint32 records (little-endian), each batch behind an 8-byte header,
 * its record count and the first 4 bytes of the records' SHA-256. Pure: no I/O.
 *
 * Why batches that check themselves: records are appended without an fsync of their own (the data they vouch for is
 * flushed before they are written, and they become durable with the next flush). On ext4 an append into the file's
 * last, already written block can reach the disk as a new size without its bytes: after a power cut the file ends in
 * zeros, which as bare records read "occurrence 0 verified" (the first chunk of the first file, usually a database's
 * header page). A batch whose bytes are not the ones written fails its check, and it and everything after it are left
 * out: those chunks are fetched again.
 */
import { createHash } from 'node:crypto';

/** Bytes before each batch's records: count, then the first 4 bytes of their SHA-256. */
export const BATCH_HEADER = 8;

function checkOf(records: Uint8Array): Buffer {
  return createHash('sha256').update(records).digest().subarray(0, 4);
}

/** One batch of `values` (uint32 records), header included. */
export function encodeJournalBatch(values: ArrayLike<number>): Buffer {
  const b = Buffer.allocUnsafe(BATCH_HEADER + values.length * 4);
  b.writeUInt32LE(values.length, 0);
  for (let i = 0; i < values.length; i++) b.writeUInt32LE(values[i]! >>> 0, BATCH_HEADER + i * 4);
  checkOf(b.subarray(BATCH_HEADER)).copy(b, 4);
  return b;
}

/**
 * The records of a journal file's bytes, batch after batch, up to the first batch that is cut short or does not check
 * (zeros or other bytes a power cut left in its place): nothing from there on is trusted.
 */
export function decodeJournal(buf: Uint8Array): Uint32Array {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const parts: Uint32Array[] = [];
  let total = 0;
  for (let o = 0; o + BATCH_HEADER <= b.length; ) {
    const n = b.readUInt32LE(o);
    const end = o + BATCH_HEADER + n * 4;
    // A batch of no records is one (a resumed attempt with nothing verified yet writes one); only its check tells it
    // from the zeros a power cut leaves, which never check.
    if (end > b.length) break;
    const records = b.subarray(o + BATCH_HEADER, end);
    if (!checkOf(records).equals(b.subarray(o + 4, o + 8))) break;
    const part = new Uint32Array(n);
    for (let i = 0; i < n; i++) part[i] = records.readUInt32LE(i * 4);
    parts.push(part);
    total += n;
    o = end;
  }
  const out = new Uint32Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
