/**
 * The contract between the JSON-RPC layer and whatever carries its messages.
 *
 * A transport moves whole messages (already parsed JSON values) both ways and
 * reports how the channel ended. The process transport implements it over a
 * child's stdio; tests implement it in memory. It knows nothing of ids,
 * methods or models.
 */

import type { ExitInfo, LLMServiceError } from './errors.js';

/** How the channel ended: `expected` when `close()` asked for it, else a crash or an exit on its own. */
export interface CloseEvent {
  readonly expected: boolean;
  readonly exit: ExitInfo;
}

export interface Transport {
  /** The peer's process id while it runs, when the peer is a process. */
  readonly pid?: number | undefined;
  /** Open the channel (spawn the process); rejects with `SPAWN_FAILED` when it cannot. */
  start(): Promise<void>;
  /**
   * Write one message. Rejects only when the channel is already gone or going,
   * and `onclose` then always follows, so callers may wait for that instead.
   */
  send(message: unknown): Promise<void>;
  /** End the channel, gracefully unless `force`; resolves once it is closed. */
  close(options?: { force?: boolean }): Promise<void>;
  /** Each message received, in arrival order (a batch arrives as one array). */
  onmessage?: (message: unknown) => void;
  /** Something arrived that is not a message (`PROTOCOL_ERROR`); the channel stays open. */
  onerror?: (error: LLMServiceError) => void;
  /** Called once, after the last `onmessage`. */
  onclose?: (event: CloseEvent) => void;
}
