/**
 * Cancel by key: the old API's handle-style cancel, on top of AbortSignals.
 *
 * Each call gets a request id (the caller's `requestId`, or a made-up one)
 * and an AbortController; `cancel(requestId)` or the handle the call returns
 * fires it, as does the caller's own `signal`. It knows keys and signals, not
 * what the calls do when their signal fires.
 */

import { randomUUID } from 'node:crypto';

import { abortedError } from './errors.js';

/**
 * What `prompt`, `promptWithResult` and `promptStream` return: the promise of the call, which can
 * also cancel it, like the handle the old `generateStream` returned.
 */
export interface PromptHandle<T> extends Promise<T> {
  /** The key `LlmService.cancel` takes: the caller's `requestId`, else one made up for this call. */
  readonly requestId: string;
  /**
   * Cancel the call, as its `signal` would: a prompt then resolves with the text so far and
   * finishReason "cancelled", and a stream's `onChunk` gets one final chunk. A prompt cancelled
   * before its request was sent (while the sidecar starts, or between two attempts) resolves the
   * same way, with nothing generated. False when the call had already settled.
   */
  cancel(): boolean;
}

/** The options of a cancellable call. */
export interface CancelOptions {
  readonly requestId?: string | undefined;
  readonly signal?: AbortSignal | undefined;
}

export class Cancellers {
  /** The running calls by request id (a reused id names its latest call). */
  private readonly running = new Map<string, AbortController>();

  /** Run `body` with a signal that fires on `options.signal`, on `cancel(requestId)` or on the handle's `cancel()`. */
  run<T>(options: CancelOptions, body: (signal: AbortSignal) => Promise<T>): PromptHandle<T> {
    const requestId = options.requestId ?? randomUUID();
    const controller = new AbortController();
    this.running.set(requestId, controller);
    const { signal } = options;
    const callSignal = signal === undefined ? controller.signal : AbortSignal.any([signal, controller.signal]);
    // Called through an async function: a body that throws at once rejects the handle instead.
    const start = async (): Promise<T> => body(callSignal);
    let settled = false;
    const done = start().finally(() => {
      settled = true;
      if (this.running.get(requestId) === controller) this.running.delete(requestId);
    });
    const cancel = (): boolean => {
      controller.abort();
      return !settled;
    };
    return Object.assign(done, { requestId, cancel });
  }

  /** Cancel the call running under `requestId`; false when none is. */
  cancel(requestId: string): boolean {
    const controller = this.running.get(requestId);
    controller?.abort();
    return controller !== undefined;
  }
}

/** A handle for `f` of what `handle` resolves to, cancelling the same call. */
export function mapHandle<T, U>(handle: PromptHandle<T>, f: (value: T) => U): PromptHandle<U> {
  const { requestId, cancel } = handle;
  return Object.assign(handle.then(f), { requestId, cancel });
}

/**
 * `promise`, or an ABORTED rejection (named `what`) as soon as `signal` fires, if it does first:
 * a call cancelled while it waits for a sidecar to start ends then. `promise` goes on; its
 * rejection is handled.
 */
export function beforeAbort<T>(promise: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  promise.catch(() => undefined);
  if (signal.aborted) return Promise.reject(abortedError(what));
  let onAbort = (): void => {};
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(abortedError(what));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([promise, aborted]).finally(() => signal.removeEventListener('abort', onAbort));
}
