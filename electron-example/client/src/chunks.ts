/**
 * The old API's stream chunk, made from the protocol's `streamChunk` params, and the end of a
 * prompt cancelled before it was sent, as its caller sees it.
 */

import { isAborted } from './errors.js';
import type { FinishReason, GenerationResult, StreamChunkParams, Timings, Usage } from './protocol-types.js';

/** One streamed piece of the reply; the last one has `isFinal: true` and the finish reason. */
export interface LlmChunk {
  readonly content: string;
  readonly isFinal: boolean;
  /** Milliseconds since the epoch when the sidecar sent it. */
  readonly timestamp: number;
  readonly index: number;
  /** Final chunk only; "error" when the sidecar failed (the call then rejects). */
  readonly finishReason?: FinishReason | 'error';
  readonly usage?: Usage;
  readonly timings?: Timings;
}

export function toLlmChunk(chunk: StreamChunkParams): LlmChunk {
  const { content, isFinal, timestamp, index, finishReason, usage, timings } = chunk;
  return { content, isFinal, timestamp, index, ...(isFinal ? { finishReason, usage, timings } : {}) };
}

/** `onChunk`, and node-llama-cpp's `onTextChunk` with the text of each chunk that has some. */
export function withTextChunks(
  onChunk: ((chunk: LlmChunk) => void) | undefined,
  onTextChunk: ((text: string) => void) | undefined,
): ((chunk: LlmChunk) => void) | undefined {
  if (onTextChunk === undefined) return onChunk;
  return (chunk) => {
    onChunk?.(chunk);
    if (chunk.content !== '') onTextChunk(chunk.content);
  };
}

/**
 * `run`'s result; but a prompt whose `signal` fired before its request was sent (`run` rejects
 * with ABORTED) ends as a cancelled stream does: one final chunk to `onChunk`, then a cancelled
 * result with nothing generated. The caller sees a cancel, whenever it came.
 */
export async function cancelledIfUnsent(
  signal: AbortSignal,
  onChunk: ((chunk: LlmChunk) => void) | undefined,
  run: () => Promise<GenerationResult>,
): Promise<GenerationResult> {
  try {
    return await run();
  } catch (error) {
    if (!(signal.aborted && isAborted(error))) throw error;
  }
  const usage = { promptTokens: 0, completionTokens: 0 };
  const timings = { ttftMs: 0, promptMs: 0, decodeMs: 0, tokensPerSecond: 0 };
  const finishReason = 'cancelled';
  onChunk?.({ content: '', isFinal: true, timestamp: Date.now(), index: 0, finishReason, usage, timings });
  return { text: '', finishReason, usage, timings };
}
