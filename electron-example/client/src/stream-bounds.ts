/**
 * How long a streamed call may go without news: no first chunk within the
 * worker timeout, no next chunk within the idle timeout, no answer within the
 * grace time after a cancel. The JSON-RPC layer bounds streams with
 * `StreamTimers`; a chat session runs each attempt of a turn through
 * `boundedStream`, which also holds back the chunks that come too late and
 * stops the stream when the caller's callback throws. They know timers,
 * signals and chunks, not what the caller makes of a bound passed.
 */

import { type LlmChunk, toLlmChunk } from './chunks.js';
import { type LLMServiceError, StreamIdleTimeoutError, WorkerTimeoutError } from './errors.js';
import type { GenerationResult, StreamChunkParams } from './protocol-types.js';

export interface StreamLimits {
  /** No first chunk within this → `WorkerTimeoutError`. */
  readonly firstChunkTimeoutMs?: number | undefined;
  /** No chunk within this of the one before → `StreamIdleTimeoutError`. */
  readonly idleTimeoutMs?: number | undefined;
}

/**
 * The first-chunk and idle timers of one stream: `expire` is called once, with the error, when a
 * bound is passed. They stop when `signal` fires: from then on the wait for the answer to the
 * cancel is bounded instead (and a call its caller cancelled is never timed out, nor retried).
 */
export class StreamTimers {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly name: string,
    private readonly limits: StreamLimits,
    private readonly signal: AbortSignal | undefined,
    private readonly expire: (error: LLMServiceError) => void,
  ) {
    if (signal?.aborted) {
      this.stopped = true;
      return;
    }
    signal?.addEventListener('abort', this.stop, { once: true });
    const { firstChunkTimeoutMs: ms } = limits;
    if (ms !== undefined)
      this.arm(ms, () => new WorkerTimeoutError(`${name} sent no first chunk within ${ms} ms.`, ms));
  }

  /** A chunk came: the first-chunk timer is over; the idle timer starts again. */
  chunk(): void {
    clearTimeout(this.timer);
    const { idleTimeoutMs: ms } = this.limits;
    if (ms !== undefined && !this.stopped) this.arm(ms, () => new StreamIdleTimeoutError(this.name, ms));
  }

  /** No more timeouts: the call settled or was cancelled. */
  readonly stop = (): void => {
    this.stopped = true;
    clearTimeout(this.timer);
    this.signal?.removeEventListener('abort', this.stop);
  };

  private arm(ms: number, error: () => LLMServiceError): void {
    this.timer = setTimeout(() => {
      this.stop();
      this.expire(error());
    }, ms);
  }
}

export type Settled = { readonly result: GenerationResult } | { readonly error: unknown };

/** How a `boundedStream` ended. */
export interface BoundedStreamEnd {
  /** Its answer; undefined when none came within the grace time after its cancel. */
  readonly settled: Settled | undefined;
  /** The answer, whenever it comes. */
  readonly answer: Promise<Settled>;
  /** The bound it passed (first chunk: `WorkerTimeoutError`, or idle), which cancelled it. */
  readonly expired: LLMServiceError | undefined;
  /** What `onChunk` threw (the stream was then cancelled). */
  readonly callbackFailed: { readonly error: unknown } | undefined;
  /** Chunks that came after a bound was passed, held back from `onChunk`. */
  readonly held: readonly LlmChunk[];
}

export interface BoundedStreamOptions {
  /** The name of the call in the timeout errors. */
  readonly name: string;
  readonly limits: StreamLimits;
  /** The caller's cancel. */
  readonly signal: AbortSignal;
  /** How long to wait for the answer once cancelled, by a bound, the callback or `signal`. */
  readonly graceMs: number;
  readonly onChunk: ((chunk: LlmChunk) => void) | undefined;
}

/**
 * Run `start` (a stream that calls `deliver` with each chunk and cancels when its signal fires),
 * passing its chunks to `onChunk`. When a bound is passed or `onChunk` throws, cancel it; once
 * cancelled, wait up to `graceMs` for its answer.
 */
export async function boundedStream(
  start: (deliver: (chunk: StreamChunkParams) => void, signal: AbortSignal) => Promise<GenerationResult>,
  options: BoundedStreamOptions,
): Promise<BoundedStreamEnd> {
  const { name, limits, signal, graceMs, onChunk } = options;
  const controller = new AbortController();
  const callSignal = AbortSignal.any([signal, controller.signal]);
  let expired: LLMServiceError | undefined;
  let callbackFailed: { readonly error: unknown } | undefined;
  const held: LlmChunk[] = [];
  const timers = new StreamTimers(name, limits, callSignal, (error) => {
    expired = error;
    controller.abort(); // sends cancel; the answer still comes (a cancelled result)
  });
  const deliver = (chunk: StreamChunkParams): void => {
    timers.chunk();
    if (callbackFailed !== undefined) return;
    if (expired !== undefined) {
      held.push(toLlmChunk(chunk));
      return;
    }
    try {
      onChunk?.(toLlmChunk(chunk));
    } catch (error) {
      // The caller's callback failed: stop the reply; the caller rejects with what it threw.
      callbackFailed = { error };
      controller.abort();
    }
  };
  const answer = start(deliver, callSignal).then(
    (result): Settled => ({ result }),
    (error: unknown): Settled => ({ error }),
  );
  const settled = await answeredInTime(answer, callSignal, graceMs);
  timers.stop();
  return { settled, answer, expired, callbackFailed, held };
}

/**
 * `answer`, or undefined when `signal` fired and `answer` did not come within `graceMs` after it
 * (never settling with undefined while `signal` has not fired).
 */
async function answeredInTime<T>(answer: Promise<T>, signal: AbortSignal, graceMs: number): Promise<T | undefined> {
  if (!Number.isFinite(graceMs)) return answer;
  let timer: NodeJS.Timeout | undefined;
  let startGrace = (): void => {};
  const late = new Promise<undefined>((resolve) => {
    startGrace = () => {
      timer = setTimeout(resolve, graceMs, undefined);
    };
  });
  if (signal.aborted) startGrace();
  else signal.addEventListener('abort', startGrace, { once: true });
  try {
    return await Promise.race([answer, late]);
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', startGrace);
  }
}
