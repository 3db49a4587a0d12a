/**
 * Chunk identity: xxh64 of the chunk's bytes (seed 0). Fast enough to verify every byte received and every byte read
 * by `verify --deep`; integrity against an attacker comes from the AEAD session and the SHA-256 manifest root, not
 * from xxh64 (see docs/SECURITY.md).
 */
import { createRequire } from 'node:module';

/** The hash functions snapferry uses for chunk ids and block signatures. */
export interface Hasher {
  /** xxh64 of bytes, as an unsigned 64-bit bigint: the chunk id. */
  h64(data: Uint8Array): bigint;
  /** xxh32 of bytes: the weak per-block signature of the delta patch level. */
  h32(data: Uint8Array): number;
}

let ready: Promise<Hasher> | undefined;

/** Which implementation a thread's hasher uses. */
export type HasherKind = 'native' | 'wasm';

/**
 * Loads the hasher once per thread: @node-rs/xxhash (a prebuilt native binding, no copy of the input) where its binary
 * loads, else xxhash-wasm (which copies every input into WebAssembly memory: about half the speed on 16 KiB chunks).
 * Both compute the same xxh64/xxh32 (a unit test holds them to it); SNAPFERRY_HASH=wasm forces the WebAssembly one.
 */
export function loadHasher(): Promise<Hasher> {
  ready ??= (process.env.SNAPFERRY_HASH === 'wasm' ? Promise.reject(new Error('wasm asked for')) : loadNative()).catch(() => loadWasm());
  return ready;
}

type NativeXxhash = typeof import('@node-rs/xxhash');

/**
 * The binding itself. Through require, not import (which lexes a CommonJS package's source first), and straight from
 * the binary's own package where npm installed the one for this platform: the package's loader reads /usr/bin/ldd to
 * tell glibc from musl. Together 20-40 ms of every start from a cold disk (verify --deep counts them).
 */
function requireNative(): NativeXxhash {
  const require = createRequire(import.meta.url);
  if (process.platform === 'linux' && process.arch === 'x64' && !process.env.NAPI_RS_NATIVE_LIBRARY_PATH) {
    try {
      // On musl this binary does not load and the package's own loader below picks the right one.
      return require('@node-rs/xxhash-linux-x64-gnu') as NativeXxhash;
    } catch {
      /* not installed here, or not this libc */
    }
  }
  return require('@node-rs/xxhash') as NativeXxhash;
}

/** The native binding's hasher; rejects where no prebuilt binary fits this platform. */
export async function loadNative(): Promise<Hasher & { kind: HasherKind }> {
  const { xxh64, xxh32 } = requireNative();
  xxh64(new Uint8Array(1), 0n); // fails here, not on first use, if the binary cannot run
  return { kind: 'native' as const, h64: (data) => xxh64(data, 0n), h32: (data) => xxh32(data, 0) >>> 0 };
}

/** The WebAssembly hasher (xxhash-wasm): runs everywhere. */
export async function loadWasm(): Promise<Hasher & { kind: HasherKind }> {
  // Loaded only where it is used: most platforms never need it.
  const { default: xxhash } = await import('xxhash-wasm');
  const api = await xxhash();
  return { kind: 'wasm', h64: (data) => api.h64Raw(data, 0n), h32: (data) => api.h32Raw(data, 0) >>> 0 };
}

/** A chunk id as 16 hex digits, for messages and logs. */
export function idHex(id: bigint): string {
  return id.toString(16).padStart(16, '0');
}
