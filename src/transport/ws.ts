/**
 * The `ws` package, loaded with require. Importing a CommonJS package from an ES module makes Node lex the source of
 * every file it requires to find named exports first: for `ws` that cost 55-110 ms of each command's start here
 * (require: 25-40 ms), a third of an unchanged re-pull.
 */
import { createRequire } from 'node:module';
import type * as Ws from 'ws';

const ws = createRequire(import.meta.url)('ws') as typeof Ws;

/** ws's WebSocket class (client and server side of a connection). */
export const WebSocket = ws.WebSocket;
export type WebSocket = Ws.WebSocket;
/** ws's server. */
export const WebSocketServer = ws.WebSocketServer;
export type WebSocketServer = Ws.WebSocketServer;
