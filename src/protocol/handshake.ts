/**
 * Mutual authentication from a shared 256-bit site secret, with fresh nonces from both sides.
 *
 *   client -> server  HELLO   magic, version, client nonce (32), client peer id
 *   server -> client  WELCOME magic, version, server nonce (32), server proof = HMAC(authKey, "server" | transcript)
 *   client -> server  PROOF   client proof = HMAC(authKey, "client" | transcript | server proof)
 *
 * Both proofs cover both nonces, so neither can be replayed into another session. Session keys come from HKDF-SHA256
 * over the secret, salted with both nonces and bound to the transcript. The client sends its peer id before the
 * server proves anything so that a server with per-peer secrets can pick the right one; nothing about the server's
 * companies is sent before both proofs are checked. Pure: bytes in, bytes out.
 */
import { createHmac, hkdfSync, randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import { fail, ErrorCodes } from '../util/errors.js';

/** Wire protocol version; a peer with another version is refused with VERSION before authentication. */
export const PROTOCOL_VERSION = 1;
const MAGIC = Buffer.from('SNAPFERRY');
const NONCE_LEN = 32;
/** Handshake messages are tiny; anything larger is refused before parsing. */
export const MAX_HANDSHAKE_MESSAGE = 1024;

/** Keys for one session, one per direction. */
export interface SessionKeys {
  clientToServer: Buffer;
  serverToClient: Buffer;
}

function authKey(secret: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'snapferry/v1 auth', 32));
}

function deriveKeys(secret: Buffer, transcript: Buffer, cNonce: Buffer, sNonce: Buffer): SessionKeys {
  const info = Buffer.concat([Buffer.from('snapferry/v1 session keys '), createHash('sha256').update(transcript).digest()]);
  const okm = Buffer.from(hkdfSync('sha256', secret, Buffer.concat([cNonce, sNonce]), info, 64));
  return { clientToServer: okm.subarray(0, 32), serverToClient: okm.subarray(32, 64) };
}

function mac(key: Buffer, label: string, ...parts: Buffer[]): Buffer {
  const h = createHmac('sha256', key).update(label);
  for (const p of parts) h.update(p);
  return h.digest();
}

function header(type: number): Buffer {
  const b = Buffer.alloc(MAGIC.length + 3);
  MAGIC.copy(b, 0);
  b.writeUInt16BE(PROTOCOL_VERSION, MAGIC.length);
  b[MAGIC.length + 2] = type;
  return b;
}

/** Parses magic, version and type; throws PROTOCOL for garbage and VERSION for another protocol version. */
function parseHeader(msg: Buffer, type: number): Buffer {
  if (msg.length > MAX_HANDSHAKE_MESSAGE) fail(ErrorCodes.PROTOCOL, 'handshake message too large');
  if (msg.length < MAGIC.length + 3 || !msg.subarray(0, MAGIC.length).equals(MAGIC)) {
    fail(ErrorCodes.PROTOCOL, 'peer does not speak the snapferry protocol');
  }
  const version = msg.readUInt16BE(MAGIC.length);
  if (version !== PROTOCOL_VERSION) {
    fail(ErrorCodes.VERSION, `peer speaks snapferry protocol version ${version}; this site speaks ${PROTOCOL_VERSION}`);
  }
  if (msg[MAGIC.length + 2] !== type) fail(ErrorCodes.PROTOCOL, 'unexpected handshake message');
  return msg.subarray(MAGIC.length + 3);
}

const T_HELLO = 1;
const T_WELCOME = 2;
const T_PROOF = 3;

/** Client side of the handshake. */
export class ClientHandshake {
  private readonly nonce = randomBytes(NONCE_LEN);
  private hello?: Buffer;
  private transcript?: Buffer;
  private serverProof?: Buffer;
  constructor(
    private readonly secret: Buffer,
    private readonly peerId: string,
  ) {}

  /** First message to send. */
  helloMessage(): Buffer {
    const id = Buffer.from(this.peerId, 'utf8');
    if (id.length > 255) fail(ErrorCodes.USAGE, 'peer id too long');
    this.hello = Buffer.concat([header(T_HELLO), this.nonce, Buffer.from([id.length]), id]);
    return this.hello;
  }

  /** Checks the server's WELCOME; returns the PROOF message to send and the session keys. */
  onWelcome(msg: Buffer): { proof: Buffer; keys: SessionKeys } {
    const body = parseHeader(msg, T_WELCOME);
    if (body.length !== NONCE_LEN + 32) fail(ErrorCodes.PROTOCOL, 'malformed handshake');
    const sNonce = body.subarray(0, NONCE_LEN);
    this.serverProof = body.subarray(NONCE_LEN);
    this.transcript = Buffer.concat([this.hello!, msg.subarray(0, msg.length - 32)]);
    const key = authKey(this.secret);
    const expected = mac(key, 'snapferry/v1 server proof', this.transcript);
    if (!timingSafeEqual(expected, this.serverProof)) {
      fail(ErrorCodes.AUTH, 'authentication failed: the site does not hold our secret (wrong --secret on either side)');
    }
    const proof = Buffer.concat([header(T_PROOF), mac(key, 'snapferry/v1 client proof', this.transcript, this.serverProof)]);
    return { proof, keys: deriveKeys(this.secret, this.transcript, this.nonce, sNonce) };
  }
}

/** Server side of the handshake. `secretFor` picks the secret for a peer id (per-peer secrets), or undefined. */
export class ServerHandshake {
  private readonly nonce = randomBytes(NONCE_LEN);
  private transcript?: Buffer;
  private proofSent?: Buffer;
  private secret?: Buffer;
  private cNonce?: Buffer;
  /** The peer id the client announced (not yet authenticated until onProof returns). */
  peerId = '';

  constructor(private readonly secretFor: (peerId: string) => Buffer | undefined) {}

  /** Parses HELLO and returns WELCOME. */
  onHello(msg: Buffer): Buffer {
    const body = parseHeader(msg, T_HELLO);
    if (body.length < NONCE_LEN + 1) fail(ErrorCodes.PROTOCOL, 'malformed handshake');
    this.cNonce = Buffer.from(body.subarray(0, NONCE_LEN));
    const idLen = body[NONCE_LEN]!;
    if (body.length !== NONCE_LEN + 1 + idLen) fail(ErrorCodes.PROTOCOL, 'malformed handshake');
    this.peerId = body.subarray(NONCE_LEN + 1).toString('utf8');
    // An unknown peer gets a random secret: it then fails exactly as a wrong secret does, revealing nothing.
    this.secret = this.secretFor(this.peerId) ?? randomBytes(32);
    const welcomeHead = Buffer.concat([header(T_WELCOME), this.nonce]);
    this.transcript = Buffer.concat([msg, welcomeHead]);
    this.proofSent = mac(authKey(this.secret), 'snapferry/v1 server proof', this.transcript);
    return Buffer.concat([welcomeHead, this.proofSent]);
  }

  /** Checks the client's PROOF; returns the session keys or throws AUTH. */
  onProof(msg: Buffer): SessionKeys {
    const body = parseHeader(msg, T_PROOF);
    if (body.length !== 32 || !this.transcript) fail(ErrorCodes.PROTOCOL, 'malformed handshake');
    const expected = mac(authKey(this.secret!), 'snapferry/v1 client proof', this.transcript, this.proofSent!);
    if (!timingSafeEqual(expected, body)) fail(ErrorCodes.AUTH, 'authentication failed');
    return deriveKeys(this.secret!, this.transcript, this.cNonce!, this.nonce);
  }
}
