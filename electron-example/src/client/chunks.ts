/** The old API's stream chunk, made from the protocol's `streamChunk` params. */

import type { FinishReason, StreamChunkParams, Timings, Usage } from './protocol-types.js';

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
