/**
 * Typed errors with stable codes. Every failure the CLI can report is one of these; the CLI maps the code to a
 * one-line message and an exit code, so scripts can rely on both.
 */

/** Stable error codes. Never renumber or rename: operators grep logs and scripts for them. */
export const ErrorCodes = {
  USAGE: 'SNAPFERRY_E_USAGE',
  AUTH: 'SNAPFERRY_E_AUTH',
  PROTOCOL: 'SNAPFERRY_E_PROTOCOL',
  VERSION: 'SNAPFERRY_E_VERSION',
  UNKNOWN_COMPANY: 'SNAPFERRY_E_UNKNOWN_COMPANY',
  UNREACHABLE: 'SNAPFERRY_E_UNREACHABLE',
  BUSY: 'SNAPFERRY_E_BUSY',
  CONNECTION_LOST: 'SNAPFERRY_E_CONNECTION_LOST',
  TIMEOUT: 'SNAPFERRY_E_TIMEOUT',
  PORT_IN_USE: 'SNAPFERRY_E_PORT_IN_USE',
  DIR_FOREIGN: 'SNAPFERRY_E_DIR_FOREIGN',
  DIR_NOT_WRITABLE: 'SNAPFERRY_E_DIR_NOT_WRITABLE',
  DIR_LOCKED: 'SNAPFERRY_E_DIR_LOCKED',
  DISK_FULL: 'SNAPFERRY_E_DISK_FULL',
  SECRET: 'SNAPFERRY_E_SECRET',
  EXISTS: 'SNAPFERRY_E_EXISTS',
  UNSAFE_TREE: 'SNAPFERRY_E_UNSAFE_TREE',
  UNSTABLE_FILE: 'SNAPFERRY_E_UNSTABLE_FILE',
  BAD_MANIFEST: 'SNAPFERRY_E_BAD_MANIFEST',
  BAD_CHUNK: 'SNAPFERRY_E_BAD_CHUNK',
  LIMIT: 'SNAPFERRY_E_LIMIT',
  STATE: 'SNAPFERRY_E_STATE',
  NOT_A_COPY: 'SNAPFERRY_E_NOT_A_COPY',
  STALE_SOURCE: 'SNAPFERRY_E_STALE_SOURCE',
  IO: 'SNAPFERRY_E_IO',
  INTERNAL: 'SNAPFERRY_E_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/**
 * Exit codes by error code (sysexits.h); anything unlisted exits 1, which no code is left to (verify's 1 means
 * damaged: its 0/1/2 contract is kept apart).
 */
const EXIT_CODES: Partial<Record<ErrorCode, number>> = {
  SNAPFERRY_E_USAGE: 64,
  SNAPFERRY_E_AUTH: 77,
  SNAPFERRY_E_SECRET: 77,
  SNAPFERRY_E_UNREACHABLE: 69,
  // Not 69: a script that tries again while the site is out of reach must not try a wrong name for ever.
  SNAPFERRY_E_UNKNOWN_COMPANY: 67,
  SNAPFERRY_E_BUSY: 69,
  SNAPFERRY_E_CONNECTION_LOST: 69,
  SNAPFERRY_E_TIMEOUT: 69,
  SNAPFERRY_E_PORT_IN_USE: 69,
  SNAPFERRY_E_DIR_FOREIGN: 73,
  SNAPFERRY_E_DIR_NOT_WRITABLE: 73,
  SNAPFERRY_E_NOT_A_COPY: 73,
  SNAPFERRY_E_DIR_LOCKED: 75,
  // Try again later (EX_TEMPFAIL): a file at the site that would not hold still, a source that changed under a pull.
  SNAPFERRY_E_UNSTABLE_FILE: 75,
  SNAPFERRY_E_STALE_SOURCE: 75,
  SNAPFERRY_E_EXISTS: 73,
  SNAPFERRY_E_STATE: 74,
  SNAPFERRY_E_DISK_FULL: 74,
  SNAPFERRY_E_IO: 74,
  SNAPFERRY_E_PROTOCOL: 76,
  SNAPFERRY_E_VERSION: 76,
  SNAPFERRY_E_BAD_MANIFEST: 76,
  SNAPFERRY_E_BAD_CHUNK: 76,
  SNAPFERRY_E_UNSAFE_TREE: 65,
  SNAPFERRY_E_LIMIT: 65,
  SNAPFERRY_E_INTERNAL: 70,
};

/** An error that snapferry understands: a stable code and a one-line message fit for the operator. */
export class SnapferryError extends Error {
  readonly code: ErrorCode;
  /** Whether retrying the same operation later may succeed (network faults), as opposed to a final refusal. */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; retryable?: boolean } = {}) {
    super(message.replace(/\s*\n\s*/g, ' '), { cause: options.cause });
    this.name = 'SnapferryError';
    this.code = code;
    this.retryable = options.retryable ?? false;
  }

  /** Process exit code for this error. */
  get exitCode(): number {
    return EXIT_CODES[this.code] ?? 1;
  }
}

/**
 * Text from a peer, made safe for a terminal: control characters (CR, escapes) become spaces. Everything a peer says
 * that reaches a message goes through it (its ERROR messages, paths, a WebSocket close frame's reason).
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x1f\x7f-\x9f]/g, ' ');
}

/** Shorthand constructor. */
export function fail(code: ErrorCode, message: string, options?: { cause?: unknown; retryable?: boolean }): never {
  throw new SnapferryError(code, message, options);
}

/** A file-system error in words an operator reads ("no such file or folder"), for messages that name the path. */
export function fsProblem(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOENT':
      return 'no such file or folder';
    case 'EISDIR':
      return 'it is a folder';
    case 'ENOTDIR':
      return 'a part of the path is not a folder';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EROFS':
      return 'read-only file system';
    case 'ELOOP':
      return 'too many symbolic links';
    case 'ENAMETOOLONG':
      return 'path too long for this system';
    default:
      return e?.code ?? (err instanceof Error ? err.message : String(err));
  }
}

/** A path for a one-line message: a very long one (thousands of bytes) by its first and last 60 characters. */
export function shortenedPath(p: string): string {
  return p.length <= 160 ? p : `${p.slice(0, 60)}…${p.slice(-60)}`;
}

/** Turns any thrown value into a SnapferryError, translating the OS errors an operator can act on. */
export function toSnapferryError(err: unknown, context = ''): SnapferryError {
  if (err instanceof SnapferryError) return err;
  const e = err as NodeJS.ErrnoException;
  const where = context ? `${context}: ` : '';
  switch (e?.code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new SnapferryError(ErrorCodes.DISK_FULL, `${where}disk full (${e.path ?? 'no space left on device'})`, { cause: err });
    case 'EACCES':
    case 'EPERM':
      return new SnapferryError(ErrorCodes.DIR_NOT_WRITABLE, `${where}permission denied: ${e.path ?? e.message}`, { cause: err });
    case 'EROFS':
      return new SnapferryError(ErrorCodes.DIR_NOT_WRITABLE, `${where}read-only filesystem: ${e.path ?? e.message}`, { cause: err });
    // The common path faults in words (Node's own text reads "ENOTDIR: not a directory, mkdir '...'").
    case 'ENOTDIR':
      return new SnapferryError(ErrorCodes.IO, `${where}a part of the path is not a folder: ${shortenedPath(e.path ?? '?')}`, { cause: err });
    case 'EEXIST':
      return new SnapferryError(ErrorCodes.IO, `${where}something already stands at ${shortenedPath(e.path ?? '?')}`, { cause: err });
    case 'ELOOP':
      return new SnapferryError(ErrorCodes.IO, `${where}too many levels of symbolic links: ${shortenedPath(e.path ?? '?')}`, { cause: err });
    case 'ENAMETOOLONG': {
      // The path may be thousands of bytes (a deep company under a long DIR): its ends say which one it is. Or one name
      // in it is over 255 bytes (a DIR of 250 bytes: its state folder's name is 11 bytes longer).
      const p = e.path ?? '';
      const longest = Math.max(0, ...p.split('/').map((c) => Buffer.byteLength(c)));
      const what = longest > 255 ? `a name of ${longest} bytes in it, at most 255` : `${Buffer.byteLength(p)} bytes`;
      return new SnapferryError(ErrorCodes.IO, `${where}path too long for this system (${what}): ${shortenedPath(p || '?')}`, { cause: err });
    }
    case 'EMFILE':
    case 'ENFILE':
      // What to do about it, in the line: a service or container with a low descriptor limit (a pull keeps up to 32
      // files open per job, and Node's own modules and workers need theirs).
      return new SnapferryError(ErrorCodes.IO, `${where}too many open files${e.path ? ` (at ${shortenedPath(e.path)})` : ''}: raise this process's limit (ulimit -n, LimitNOFILE=)`, { cause: err });
    case 'EADDRINUSE':
      return new SnapferryError(ErrorCodes.PORT_IN_USE, `${where}address already in use`, { cause: err });
    case 'ECONNREFUSED':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new SnapferryError(ErrorCodes.UNREACHABLE, `${where}site unreachable (${e.code})`, { cause: err, retryable: true });
    case 'ECONNRESET':
    case 'EPIPE':
      return new SnapferryError(ErrorCodes.CONNECTION_LOST, `${where}connection lost (${e.code})`, { cause: err, retryable: true });
    default:
      if (typeof e?.code === 'string' && e.code.startsWith('WS_ERR_')) {
        // A malformed WebSocket frame: the peer or the link is broken.
        return new SnapferryError(ErrorCodes.PROTOCOL, `${where}broken WebSocket frame (${e.code})`, { cause: err, retryable: true });
      }
      if (e?.code && typeof e.code === 'string' && e.code.startsWith('E') && e.syscall) {
        return new SnapferryError(ErrorCodes.IO, `${where}${e.message}`, { cause: err });
      }
      return new SnapferryError(ErrorCodes.INTERNAL, `${where}${e?.message ?? String(err)}`, { cause: err });
  }
}
