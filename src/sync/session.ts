/**
 * An authenticated, sealed session over a Channel: the handshake of protocol/handshake.ts, then every frame sealed
 * with protocol/seal.ts. Before authentication only handshake messages (and a pre-auth error) cross the wire.
 */
import net from 'node:net';
import tls from 'node:tls';
import { WebSocket } from '../transport/ws.js';
import { Channel } from '../transport/channel.js';
import { isSiteUrl } from '../transport/url.js';
import { ClientHandshake, ServerHandshake, MAX_HANDSHAKE_MESSAGE } from '../protocol/handshake.js';
import { FrameSealer, FrameOpener, DIR_CLIENT_TO_SERVER, DIR_SERVER_TO_CLIENT, TAG_LEN } from '../protocol/seal.js';
import { MsgType, MAX_FRAME, encodeJson, decodeJson, textOf, ErrorMsg } from '../protocol/messages.js';
import { SnapferryError, ErrorCodes, ErrorCode, fail, toSnapferryError, printable } from '../util/errors.js';
import type { TokenBucket } from '../util/rate.js';

/** The largest plaintext a sealed frame may carry: the frame limit less the AEAD tag. */
export const MAX_MESSAGE = MAX_FRAME + 1024 - TAG_LEN;

/** First byte of an unsealed pre-authentication error. */
const PREAUTH_ERROR = 0xee;

/** The header of the site's own 503 (all its connections taken), told apart from a proxy's 503 (its site down). */
export const BUSY_HEADER = 'X-Snapferry-Busy';

/**
 * The error of an upgrade answered with `status` instead of 101. The site's own 503 is busy; a proxy's 502, 503 or 504
 * means the site behind it is down or overloaded for now: tried again like a site that refuses connections (a
 * follower behind nginx ended for good when its site restarted). Any other answer is not a snapferry site's.
 */
function upgradeRefused(url: string, status: number, ours: boolean): SnapferryError {
  if (status === 503 && ours) return new SnapferryError(ErrorCodes.BUSY, `${url} is busy (too many connections); try again later`, { retryable: true });
  if (status === 502 || status === 503 || status === 504) {
    return new SnapferryError(ErrorCodes.UNREACHABLE, `cannot reach ${url}: it answered HTTP ${status} (a proxy whose site is down or overloaded)`, { retryable: true });
  }
  return new SnapferryError(ErrorCodes.PROTOCOL, `${url} is not a snapferry site (HTTP ${status})`);
}

/** A sealed session: send and receive typed messages. */
export class SecureSession {
  constructor(
    readonly channel: Channel,
    private readonly sealer: FrameSealer,
    private readonly opener: FrameOpener,
    /** The authenticated peer id. */
    readonly peerId: string,
  ) {}

  /**
   * Seals and sends one message (parts are concatenated). A message over the frame limit is refused before it is
   * sealed: sealing spends a counter, and the peer, which never sees that frame, could then open nothing after it
   * (not even the ERROR that says why).
   */
  send(parts: Buffer | Buffer[]): Promise<void> {
    const size = Array.isArray(parts) ? parts.reduce((n, p) => n + p.length, 0) : parts.length;
    if (size > MAX_MESSAGE) return Promise.reject(new SnapferryError(ErrorCodes.INTERNAL, `message too large (${size} bytes)`));
    return this.channel.send(this.sealer.seal(parts));
  }

  sendJson(type: number, body: unknown): Promise<void> {
    return this.send(encodeJson(type, body));
  }

  /** Sends a typed error to the peer (best effort) — the peer prints it as its one-line error. */
  async sendError(err: SnapferryError): Promise<void> {
    try {
      await this.sendJson(MsgType.ERROR, { code: err.code, message: err.message } satisfies ErrorMsg);
    } catch {
      /* peer gone */
    }
  }

  /** Opens one received frame. Throws PROTOCOL on a forged/replayed/reordered frame. */
  open(frame: Buffer): Buffer {
    const msg = this.opener.open(frame);
    if (msg.length === 0) fail(ErrorCodes.PROTOCOL, 'empty message');
    return msg;
  }

  /**
   * Receives and opens the next message; an ERROR message from the peer is thrown as its typed error. `whileBytesCome`:
   * see Channel.next.
   */
  async recv(timeoutMs = 0, whileBytesCome = false): Promise<Buffer> {
    const msg = this.open(await this.channel.next(timeoutMs, whileBytesCome));
    if (msg[0] === MsgType.ERROR) throw peerError(msg);
    return msg;
  }

  close(reason = ''): void {
    this.channel.close(1000, reason);
  }
}

/** Turns a peer's ERROR message into a SnapferryError with the peer's code. */
export function peerError(msg: Buffer): SnapferryError {
  const e = decodeJson<ErrorMsg>(msg);
  const code = Object.values(ErrorCodes).includes(e.code as ErrorCode) ? (e.code as ErrorCode) : ErrorCodes.PROTOCOL;
  return new SnapferryError(code, printable(textOf(e.message ?? 'peer reported an error')).slice(0, 500));
}

export { printable };

/** Options for connecting to a site. */
export interface ConnectOptions {
  secret: Buffer;
  peerId?: string;
  timeoutMs?: number;
  /** Caps what is read from the site (`pull --bwlimit`): see ChannelOptions.readLimit. */
  readLimit?: TokenBucket;
  /** Ends the attempt at once when aborted (a follower told to stop while it connects). */
  signal?: AbortSignal;
}

/** Connects to ws://host:port, authenticates both ways and returns the session. */
export async function connect(url: string, opts: ConnectOptions): Promise<SecureSession> {
  const timeoutMs = opts.timeoutMs ?? 15_000;
  // URL.canParse too: ws would throw a bare "Invalid URL" for "ws://[::1".
  if (!isSiteUrl(url) || !URL.canParse(url)) fail(ErrorCodes.USAGE, `not a site URL: ${url} (expected ws://HOST:PORT)`);
  // What ws would refuse with a bare message (a fragment), send in the clear (a user and password) or not reach (port 0).
  const parsed = new URL(url);
  const odd = url.includes('#') ? 'a fragment' : parsed.username || parsed.password ? 'a user name or password' : parsed.port === '0' ? 'port 0' : undefined;
  if (odd) fail(ErrorCodes.USAGE, `not a site URL: ${url} holds ${odd} (expected ws://HOST:PORT)`);
  // Whether TCP got through: a site that took the connection and gave no upgrade is there (tried again), one that never
  // answered the connection is not (reported at once on first contact, as a refused one).
  let tcpConnected = false;
  // wss:// is TLS (a site behind a TLS-terminating proxy), as ws itself would connect: a plain socket there sent the
  // handshake in the clear, and a plain site took a wss:// URL as ws://.
  const secure = parsed.protocol === 'wss:';
  // Under TLS, the TCP socket is made here and kept: bytesOnWire counts what crossed the wire, not the plain text.
  let tcp: net.Socket | undefined;
  const createConnection = ((o: tls.ConnectionOptions & net.TcpNetConnectOpts) => {
    tcp = net.connect(o).once('connect', () => (tcpConnected = true));
    return secure ? tls.connect({ ...o, socket: tcp, servername: o.servername ?? (net.isIP(o.host ?? '') ? undefined : o.host) }) : tcp;
  }) as unknown as typeof net.createConnection;
  const ws = new WebSocket(url, { maxPayload: MAX_FRAME + 1024, perMessageDeflate: false, createConnection });
  // What the site sends beyond what was asked for waits in at most 16 MiB (and the socket): a site that floods a branch
  // busy planning (an --adopt chunking a large folder) once held 576 MiB of its frames there.
  const channel = new Channel(ws, { pauseAtBytes: 16 << 20, readLimit: opts.readLimit, tcpSocket: secure ? () => tcp : undefined });
  // A stop asked for while connecting ends the wait for the upgrade or a handshake reply, not only the next one.
  const onAbort = () => channel.abort(new SnapferryError(ErrorCodes.CONNECTION_LOST, 'stopped'));
  if (opts.signal?.aborted) onAbort();
  opts.signal?.addEventListener('abort', onAbort);
  try {
    // Messages name the port a URL without one stands for ("cannot reach ws://host" never said it tried port 80).
    const shown = parsed.port ? url : `${url} (port ${secure ? 443 : 80})`;
    return await handshake(shown, ws, channel, opts, timeoutMs, () => tcpConnected);
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/** The upgrade and the handshake of connect(). */
async function handshake(url: string, ws: WebSocket, channel: Channel, opts: ConnectOptions, timeoutMs: number, tcpConnected: () => boolean): Promise<SecureSession> {
  let upgradeTimer: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      // Our own timer rather than ws's handshakeTimeout, whose plain Error read as an unreachable site even when the
      // site had taken the connection and only its upgrade was late (overloaded, or a link that stalled): such a site
      // is there, and is tried again as a link cut mid-handshake is.
      upgradeTimer = setTimeout(() => {
        const s = Math.round(timeoutMs / 1000);
        reject(
          tcpConnected()
            ? new SnapferryError(ErrorCodes.TIMEOUT, `${url} took the connection but did not answer the upgrade in ${s} s`, { retryable: true })
            : new SnapferryError(ErrorCodes.UNREACHABLE, `cannot reach ${url}: no answer to the connection in ${s} s`, { retryable: true }),
        );
        ws.terminate();
      }, timeoutMs);
      ws.once('open', () => resolve());
      ws.once('error', (err) => reject(err));
      // Aborted (channel.abort terminates the socket) before the upgrade: no 'error' comes.
      ws.once('close', () => reject(new SnapferryError(ErrorCodes.CONNECTION_LOST, `connection to ${url} closed during the upgrade`, { retryable: true })));
      ws.once('unexpected-response', (_req, res) => reject(upgradeRefused(url, res.statusCode ?? 0, res.headers[BUSY_HEADER.toLowerCase()] !== undefined)));
    });
  } catch (err) {
    channel.abort(toSnapferryError(err, `cannot reach ${url}`));
    // Something answered, but not in HTTP (Node's parser codes are HPE_*): a service of another kind at that port.
    if (/^HPE_/.test(String((err as NodeJS.ErrnoException).code))) {
      const hint = /^ws:/i.test(url) ? '; a site behind a TLS proxy is wss://' : '';
      throw new SnapferryError(ErrorCodes.PROTOCOL, `${url} is not a snapferry site (its answer is not HTTP${hint})`);
    }
    const tlsProblem = /^wss:/i.test(url) ? tlsFailure(err) : undefined;
    if (tlsProblem) throw new SnapferryError(ErrorCodes.UNREACHABLE, `cannot reach ${url}: TLS failed (${tlsProblem}); a site with no TLS in front of it is ws://`);
    const e = toSnapferryError(err, `cannot reach ${url}`);
    // Said once: the message may already name the site ("cannot reach ws://…: cannot reach ws://…: …" before).
    const said = e.message.startsWith(`cannot reach ${url}`) ? e.message : `cannot reach ${url}: ${e.message}`;
    // A TLS port closes a plain upgrade without a word (a TLS-terminating proxy, or a TLS site): a reset there is
    // still tried again (an overloaded site resets too), but says what else it may be.
    if (e.code === ErrorCodes.CONNECTION_LOST && /^ws:/i.test(url) && tcpConnected()) {
      throw new SnapferryError(e.code, `${said} during the upgrade (a site behind a TLS proxy is wss://)`, { retryable: true, cause: err });
    }
    if (e.code === ErrorCodes.INTERNAL || e.code === ErrorCodes.IO) {
      throw new SnapferryError(ErrorCodes.UNREACHABLE, said, { retryable: true });
    }
    throw e;
  } finally {
    clearTimeout(upgradeTimer);
  }
  try {
    const hs = new ClientHandshake(opts.secret, opts.peerId ?? 'anonymous');
    await channel.send(hs.helloMessage());
    const welcome = await channel.next(timeoutMs);
    if (welcome[0] === PREAUTH_ERROR) throw peerPreauthError(welcome);
    const { proof, keys } = hs.onWelcome(welcome);
    await channel.send(proof);
    const session = new SecureSession(channel, new FrameSealer(keys.clientToServer, DIR_CLIENT_TO_SERVER), new FrameOpener(keys.serverToClient, DIR_SERVER_TO_CLIENT), 'server');
    // The site refuses a bad proof with an explicit pre-auth AUTH error; a bare close here is a broken link (retryable).
    const ready = await channel.next(timeoutMs);
    let msg: Buffer;
    try {
      msg = session.open(ready);
    } catch (err) {
      // Only a frame that does not open can be the site's unsealed refusal (a sealed READY may start with any byte).
      if (ready[0] === PREAUTH_ERROR) throw peerPreauthError(ready);
      throw err;
    }
    if (msg[0] === MsgType.ERROR) throw peerError(msg);
    if (msg[0] !== MsgType.READY) fail(ErrorCodes.PROTOCOL, 'unexpected message after handshake');
    return session;
  } catch (err) {
    const e = toSnapferryError(err);
    channel.abort(e);
    throw e;
  }
}

/**
 * The codes a site sends unsealed, before authentication (accept()'s preauthError): anything else in an unsealed
 * refusal comes from a peer that proved nothing (a wrong host, an on-path party in place of the sealed READY) and must
 * not be reported as, say, a full disk or an unsafe tree.
 */
const PREAUTH_CODES: readonly ErrorCode[] = [ErrorCodes.VERSION, ErrorCodes.PROTOCOL, ErrorCodes.AUTH];

/** A wss:// connection's TLS failure in a few words (OpenSSL's reason or the certificate's problem), else undefined. */
function tlsFailure(err: unknown): string | undefined {
  const e = err as NodeJS.ErrnoException;
  if (typeof e?.message !== 'string') return undefined;
  // "write EPROTO 80...:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:../deps/..." (no TLS there)
  const ssl = /SSL routines:[^:]*:([^:]+)/.exec(e.message);
  if (ssl) return ssl[1];
  // Certificate checks: DEPTH_ZERO_SELF_SIGNED_CERT, ERR_TLS_CERT_ALTNAME_INVALID, CERT_HAS_EXPIRED...
  if (typeof e.code === 'string' && (/CERT|ERR_TLS_|ERR_SSL_/.test(e.code) || e.code === 'EPROTO')) return e.message;
  return undefined;
}

function peerPreauthError(msg: Buffer): SnapferryError {
  try {
    const e = JSON.parse(msg.subarray(1, 1024).toString('utf8')) as ErrorMsg;
    if (!PREAUTH_CODES.includes(e.code as ErrorCode)) {
      return new SnapferryError(ErrorCodes.PROTOCOL, `peer refused the handshake with an error no site sends before authenticating (${printable(textOf(e.code)).slice(0, 40)})`);
    }
    return new SnapferryError(e.code as ErrorCode, printable(textOf(e.message)).slice(0, 300));
  } catch {
    return new SnapferryError(ErrorCodes.PROTOCOL, 'peer refused the handshake');
  }
}

/** Server side: runs the handshake on a fresh channel within timeoutMs. */
export async function accept(channel: Channel, secretFor: (peerId: string) => Buffer | undefined, timeoutMs: number): Promise<SecureSession> {
  const hs = new ServerHandshake(secretFor);
  // On the monotonic clock: a step of the wall clock neither stretches nor cuts the handshake's time.
  const deadline = performance.now() + timeoutMs;
  const left = () => Math.max(1, deadline - performance.now());
  const preauthError = async (err: SnapferryError) => {
    if (err.code === ErrorCodes.VERSION || err.code === ErrorCodes.PROTOCOL || err.code === ErrorCodes.AUTH) {
      const body = Buffer.from(JSON.stringify({ code: err.code, message: err.message }));
      await channel.send(Buffer.concat([Buffer.from([PREAUTH_ERROR]), body])).catch(() => undefined);
    }
  };
  try {
    const hello = await channel.next(left());
    if (hello.length > MAX_HANDSHAKE_MESSAGE) fail(ErrorCodes.PROTOCOL, 'handshake message too large');
    await channel.send(hs.onHello(hello));
    const proof = await channel.next(left());
    const keys = hs.onProof(proof);
    const session = new SecureSession(channel, new FrameSealer(keys.serverToClient, DIR_SERVER_TO_CLIENT), new FrameOpener(keys.clientToServer, DIR_CLIENT_TO_SERVER), hs.peerId);
    await session.send(Buffer.from([MsgType.READY]));
    return session;
  } catch (err) {
    const e = toSnapferryError(err);
    await preauthError(e);
    throw e;
  }
}
