/**
 * zstd through zstd-napi's low-level binding, so that decompression writes into a buffer of exactly the declared size:
 * a frame that would grow beyond it (a zstd bomb) fails instead of allocating.
 */
import { createRequire } from 'node:module';
import { fail, ErrorCodes } from '../util/errors.js';

interface CCtxT {
  compress(dst: Uint8Array, src: Uint8Array, level: number): number;
}
interface DCtxT {
  decompress(dst: Uint8Array, src: Uint8Array): number;
}
interface Binding {
  CCtx: new () => CCtxT;
  DCtx: new () => DCtxT;
  compressBound(n: number): number;
}

const binding = createRequire(import.meta.url)('zstd-napi/binding') as Binding;

/**
 * The size to give a thread's reused buffer that must hold n bytes: a power of two, at least 1 MiB. Jobs ask for sizes
 * that creep up (a 2 MiB job plus part of a chunk), and a buffer sized to each new largest request was replaced again
 * and again: the old ones, long-lived and so in the old generation, stayed until a major collection (a site's workers
 * held 12-13 MiB each of them after filling a store). Only the pages used are ever touched, so the headroom costs no memory.
 */
export function scratchSize(n: number): number {
  return Math.max(1 << 20, 2 ** Math.ceil(Math.log2(Math.max(n, 1))));
}

/** A reusable compressor (one per thread: contexts are not thread-safe). */
export class Compressor {
  private readonly cctx = new binding.CCtx();
  private scratch = Buffer.allocUnsafe(0);

  /**
   * Compresses src at level; returns a fresh buffer, or undefined when compression does not shrink the data by at
   * least 1/32 (already-compressed or random pages are then sent as they are, saving the receiver's time).
   */
  compress(src: Uint8Array, level: number): Buffer | undefined {
    const bound = binding.compressBound(src.length);
    if (this.scratch.length < bound) this.scratch = Buffer.allocUnsafe(scratchSize(bound));
    const n = this.cctx.compress(this.scratch, src, level);
    if (n >= src.length - (src.length >> 5)) return undefined;
    return Buffer.from(this.scratch.subarray(0, n));
  }

  /**
   * Compresses src at level into dst (at least `compressBound(src.length)` bytes) as one zstd frame, whatever the
   * ratio (an incompressible input becomes raw blocks, a few bytes larger); returns the frame's length.
   */
  compressInto(dst: Uint8Array, src: Uint8Array, level: number): number {
    return this.cctx.compress(dst, src, level);
  }
}

/** The most bytes a zstd frame of n input bytes can take. */
export function compressBound(n: number): number {
  return binding.compressBound(n);
}

/** A reusable decompressor that refuses output beyond the expected size. */
export class Decompressor {
  private readonly dctx = new binding.DCtx();

  private scratch = Buffer.allocUnsafe(0);

  /** Decompresses into a new buffer of exactly rawLen bytes; throws BAD_CHUNK on any mismatch. */
  decompress(src: Uint8Array, rawLen: number): Buffer {
    return this.decompressInto(Buffer.allocUnsafe(rawLen), src, rawLen);
  }

  /**
   * Decompresses into a reused scratch buffer (valid until the next call): the hot path of the puller, where fresh
   * buffers for every pack cost page faults and garbage collection.
   */
  decompressScratch(src: Uint8Array, rawLen: number): Buffer {
    if (this.scratch.length < rawLen) this.scratch = Buffer.allocUnsafe(scratchSize(rawLen));
    return this.decompressInto(this.scratch.subarray(0, rawLen), src, rawLen);
  }

  private decompressInto(dst: Buffer, src: Uint8Array, rawLen: number): Buffer {
    let n: number;
    try {
      n = this.dctx.decompress(dst, src);
    } catch (err) {
      return fail(ErrorCodes.BAD_CHUNK, `compressed data is corrupt or larger than declared (${(err as Error).message})`);
    }
    if (n !== rawLen) fail(ErrorCodes.BAD_CHUNK, `compressed data has ${n} bytes, ${rawLen} declared`);
    return dst;
  }
}
