/**
 * The two error families of the client, behind the host app's old names.
 *
 * `LLMServiceError` carries either a numeric JSON-RPC code (an error response
 * the sidecar sent, with its `data`) or a string code for a failure of the
 * client itself (the child could not start, exited, went silent, wrote
 * garbage). `WorkerTimeoutError` is the timeout case. This module knows the
 * codes, not where they come from.
 */

import { clip, detailsText, MAX_ERROR_CHARS } from './stderr-tail.js';

/** Codes of failures detected by the client, never sent by the sidecar. */
export type ClientErrorCode =
  /** No answer (for prompts, no first chunk) in time, or no answer to a cancel in time. */
  | 'TIMEOUT'
  /** The client was closed or disposed; the call did not run. */
  | 'CLOSED'
  /** The sidecar process could not be started. */
  | 'SPAWN_FAILED'
  /** The sidecar process ended while the call was pending. */
  | 'SIDECAR_EXITED'
  /** The sidecar crashed too often in a short time; the client stopped restarting it. */
  | 'RESTART_LIMIT'
  /** The sidecar wrote something that is not protocol. */
  | 'PROTOCOL_ERROR'
  /** The caller's AbortSignal fired before the request was sent (a prompt then resolves as cancelled instead). */
  | 'ABORTED';

/** A numeric code from the sidecar (see protocol/schema/error.json) or a client code. */
export type LLMServiceErrorCode = number | ClientErrorCode;

/** Facts about a sidecar exit, attached as `data` to `SIDECAR_EXITED` errors. */
export interface ExitInfo {
  readonly exitCode: number | null;
  readonly signal: string | null;
  /** The last lines the sidecar wrote to stderr, oldest first, without a model load's metadata dump. */
  readonly stderrTail: readonly string[];
  /** The last llama.cpp error line among the recent stderr lines (a logged error, or a GGML_ASSERT), if any. */
  readonly lastLlamaError?: string;
}

export interface LLMServiceErrorOptions {
  readonly cause?: unknown;
  /** More text than fits the one-line message: for a dead sidecar, the tail of its stderr. */
  readonly details?: string | undefined;
}

export class LLMServiceError extends Error {
  override readonly name: string = 'LLMServiceError';
  readonly code: LLMServiceErrorCode;
  readonly data: unknown;
  /**
   * What a log or a "details" view may show beyond the message: for `SIDECAR_EXITED`, the
   * sidecar's last stderr lines (capped, without the model-metadata dump). Undefined for most errors.
   */
  readonly details: string | undefined;

  constructor(code: LLMServiceErrorCode, message: string, data?: unknown, options: LLMServiceErrorOptions = {}) {
    super(message, options);
    this.code = code;
    this.data = data;
    this.details = options.details;
  }

  /** True for an error response of the sidecar (numeric code), false for the client's own. */
  get fromSidecar(): boolean {
    return typeof this.code === 'number';
  }
}

/** A time limit ran out (code `TIMEOUT`, `data: {timeoutMs}`); the subclasses say which one. */
export abstract class TimeLimitError extends LLMServiceError {
  readonly timeoutMs: number;

  constructor(message: string, timeoutMs: number) {
    super('TIMEOUT', message, { timeoutMs });
    this.timeoutMs = timeoutMs;
  }
}

/** No response, or no first stream chunk, within the allowed time. */
export class WorkerTimeoutError extends TimeLimitError {
  override readonly name: string = 'WorkerTimeoutError';
}

/**
 * A call whose signal fired, but whose answer (for a prompt: the cancelled result) did not come
 * within the grace time after the `cancel`: the sidecar is alive but stuck, or gone silent. Not a
 * `WorkerTimeoutError`: a call its caller cancelled is never tried again.
 */
export class CancelTimeoutError extends TimeLimitError {
  override readonly name: string = 'CancelTimeoutError';

  constructor(method: string, timeoutMs: number) {
    super(`${method} was cancelled, but the sidecar did not answer within ${timeoutMs} ms of the cancel.`, timeoutMs);
  }
}

/**
 * A stream that sent chunks, then none for `timeoutMs`: the call is cancelled and rejects (code
 * `TIMEOUT`). Not a `WorkerTimeoutError`: part of the reply was delivered, so it is not tried again.
 */
export class StreamIdleTimeoutError extends TimeLimitError {
  override readonly name: string = 'StreamIdleTimeoutError';

  constructor(method: string, timeoutMs: number) {
    super(`${method} stalled: no chunk within ${timeoutMs} ms of the one before.`, timeoutMs);
  }
}

/** What a call whose signal had fired before it was sent rejects with. */
export function abortedError(method: string): LLMServiceError {
  return new LLMServiceError('ABORTED', `${method} was aborted before it was sent.`);
}

/** What calls on a disposed service reject with. */
export function disposedError(): LLMServiceError {
  return new LLMServiceError('CLOSED', 'The LLM service was disposed.');
}

/**
 * The error every pending call gets when the sidecar ends without being asked to: a one-line
 * message (the signal or exit code, and llama.cpp's last error line if there is one), the stderr
 * tail as `details`, the exit facts as `data`.
 */
export function sidecarExitedError(info: ExitInfo): LLMServiceError {
  const how = info.signal !== null ? `signal ${info.signal}` : `exit code ${String(info.exitCode)}`;
  const llama = info.lastLlamaError === undefined ? '' : ` llama.cpp: ${clip(info.lastLlamaError, MAX_ERROR_CHARS)}`;
  const message = `The sidecar exited unexpectedly (${how}).${llama}`;
  return new LLMServiceError('SIDECAR_EXITED', message, info, { details: detailsText(info.stderrTail) });
}

/** The error of a call whose every attempt timed out (each one a `WorkerTimeoutError`, the last as `cause`). */
export function timedOutError(what: string, attempts: number, last: WorkerTimeoutError | undefined): LLMServiceError {
  const tries = attempts === 1 ? '1 attempt' : `${attempts} attempts`;
  const message = `${what} timed out after retries (${tries}; the last: ${last?.message})`;
  return new LLMServiceError('TIMEOUT', message, { attempts, timeoutMs: last?.timeoutMs }, { cause: last });
}

export function isTimeout(error: unknown): error is LLMServiceError {
  return error instanceof LLMServiceError && error.code === 'TIMEOUT';
}

export function isAborted(error: unknown): error is LLMServiceError {
  return error instanceof LLMServiceError && error.code === 'ABORTED';
}
