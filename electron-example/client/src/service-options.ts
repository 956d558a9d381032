/**
 * The options of `LlmService`'s constructor and of its calls other than prompts.
 *
 * Plain types, kept apart so that llm-service.ts holds behaviour; prompt
 * options, which are mapped onto the protocol, live in options.ts.
 */

import type { Logger } from './log.js';
import type { UndefinedAllowed } from './options.js';
import type { SidecarCommand } from './process-transport.js';
import type { ClientInfo, DownloadProgressParams } from './protocol-types.js';
import type { RestartPolicy } from './supervisor.js';

export interface LlmServiceOptions {
  /** How to start the sidecar; `llama-sidecar` (the Python package's console script) on PATH when absent. */
  readonly sidecar?: SidecarCommand | undefined;
  readonly logger?: Logger | undefined;
  /**
   * No first chunk of a prompt (`prompt` and `promptStream` alike) within this → WorkerTimeoutError
   * (default 10 s; 0 turns it off). It counts time queued behind other prompts on the same model,
   * and prompt processing, but not generation: a long reply never times out once it has begun.
   */
  readonly workerTimeoutMs?: number | undefined;
  /**
   * A stream (any prompt) that sent chunks, then none for this long, is stalled: it is cancelled and
   * rejects with `StreamIdleTimeoutError` (code TIMEOUT), not retried; a sidecar that then fails a
   * ping is restarted (default 60 s; 0 turns it off). Independent of `workerTimeoutMs`.
   */
  readonly streamIdleTimeoutMs?: number | undefined;
  /** Tries per call when the worker times out, the first included (default 2). */
  readonly maxAttempts?: number | undefined;
  /** Spawn until `initialize` is answered (default 30 s). */
  readonly startTimeoutMs?: number | undefined;
  /** loadModel's timeout (default 5 min). */
  readonly loadTimeoutMs?: number | undefined;
  readonly restart?: UndefinedAllowed<Partial<RestartPolicy>> | undefined;
  readonly clientInfo?: ClientInfo | undefined;
  /** How long closing waits at each step (stdin end, SIGTERM) before the next (default 2 s). */
  readonly closeGraceMs?: number | undefined;
  /**
   * How long a cancelled call (its `signal`, `cancel(requestId)`, `handle.cancel()`) waits for the
   * sidecar's answer (default 5 s; `Infinity`: as long as it takes); then it rejects with
   * `CancelTimeoutError`, and a sidecar that does not answer a ping either is restarted.
   */
  readonly cancelGraceMs?: number | undefined;
}

export type StreamPrompt = string | { readonly text: string };

/** `LlmService.createSession`'s options. */
export interface ChatSessionOptions {
  /** The model (a loaded model's id); the default (latest loaded) one when absent. It needs a chat template. */
  readonly modelId?: string | undefined;
  /** The first message of every prompt of the session; never dropped from it. */
  readonly systemPrompt?: string | undefined;
  /**
   * Tokens the session's prompt and reply may take together, at most the model's context size (the
   * default). Past it the oldest turns are left out of the prompt (`droppedMessages` counts them).
   */
  readonly contextSize?: number | undefined;
}

/** `loadModel`'s second argument. */
export interface LoadOptions {
  /**
   * node-llama-cpp's `onLoadProgress`: the load's progress as a number from 0 to 1, strictly
   * increasing (llama.cpp's progress through the tensors, at most every 100 ms), called with 1 once
   * the model is ready, before `loadModel` resolves. Loading a model that is loaded already may
   * report only the 1.
   */
  readonly onLoadProgress?: ((progress: number) => void) | undefined;
  /**
   * Cancels the load: `loadModel` then rejects with RequestCancelled (`LLMServiceError`, code
   * -32800) and the sidecar frees what it had loaded; a load that finished first resolves as usual.
   */
  readonly signal?: AbortSignal | undefined;
  /** A key for `LlmService.cancel(requestId)`. */
  readonly requestId?: string | undefined;
  /** This load's timeout, instead of the service's `loadTimeoutMs`. */
  readonly timeoutMs?: number | undefined;
}

/** Options of the calls that are not prompts. */
export interface CallTimeoutOptions {
  /** This call's timeout (default 60 s). */
  readonly timeoutMs?: number | undefined;
}

export interface TokenizeOptions extends CallTimeoutOptions {
  readonly modelId?: string | undefined;
  /** Apply the model's beginning-of-sequence rule, as a raw prompt does (default true). */
  readonly addBos?: boolean | undefined;
  /** Read control-token text such as `<|im_start|>` as the control token (default true). */
  readonly special?: boolean | undefined;
}

export interface DetokenizeOptions extends CallTimeoutOptions {
  readonly modelId?: string | undefined;
  /** Render control tokens as their text (default false). */
  readonly special?: boolean | undefined;
}

export interface EmbedOptions extends CallTimeoutOptions {
  readonly modelId?: string | undefined;
  /** Scale each vector to length 1, so a dot product is the cosine similarity (default true). */
  readonly normalize?: boolean | undefined;
}

/** How far a download has come: bytes on disk (a resumed start included), the size when the server says it. */
export type DownloadProgress = Omit<DownloadProgressParams, 'requestId'>;

export interface DownloadOptions {
  /** A file name in the sidecar's first `--models-dir`, or a path inside one; the URL's last segment by default. */
  readonly destination?: string | undefined;
  /** The expected sha256 (hex): a mismatch fails the download (-32012) and deletes the file. */
  readonly sha256?: string | undefined;
  /** Called at most every 250 ms while the file arrives, and once at the end. */
  readonly onProgress?: ((progress: DownloadProgress) => void) | undefined;
  /** Cancels the download: the call resolves with `complete: false`; the same download later resumes. */
  readonly signal?: AbortSignal | undefined;
  /** A key for `LlmService.cancel(requestId)`. */
  readonly requestId?: string | undefined;
  /** A limit on the whole download (none by default). */
  readonly timeoutMs?: number | undefined;
}
