import { describe, it, expect } from 'vitest';
import { expectCode } from '../helpers.js';
import { randomBytes, createHmac, hkdfSync } from 'node:crypto';
import { FrameSealer, FrameOpener, DIR_CLIENT_TO_SERVER, DIR_SERVER_TO_CLIENT } from '../../src/protocol/seal.js';
import {
  ClientHandshake,
  ServerHandshake,
  PROTOCOL_VERSION,
  MAX_HANDSHAKE_MESSAGE,
  type SessionKeys,
} from '../../src/protocol/handshake.js';
import {
  MsgType,
  MAX_GET_RANGES,
  MAX_GET_BYTES,
  MAX_PATCH_RUNS,
  encodeJson,
  decodeJson,
  encodeGet,
  decodeGet,
  encodeDataHeader,
  decodeData,
  encodePatchGet,
  decodePatchGet,
  encodePatchHeader,
  heldBackOf,
  heldBackText,
  MAX_HELD_NAMES,
  decodePatch,
} from '../../src/protocol/messages.js';
import { SnapferryError, ErrorCodes } from '../../src/util/errors.js';

const PROTOCOL = ErrorCodes.PROTOCOL;

// ---------- seal ----------

describe('FrameSealer / FrameOpener', () => {
  const pair = (dir = DIR_CLIENT_TO_SERVER) => {
    const key = randomBytes(32);
    return { key, s: new FrameSealer(key, dir), o: new FrameOpener(key, dir) };
  };

  it('round-trips frames in order, including empty and multi-part frames', () => {
    const { s, o } = pair();
    const msgs = [Buffer.from('hello'), Buffer.alloc(0), randomBytes(100_000), Buffer.from([0])];
    for (const m of msgs) {
      const f = s.seal(m);
      expect(f.length).toBe(m.length + 16);
      expect(o.open(f).equals(m)).toBe(true);
    }
    const parts = [Buffer.from('head'), randomBytes(1000), Buffer.from('tail')];
    expect(o.open(s.seal(parts)).equals(Buffer.concat(parts))).toBe(true);
  });

  it('encrypts: the ciphertext is not the plaintext, and equal messages seal differently (counter nonce)', () => {
    const { s } = pair();
    const m = Buffer.alloc(64, 0x41);
    const f1 = s.seal(m);
    const f2 = s.seal(m);
    expect(f1.subarray(0, 64).equals(m)).toBe(false);
    expect(f1.equals(f2)).toBe(false);
  });

  it('opening the same frame twice (replay) fails', () => {
    const { s, o } = pair();
    const f = s.seal(Buffer.from('once'));
    expect(o.open(f).toString()).toBe('once');
    expectCode(() => o.open(f), PROTOCOL);
  });

  it('opening frames out of order fails', () => {
    const { s, o } = pair();
    s.seal(Buffer.from('zero'));
    const f1 = s.seal(Buffer.from('one'));
    expectCode(() => o.open(f1), PROTOCOL);
  });

  it('a dropped frame makes the next one fail', () => {
    const { s, o } = pair();
    expect(o.open(s.seal(Buffer.from('a'))).toString()).toBe('a');
    s.seal(Buffer.from('lost'));
    expectCode(() => o.open(s.seal(Buffer.from('c'))), PROTOCOL);
  });

  it('a flipped bit anywhere in the frame fails', () => {
    const { key } = pair();
    const msg = randomBytes(40);
    const frame = new FrameSealer(key, DIR_SERVER_TO_CLIENT).seal(msg);
    for (let i = 0; i < frame.length; i++) {
      for (const bit of [0, 3, 7]) {
        const bad = Buffer.from(frame);
        bad[i] ^= 1 << bit;
        // a fresh opener each time: counter 0 matches the sealer's first frame
        expectCode(() => new FrameOpener(key, DIR_SERVER_TO_CLIENT).open(bad), PROTOCOL);
      }
    }
    expect(new FrameOpener(key, DIR_SERVER_TO_CLIENT).open(frame).equals(msg)).toBe(true);
  });

  it('a truncated or extended frame fails', () => {
    const { key } = pair();
    const frame = new FrameSealer(key, DIR_CLIENT_TO_SERVER).seal(randomBytes(50));
    for (let n = 0; n < frame.length; n++) {
      expectCode(() => new FrameOpener(key, DIR_CLIENT_TO_SERVER).open(frame.subarray(0, n)), PROTOCOL);
    }
    expectCode(() => new FrameOpener(key, DIR_CLIENT_TO_SERVER).open(Buffer.concat([frame, Buffer.from([0])])), PROTOCOL);
  });

  it('wrong direction or wrong key fails', () => {
    const key = randomBytes(32);
    const f = new FrameSealer(key, DIR_CLIENT_TO_SERVER).seal(Buffer.from('x'));
    expectCode(() => new FrameOpener(key, DIR_SERVER_TO_CLIENT).open(f), PROTOCOL);
    expectCode(() => new FrameOpener(randomBytes(32), DIR_CLIENT_TO_SERVER).open(f), PROTOCOL);
    expect(new FrameOpener(key, DIR_CLIENT_TO_SERVER).open(f).toString()).toBe('x');
  });

  it('frames sealed for the other direction cannot be reflected back', () => {
    const key = randomBytes(32);
    const c2s = new FrameSealer(key, DIR_CLIENT_TO_SERVER);
    const s2cOpener = new FrameOpener(key, DIR_SERVER_TO_CLIENT);
    expectCode(() => s2cOpener.open(c2s.seal(Buffer.from('reflect me'))), PROTOCOL);
  });

  it('rejects keys that are not 32 bytes', () => {
    expect(() => new FrameSealer(randomBytes(16), DIR_CLIENT_TO_SERVER)).toThrow();
    expect(() => new FrameOpener(randomBytes(33), DIR_CLIENT_TO_SERVER)).toThrow();
  });
});

// ---------- handshake ----------

function run(clientSecret: Buffer, serverSecret: Buffer | ((id: string) => Buffer | undefined), peerId = 'branch-1') {
  const client = new ClientHandshake(clientSecret, peerId);
  const server = new ServerHandshake(typeof serverSecret === 'function' ? serverSecret : () => serverSecret);
  const hello = client.helloMessage();
  const welcome = server.onHello(hello);
  return { client, server, hello, welcome };
}

function fullHandshake(secret: Buffer, peerId = 'branch-1'): { c: SessionKeys; s: SessionKeys; server: ServerHandshake } {
  const { client, server, welcome } = run(secret, secret, peerId);
  const { proof, keys } = client.onWelcome(welcome);
  return { c: keys, s: server.onProof(proof), server };
}

/** Builds the proof a client that ignored its AUTH error would send (the same HMAC, with its own wrong secret). */
function forgedProof(secret: Buffer, hello: Buffer, welcome: Buffer): Buffer {
  const authKey = Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'snapferry/v1 auth', 32));
  const transcript = Buffer.concat([hello, welcome.subarray(0, welcome.length - 32)]);
  const mac = createHmac('sha256', authKey)
    .update('snapferry/v1 client proof')
    .update(transcript)
    .update(welcome.subarray(welcome.length - 32))
    .digest();
  const head = Buffer.concat([Buffer.from('SNAPFERRY'), Buffer.from([0, PROTOCOL_VERSION, 3])]);
  return Buffer.concat([head, mac]);
}

describe('handshake', () => {
  it('message layout: magic, 2-byte version, type', () => {
    const { hello, welcome } = run(randomBytes(32), randomBytes(32), 'peer');
    expect(hello.subarray(0, 9).toString()).toBe('SNAPFERRY');
    expect(hello.readUInt16BE(9)).toBe(PROTOCOL_VERSION);
    expect(hello[11]).toBe(1);
    expect(hello.length).toBe(12 + 32 + 1 + 4);
    expect(welcome.subarray(0, 9).toString()).toBe('SNAPFERRY');
    expect(welcome[11]).toBe(2);
    expect(welcome.length).toBe(12 + 32 + 32);
  });

  it('same secret: both sides derive equal keys, distinct per direction, and learn the peer id', () => {
    const secret = randomBytes(32);
    const { c, s, server } = fullHandshake(secret, 'branch-\u00e9');
    expect(server.peerId).toBe('branch-\u00e9');
    expect(c.clientToServer.length).toBe(32);
    expect(c.serverToClient.length).toBe(32);
    expect(c.clientToServer.equals(s.clientToServer)).toBe(true);
    expect(c.serverToClient.equals(s.serverToClient)).toBe(true);
    expect(c.clientToServer.equals(c.serverToClient)).toBe(false);
    expect(c.clientToServer.equals(secret)).toBe(false);
    // and the keys work with the sealer
    const f = new FrameSealer(c.clientToServer, DIR_CLIENT_TO_SERVER).seal(Buffer.from('open'));
    expect(new FrameOpener(s.clientToServer, DIR_CLIENT_TO_SERVER).open(f).toString()).toBe('open');
    // the other direction's key cannot open it, whatever direction label is used
    expectCode(() => new FrameOpener(s.serverToClient, DIR_CLIENT_TO_SERVER).open(f), PROTOCOL);
    expectCode(() => new FrameOpener(s.serverToClient, DIR_SERVER_TO_CLIENT).open(f), PROTOCOL);
    const g = new FrameSealer(s.serverToClient, DIR_SERVER_TO_CLIENT).seal(Buffer.from('back'));
    expect(new FrameOpener(c.serverToClient, DIR_SERVER_TO_CLIENT).open(g).toString()).toBe('back');
    expectCode(() => new FrameOpener(c.clientToServer, DIR_SERVER_TO_CLIENT).open(g), PROTOCOL);
  });

  it('fresh nonces: two sessions with the same secret get different keys', () => {
    const secret = randomBytes(32);
    const a = fullHandshake(secret);
    const b = fullHandshake(secret);
    expect(a.c.clientToServer.equals(b.c.clientToServer)).toBe(false);
    expect(a.c.serverToClient.equals(b.c.serverToClient)).toBe(false);
  });

  it('different secrets: the client refuses the WELCOME with AUTH', () => {
    const { client, welcome } = run(randomBytes(32), randomBytes(32));
    expectCode(() => client.onWelcome(welcome), ErrorCodes.AUTH);
  });

  it('a client that ignores the AUTH error and sends a proof is refused by the server with AUTH', () => {
    const clientSecret = randomBytes(32);
    const { server, hello, welcome } = run(clientSecret, randomBytes(32));
    expectCode(() => server.onProof(forgedProof(clientSecret, hello, welcome)), ErrorCodes.AUTH);
    // sanity: the same construction with the right secret is accepted, so the refusal above is about the secret
    const good = randomBytes(32);
    const r = run(good, good);
    expect(() => r.server.onProof(forgedProof(good, r.hello, r.welcome))).not.toThrow();
  });

  it('a random or zero proof is refused with AUTH', () => {
    const secret = randomBytes(32);
    const { server } = run(secret, secret);
    const head = Buffer.concat([Buffer.from('SNAPFERRY'), Buffer.from([0, PROTOCOL_VERSION, 3])]);
    expectCode(() => server.onProof(Buffer.concat([head, Buffer.alloc(32)])), ErrorCodes.AUTH);
  });

  it('a proof from another session is refused', () => {
    const secret = randomBytes(32);
    const one = run(secret, secret);
    const proof1 = one.client.onWelcome(one.welcome).proof;
    const two = run(secret, secret);
    expectCode(() => two.server.onProof(proof1), ErrorCodes.AUTH);
  });

  it('a WELCOME replayed from another session fails', () => {
    const secret = randomBytes(32);
    const old = run(secret, secret);
    const fresh = new ClientHandshake(secret, 'branch-1');
    fresh.helloMessage();
    expectCode(() => fresh.onWelcome(old.welcome), ErrorCodes.AUTH);
  });

  it('unknown peer id (secretFor returns undefined) fails exactly like a wrong secret', () => {
    const secret = randomBytes(32);
    const seen: string[] = [];
    const lookup = (id: string) => {
      seen.push(id);
      return id === 'known' ? secret : undefined;
    };
    const { client, server, hello, welcome } = run(secret, lookup, 'stranger');
    expect(seen).toEqual(['stranger']);
    expect(welcome.length).toBe(12 + 64);
    expectCode(() => client.onWelcome(welcome), ErrorCodes.AUTH);
    expectCode(() => server.onProof(forgedProof(secret, hello, welcome)), ErrorCodes.AUTH);
    // the known id with the same lookup succeeds
    const ok = run(secret, lookup, 'known');
    const { proof, keys } = ok.client.onWelcome(ok.welcome);
    expect(ok.server.onProof(proof).clientToServer.equals(keys.clientToServer)).toBe(true);
  });

  it('version mismatch is VERSION, on both sides', () => {
    const secret = randomBytes(32);
    const client = new ClientHandshake(secret, 'b');
    const hello = Buffer.from(client.helloMessage());
    hello.writeUInt16BE(PROTOCOL_VERSION + 1, 9);
    expectCode(() => new ServerHandshake(() => secret).onHello(hello), ErrorCodes.VERSION);
    hello.writeUInt16BE(0, 9);
    expectCode(() => new ServerHandshake(() => secret).onHello(hello), ErrorCodes.VERSION);

    const { client: c2, welcome } = run(secret, secret);
    const w = Buffer.from(welcome);
    w.writeUInt16BE(0x0100 | PROTOCOL_VERSION, 9);
    expectCode(() => c2.onWelcome(w), ErrorCodes.VERSION);

    const r = run(secret, secret);
    const { proof } = r.client.onWelcome(r.welcome);
    const p = Buffer.from(proof);
    p.writeUInt16BE(2, 9);
    expectCode(() => r.server.onProof(p), ErrorCodes.VERSION);
  });

  it('garbage is PROTOCOL', () => {
    const secret = randomBytes(32);
    const srv = () => new ServerHandshake(() => secret);
    expectCode(() => srv().onHello(Buffer.alloc(0)), PROTOCOL);
    expectCode(() => srv().onHello(Buffer.from('GET / HTTP/1.1\r\n\r\n')), PROTOCOL);
    expectCode(() => srv().onHello(randomBytes(80)), PROTOCOL);
    expectCode(() => srv().onHello(Buffer.from('SNAPFERR')), PROTOCOL);
    expectCode(() => srv().onHello(Buffer.from('SNAPFERRY\x00\x01')), PROTOCOL);
    const c = new ClientHandshake(secret, 'b');
    c.helloMessage();
    expectCode(() => c.onWelcome(randomBytes(76)), PROTOCOL);
  });

  it('wrong message type or malformed bodies are PROTOCOL', () => {
    const secret = randomBytes(32);
    const client = new ClientHandshake(secret, 'b');
    const hello = client.helloMessage();
    // HELLO sent where WELCOME is expected
    expectCode(() => client.onWelcome(hello), PROTOCOL);
    // WELCOME sent where HELLO is expected
    const { welcome } = run(secret, secret);
    expectCode(() => new ServerHandshake(() => secret).onHello(welcome), PROTOCOL);
    // HELLO with a peer-id length that does not match
    const bad = Buffer.from(hello);
    bad[12 + 32] = 200;
    expectCode(() => new ServerHandshake(() => secret).onHello(bad), PROTOCOL);
    expectCode(() => new ServerHandshake(() => secret).onHello(hello.subarray(0, 12 + 20)), PROTOCOL);
    // WELCOME with a short body
    const c2 = new ClientHandshake(secret, 'b');
    c2.helloMessage();
    expectCode(() => c2.onWelcome(welcome.subarray(0, welcome.length - 1)), PROTOCOL);
    // PROOF with a wrong length, and PROOF before HELLO
    const r = run(secret, secret);
    const { proof } = r.client.onWelcome(r.welcome);
    expectCode(() => r.server.onProof(proof.subarray(0, proof.length - 1)), PROTOCOL);
    expectCode(() => new ServerHandshake(() => secret).onProof(proof), PROTOCOL);
  });

  it('oversize messages (> 1024 bytes) are PROTOCOL, even with a valid header', () => {
    expect(MAX_HANDSHAKE_MESSAGE).toBe(1024);
    const secret = randomBytes(32);
    const client = new ClientHandshake(secret, 'b');
    const hello = client.helloMessage();
    const big = Buffer.concat([hello, Buffer.alloc(1025 - hello.length)]);
    expect(big.length).toBe(1025);
    expectCode(() => new ServerHandshake(() => secret).onHello(big), PROTOCOL);
    // oversize beats a version mismatch: it is refused before parsing
    const bigV = Buffer.from(big);
    bigV.writeUInt16BE(9, 9);
    expectCode(() => new ServerHandshake(() => secret).onHello(bigV), PROTOCOL);
    expectCode(() => client.onWelcome(Buffer.alloc(5000)), PROTOCOL);
  });

  it('peer ids over 255 bytes are refused before sending', () => {
    expectCode(() => new ClientHandshake(randomBytes(32), 'x'.repeat(256)).helloMessage(), ErrorCodes.USAGE);
    const longOk = new ClientHandshake(randomBytes(32), 'x'.repeat(255)).helloMessage();
    const s = new ServerHandshake(() => undefined);
    s.onHello(longOk);
    expect(s.peerId).toBe('x'.repeat(255));
  });
});

// ---------- messages ----------

describe('JSON control messages', () => {
  it('round-trips an object with its type byte', () => {
    const m = encodeJson(MsgType.OPEN, { company: 'acme \u00e9', have: 'ab'.repeat(32), level: 3 });
    expect(m[0]).toBe(MsgType.OPEN);
    expect(decodeJson(m)).toEqual({ company: 'acme \u00e9', have: 'ab'.repeat(32), level: 3 });
  });

  it('rejects non-objects and malformed JSON', () => {
    for (const body of ['42', '"s"', 'null', 'true', '', '{', '{"a":}', '\u0000']) {
      const b = Buffer.concat([Buffer.from([MsgType.ERROR]), Buffer.from(body)]);
      expectCode(() => decodeJson(b), PROTOCOL);
    }
    expectCode(() => decodeJson(Buffer.alloc(0)), PROTOCOL);
  });

  it('rejects control messages over 64 KiB', () => {
    const ok = encodeJson(MsgType.OPEN, { s: 'x'.repeat(65536 - 1 - 8) });
    expect(ok.length).toBe(65536);
    expect(decodeJson<{ s: string }>(ok).s.length).toBe(65536 - 9);
    const big = encodeJson(MsgType.OPEN, { s: 'x'.repeat(65536 - 8) });
    expect(big.length).toBe(65537);
    expectCode(() => decodeJson(big), PROTOCOL);
    expectCode(() => decodeJson(Buffer.alloc(1 << 20, 0x20)), PROTOCOL);
  });
});

describe('GET', () => {
  it('round-trips', () => {
    const m = { reqId: 0xfffffffe, ranges: [[0, 1], [5, 100], [0xfffffff0, 0xffffffff]] as Array<[number, number]> };
    const b = encodeGet(m);
    expect(b[0]).toBe(MsgType.GET);
    expect(b.length).toBe(9 + 3 * 8);
    expect(decodeGet(b)).toEqual(m);
    const max = { reqId: 1, ranges: Array.from({ length: MAX_GET_RANGES }, (_, i) => [i * 2, i * 2 + 1] as [number, number]) };
    expect(decodeGet(encodeGet(max))).toEqual(max);
  });

  it('rejects zero ranges, empty or reversed ranges, too many ranges, wrong length', () => {
    expectCode(() => decodeGet(encodeGet({ reqId: 1, ranges: [] })), PROTOCOL);
    expectCode(() => decodeGet(encodeGet({ reqId: 1, ranges: [[5, 5]] })), PROTOCOL);
    expectCode(() => decodeGet(encodeGet({ reqId: 1, ranges: [[0, 1], [6, 5]] })), PROTOCOL);
    const tooMany = { reqId: 1, ranges: Array.from({ length: MAX_GET_RANGES + 1 }, (_, i) => [i, i + 1] as [number, number]) };
    expectCode(() => decodeGet(encodeGet(tooMany)), PROTOCOL);
    const b = encodeGet({ reqId: 1, ranges: [[0, 1], [2, 3]] });
    expectCode(() => decodeGet(b.subarray(0, b.length - 1)), PROTOCOL);
    expectCode(() => decodeGet(Buffer.concat([b, Buffer.alloc(8)])), PROTOCOL);
    expectCode(() => decodeGet(b.subarray(0, 8)), PROTOCOL);
    expectCode(() => decodeGet(Buffer.alloc(0)), PROTOCOL);
    // a count whose n*8 would overflow 32 bits does not wrap into a valid length
    const huge = Buffer.alloc(9 + 8);
    huge.writeUInt32BE(0x20000001, 5);
    expectCode(() => decodeGet(huge), PROTOCOL);
  });
});

describe('DATA', () => {
  it('header round-trips with the payload appended', () => {
    const h = encodeDataHeader(77, true, 123456);
    expect(h.length).toBe(10);
    expect(h[0]).toBe(MsgType.DATA);
    const payload = randomBytes(33);
    const d = decodeData(Buffer.concat([h, payload]));
    expect(d).toMatchObject({ reqId: 77, compressed: true, rawLen: 123456 });
    expect(d.payload.equals(payload)).toBe(true);
    const u = decodeData(encodeDataHeader(0, false, 0));
    expect(u).toMatchObject({ reqId: 0, compressed: false, rawLen: 0 });
    expect(u.payload.length).toBe(0);
  });

  it('rejects short headers and rawLen above the request limit', () => {
    expectCode(() => decodeData(encodeDataHeader(1, false, 5).subarray(0, 9)), PROTOCOL);
    expect(decodeData(encodeDataHeader(1, true, MAX_GET_BYTES)).rawLen).toBe(MAX_GET_BYTES);
    expectCode(() => decodeData(encodeDataHeader(1, true, MAX_GET_BYTES + 1)), ErrorCodes.LIMIT);
    expectCode(() => decodeData(encodeDataHeader(1, true, 0xffffffff)), ErrorCodes.LIMIT);
  });
});

describe('PATCH_GET / PATCH', () => {
  it('PATCH_GET round-trips', () => {
    const sigs = Uint32Array.from([0, 1, 0xffffffff, 0xdeadbeef]);
    const sigs2 = Uint32Array.from([42]);
    const b = encodePatchGet({
      reqId: 9,
      blockSize: 4096,
      runs: [
        { chunk: 123456, count: 7, sigs },
        { chunk: 5, count: 2, sigs: sigs2 },
      ],
    });
    expect(b[0]).toBe(MsgType.PATCH_GET);
    expect(b.length).toBe(13 + (12 + 16) + (12 + 4));
    const d = decodePatchGet(b);
    expect(d.reqId).toBe(9);
    expect(d.blockSize).toBe(4096);
    expect(d.runs.length).toBe(2);
    expect(d.runs[0]!.chunk).toBe(123456);
    expect(d.runs[0]!.count).toBe(7);
    expect(Array.from(d.runs[0]!.sigs)).toEqual(Array.from(sigs));
    expect(d.runs[1]!.chunk).toBe(5);
    expect(d.runs[1]!.count).toBe(2);
    expect(Array.from(d.runs[1]!.sigs)).toEqual(Array.from(sigs2));
    const one = (count: number, blockSize: number, sigs: Uint32Array) =>
      decodePatchGet(encodePatchGet({ reqId: 1, blockSize, runs: [{ chunk: 0, count, sigs }] }));
    expect(Array.from(one(1, 256, new Uint32Array(0)).runs[0]!.sigs)).toEqual([]);
    expect(one(1, 65536, new Uint32Array(1)).blockSize).toBe(65536);
    expect(one(MAX_GET_RANGES, 4096, new Uint32Array(1)).runs[0]!.count).toBe(MAX_GET_RANGES);
    const runs = Array.from({ length: MAX_PATCH_RUNS }, (_, i) => ({ chunk: i * 3, count: 1, sigs: Uint32Array.from([i]) }));
    expect(decodePatchGet(encodePatchGet({ reqId: 2, blockSize: 4096, runs })).runs.length).toBe(MAX_PATCH_RUNS);
  });

  it('PATCH_GET rejects a run count of 0 or above MAX_PATCH_RUNS', () => {
    expectCode(() => decodePatchGet(encodePatchGet({ reqId: 1, blockSize: 4096, runs: [] })), PROTOCOL);
    const runs = Array.from({ length: MAX_PATCH_RUNS + 1 }, (_, i) => ({ chunk: i * 3, count: 1, sigs: Uint32Array.from([i]) }));
    expect(runs.length).toBe(257);
    expectCode(() => decodePatchGet(encodePatchGet({ reqId: 1, blockSize: 4096, runs })), PROTOCOL);
    // a valid message whose run count field alone is set to 0
    const ok = encodePatchGet({ reqId: 1, blockSize: 4096, runs: [{ chunk: 5, count: 3, sigs: new Uint32Array(2) }] });
    expect(decodePatchGet(ok).runs.length).toBe(1);
    const zero = Buffer.from(ok);
    zero.writeUInt32BE(0, 9);
    expectCode(() => decodePatchGet(zero), PROTOCOL);
  });

  it('PATCH_GET rejects a chunk count of 0 or above the limit', () => {
    const mk = (counts: number[]) =>
      encodePatchGet({ reqId: 1, blockSize: 4096, runs: counts.map((count, i) => ({ chunk: 5 + i * 10, count, sigs: new Uint32Array(2) })) });
    const ok = mk([3]);
    expect(decodePatchGet(ok).runs[0]!.count).toBe(3);
    const zero = Buffer.from(ok);
    zero.writeUInt32BE(0, 13 + 4); // the run's count field
    expectCode(() => decodePatchGet(zero), PROTOCOL);
    expectCode(() => decodePatchGet(mk([0])), PROTOCOL);
    expectCode(() => decodePatchGet(mk([MAX_GET_RANGES + 1])), PROTOCOL);
    // in any run, not only the first
    expectCode(() => decodePatchGet(mk([3, 0])), PROTOCOL);
    expectCode(() => decodePatchGet(mk([3, MAX_GET_RANGES + 1])), PROTOCOL);
  });

  it('PATCH_GET rejects bad lengths and block sizes', () => {
    const b = encodePatchGet({
      reqId: 9,
      blockSize: 4096,
      runs: [
        { chunk: 1, count: 1, sigs: Uint32Array.from([1, 2]) },
        { chunk: 7, count: 2, sigs: Uint32Array.from([3]) },
      ],
    });
    expect(decodePatchGet(b).runs.length).toBe(2);
    expectCode(() => decodePatchGet(b.subarray(0, b.length - 1)), PROTOCOL);
    expectCode(() => decodePatchGet(b.subarray(0, b.length - 4)), PROTOCOL);
    expectCode(() => decodePatchGet(b.subarray(0, 12)), PROTOCOL);
    expectCode(() => decodePatchGet(b.subarray(0, 13)), PROTOCOL);
    expectCode(() => decodePatchGet(Buffer.concat([b, Buffer.from([0, 0])])), PROTOCOL);
    expectCode(() => decodePatchGet(Buffer.concat([b, Buffer.alloc(4)])), PROTOCOL);
    // a signature count that runs past the end, or that leaves bytes over
    const past = Buffer.from(b);
    past.writeUInt32BE(0xffffffff, 13 + 8);
    expectCode(() => decodePatchGet(past), PROTOCOL);
    const short = encodePatchGet({ reqId: 9, blockSize: 4096, runs: [{ chunk: 1, count: 1, sigs: Uint32Array.from([1, 2]) }] });
    short.writeUInt32BE(1, 13 + 8);
    expectCode(() => decodePatchGet(short), PROTOCOL);
    // a run count that does not match the runs present
    const more = Buffer.from(b);
    more.writeUInt32BE(3, 9);
    expectCode(() => decodePatchGet(more), PROTOCOL);
    const fewer = Buffer.from(b);
    fewer.writeUInt32BE(1, 9);
    expectCode(() => decodePatchGet(fewer), PROTOCOL);
    for (const bs of [0, 1, 255, 65537, 0xffffffff]) {
      expectCode(() => decodePatchGet(encodePatchGet({ reqId: 1, blockSize: bs, runs: [{ chunk: 1, count: 1, sigs: new Uint32Array(2) }] })), PROTOCOL);
    }
  });

  it('PATCH round-trips', () => {
    const bitmaps = [Uint8Array.from([0b1010_0001, 0, 0xff]), new Uint8Array(0), Uint8Array.from([7])];
    const h = encodePatchHeader(0xabcdef, true, 8192, bitmaps);
    expect(h[0]).toBe(MsgType.PATCH);
    expect(h.length).toBe(14 + (4 + 3) + 4 + (4 + 1));
    const payload = randomBytes(77);
    const d = decodePatch(Buffer.concat([h, payload]));
    expect(d.reqId).toBe(0xabcdef);
    expect(d.compressed).toBe(true);
    expect(d.rawLen).toBe(8192);
    expect(d.bitmaps.map((x) => Array.from(x))).toEqual(bitmaps.map((x) => Array.from(x)));
    expect(d.payload.equals(payload)).toBe(true);
    const e = decodePatch(encodePatchHeader(1, false, 0, [new Uint8Array(0)]));
    expect(e.compressed).toBe(false);
    expect(e.bitmaps.length).toBe(1);
    expect(e.bitmaps[0]!.length).toBe(0);
    expect(e.payload.length).toBe(0);
  });

  it('PATCH rejects short headers, bitmaps past the end and rawLen above the limit', () => {
    const h = encodePatchHeader(1, false, 10, [new Uint8Array(4), new Uint8Array(2)]);
    expect(decodePatch(h).bitmaps.length).toBe(2);
    expectCode(() => decodePatch(h.subarray(0, 13)), PROTOCOL);
    expectCode(() => decodePatch(h.subarray(0, 17)), PROTOCOL); // the first bitmap's length cut
    expectCode(() => decodePatch(h.subarray(0, 21)), PROTOCOL); // the first bitmap cut
    expectCode(() => decodePatch(h.subarray(0, 26)), PROTOCOL); // the second bitmap's length cut
    expectCode(() => decodePatch(h.subarray(0, h.length - 1)), PROTOCOL); // the second bitmap cut
    const lying = Buffer.from(h);
    lying.writeUInt32BE(0xffffffff, 14); // the first bitmap's length
    expectCode(() => decodePatch(lying), PROTOCOL);
    const tooMany = Buffer.from(h);
    tooMany.writeUInt32BE(0xffffffff, 10); // the run count
    expectCode(() => decodePatch(tooMany), PROTOCOL);
    expectCode(() => decodePatch(encodePatchHeader(1, false, 0, Array.from({ length: MAX_PATCH_RUNS + 1 }, () => new Uint8Array(0)))), PROTOCOL);
    expectCode(() => decodePatch(encodePatchHeader(1, true, MAX_GET_BYTES + 1, [new Uint8Array(1)])), PROTOCOL);
    expect(decodePatch(encodePatchHeader(1, true, MAX_GET_BYTES, [new Uint8Array(1)])).rawLen).toBe(MAX_GET_BYTES);
  });
});

describe('held-back names in a manifest header', () => {
  it('takes a well-formed list, and refuses what a hostile site could send instead', () => {
    expect(heldBackOf({})).toBeUndefined();
    expect(heldBackOf({ heldBack: ['Journal.log'], heldBackCount: 3 })).toEqual({ names: ['Journal.log'], count: 3 });
    expect(heldBackText(['a.log', 'b.log'], 3)).toMatch(/^3 files held back, .*: a\.log, b\.log and 1 more$/);
    for (const head of [
      { heldBack: 'Journal.log', heldBackCount: 1 },
      { heldBack: [], heldBackCount: 0 },
      { heldBack: [7], heldBackCount: 1 },
      { heldBack: [''], heldBackCount: 1 },
      { heldBack: ['x'.repeat(4097)], heldBackCount: 1 },
      { heldBack: Array.from({ length: MAX_HELD_NAMES + 1 }, (_, i) => `f${i}`), heldBackCount: MAX_HELD_NAMES + 1 },
      { heldBack: ['a', 'b'], heldBackCount: 1 },
      { heldBack: ['a'] },
      { heldBack: ['a'], heldBackCount: 1.5 },
    ]) {
      expectCode(() => heldBackOf(head), 'SNAPFERRY_E_PROTOCOL');
    }
  });
});
