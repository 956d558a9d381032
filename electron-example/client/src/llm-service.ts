/**
 * `LlmService`: the host app's old API, now backed by the sidecar.
 *
 * Same calls as before (`loadModel`, `unloadModel`, `prompt`, `promptStream`
 * with `{content, isFinal, timestamp}` chunks, a handle with `cancel()`), plus
 * what the sidecar gives: a stream resolves to its result (finish reason,
 * usage, timings, the parsed `json` of a `jsonSchema` prompt) and takes an
 * AbortSignal; `promptWithResult` is `prompt` with that result; chat sessions
 * (`createSession`, a `ChatSession` the sidecar keeps the history of);
 * `loadModel` with progress and cancel; token arithmetic (`tokenize`,
 * `detokenize`, `countTokens`), `embed`, `inspectModel` and `downloadModel`.
 * Every prompt runs as a stream (`prompt` too, its chunks unused), so that
 * `workerTimeoutMs` limits the wait for the first chunk, never the length of
 * the reply. A prompt whose first chunk does not come in time is cancelled
 * and tried again, up to `maxAttempts` in total; a sidecar that then fails a
 * ping is killed and restarted, as is one that does not answer a cancel or
 * whose stream stalls (`streamIdleTimeoutMs`). A prompt cancelled before its
 * request went out resolves as cancelled all the same. The supervisor restarts
 * a crashed sidecar on the next call, and this class reloads the models that
 * were loaded, with the same params (sessions open again on their next call);
 * a model whose reload fails, crashes or hangs the sidecar is forgotten.
 */

import { beforeAbort, Cancellers, mapHandle, type PromptHandle } from './cancellers.js';
import { ChatSession, type SessionHost } from './chat-session.js';
import { cancelledIfUnsent, type LlmChunk, toLlmChunk, withTextChunks } from './chunks.js';
import { CancelTimeoutError, isTimeout, StreamIdleTimeoutError, timedOutError, WorkerTimeoutError } from './errors.js';
import { LoadedModels } from './loaded-models.js';
import { defaultLogger, type Logger } from './log.js';
import {
  countTokensParams,
  definedOnly,
  generationParams,
  loadCallOptions,
  loadModelParams,
  type LoadModelOptions,
  type PromptOptions,
} from './options.js';
import type { SidecarCommand } from './process-transport.js';
import type {
  ChatMessage,
  CountTokensResult,
  DownloadModelResult,
  DownloadProgressParams,
  EmbedResult,
  GenerationResult,
  InspectModelResult,
  LoadProgressParams,
  ModelInfo,
  StreamChunkParams,
} from './protocol-types.js';
import { DEFAULT_CANCEL_GRACE_MS } from './rpc.js';
import type {
  ChatSessionOptions,
  DetokenizeOptions,
  DownloadOptions,
  DownloadProgress,
  EmbedOptions,
  LlmServiceOptions,
  LoadOptions,
  StreamPrompt,
  TokenizeOptions,
} from './service-options.js';
import { SidecarClient } from './sidecar-client.js';
import { DEFAULT_RESTART_POLICY, Supervisor } from './supervisor.js';

export type { LlmChunk, PromptHandle };

const DEFAULT_SIDECAR: SidecarCommand = { command: 'llama-sidecar' };
const PING_TIMEOUT_MS = 2000;
/** The old service's first-chunk timeout. */
export const DEFAULT_WORKER_TIMEOUT_MS = 10_000;
/** How long a stream may go without a chunk once it has begun (`streamIdleTimeoutMs`). */
export const DEFAULT_STREAM_IDLE_TIMEOUT_MS = 60_000;

export class LlmService {
  private readonly logger: Logger;
  private readonly supervisor: Supervisor;
  /** What to reload after a restart. */
  private readonly loaded: LoadedModels;
  private readonly cancellers = new Cancellers();
  /** Tries per timed-out call, the first included. */
  private readonly maxAttempts: number;
  /** How long a begun stream may go without a chunk; undefined when turned off. */
  private readonly idleTimeoutMs: number | undefined;
  /** What chat sessions use of this service. */
  private readonly sessionHost: SessionHost;

  constructor(private readonly options: LlmServiceOptions = {}) {
    this.logger = options.logger ?? defaultLogger;
    this.loaded = new LoadedModels(this.logger);
    const policy = { ...DEFAULT_RESTART_POLICY, ...definedOnly(options.restart ?? {}) };
    this.supervisor = new Supervisor((signal) => this.startSidecar(signal), policy, this.logger);
    this.maxAttempts = Math.max(options.maxAttempts ?? 2, 1);
    const idleTimeoutMs = options.streamIdleTimeoutMs ?? DEFAULT_STREAM_IDLE_TIMEOUT_MS;
    this.idleTimeoutMs = idleTimeoutMs > 0 ? idleTimeoutMs : undefined;
    this.sessionHost = {
      logger: this.logger,
      acquire: () => this.supervisor.acquire(),
      current: () => this.supervisor.current,
      maxAttempts: this.maxAttempts,
      idleTimeoutMs: this.idleTimeoutMs,
      timeoutFor: (callOptions) => this.timeoutFor(callOptions),
      restartIfHung: (client, timeoutMs) => this.restartIfHung(client, timeoutMs),
      withCanceller: (callOptions, body) => this.cancellers.run(callOptions, body),
      cancelGraceMs: options.cancelGraceMs ?? DEFAULT_CANCEL_GRACE_MS,
    };
  }

  /**
   * Load a model (a path, `"default"`, or options); it becomes the default target of prompts.
   * `options.onLoadProgress` gets the progress (0 to 1); `options.signal` (or `cancel(options.requestId)`)
   * cancels the load, which then rejects with RequestCancelled (-32800). node-llama-cpp's
   * `onLoadProgress` and `loadSignal` in the options object do the same (the second argument's win).
   * When the sidecar's model limit (`--max-models`, `--max-model-bytes`) unloads the least recently
   * used model to make room, that model is not reloaded after a restart either.
   */
  async loadModel(pathOrOptions: string | LoadModelOptions, options: LoadOptions = {}): Promise<ModelInfo> {
    const params = loadModelParams(pathOrOptions, this.logger);
    const callOptions = loadCallOptions(pathOrOptions, options);
    const { onLoadProgress, timeoutMs } = callOptions;
    const progress = onLoadProgress && ((update: LoadProgressParams): void => onLoadProgress(update.progress));
    const client = await this.supervisor.acquire();
    const info = await this.cancellers.run(callOptions, (signal) =>
      this.restartIfCancelHangs(client, client.loadModel(params, { onLoadProgress: progress, signal, timeoutMs })),
    );
    this.loaded.add(info.modelId, params);
    // With another model loaded, the sidecar may have unloaded one to make room.
    if (this.loaded.size > 1) await this.loaded.forgetUnloaded(client);
    return info;
  }

  /**
   * Open a chat session on a loaded model (the default one when `options.modelId` is absent): a
   * conversation whose history the sidecar keeps, prompted turn by turn (see `ChatSession`).
   */
  createSession(options: ChatSessionOptions = {}): Promise<ChatSession> {
    return ChatSession.open(this.sessionHost, options);
  }

  /**
   * Unload a model (the default one when no id); false when there was none. With no sidecar running
   * (after a crash, or past the restart limit) the model is only dropped from what a restart reloads:
   * no sidecar is started for it.
   */
  async unloadModel(modelId?: string): Promise<boolean> {
    if (this.supervisor.idle) return this.loaded.forget(modelId);
    const client = await this.supervisor.acquire();
    const { unloaded } = await client.unloadModel(modelId === undefined ? {} : { modelId });
    if (unloaded) this.loaded.forget(modelId);
    return unloaded;
  }

  async listModels(): Promise<ModelInfo[]> {
    return (await (await this.supervisor.acquire()).listModels()).models;
  }

  /**
   * The whole reply to `text` (sent as the user's chat message unless `options.raw`). The handle's
   * `cancel()` ends the reply early: it then resolves with the text so far.
   */
  prompt(text: string, options: PromptOptions = {}): PromptHandle<string> {
    return mapHandle(this.generate('prompt', text, undefined, options), (result) => result.text);
  }

  /**
   * `prompt`, resolving to the whole result: `text`, `finishReason`, `usage`, `timings`, and with
   * `options.jsonSchema` the parsed reply as `json` (absent when the reply was cut, e.g. by `maxTokens`).
   */
  promptWithResult(text: string, options: PromptOptions = {}): PromptHandle<GenerationResult> {
    return this.generate('promptWithResult', text, undefined, options);
  }

  /**
   * Stream the reply to `prompt` into `onChunk`; resolves with the result once the final chunk is
   * out. The handle's `cancel()` (like `options.signal`, or `cancel(handle.requestId)`) ends the
   * stream: a final chunk, then the result, with finishReason "cancelled".
   */
  promptStream(
    prompt: StreamPrompt,
    onChunk: (chunk: LlmChunk) => void,
    options: PromptOptions = {},
  ): PromptHandle<GenerationResult> {
    return this.generate('promptStream', prompt, onChunk, options);
  }

  /** The token ids of `text` (by default as a raw prompt reads it: the model's BOS rule, control tokens recognized). */
  async tokenize(text: string, options: TokenizeOptions = {}): Promise<number[]> {
    const { timeoutMs, ...params } = options;
    const client = await this.supervisor.acquire();
    return (await client.tokenize({ ...definedOnly(params), text }, { timeoutMs })).tokens;
  }

  /** The text of `tokens` (control tokens left out unless `options.special`). */
  async detokenize(tokens: readonly number[], options: DetokenizeOptions = {}): Promise<string> {
    const { timeoutMs, ...params } = options;
    const client = await this.supervisor.acquire();
    return (await client.detokenize({ ...definedOnly(params), tokens: [...tokens] }, { timeoutMs })).text;
  }

  /**
   * How many tokens `prompt(text, options)` would evaluate (chat template and BOS included), and
   * the model's context size: it fits when `promptTokens < contextSize`. Chat messages may be given
   * instead of a text. Takes the same options as `prompt`; only the prompt-shaping ones count.
   */
  async countTokens(
    textOrMessages: string | readonly ChatMessage[],
    options: PromptOptions = {},
  ): Promise<CountTokensResult> {
    const params = countTokensParams(textOrMessages, options, this.logger);
    const client = await this.supervisor.acquire();
    return client.countTokens(params, { timeoutMs: options.timeoutMs });
  }

  /** One vector per input, in order (normalized by default); any loaded model can embed. */
  async embed(input: string | readonly string[], options: EmbedOptions = {}): Promise<EmbedResult> {
    const { timeoutMs, ...params } = options;
    const client = await this.supervisor.acquire();
    const texts = typeof input === 'string' ? input : [...input];
    return client.embed({ ...definedOnly(params), input: texts }, { timeoutMs });
  }

  /** A GGUF file's facts (architecture, size, quantization, chat template, …) from its header, without loading it. */
  async inspectModel(modelPath: string): Promise<InspectModelResult> {
    return (await this.supervisor.acquire()).inspectModel({ modelPath });
  }

  /**
   * Download a model file into the sidecar's models directory: the sidecar must be started with
   * `--models-dir <dir>` in `sidecar.args`. Resolves with where it is and its sha256; a cancelled
   * download resolves with `complete: false` and resumes when asked for again.
   */
  async downloadModel(url: string, options: DownloadOptions = {}): Promise<DownloadModelResult> {
    const { destination, sha256, onProgress, timeoutMs } = options;
    const params = {
      url,
      ...(destination === undefined ? {} : { destination }),
      ...(sha256 === undefined ? {} : { sha256 }),
    };
    const progress = onProgress && ((update: DownloadProgressParams): void => onProgress(toProgress(update)));
    const client = await this.supervisor.acquire();
    return this.cancellers.run(options, (signal) =>
      this.restartIfCancelHangs(client, client.downloadModel(params, { onProgress: progress, signal, timeoutMs })),
    );
  }

  /** The running sidecar's process id (undefined until the first call starts it, and after it exits). */
  get sidecarPid(): number | undefined {
    return this.supervisor.current?.pid;
  }

  /**
   * Cancel the prompt, load or download started with `options.requestId` (or the prompt whose
   * handle has this `requestId`); false when none is running.
   */
  cancel(requestId: string): boolean {
    return this.cancellers.cancel(requestId);
  }

  /**
   * Shut the sidecar down gracefully: running prompts end as cancelled, anything else pending and
   * every later call rejects with CLOSED. A restart on its way stops: its backoff wait ends, and it
   * reloads no more models.
   */
  dispose(): Promise<void> {
    return this.supervisor.dispose();
  }

  /**
   * A prompt as a stream, `prompt`'s too: the worker timeout is then a first-chunk timeout, and a
   * reply that takes longer to generate is not cut off (and generated again) by it.
   */
  private generate(
    what: string,
    prompt: StreamPrompt,
    onChunk: ((chunk: LlmChunk) => void) | undefined,
    options: PromptOptions,
  ): PromptHandle<GenerationResult> {
    const bounds = { firstChunkTimeoutMs: this.timeoutFor(options), idleTimeoutMs: this.idleTimeoutMs, callName: what };
    const receiver = withTextChunks(onChunk, options.onTextChunk);
    const deliver = (chunk: StreamChunkParams): void => receiver?.(toLlmChunk(chunk));
    // Inside the body, so that bad arguments reject the handle, as they rejected the old async calls.
    return this.cancellers.run(options, (signal) => {
      const params = generationParams(typeof prompt === 'string' ? prompt : prompt.text, options, this.logger);
      return cancelledIfUnsent(signal, receiver, () =>
        this.withRetries(what, signal, (client) => client.promptStream(params, deliver, { ...bounds, signal })),
      );
    });
  }

  /** The call's worker timeout: its own, else the service's; undefined when turned off (0). */
  private timeoutFor(options: { readonly timeoutMs?: number | undefined }): number | undefined {
    const timeoutMs = options.timeoutMs ?? this.options.workerTimeoutMs ?? DEFAULT_WORKER_TIMEOUT_MS;
    return timeoutMs > 0 ? timeoutMs : undefined;
  }

  /** A sidecar with the models reloaded; when `signal` fires (dispose), it is closed before the next reload. */
  private async startSidecar(signal: AbortSignal): Promise<SidecarClient> {
    const {
      sidecar = DEFAULT_SIDECAR,
      startTimeoutMs,
      loadTimeoutMs,
      clientInfo,
      closeGraceMs,
      cancelGraceMs,
    } = this.options;
    const client = await SidecarClient.spawn({
      ...sidecar,
      logger: this.logger,
      startTimeoutMs,
      loadTimeoutMs,
      clientInfo,
      closeGraceMs,
      cancelGraceMs,
    });
    await this.loaded.reloadInto(client, signal);
    return client;
  }

  /**
   * Run `attempt`; on a worker timeout, check the sidecar still answers, then try again. When
   * `signal` fires while a sidecar starts, stop waiting for it (ABORTED).
   */
  private async withRetries<T>(
    what: string,
    signal: AbortSignal,
    attempt: (client: SidecarClient) => Promise<T>,
  ): Promise<T> {
    const attempts = this.maxAttempts;
    let lastTimeout: WorkerTimeoutError | undefined;
    for (let number = 1; number <= attempts; number++) {
      let client: SidecarClient | undefined;
      try {
        client = await beforeAbort(this.supervisor.acquire(), signal, what);
        return await this.restartIfCancelHangs(client, attempt(client));
      } catch (error) {
        if (!(error instanceof WorkerTimeoutError)) throw error;
        lastTimeout = error;
        this.logger('warn', `${what}: attempt ${number} of ${attempts} timed out: ${error.message}`);
        if (client !== undefined && number < attempts) await this.restartIfHung(client, error.timeoutMs);
      }
    }
    throw timedOutError(what, attempts, lastTimeout);
  }

  /**
   * `call`; when it was cancelled and the sidecar did not answer the cancel, or its stream stalled,
   * see whether the sidecar hangs.
   */
  private async restartIfCancelHangs<T>(client: SidecarClient, call: Promise<T>): Promise<T> {
    try {
      return await call;
    } catch (error) {
      if (error instanceof CancelTimeoutError || error instanceof StreamIdleTimeoutError)
        await this.restartIfHung(client, error.timeoutMs);
      throw error;
    }
  }

  /** A sidecar that cannot even answer a ping is stuck: kill it so the next attempt gets a fresh one (true). */
  private async restartIfHung(client: SidecarClient, timeoutMs: number): Promise<boolean> {
    try {
      await client.ping({ timeoutMs: Math.min(timeoutMs, PING_TIMEOUT_MS) });
      return false;
    } catch (error) {
      if (!isTimeout(error)) return false;
      this.logger('warn', 'the sidecar does not answer ping; restarting it');
      await this.supervisor.discard(client);
      return true;
    }
  }
}

function toProgress(update: DownloadProgressParams): DownloadProgress {
  const { bytes, total, bytesPerSecond } = update;
  return { bytes, ...(total === undefined ? {} : { total }), bytesPerSecond };
}
