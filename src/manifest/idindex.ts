/**
 * A compact index of chunk ids: an open-addressing hash table of chunk numbers over a BigUint64Array of ids. It holds
 * 4 bytes per slot and creates no objects per chunk (a Map<bigint, ...> costs ~100 bytes and a BigInt per chunk, which
 * made a branch's memory grow with the company). Ids are compared as two 32-bit halves, so no BigInt is made either.
 * Pure.
 */
import { fail, ErrorCodes } from '../util/errors.js';

/** The 64-bit ids of a BigUint64Array seen as 32-bit halves (word 2i and 2i+1 of chunk i, in platform order). */
export function idWords(ids: BigUint64Array): Uint32Array {
  return new Uint32Array(ids.buffer, ids.byteOffset, ids.length * 2);
}

/**
 * Per-process random keys of the slot hash: which ids share a slot cannot be known in advance. Ids come from the
 * site's files, and xxh64 can be inverted for short inputs: a fixed hash would let someone who writes files at the
 * site make every id land in one slot (the plan then takes quadratic time).
 */
const KEYS = globalThis.crypto.getRandomValues(new Uint32Array(2));

/** Maps ids to the first chunk number (index into `ids`) added with that id. */
export class IdIndex {
  private readonly words: Uint32Array;
  /** Chunk number + 1 per slot; 0 is empty. */
  private readonly slots: Int32Array;
  private readonly mask: number;
  private count = 0;
  /** Slots looked at by lookups so far (at least one each): how well ids spread. */
  probes = 0;

  /**
   * @param ids the ids chunk numbers refer to
   * @param capacity how many chunks will be added at most
   */
  constructor(ids: BigUint64Array, capacity: number) {
    this.words = idWords(ids);
    let size = 16;
    // At most half full: probes stay short.
    while (size < capacity * 2) size *= 2;
    this.slots = new Int32Array(size);
    this.mask = size - 1;
  }

  /** Number of distinct ids added. */
  get size(): number {
    return this.count;
  }

  /** The slot holding the id (a, b), or the empty slot where it would go. */
  private slotOf(a: number, b: number): number {
    const w = this.words;
    // Each half keyed and through a full avalanche (murmur3's finalizer, a bijection) before the next is mixed in: the
    // low bits of a product depend only on the low bits of its factors, and a sum of the two halves' products keeps
    // only as many varying bits as each has alone.
    let s = fmix32(fmix32(a ^ KEYS[0]!) ^ b ^ KEYS[1]!) & this.mask;
    for (;;) {
      this.probes++;
      const v = this.slots[s]!;
      if (v === 0) return s;
      const k = (v - 1) * 2;
      if (w[k] === a && w[k + 1] === b) return s;
      s = (s + 1) & this.mask;
    }
  }

  /** Adds chunk g unless its id is present; returns the chunk number already holding the id, or -1 if g was added. */
  add(g: number): number {
    // Past half full probes grow long, and a full table would never find an empty slot.
    if (this.count * 2 >= this.slots.length) fail(ErrorCodes.INTERNAL, 'chunk id index over capacity');
    const s = this.slotOf(this.words[g * 2]!, this.words[g * 2 + 1]!);
    const v = this.slots[s]!;
    if (v !== 0) return v - 1;
    this.slots[s] = g + 1;
    this.count++;
    return -1;
  }

  /** The first chunk number added with the id given as words (from `idWords`), or -1. */
  findWords(a: number, b: number): number {
    return this.slots[this.slotOf(a, b)]! - 1;
  }

  /** The first chunk number added with chunk k's id of another id array's words, or -1. */
  findIn(words: Uint32Array, k: number): number {
    return this.findWords(words[k * 2]!, words[k * 2 + 1]!);
  }
}

/** murmur3's 32-bit finalizer: every input bit flips each output bit with probability about 1/2. */
function fmix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  return x ^ (x >>> 16);
}
