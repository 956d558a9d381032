/**
 * `LlmService`: the host app's old API, now backed by the sidecar.
 *
 * Same calls as before (`loadModel`, `unloadModel`, `prompt`, `promptStream`
 * with `{content, isFinal, timestamp}` chunks), plus what the sidecar gives:
 * a stream resolves to its result (finish reason, usage, timings, the parsed
 * `json` of a `jsonSchema` prompt) and takes an AbortSignal; `promptWithResult`
 * is `prompt` with that result; chat sessions (`createSession`, a
 * `ChatSession` the sidecar keeps the history of); `loadModel` with progress
 * and cancel; token arithmetic (`tokenize`, `detokenize`, `countTokens`),
 * `embed`, `inspectModel` and `downloadModel`. A call that gets no response
 * (`prompt`) or no first chunk (`promptStream`) within `workerTimeoutMs` is
 * cancelled and tried again, up to `maxAttempts` in total; a sidecar that then
 * fails a ping is killed and restarted. The supervisor restarts a crashed
 * sidecar on the next call, and this class reloads the models that were
 * loaded, with the same params (sessions open again on their next call).
 */

import { ChatSession, type ChatSessionOptions, type SessionHost } from './chat-session.js';
import { type LlmChunk, toLlmChunk } from './chunks.js';
import { isTimeout, LLMServiceError, timedOutError, WorkerTimeoutError } from './errors.js';
import { defaultLogger, type Logger } from './log.js';
import {
  countTokensParams,
  generationParams,
  loadModelParams,
  type LoadModelOptions,
  type PromptOptions,
} from './options.js';
import type { SidecarCommand } from './process-transport.js';
import type {
  ChatMessage,
  ClientInfo,
  CountTokensResult,
  DownloadModelResult,
  DownloadProgressParams,
  EmbedResult,
  GenerationResult,
  InspectModelResult,
  LoadModelParams,
  LoadProgressParams,
  ModelInfo,
  StreamChunkParams,
} from './protocol-types.js';
import { SidecarClient } from './sidecar-client.js';
import { DEFAULT_RESTART_POLICY, type RestartPolicy, Supervisor } from './supervisor.js';

export interface LlmServiceOptions {
  /** How to start the sidecar; `llama-sidecar` (the Python package's console script) on PATH when absent. */
  readonly sidecar?: SidecarCommand;
  readonly logger?: Logger;
  /**
   * No response (`prompt`) or no first chunk (`promptStream`) within this → WorkerTimeoutError
   * (default 10 s; 0 turns it off). It counts time queued behind other prompts on the same model.
   */
  readonly workerTimeoutMs?: number;
  /** Tries per call when the worker times out, the first included (default 2). */
  readonly maxAttempts?: number;
  /** Spawn until `initialize` is answered (default 30 s). */
  readonly startTimeoutMs?: number;
  /** loadModel's timeout (default 5 min). */
  readonly loadTimeoutMs?: number;
  readonly restart?: Partial<RestartPolicy>;
  readonly clientInfo?: ClientInfo;
  /** How long closing waits at each step (stdin end, SIGTERM) before the next (default 2 s). */
  readonly closeGraceMs?: number;
}

export type { LlmChunk };

export type StreamPrompt = string | { readonly text: string };

/** `loadModel`'s second argument. */
export interface LoadOptions {
  /**
   * node-llama-cpp's `onLoadProgress`: the load's progress as a number from 0 to 1, strictly
   * increasing (llama.cpp's progress through the tensors, at most every 100 ms), called with 1 once
   * the model is ready, before `loadModel` resolves. Loading a model that is loaded already may
   * report only the 1.
   */
  readonly onLoadProgress?: (progress: number) => void;
  /**
   * Cancels the load: `loadModel` then rejects with RequestCancelled (`LLMServiceError`, code
   * -32800) and the sidecar frees what it had loaded; a load that finished first resolves as usual.
   */
  readonly signal?: AbortSignal;
  /** A key for `LlmService.cancel(requestId)`. */
  readonly requestId?: string;
  /** This load's timeout, instead of the service's `loadTimeoutMs`. */
  readonly timeoutMs?: number;
}

/** Options of the calls that are not prompts. */
export interface CallTimeoutOptions {
  /** This call's timeout (default 60 s). */
  readonly timeoutMs?: number;
}

export interface TokenizeOptions extends CallTimeoutOptions {
  readonly modelId?: string;
  /** Apply the model's beginning-of-sequence rule, as a raw prompt does (default true). */
  readonly addBos?: boolean;
  /** Read control-token text such as `<|im_start|>` as the control token (default true). */
  readonly special?: boolean;
}

export interface DetokenizeOptions extends CallTimeoutOptions {
  readonly modelId?: string;
  /** Render control tokens as their text (default false). */
  readonly special?: boolean;
}

export interface EmbedOptions extends CallTimeoutOptions {
  readonly modelId?: string;
  /** Scale each vector to length 1, so a dot product is the cosine similarity (default true). */
  readonly normalize?: boolean;
}

/** How far a download has come: bytes on disk (a resumed start included), the size when the server says it. */
export type DownloadProgress = Omit<DownloadProgressParams, 'requestId'>;

export interface DownloadOptions {
  /** A file name in the sidecar's first `--models-dir`, or a path inside one; the URL's last segment by default. */
  readonly destination?: string;
  /** The expected sha256 (hex): a mismatch fails the download (-32012) and deletes the file. */
  readonly sha256?: string;
  /** Called at most every 250 ms while the file arrives, and once at the end. */
  readonly onProgress?: (progress: DownloadProgress) => void;
  /** Cancels the download: the call resolves with `complete: false`; the same download later resumes. */
  readonly signal?: AbortSignal;
  /** A key for `LlmService.cancel(requestId)`. */
  readonly requestId?: string;
  /** A limit on the whole download (none by default). */
  readonly timeoutMs?: number;
}

const DEFAULT_SIDECAR: SidecarCommand = { command: 'llama-sidecar' };
const PING_TIMEOUT_MS = 2000;

export class LlmService {
  private readonly logger: Logger;
  private readonly supervisor: Supervisor;
  /** What to reload after a restart: params by model id, in load order (the last is the default). */
  private readonly loaded = new Map<string, LoadModelParams>();
  private readonly cancellers = new Map<string, AbortController>();
  /** Tries per timed-out call, the first included. */
  private readonly maxAttempts: number;
  /** What chat sessions use of this service. */
  private readonly sessionHost: SessionHost;

  constructor(private readonly options: LlmServiceOptions = {}) {
    this.logger = options.logger ?? defaultLogger;
    const policy = { ...DEFAULT_RESTART_POLICY, ...options.restart };
    this.supervisor = new Supervisor(() => this.startSidecar(), policy, this.logger);
    this.maxAttempts = Math.max(options.maxAttempts ?? 2, 1);
    this.sessionHost = {
      logger: this.logger,
      acquire: () => this.supervisor.acquire(),
      current: () => this.supervisor.current,
      maxAttempts: this.maxAttempts,
      timeoutFor: (callOptions) => this.timeoutFor(callOptions),
      restartIfHung: (client, timeoutMs) => this.restartIfHung(client, timeoutMs),
      withCanceller: (callOptions, body) => this.withCanceller(callOptions, body),
    };
  }

  /**
   * Load a model (a path, `"default"`, or options); it becomes the default target of prompts.
   * `options.onLoadProgress` gets the progress (0 to 1); `options.signal` (or `cancel(options.requestId)`)
   * cancels the load, which then rejects with RequestCancelled (-32800). When the sidecar's model
   * limit (`--max-models`, `--max-model-bytes`) unloads the least recently used model to make room,
   * that model is not reloaded after a restart either.
   */
  async loadModel(pathOrOptions: string | LoadModelOptions, options: LoadOptions = {}): Promise<ModelInfo> {
    const params = loadModelParams(pathOrOptions, this.logger);
    const { onLoadProgress, timeoutMs } = options;
    const progress = onLoadProgress && ((update: LoadProgressParams): void => onLoadProgress(update.progress));
    const client = await this.supervisor.acquire();
    const info = await this.withCanceller(options, (signal) =>
      client.loadModel(params, { onLoadProgress: progress, signal, timeoutMs }),
    );
    this.loaded.delete(info.modelId);
    this.loaded.set(info.modelId, { ...params, modelId: info.modelId });
    // With another model loaded, the sidecar may have unloaded one to make room.
    if (this.loaded.size > 1) await this.forgetUnloaded(client);
    return info;
  }

  /**
   * Open a chat session on a loaded model (the default one when `options.modelId` is absent): a
   * conversation whose history the sidecar keeps, prompted turn by turn (see `ChatSession`).
   */
  createSession(options: ChatSessionOptions = {}): Promise<ChatSession> {
    return ChatSession.open(this.sessionHost, options);
  }

  /** Unload a model (the default one when no id); false when there was none. */
  async unloadModel(modelId?: string): Promise<boolean> {
    const client = await this.supervisor.acquire();
    const { unloaded } = await client.unloadModel(modelId === undefined ? {} : { modelId });
    const forgotten = modelId ?? [...this.loaded.keys()].pop();
    if (unloaded && forgotten !== undefined) this.loaded.delete(forgotten);
    return unloaded;
  }

  async listModels(): Promise<ModelInfo[]> {
    return (await (await this.supervisor.acquire()).listModels()).models;
  }

  /** The whole reply to `text` (sent as the user's chat message unless `options.raw`). */
  async prompt(text: string, options: PromptOptions = {}): Promise<string> {
    return (await this.promptWithResult(text, options)).text;
  }

  /**
   * `prompt`, resolving to the whole result: `text`, `finishReason`, `usage`, `timings`, and with
   * `options.jsonSchema` the parsed reply as `json` (absent when the reply was cut, e.g. by `maxTokens`).
   */
  async promptWithResult(text: string, options: PromptOptions = {}): Promise<GenerationResult> {
    const params = generationParams(text, options, this.logger);
    const timeoutMs = this.timeoutFor(options);
    return this.withCanceller(options, (signal) =>
      this.withRetries('prompt', (client) => client.prompt(params, { timeoutMs, signal })),
    );
  }

  /** Stream the reply to `prompt` into `onChunk`; resolves with the result once the final chunk is out. */
  async promptStream(
    prompt: StreamPrompt,
    onChunk: (chunk: LlmChunk) => void,
    options: PromptOptions = {},
  ): Promise<GenerationResult> {
    const params = generationParams(typeof prompt === 'string' ? prompt : prompt.text, options, this.logger);
    const firstChunkTimeoutMs = this.timeoutFor(options);
    const deliver = (chunk: StreamChunkParams): void => onChunk(toLlmChunk(chunk));
    return this.withCanceller(options, (signal) =>
      this.withRetries('promptStream', (client) =>
        client.promptStream(params, deliver, { firstChunkTimeoutMs, signal }),
      ),
    );
  }

  /** The token ids of `text` (by default as a raw prompt reads it: the model's BOS rule, control tokens recognized). */
  async tokenize(text: string, options: TokenizeOptions = {}): Promise<number[]> {
    const { timeoutMs, ...params } = options;
    const client = await this.supervisor.acquire();
    return (await client.tokenize({ ...params, text }, { timeoutMs })).tokens;
  }

  /** The text of `tokens` (control tokens left out unless `options.special`). */
  async detokenize(tokens: readonly number[], options: DetokenizeOptions = {}): Promise<string> {
    const { timeoutMs, ...params } = options;
    const client = await this.supervisor.acquire();
    return (await client.detokenize({ ...params, tokens: [...tokens] }, { timeoutMs })).text;
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
    return client.embed({ ...params, input: typeof input === 'string' ? input : [...input] }, { timeoutMs });
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
    return this.withCanceller(options, (signal) =>
      client.downloadModel(params, { onProgress: progress, signal, timeoutMs }),
    );
  }

  /** The running sidecar's process id (undefined until the first call starts it, and after it exits). */
  get sidecarPid(): number | undefined {
    return this.supervisor.current?.pid;
  }

  /** Cancel the prompt, load or download started with `options.requestId`; false when none is running. */
  cancel(requestId: string): boolean {
    const controller = this.cancellers.get(requestId);
    controller?.abort();
    return controller !== undefined;
  }

  /** Shut the sidecar down gracefully: running prompts end as cancelled, anything else pending and every later call rejects with CLOSED. */
  dispose(): Promise<void> {
    return this.supervisor.dispose();
  }

  /** The call's worker timeout: its own, else the service's; undefined when turned off (0). */
  private timeoutFor(options: { readonly timeoutMs?: number | undefined }): number | undefined {
    const timeoutMs = options.timeoutMs ?? this.options.workerTimeoutMs ?? 10_000;
    return timeoutMs > 0 ? timeoutMs : undefined;
  }

  /** Forget the models the sidecar no longer has (its model limit unloads the least recently used one). */
  private async forgetUnloaded(client: SidecarClient): Promise<void> {
    let present: Set<string>;
    try {
      present = new Set((await client.listModels()).models.map((model) => model.modelId));
    } catch (error) {
      this.logger('debug', `could not list the models after a load: ${(error as Error).message}`);
      return;
    }
    for (const modelId of [...this.loaded.keys()]) {
      if (present.has(modelId)) continue;
      this.loaded.delete(modelId);
      this.logger('info', `model ${modelId} was unloaded by the sidecar's model limit`);
    }
  }

  private async startSidecar(): Promise<SidecarClient> {
    const { sidecar = DEFAULT_SIDECAR, startTimeoutMs, loadTimeoutMs, clientInfo, closeGraceMs } = this.options;
    const client = await SidecarClient.spawn({
      ...sidecar,
      logger: this.logger,
      startTimeoutMs,
      loadTimeoutMs,
      clientInfo,
      closeGraceMs,
    });
    for (const [modelId, params] of this.loaded) {
      try {
        await client.loadModel(params);
        this.logger('info', `reloaded model ${modelId} after a restart`);
      } catch (error) {
        if (!(error instanceof LLMServiceError && error.fromSidecar)) {
          // The supervisor never gets this client, so nothing else would ever stop its process.
          await client.close({ force: true });
          throw error;
        }
        // The file may be gone: forget it rather than fail every restart on it.
        this.loaded.delete(modelId);
        this.logger('error', `could not reload model ${modelId} after a restart: ${error.message}`);
      }
    }
    return client;
  }

  /** Run `attempt`; on a worker timeout, check the sidecar still answers, then try again. */
  private async withRetries<T>(what: string, attempt: (client: SidecarClient) => Promise<T>): Promise<T> {
    const attempts = this.maxAttempts;
    let lastTimeout: WorkerTimeoutError | undefined;
    for (let number = 1; number <= attempts; number++) {
      let client: SidecarClient | undefined;
      try {
        client = await this.supervisor.acquire();
        return await attempt(client);
      } catch (error) {
        if (!(error instanceof WorkerTimeoutError)) throw error;
        lastTimeout = error;
        this.logger('warn', `${what}: attempt ${number} of ${attempts} timed out: ${error.message}`);
        if (client !== undefined && number < attempts) await this.restartIfHung(client, error.timeoutMs);
      }
    }
    throw timedOutError(what, attempts, lastTimeout);
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

  /** Run `body` with a signal that fires on `options.signal` or on `cancel(options.requestId)`. */
  private async withCanceller<T>(
    options: { readonly requestId?: string | undefined; readonly signal?: AbortSignal | undefined },
    body: (signal: AbortSignal | undefined) => Promise<T>,
  ): Promise<T> {
    const { requestId, signal } = options;
    if (requestId === undefined) return body(signal);
    const controller = new AbortController();
    this.cancellers.set(requestId, controller);
    try {
      return await body(signal === undefined ? controller.signal : AbortSignal.any([signal, controller.signal]));
    } finally {
      if (this.cancellers.get(requestId) === controller) this.cancellers.delete(requestId);
    }
  }
}

function toProgress(update: DownloadProgressParams): DownloadProgress {
  const { bytes, total, bytesPerSecond } = update;
  return { bytes, ...(total === undefined ? {} : { total }), bytesPerSecond };
}
