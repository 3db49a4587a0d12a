/** Site secrets on disk: 256 random bits as 64 hex digits, in a file only its owner can read. */
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { fail, fsProblem, ErrorCodes, SnapferryError, toSnapferryError } from '../util/errors.js';

/** Writes a new secret; refuses to overwrite an existing file. */
export function writeNewSecret(file: string): void {
  let fd: number;
  try {
    fd = fs.openSync(file, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') fail(ErrorCodes.EXISTS, `${file} already exists; refusing to overwrite a secret`);
    return fail(ErrorCodes.SECRET, `cannot create ${file}: ${fsProblem(err)}`);
  }
  try {
    fs.writeSync(fd, `${randomBytes(32).toString('hex')}\n`);
    fs.fsyncSync(fd);
    fs.fchmodSync(fd, 0o600);
  } catch (err) {
    // The file is ours (made just now, O_EXCL): a half-written one is no secret and would block the next keygen.
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
    const e = toSnapferryError(err);
    throw new SnapferryError(e.code, `cannot write ${file}: ${e.message}`, { cause: err });
  }
  fs.closeSync(fd);
}

/** Reads a secret file (64 hex digits). */
export function readSecret(file: string): Buffer {
  let text: string;
  try {
    text = readHead(file, MAX_SECRET_FILE + 1).toString('utf8').trim();
  } catch (err) {
    return fail(ErrorCodes.SECRET, `cannot read secret ${file}: ${fsProblem(err)}`);
  }
  if (!/^[0-9a-fA-F]{64}$/.test(text)) fail(ErrorCodes.SECRET, `${file} is not a snapferry secret (expected 64 hex digits; make one with snapferry keygen)`);
  return Buffer.from(text, 'hex');
}

/** More than a secret file ever holds (64 hex digits and a line end, give or take spaces): what is read at most. */
const MAX_SECRET_FILE = 4096;

/**
 * The first `max` bytes of `file` (fewer if it ends first). Not the whole file: a device given by mistake (/dev/zero)
 * never ends, and a large file (a ledger) would be read into memory only to be refused. A FIFO (`--secret <(...)`)
 * is read as it comes.
 */
function readHead(file: string, max: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(max);
    let n = 0;
    while (n < max) {
      const got = fs.readSync(fd, buf, n, max - n, null);
      if (got === 0) break;
      n += got;
    }
    return buf.subarray(0, n);
  } finally {
    fs.closeSync(fd);
  }
}
