/**
 * `LlmService`: the host app's old API, now backed by the sidecar.
 *
 * Same calls as before (`loadModel`, `unloadModel`, `prompt`, `promptStream`
 * with `{content, isFinal, timestamp}` chunks), plus what the sidecar gives:
 * a stream resolves to its result (finish reason, usage, timings, the parsed
 * `json` of a `jsonSchema` prompt) and takes an AbortSignal; `promptWithResult`
 * is `prompt` with that result; token arithmetic (`tokenize`, `detokenize`,
 * `countTokens`), `embed`, `inspectModel` and `downloadModel`. A call that gets no response (`prompt`) or no first chunk
 * (`promptStream`) within `workerTimeoutMs` is cancelled and tried again, up
 * to `maxAttempts` in total; a sidecar that then fails a ping is killed and
 * restarted. The supervisor restarts a crashed sidecar on the next call, and
 * this class reloads the models that were loaded, with the same params.
 */

import { isTimeout, LLMServiceError, WorkerTimeoutError } from './errors.js';
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
  FinishReason,
  GenerationResult,
  InspectModelResult,
  LoadModelParams,
  ModelInfo,
  StreamChunkParams,
  Timings,
  Usage,
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

export type StreamPrompt = string | { readonly text: string };

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

  constructor(private readonly options: LlmServiceOptions = {}) {
    this.logger = options.logger ?? defaultLogger;
    const policy = { ...DEFAULT_RESTART_POLICY, ...options.restart };
    this.supervisor = new Supervisor(() => this.startSidecar(), policy, this.logger);
  }

  /** Load a model (a path, `"default"`, or options); it becomes the default target of prompts. */
  async loadModel(pathOrOptions: string | LoadModelOptions): Promise<ModelInfo> {
    const params = loadModelParams(pathOrOptions, this.logger);
    const client = await this.supervisor.acquire();
    const info = await client.loadModel(params);
    this.loaded.delete(info.modelId);
    this.loaded.set(info.modelId, { ...params, modelId: info.modelId });
    return info;
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

  /** Cancel the prompt or download started with `options.requestId`; false when none is running. */
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
  private timeoutFor(options: PromptOptions): number | undefined {
    const timeoutMs = options.timeoutMs ?? this.options.workerTimeoutMs ?? 10_000;
    return timeoutMs > 0 ? timeoutMs : undefined;
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
    const attempts = Math.max(this.options.maxAttempts ?? 2, 1);
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
    const message = `${what} timed out after ${attempts} attempts (the last: ${lastTimeout?.message})`;
    throw new LLMServiceError(
      'TIMEOUT',
      message,
      { attempts, timeoutMs: lastTimeout?.timeoutMs },
      { cause: lastTimeout },
    );
  }

  /** A sidecar that cannot even answer a ping is stuck: kill it so the next attempt gets a fresh one. */
  private async restartIfHung(client: SidecarClient, timeoutMs: number): Promise<void> {
    try {
      await client.ping({ timeoutMs: Math.min(timeoutMs, PING_TIMEOUT_MS) });
    } catch (error) {
      if (!isTimeout(error)) return;
      this.logger('warn', 'the sidecar does not answer ping; restarting it');
      await this.supervisor.discard(client);
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

function toLlmChunk(chunk: StreamChunkParams): LlmChunk {
  const { content, isFinal, timestamp, index, finishReason, usage, timings } = chunk;
  return { content, isFinal, timestamp, index, ...(isFinal ? { finishReason, usage, timings } : {}) };
}

function toProgress(update: DownloadProgressParams): DownloadProgress {
  const { bytes, total, bytesPerSecond } = update;
  return { bytes, ...(total === undefined ? {} : { total }), bytesPerSecond };
}
