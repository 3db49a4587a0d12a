/**
 * Shared tools of the fault suite (not a test file): a fault-injecting TCP proxy that understands WebSocket framing,
 * a raw WebSocket client for hostile peers, a seeded PRNG, and checks on CLI failures and folders.
 * Everything listens on 127.0.0.1 only.
 */
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** mulberry32: a small seeded PRNG, so that a failing random trial can be replayed from its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------------------------------------------------------
// WebSocket framing (RFC 6455), just enough to cut a byte stream into the units the fault proxy works on.

/** Header length and total length of the frame at the start of buf, or undefined if incomplete. */
export function frameExtent(buf: Buffer): { header: number; total: number } | undefined {
  if (buf.length < 2) return undefined;
  let len = buf[1]! & 0x7f;
  let off = 2;
  if (len === 126) {
    if (buf.length < 4) return undefined;
    len = buf.readUInt16BE(2);
    off = 4;
  } else if (len === 127) {
    if (buf.length < 10) return undefined;
    len = Number(buf.readBigUInt64BE(2));
    off = 10;
  }
  if (buf[1]! & 0x80) off += 4;
  if (buf.length < off + len) return undefined;
  return { header: off, total: off + len };
}

/** One unit of a direction of a WebSocket connection: the HTTP head, or one whole frame. */
export interface Unit {
  kind: 'head' | 'frame';
  bytes: Buffer;
  /** Frame number in this direction (0 = first frame after the HTTP head); -1 for the head. */
  index: number;
  /** Where the payload starts in bytes (frames). */
  payloadOffset: number;
}

/** Cuts a byte stream into the HTTP head and whole frames. Garbage that never completes a unit stays buffered. */
export class UnitSplitter {
  private buf: Buffer = Buffer.alloc(0);
  private headDone = false;
  private frames = 0;

  push(data: Buffer): Unit[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    const out: Unit[] = [];
    for (;;) {
      if (!this.headDone) {
        const end = this.buf.indexOf('\r\n\r\n');
        if (end < 0) break;
        out.push({ kind: 'head', bytes: this.buf.subarray(0, end + 4), index: -1, payloadOffset: 0 });
        this.buf = this.buf.subarray(end + 4);
        this.headDone = true;
        continue;
      }
      const ext = frameExtent(this.buf);
      if (!ext) break;
      out.push({ kind: 'frame', bytes: this.buf.subarray(0, ext.total), index: this.frames++, payloadOffset: ext.header });
      this.buf = this.buf.subarray(ext.total);
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The fault proxy.

export type Direction = 's2c' | 'c2s';

/** What a hook does with a unit: the bytes to forward (in order), then optionally cut or end the connection. */
export interface Action {
  out: Buffer[];
  /** 'cut': destroy both sockets at once; 'end': half-close both (FIN) after the bytes; 'stall': stop forwarding forever. */
  after?: 'cut' | 'end' | 'stall';
  /** Wait this long before forwarding (a stall that ends). */
  delayMs?: number;
}

export interface ProxyConn {
  /** 0-based number of this connection through the proxy. */
  index: number;
  /** Bytes forwarded so far, per direction. */
  forwarded: Record<Direction, number>;
  /** Frames seen so far, per direction. */
  frames: Record<Direction, number>;
  /** Destroys both sockets at once. */
  cut(): void;
}

export type Hook = (u: Unit, c: ProxyConn) => Action | undefined;

/** Per connection: hooks for each direction (undefined = forward unchanged), or 'refuse' to close it at once. */
export type Plan = (index: number) => { s2c?: Hook; c2s?: Hook } | 'refuse';

/**
 * A TCP proxy on 127.0.0.1 between a puller and a site. Both directions are cut into units (HTTP head, whole
 * WebSocket frames) and passed through the plan's hooks, in order, so faults land at exact protocol positions; a hook
 * may also forward only part of a unit (a cut or a truncation mid-frame) or change bytes.
 */
export class FaultProxy {
  private server?: net.Server;
  private sockets = new Set<net.Socket>();
  port = 0;
  connections = 0;

  constructor(
    private readonly targetPort: number,
    private readonly plan: Plan,
  ) {}

  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.server = net.createServer((client) => this.onClient(client));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', () => resolve()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  private track(s: net.Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
  }

  private onClient(client: net.Socket): void {
    const index = this.connections++;
    this.track(client);
    const hooks = this.plan(index);
    if (hooks === 'refuse') {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    this.track(upstream);
    let dead = false;
    const conn: ProxyConn = {
      index,
      forwarded: { s2c: 0, c2s: 0 },
      frames: { s2c: 0, c2s: 0 },
      cut: () => {
        dead = true;
        client.destroy();
        upstream.destroy();
      },
    };
    const end = () => {
      dead = true;
      client.end();
      upstream.end();
    };
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    const pipe = (dir: Direction, from: net.Socket, to: net.Socket, hook?: Hook) => {
      const splitter = new UnitSplitter();
      // Units are handled strictly in order, even when a hook delays one.
      let chain = Promise.resolve();
      let stalled = false;
      from.on('data', (data: Buffer) => {
        if (dead || stalled) return;
        if (!hook) {
          conn.forwarded[dir] += data.length;
          to.write(data);
          return;
        }
        for (const u of splitter.push(data)) {
          if (u.kind === 'frame') conn.frames[dir]++;
          chain = chain.then(async () => {
            if (dead || stalled) return;
            const a = hook(u, conn) ?? { out: [u.bytes] };
            if (a.delayMs) await sleep(a.delayMs);
            if (dead) return;
            for (const b of a.out) {
              conn.forwarded[dir] += b.length;
              to.write(b);
            }
            if (a.after === 'cut') conn.cut();
            else if (a.after === 'end') end();
            else if (a.after === 'stall') stalled = true;
          });
        }
      });
    };
    pipe('c2s', client, upstream, hooks.c2s);
    pipe('s2c', upstream, client, hooks.s2c);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

/** A hook that forwards the first n bytes of direction `dir` (raw semantics: may split a frame), then cuts or ends. */
export function afterBytes(dir: Direction, n: number, then: 'cut' | 'end'): Hook {
  return (u, c) => {
    const left = n - c.forwarded[dir];
    if (left > u.bytes.length) return { out: [u.bytes] };
    return { out: [u.bytes.subarray(0, Math.max(0, left))], after: then };
  };
}

/** Like afterBytes, but also cuts once `ms` have passed since the first unit of this direction (a link that drops often). */
export function afterBytesOrMs(dir: Direction, n: number, ms: number): Hook {
  let start: number | undefined;
  const bytes = afterBytes(dir, n, 'cut');
  return (u, c) => {
    start ??= Date.now();
    if (Date.now() - start >= ms) return { out: [], after: 'cut' };
    return bytes(u, c);
  };
}

// ---------------------------------------------------------------------------------------------------------------

/**
 * A TCP proxy on 127.0.0.1 that carries the site's bytes to the puller at a steady `bytesPerSecond` (in slices of a
 * 20th of a second), the other way at full speed: a slow but live link, on which one large message takes longer to
 * arrive than a timeout. It reads the site only as fast as it forwards (TCP's flow control holds the site back).
 */
export class ThrottleProxy {
  private server?: net.Server;
  private sockets = new Set<net.Socket>();
  port = 0;

  constructor(
    private readonly targetPort: number,
    private readonly bytesPerSecond: number,
  ) {}

  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.targetPort, '127.0.0.1');
      for (const sock of [client, upstream]) {
        this.sockets.add(sock);
        sock.on('close', () => this.sockets.delete(sock));
        sock.on('error', () => undefined);
      }
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      client.pipe(upstream);
      const slice = Math.max(1, Math.floor(this.bytesPerSecond / 20));
      const held: Buffer[] = [];
      let timer: NodeJS.Timeout | undefined;
      const tick = () => {
        let room = slice;
        while (room > 0 && held.length > 0) {
          const b = held[0]!;
          const n = Math.min(room, b.length);
          client.write(b.subarray(0, n));
          if (n === b.length) held.shift();
          else held[0] = b.subarray(n);
          room -= n;
        }
        if (held.length > 0) timer = setTimeout(tick, 50);
        else {
          timer = undefined;
          upstream.resume();
        }
      };
      upstream.on('data', (d: Buffer) => {
        held.push(d);
        upstream.pause();
        if (!timer) timer = setTimeout(tick, 50);
      });
      upstream.on('close', () => clearTimeout(timer));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', () => resolve()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  async close(): Promise<void> {
    for (const sock of this.sockets) sock.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// A raw WebSocket client: sends exactly the bytes a hostile peer wants and records every byte it receives.

export class RawWs {
  readonly received: Buffer[] = [];
  readonly messages: Buffer[] = [];
  closedAt?: number;
  /** When the peer's WebSocket close frame arrived (the peer started closing). */
  closeFrameAt?: number;
  readonly openedAt = Date.now();
  closed: Promise<void>;
  private waiters: Array<(b: Buffer | undefined) => void> = [];
  private frameBuf: Buffer = Buffer.alloc(0);

  private constructor(readonly sock: net.Socket) {
    this.closed = new Promise((resolve) => {
      sock.on('close', () => {
        this.closedAt = Date.now();
        for (const w of this.waiters) w(undefined);
        this.waiters = [];
        resolve();
      });
    });
    sock.on('error', () => undefined);
  }

  /** Connects and completes the HTTP upgrade (nothing of the snapferry handshake is sent). */
  static open(port: number, timeoutMs = 5000): Promise<RawWs> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(port, '127.0.0.1');
      const ws = new RawWs(sock);
      let head = Buffer.alloc(0);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error('upgrade timed out'));
      }, timeoutMs);
      const onData = (d: Buffer) => {
        ws.received.push(d);
        head = Buffer.concat([head, d]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        clearTimeout(timer);
        sock.off('data', onData);
        if (!/^HTTP\/1\.1 101/.test(head.toString('latin1'))) {
          sock.destroy();
          reject(new Error(`upgrade refused: ${head.subarray(0, end).toString('latin1').split('\r\n')[0]}`));
          return;
        }
        sock.on('data', (x: Buffer) => ws.onData(x));
        const rest = head.subarray(end + 4);
        if (rest.length) ws.onFrames(rest);
        resolve(ws);
      };
      sock.on('data', onData);
      sock.once('close', () => {
        clearTimeout(timer);
        reject(new Error('closed during upgrade'));
      });
      sock.on('connect', () => {
        sock.write(
          'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
            `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        );
      });
    });
  }

  private onData(d: Buffer): void {
    this.received.push(d);
    this.onFrames(d);
  }

  private onFrames(d: Buffer): void {
    this.frameBuf = Buffer.concat([this.frameBuf, d]);
    for (;;) {
      const ext = frameExtent(this.frameBuf);
      if (!ext) return;
      const opcode = this.frameBuf[0]! & 0x0f;
      const payload = Buffer.from(this.frameBuf.subarray(ext.header, ext.total));
      this.frameBuf = this.frameBuf.subarray(ext.total);
      if (opcode === 0x8) this.closeFrameAt ??= Date.now();
      if (opcode === 0x2 || opcode === 0x1) {
        const w = this.waiters.shift();
        if (w) w(payload);
        else this.messages.push(payload);
      }
    }
  }

  /** Every byte received so far (HTTP head included). */
  get allReceived(): Buffer {
    return Buffer.concat(this.received);
  }

  /** Sends one masked frame with `payload` (binary by default). */
  send(payload: Buffer, opcode = 0x2): void {
    this.sock.write(encodeClientFrame(payload, opcode));
  }

  /** The next message, or undefined when the peer closed or timeoutMs passed. */
  next(timeoutMs = 5000): Promise<Buffer | undefined> {
    const m = this.messages.shift();
    if (m) return Promise.resolve(m);
    if (this.closedAt !== undefined) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== done);
        resolve(undefined);
      }, timeoutMs);
      const done = (b: Buffer | undefined) => {
        clearTimeout(timer);
        resolve(b);
      };
      this.waiters.push(done);
    });
  }

  destroy(): void {
    this.sock.destroy();
  }
}

/** A masked client frame (FIN set). */
export function encodeClientFrame(payload: Buffer, opcode = 0x2, declaredLength = payload.length): Buffer {
  let head: Buffer;
  if (declaredLength < 126) {
    head = Buffer.from([0x80 | opcode, 0x80 | declaredLength]);
  } else if (declaredLength < 65536) {
    head = Buffer.alloc(4);
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 126;
    head.writeUInt16BE(declaredLength, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(declaredLength), 2);
  }
  const mask = randomBytes(4);
  const body = Buffer.allocUnsafe(payload.length);
  for (let i = 0; i < payload.length; i++) body[i] = payload[i]! ^ mask[i & 3]!;
  return Buffer.concat([head, mask, body]);
}

// ---------------------------------------------------------------------------------------------------------------
// Checks.

/** The CLI's failure contract: exactly one line `snapferry: <message> [SNAPFERRY_E_...]`; returns the code. */
export function errorCodeOf(stderr: string): string {
  const lines = stderr.trim().split('\n').filter((l) => l.startsWith('snapferry: '));
  const last = lines[lines.length - 1] ?? '';
  const m = /^snapferry: .+ \[(SNAPFERRY_E_[A-Z_]+)\]$/.exec(last);
  return m ? m[1]! : `no one-line error in: ${JSON.stringify(stderr.slice(-400))}`;
}

/** Lines of stderr that are not retry notes: a failed pull prints exactly one (the error). */
export function errorLines(stderr: string): string[] {
  return stderr
    .trim()
    .split('\n')
    .filter((l) => l && !/retrying in [\d.]+ s \(attempt \d+ of \d+\)$/.test(l) && !/fetching the newer generation$/.test(l));
}

/** Every path under root (relative, sorted), for "nothing written outside DIR" checks. */
export function listTree(root: string, skip: (rel: string) => boolean = () => false): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    const abs = rel ? path.join(root, rel) : root;
    let names: string[];
    try {
      names = fs.readdirSync(abs);
    } catch {
      return;
    }
    for (const n of names.sort()) {
      const r = rel ? `${rel}/${n}` : n;
      if (skip(r)) continue;
      out.push(r);
      const st = fs.lstatSync(path.join(root, r));
      if (st.isDirectory()) walk(r);
    }
  };
  walk('');
  return out;
}
