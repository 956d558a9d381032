/**
 * JSON-RPC 2.0 over any `Transport`: ids, correlation, timeouts, cancellation.
 *
 * Each request gets an integer id and waits for the response with that id; a
 * notification whose params carry the `requestId` of a pending request
 * (`streamChunk`, `downloadProgress`, any later one) goes to that request's
 * `onNotification`, whatever its method. A timeout (no response; for a
 * stream, no first chunk, or no next chunk: `StreamTimers`) or an abandoned
 * request sends `cancel` and rejects at once; an AbortSignal sends `cancel` and keeps
 * waiting, because the sidecar answers a cancelled prompt or download with its
 * partial result — for a bounded grace time, so that a stuck sidecar cannot
 * hold a cancelled call forever. When the channel closes, every pending call
 * rejects at once.
 * It knows the envelope and the `cancel` name, not what the methods mean.
 *
 * Not the `json-rpc-2.0` package: its client rejects pending calls only with
 * a message string and has no notification routing or cancel hook, which are
 * most of what this layer does; the id bookkeeping it would save is a Map.
 */

import { abortedError, CancelTimeoutError, LLMServiceError, sidecarExitedError, WorkerTimeoutError } from './errors.js';
import { defaultLogger, type Logger } from './log.js';
import { type StreamLimits, StreamTimers } from './stream-bounds.js';
import type { CloseEvent, Transport } from './transport.js';

export interface RequestOptions {
  /** Reject with `WorkerTimeoutError` (and cancel the request) when no response comes in time. */
  readonly timeoutMs?: number | undefined;
  /** Send `cancel` when it fires; the response (for prompts, a cancelled result) still settles the call. */
  readonly signal?: AbortSignal | undefined;
  /**
   * Once `signal` fired, how long to wait for the response before rejecting with
   * `CancelTimeoutError` (default `DEFAULT_CANCEL_GRACE_MS`). `Infinity` waits as long as it takes,
   * for a caller that bounds the wait itself and wants a late answer.
   */
  readonly cancelGraceMs?: number | undefined;
  /**
   * What this call's errors call it (default: the method): a caller whose own method runs as
   * another one (`prompt` as `promptStream`) names its own.
   */
  readonly callName?: string | undefined;
}

/**
 * A cancelled prompt is answered within one token, a queued one at once (PROTOCOL.md, `cancel`):
 * milliseconds on the test models. Five seconds leave room for a large model on a loaded machine,
 * and still end a call whose sidecar hangs.
 */
export const DEFAULT_CANCEL_GRACE_MS = 5000;

/**
 * `firstChunkTimeoutMs`: reject with `WorkerTimeoutError` (and cancel) when no notification for the
 * request (a chunk) arrives in time; `idleTimeoutMs`: reject with `StreamIdleTimeoutError` (and
 * cancel) when, after one, the next does not arrive in time.
 */
export interface StreamOptions extends RequestOptions, StreamLimits {}

/** Receives one notification about a request: its method and params (which hold the request's id as `requestId`). */
export type NotificationHandler = (method: string, params: Record<string, unknown>) => void;

export interface CallOptions extends StreamOptions {
  /**
   * Receives, in order and before the result settles, every notification whose params carry this
   * request's id as `requestId` (`streamChunk`, `downloadProgress`, …). If it throws, the request is
   * cancelled and the call rejects with what it threw.
   */
  readonly onNotification?: NotificationHandler | undefined;
}

type Outcome = { readonly result: unknown } | { readonly error: unknown };

interface PendingCall {
  /** The method, or the name the caller gave the call. */
  readonly name: string;
  readonly resolve: (result: unknown) => void;
  readonly reject: (error: unknown) => void;
  readonly onNotification: NotificationHandler | undefined;
  readonly cleanups: (() => void)[];
  stream?: StreamTimers;
}

export class RpcConnection {
  /** Settles when the transport closes, with how it closed. */
  readonly closed: Promise<CloseEvent>;

  private nextId = 1;
  private readonly pending = new Map<number, PendingCall>();
  private closedError: LLMServiceError | undefined;
  private closedWith: CloseEvent | undefined;

  constructor(
    private readonly transport: Transport,
    private readonly logger: Logger = defaultLogger,
  ) {
    transport.onmessage = (message) => this.receive(message);
    // A stray line is logged, not fatal: the sidecar keeps stdout for the protocol, so such a
    // line is rare and usually precedes a crash, which the close below reports to every call.
    transport.onerror = (error) => this.logger('error', error.message);
    this.closed = new Promise((resolve) => {
      transport.onclose = (event) => {
        this.failAll(event);
        resolve(event);
      };
    });
  }

  /** How the transport closed, once it has: every call then rejects at once. */
  get closeEvent(): CloseEvent | undefined {
    return this.closedWith;
  }

  /** Send a request; resolves with its `result`, rejects with an `LLMServiceError`. */
  request(method: string, params: object | undefined, options: CallOptions = {}): Promise<unknown> {
    if (this.closedError !== undefined) return Promise.reject(this.closedError);
    const name = options.callName ?? method;
    if (options.signal?.aborted) return Promise.reject(abortedError(name));
    const id = this.nextId++;
    const result = new Promise<unknown>((resolve, reject) => {
      const call: PendingCall = { name, resolve, reject, onNotification: options.onNotification, cleanups: [] };
      this.pending.set(id, call);
      this.armTimers(id, call, options);
    });
    const message = { jsonrpc: '2.0', id, method, ...(params === undefined ? {} : { params }) };
    // A failed write means the channel is going; its close event rejects the call with the reason.
    this.transport.send(message).catch((error: unknown) => {
      this.logger('debug', `${method} not sent: ${(error as Error).message}`);
    });
    return result;
  }

  /** Send a notification; failures are logged (the close event reports a dead channel). */
  notify(method: string, params: object): void {
    this.transport.send({ jsonrpc: '2.0', method, params }).catch((error: unknown) => {
      this.logger('debug', `notification ${method} not sent: ${(error as Error).message}`);
    });
  }

  private armTimers(id: number, call: PendingCall, options: StreamOptions): void {
    const { timeoutMs, firstChunkTimeoutMs, idleTimeoutMs, signal, cancelGraceMs = DEFAULT_CANCEL_GRACE_MS } = options;
    const after = (ms: number, fire: () => void): void => {
      const timer = setTimeout(fire, ms);
      call.cleanups.push(() => clearTimeout(timer));
    };
    if (timeoutMs !== undefined)
      after(timeoutMs, () =>
        this.abandon(id, new WorkerTimeoutError(`${call.name} got no response within ${timeoutMs} ms.`, timeoutMs)),
      );
    if (firstChunkTimeoutMs !== undefined || idleTimeoutMs !== undefined) {
      // They stop when the signal fires: from then on the grace bounds the wait (a first-chunk
      // timeout would retry a cancelled call).
      const stream = new StreamTimers(call.name, { firstChunkTimeoutMs, idleTimeoutMs }, signal, (error) =>
        this.abandon(id, error),
      );
      call.stream = stream;
      call.cleanups.push(stream.stop);
    }
    if (signal !== undefined) {
      const onAbort = (): void => {
        this.notify('cancel', { requestId: id });
        // The cancel was sent already: no second one, just stop waiting for its answer.
        if (Number.isFinite(cancelGraceMs))
          after(cancelGraceMs, () => this.settle(id, { error: new CancelTimeoutError(call.name, cancelGraceMs) }));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      call.cleanups.push(() => signal.removeEventListener('abort', onAbort));
    }
  }

  /** Give up on a request now: reject it, drop whatever still arrives for it, and ask the sidecar to stop it. */
  private abandon(id: number, error: unknown): void {
    if (this.settle(id, { error })) this.notify('cancel', { requestId: id });
  }

  /** Settle a pending call once; false when it was not pending (answered, abandoned, unknown). */
  private settle(id: number, outcome: Outcome): boolean {
    const call = this.pending.get(id);
    if (call === undefined) return false;
    this.pending.delete(id);
    for (const cleanup of call.cleanups) cleanup();
    if ('error' in outcome) call.reject(outcome.error);
    else call.resolve(outcome.result);
    return true;
  }

  private receive(message: unknown): void {
    for (const item of Array.isArray(message) ? message : [message]) {
      if (!isObject(item))
        this.logger('error', `The sidecar sent a message that is not an object: ${JSON.stringify(item)}`);
      else if (typeof item['method'] === 'string') this.receiveNotification(item['method'], item['params']);
      else this.receiveResponse(item);
    }
  }

  /** Route a notification to the pending request its params name (`requestId`); drop any other. */
  private receiveNotification(method: string, params: unknown): void {
    if (!isObject(params) || typeof params['requestId'] !== 'number') {
      this.logger('debug', `ignored notification ${method}`);
      return;
    }
    const requestId = params['requestId'];
    // Notifications of an abandoned request find no call: it was rejected already.
    const call = this.pending.get(requestId);
    if (call === undefined) return;
    call.stream?.chunk();
    try {
      call.onNotification?.(method, params);
    } catch (error) {
      // The caller's callback failed: stop the request and hand the caller its own error.
      this.abandon(requestId, error);
    }
  }

  private receiveResponse(response: Record<string, unknown>): void {
    const id = response['id'];
    const error = response['error'];
    if (typeof id !== 'number' || !this.pending.has(id)) {
      // id null: the sidecar could not read a line we sent, which this client never should cause.
      const level = id === null ? 'error' : 'debug';
      this.logger(level, `response to no pending request: ${JSON.stringify(response).slice(0, 300)}`);
    } else if (isObject(error)) {
      const code = typeof error['code'] === 'number' ? error['code'] : -32603;
      const text = typeof error['message'] === 'string' ? error['message'] : 'error without a message';
      this.settle(id, { error: new LLMServiceError(code, text, error['data']) });
    } else if ('result' in response) {
      this.settle(id, { result: response['result'] });
    } else {
      const text = `The sidecar sent a response with neither result nor error (id ${id}).`;
      this.settle(id, { error: new LLMServiceError('PROTOCOL_ERROR', text, response) });
    }
  }

  private failAll(event: CloseEvent): void {
    this.closedWith = event;
    this.closedError = event.expected
      ? new LLMServiceError('CLOSED', 'The sidecar was closed.', event.exit)
      : sidecarExitedError(event.exit);
    for (const id of [...this.pending.keys()]) this.settle(id, { error: this.closedError });
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
