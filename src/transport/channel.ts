/**
 * A WebSocket as an ordered message channel with backpressure: `send` resolves once the bytes are handed to the
 * kernel and waits while too much is still buffered, so a slow peer or link never makes us hold more than `highWater`
 * bytes for it. Also counts every byte the socket received (HTTP upgrade and WebSocket framing included).
 */
import { WebSocket } from './ws.js';
import type { Socket } from 'node:net';
import { SnapferryError, ErrorCodes, toSnapferryError, printable } from '../util/errors.js';
import { MAX_FRAME } from '../protocol/messages.js';
import type { TokenBucket } from '../util/rate.js';

/** Options of a channel. */
export interface ChannelOptions {
  highWater?: number;
  /**
   * End the channel (TIMEOUT) when a send has waited this long for the peer to read and no message was handed to the
   * kernel meanwhile: a peer that stops reading must not hold its session and buffers for ever. 0: wait for ever.
   */
  drainTimeoutMs?: number;
  /** End the channel (LIMIT) when more than this many received messages wait unread (default: unbounded). */
  maxQueuedMessages?: number;
  /** End the channel (LIMIT) when received messages waiting unread exceed this many bytes (default: unbounded). */
  maxQueuedBytes?: number;
  /**
   * Stop reading the socket while received messages waiting unread exceed this many bytes, and read on once they are
   * down to half (default: never): a peer that sends what was not asked for then meets TCP's flow control, not ever
   * more of our memory.
   */
  pauseAtBytes?: number;
  /**
   * A cap on what is read (`--bwlimit` at the receiving end): the socket is not read while the bucket is in debt, so
   * the link itself is held to the rate by TCP's flow control (pacing after the bytes have arrived caps nothing on the
   * wire: a window of requests' answers would come at the link's full speed).
   */
  readLimit?: TokenBucket;
  /**
   * The TCP socket under a TLS one (a wss:// site): byte counts are then of what crossed the wire, TLS records and
   * handshake included (the TLS socket counts the plain text).
   */
  tcpSocket?: () => Socket | undefined;
}

/**
 * Bytes a link must bring within a timeout period to count as alive while a message is on its way: a slow link's
 * 512 KiB pack may take minutes, and a trickle below this (a PONG or two a second) is no transfer.
 */
export const MIN_PROGRESS_BYTES = 16 << 10;
/** The most bytes a WebSocket frame's header takes (counted with a control frame's payload). */
export const WS_HEADER_MAX = 14;

export class Channel {
  private queue: Buffer[] = [];
  private waiters: Array<{ resolve: (b: Buffer) => void; reject: (e: unknown) => void }> = [];
  private closedWith?: SnapferryError;
  private buffered = 0;
  private drainWaiters: Array<() => void> = [];
  private readonly highWater: number;
  private readonly drainTimeoutMs: number;
  /** Armed only while a send waits for the peer to read (no timer on the hot path). */
  private drainTimer?: NodeJS.Timeout;
  /** Messages handed to the kernel so far: tells a slow link (some go) from a peer that reads nothing. */
  private sendsDone = 0;
  private queuedBytes = 0;
  private readonly maxQueuedMessages: number;
  private readonly maxQueuedBytes: number;
  private readonly pauseAtBytes: number;
  private paused = false;
  private readonly readLimit?: TokenBucket;
  private readonly tcpSocket?: () => Socket | undefined;
  /** Set while reads are held back for readLimit; the socket is read again when it fires (unless paused). */
  private holdTimer?: NodeJS.Timeout;
  private heldUntil = 0;
  /** Bytes of WebSocket control frames received (never progress: a peer could ping a wait open for ever). */
  private controlBytes = 0;
  private handler?: (msg: Buffer) => void;
  /** How many sends had to wait for the peer or the link (backpressure): tells a slow link from a fast one. */
  waits = 0;
  /** Called for each message instead of queueing, when set; messages queued before are handed to it at once, in order. */
  get onMessage(): ((msg: Buffer) => void) | undefined {
    return this.handler;
  }

  set onMessage(h: ((msg: Buffer) => void) | undefined) {
    this.handler = h;
    if (!h) return;
    const queued = this.queue.splice(0);
    this.queuedBytes = 0;
    this.readOn();
    for (const m of queued) h(m);
  }
  /** Called once when the channel closes. */
  onClose?: (err: SnapferryError) => void;

  constructor(
    readonly ws: WebSocket,
    opts: ChannelOptions = {},
  ) {
    this.highWater = opts.highWater ?? 4 << 20;
    this.drainTimeoutMs = opts.drainTimeoutMs ?? 0;
    this.maxQueuedMessages = opts.maxQueuedMessages ?? Infinity;
    this.maxQueuedBytes = opts.maxQueuedBytes ?? Infinity;
    this.pauseAtBytes = opts.pauseAtBytes ?? Infinity;
    this.readLimit = opts.readLimit;
    this.tcpSocket = opts.tcpSocket;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) return this.abort(new SnapferryError(ErrorCodes.PROTOCOL, 'peer sent a text message'));
      if (this.readLimit) this.holdReads(this.readLimit.debit(data.length));
      if (this.onMessage) return this.onMessage(data);
      const w = this.waiters.shift();
      if (w) return w.resolve(data);
      // ws reads on whatever we do: a peer that sends without waiting for answers must not grow the queue for ever.
      if (this.queue.length >= this.maxQueuedMessages || this.queuedBytes + data.length > this.maxQueuedBytes) {
        return this.abort(new SnapferryError(ErrorCodes.LIMIT, `peer sent ${this.queue.length + 1} messages (${this.queuedBytes + data.length} bytes) without waiting for answers`));
      }
      this.queue.push(data);
      this.queuedBytes += data.length;
      if (this.queuedBytes > this.pauseAtBytes && !this.paused) {
        this.paused = true;
        ws.pause();
      }
    });
    const control = (data: Buffer) => (this.controlBytes += data.length + WS_HEADER_MAX);
    ws.on('ping', control);
    ws.on('pong', control);
    ws.on('close', (code: number, reason: Buffer) => {
      // The reason is the peer's text, unsealed (anyone on the path, or a peer without the secret, can write it).
      const why = printable(reason.toString()) || `connection closed (${code})`;
      this.finish(new SnapferryError(ErrorCodes.CONNECTION_LOST, why, { retryable: true }));
    });
    ws.on('error', (err) => this.finish(toSnapferryError(err)));
  }

  /** Reads the socket again after a pause (pauseAtBytes), unless reads are held for the rate. */
  private readOn(): void {
    if (!this.paused) return;
    this.paused = false;
    if (!this.holdTimer && this.ws.readyState === this.ws.OPEN) this.ws.resume();
  }

  /** Stops reading the socket for `ms` (the read limit's debt), or longer if a hold is already running. */
  private holdReads(ms: number): void {
    if (ms <= 0 || this.closedWith) return;
    this.heldUntil = Math.max(this.heldUntil, performance.now() + ms);
    if (this.holdTimer) return;
    this.ws.pause();
    const check = () => {
      const left = this.heldUntil - performance.now();
      if (left > 0 && !this.closedWith) {
        this.holdTimer = setTimeout(check, left);
        return;
      }
      this.holdTimer = undefined;
      if (!this.paused && this.ws.readyState === this.ws.OPEN) this.ws.resume();
    };
    this.holdTimer = setTimeout(check, ms);
  }

  /** The socket the WebSocket reads (under TLS, the TLS socket: its counts are of the plain text). */
  get socket(): Socket | undefined {
    return (this.ws as unknown as { _socket?: Socket })._socket;
  }

  /**
   * Whether the link has brought at least MIN_PROGRESS_BYTES of data frames since progressBytes was `mark`, or reads
   * are held back for the read limit (the peer has sent; we are not reading) and `holdCounts` (the caller's say: what
   * put the bucket in debt may be what it does not count, a PONG): a message still on its way counts as hearing from
   * the peer, a trickle or WebSocket pings do not.
   */
  alive(mark: number, holdCounts = true): boolean {
    return (holdCounts && this.holdTimer !== undefined) || this.progressBytes - mark >= MIN_PROGRESS_BYTES;
  }

  /** Bytes received on the socket so far, less WebSocket control frames (pings and pongs): see alive(). */
  get progressBytes(): number {
    return this.bytesRead - this.controlBytes;
  }

  /** Bytes received on the socket so far (the WebSocket's own: under TLS the plain text, as controlBytes counts). */
  get bytesRead(): number {
    return this.socket?.bytesRead ?? 0;
  }

  /**
   * Bytes that crossed the wire so far: under TLS those of the TCP socket beneath, its handshake and records included
   * (bytesOnWire). Not for progress: pings' and PONGs' TLS overhead would count as data there.
   */
  get wireBytesRead(): number {
    return (this.tcpSocket?.() ?? this.socket)?.bytesRead ?? 0;
  }

  /** Bytes written to the socket so far. */
  get bytesWritten(): number {
    return this.socket?.bytesWritten ?? 0;
  }

  /** Whether the channel is closed or closing (the socket gone, the close event not yet here: a send would be lost). */
  get isClosed(): boolean {
    return this.closedWith !== undefined || this.ws.readyState === this.ws.CLOSING || this.ws.readyState === this.ws.CLOSED;
  }

  /**
   * Next message, in order. Rejects when the channel closes or after timeoutMs; with `whileBytesCome`, only once a
   * timeout period passes without progress (alive()): a large message over a slow link. Never for a wait whose peer
   * is not yet authenticated, which must end on time whatever it sends.
   */
  next(timeoutMs = 0, whileBytesCome = false): Promise<Buffer> {
    const queued = this.queue.shift();
    if (queued) {
      this.queuedBytes -= queued.length;
      if (this.queuedBytes <= this.pauseAtBytes / 2) this.readOn();
      return Promise.resolve(queued);
    }
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const w = {
        resolve: (b: Buffer) => {
          if (timer) clearTimeout(timer);
          resolve(b);
        },
        reject: (e: unknown) => {
          if (timer) clearTimeout(timer);
          reject(e);
        },
      };
      this.waiters.push(w);
      if (timeoutMs > 0) {
        let mark = this.progressBytes;
        const expire = () => {
          // A large message on its way over a slow link is not silence (a 1 MiB manifest part at 7 KB/s takes 150 s).
          if (whileBytesCome && this.alive(mark)) {
            mark = this.progressBytes;
            timer = setTimeout(expire, timeoutMs);
            return;
          }
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new SnapferryError(ErrorCodes.TIMEOUT, `peer sent nothing for ${Math.round(timeoutMs / 1000)} s`, { retryable: true }));
        };
        timer = setTimeout(expire, timeoutMs);
      }
    });
  }

  /** Sends one binary message; waits while more than highWater bytes are unsent. */
  async send(data: Buffer | Buffer[]): Promise<void> {
    if (this.closedWith) throw this.closedWith;
    if (this.buffered > this.highWater) this.waits++;
    while (this.buffered > this.highWater) {
      this.armDrainDeadline();
      await new Promise<void>((r) => this.drainWaiters.push(r));
      if (this.closedWith) throw this.closedWith;
    }
    const buf = Array.isArray(data) ? Buffer.concat(data) : data;
    if (buf.length > MAX_FRAME + 1024) throw new SnapferryError(ErrorCodes.INTERNAL, 'message too large');
    this.buffered += buf.length;
    this.ws.send(buf, { binary: true, compress: false }, () => {
      this.buffered -= buf.length;
      this.sendsDone++;
      if (this.buffered <= this.highWater) {
        if (this.drainTimer) {
          clearTimeout(this.drainTimer);
          this.drainTimer = undefined;
        }
        const ws = this.drainWaiters;
        this.drainWaiters = [];
        for (const w of ws) w();
      }
    });
  }

  /**
   * While sends wait for the peer to read: ends the channel if drainTimeoutMs pass with no message handed to the
   * kernel (a link that moves, however slowly, gets another period).
   */
  private armDrainDeadline(): void {
    if (this.drainTimer || this.drainTimeoutMs <= 0 || this.closedWith) return;
    const done = this.sendsDone;
    this.drainTimer = setTimeout(() => {
      this.drainTimer = undefined;
      if (this.closedWith || this.buffered <= this.highWater) return;
      if (this.sendsDone !== done) return this.armDrainDeadline();
      const secs = Math.round(this.drainTimeoutMs / 1000);
      this.abort(new SnapferryError(ErrorCodes.TIMEOUT, `peer read nothing for ${secs} s (${this.buffered} bytes waiting to be sent)`, { retryable: true }));
    }, this.drainTimeoutMs);
  }

  /** Closes the channel; pending receivers and senders fail with `err` (or a normal close). */
  close(code = 1000, reason = ''): void {
    this.finish(new SnapferryError(ErrorCodes.CONNECTION_LOST, reason || 'closed', { retryable: false }));
    try {
      this.ws.close(code, reason.slice(0, 120));
    } catch {
      this.ws.terminate();
    }
  }

  /**
   * Resolves once the connection has closed (after close(): the peer's answer to our close frame came and the socket
   * ended), or after `ms` at the latest.
   */
  closedWithin(ms: number): Promise<void> {
    if (this.ws.readyState === this.ws.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.ws.off('close', done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.ws.once('close', done);
    });
  }

  /** Ends the connection at once (hostile or broken peer). */
  abort(err: SnapferryError): void {
    this.finish(err);
    this.ws.terminate();
  }

  private finish(err: SnapferryError): void {
    if (this.closedWith) return;
    this.closedWith = err;
    clearTimeout(this.drainTimer);
    this.drainTimer = undefined;
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    for (const w of this.waiters) w.reject(err);
    this.waiters = [];
    for (const w of this.drainWaiters) w();
    this.drainWaiters = [];
    this.onClose?.(err);
  }
}
