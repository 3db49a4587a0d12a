/**
 * Frame sealing: AES-256-GCM from node:crypto with a 96-bit nonce made of a 32-bit direction label and a 64-bit
 * frame counter. The counter is never sent: both ends count, so a replayed, dropped, reordered or forged frame fails
 * to open and ends the session. Sealed frames are opaque to anyone without the session key, so a relay can store and
 * forward them in order without being able to read them.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { fail, ErrorCodes } from '../util/errors.js';

/** Bytes of the AEAD tag at the end of every sealed frame. */
export const TAG_LEN = 16;

/** Direction labels keep the two directions' nonces apart even if both keys were ever the same. */
export const DIR_CLIENT_TO_SERVER = 0x63327331; // "c2s1"
export const DIR_SERVER_TO_CLIENT = 0x73326331; // "s2c1"

function nonceFor(direction: number, counter: bigint): Buffer {
  const n = Buffer.allocUnsafe(12);
  n.writeUInt32BE(direction, 0);
  n.writeBigUInt64BE(counter, 4);
  return n;
}

/** Seals outgoing frames of one direction of one session. */
export class FrameSealer {
  private counter = 0n;
  constructor(
    private readonly key: Buffer,
    private readonly direction: number,
  ) {
    if (key.length !== 32) throw new Error('AES-256-GCM needs a 32-byte key');
  }

  /** Seals one frame; the result is ciphertext followed by the 16-byte tag. */
  seal(parts: Uint8Array | Uint8Array[]): Buffer {
    const list = Array.isArray(parts) ? parts : [parts];
    const cipher = createCipheriv('aes-256-gcm', this.key, nonceFor(this.direction, this.counter++));
    const out: Buffer[] = [];
    for (const p of list) out.push(cipher.update(p));
    out.push(cipher.final(), cipher.getAuthTag());
    return Buffer.concat(out);
  }
}

/** Opens incoming frames of one direction of one session, in order. */
export class FrameOpener {
  private counter = 0n;
  constructor(
    private readonly key: Buffer,
    private readonly direction: number,
  ) {
    if (key.length !== 32) throw new Error('AES-256-GCM needs a 32-byte key');
  }

  /** Opens the next frame, or throws PROTOCOL if it was forged, replayed, reordered or truncated. */
  open(frame: Uint8Array): Buffer {
    if (frame.length < TAG_LEN) fail(ErrorCodes.PROTOCOL, 'frame too short');
    const decipher = createDecipheriv('aes-256-gcm', this.key, nonceFor(this.direction, this.counter++));
    decipher.setAuthTag(frame.subarray(frame.length - TAG_LEN));
    const body = decipher.update(frame.subarray(0, frame.length - TAG_LEN));
    try {
      decipher.final();
    } catch {
      fail(ErrorCodes.PROTOCOL, 'a frame failed authentication (forged, replayed, reordered or corrupted); session ended');
    }
    return body;
  }
}
