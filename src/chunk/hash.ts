/**
 * Chunk identity: xxh64 of the chunk's bytes (seed 0). Fast enough to verify every byte received and every byte read
 * by `verify --deep`; integrity against an attacker comes from the AEAD session and the SHA-256 manifest root, not
 * from xxh64 (see docs/SECURITY.md).
 */
import xxhash from 'xxhash-wasm';

/** The hash functions snapferry uses for chunk ids and block signatures. */
export interface Hasher {
  /** xxh64 of bytes, as an unsigned 64-bit bigint: the chunk id. */
  h64(data: Uint8Array): bigint;
  /** xxh32 of bytes: the weak per-block signature of the delta patch level. */
  h32(data: Uint8Array): number;
}

let ready: Promise<Hasher> | undefined;

/** Loads the WebAssembly hasher once per thread. */
export function loadHasher(): Promise<Hasher> {
  ready ??= xxhash().then((api) => ({
    h64: (data: Uint8Array) => api.h64Raw(data, 0n),
    h32: (data: Uint8Array) => api.h32Raw(data, 0) >>> 0,
  }));
  return ready;
}

/** A chunk id as 16 hex digits, for messages and logs. */
export function idHex(id: bigint): string {
  return id.toString(16).padStart(16, '0');
}
