/**
 * `SidecarClient`: one sidecar process and a typed method per protocol method.
 *
 * `SidecarClient.spawn` starts the process and sends `initialize` before it
 * returns; `close` asks for `shutdown`, then lets the transport end the
 * process. Types come from the generated protocol-types.ts. It does not
 * restart anything, remember models or retry: `LlmService` does that.
 */

import { LLMServiceError } from './errors.js';
import { defaultLogger, type Logger } from './log.js';
import { ProcessTransport, type ProcessTransportOptions } from './process-transport.js';
import type {
  CancelResult,
  ClientInfo,
  CloseSessionParams,
  CloseSessionResult,
  CountTokensParams,
  CountTokensResult,
  CreateSessionParams,
  DetokenizeParams,
  DetokenizeResult,
  DownloadModelParams,
  DownloadModelResult,
  DownloadProgressParams,
  EmbedParams,
  EmbedResult,
  GenerationParams,
  GenerationResult,
  GetSessionParams,
  InitializeParams,
  InitializeResult,
  InspectModelParams,
  InspectModelResult,
  ListModelsResult,
  LoadModelParams,
  LoadProgressParams,
  ModelInfo,
  PingResult,
  ProtocolMethods,
  ProtocolNotifications,
  RequestId,
  ResetSessionParams,
  SessionInfo,
  SetSessionHistoryParams,
  StreamChunkParams,
  TokenizeParams,
  TokenizeResult,
  UnloadModelParams,
  UnloadModelResult,
} from './protocol-types.js';
import {
  type CallOptions,
  type NotificationHandler,
  type RequestOptions,
  RpcConnection,
  type StreamOptions,
} from './rpc.js';
import type { CloseEvent, Transport } from './transport.js';

/**
 * 1.1 added sessions, `loadProgress` and a cancellable `loadModel`; 1.2 the model's `backend`.
 * A 1.0 sidecar accepts it too (same major), and answers the 1.1 methods with MethodNotFound.
 */
export const PROTOCOL_VERSION = '1.2';

/** Every option may be `undefined` (its default), so that a host can pass its own optional settings on. */
export interface SidecarClientOptions {
  readonly logger?: Logger | undefined;
  /** Sent with `initialize`; the sidecar logs it. */
  readonly clientInfo?: ClientInfo | undefined;
  /** Spawn through `initialize`'s answer (default 30 s); past it the process is killed. */
  readonly startTimeoutMs?: number | undefined;
  /** Default timeout of every method but loadModel, prompt, promptStream and downloadModel (default 60 s). */
  readonly requestTimeoutMs?: number | undefined;
  /** Default timeout of loadModel (default 5 min). Prompts and downloads have none unless a call sets one. */
  readonly loadTimeoutMs?: number | undefined;
  /** How long `close` waits for `shutdown`'s answer (default 2 s); a process transport waits as long at each later step. */
  readonly closeGraceMs?: number | undefined;
  /** Default of every call's `cancelGraceMs`: how long a cancelled call waits for its answer (default 5 s). */
  readonly cancelGraceMs?: number | undefined;
}

export type SpawnOptions = SidecarClientOptions & ProcessTransportOptions;

export interface DownloadCallOptions extends RequestOptions {
  /** Gets the download's `downloadProgress` notifications (at most every 250 ms, and once at the end). */
  readonly onProgress?: ((progress: DownloadProgressParams) => void) | undefined;
}

export interface LoadCallOptions extends RequestOptions {
  /** Gets the load's `loadProgress` notifications: 0 to 1, strictly increasing, 1 once the model is ready. */
  readonly onLoadProgress?: ((progress: LoadProgressParams) => void) | undefined;
}

/** The protocol's graceful-close wait: the sidecar exits within 2 s of `shutdown`. */
const DEFAULT_CLOSE_GRACE_MS = 2000;

export class SidecarClient {
  /** Settles when the sidecar has exited, with how (expected after `close`, or a crash). */
  readonly closed: Promise<CloseEvent>;
  private readonly rpc: RpcConnection;
  private serverInfo: InitializeResult | undefined;

  constructor(
    private readonly transport: Transport,
    private readonly options: SidecarClientOptions = {},
  ) {
    this.rpc = new RpcConnection(transport, options.logger ?? defaultLogger);
    this.closed = this.rpc.closed;
  }

  /** Spawn the sidecar and initialize it; the client is ready for any method. */
  static async spawn(options: SpawnOptions): Promise<SidecarClient> {
    return SidecarClient.connect(new ProcessTransport(options), options);
  }

  /** Start `transport` and initialize the sidecar behind it. */
  static async connect(transport: Transport, options: SidecarClientOptions = {}): Promise<SidecarClient> {
    await transport.start();
    const client = new SidecarClient(transport, options);
    try {
      await client.initialize(undefined, { timeoutMs: options.startTimeoutMs ?? 30_000 });
    } catch (error) {
      // A sidecar that never initialized holds nothing worth a graceful stop.
      await transport.close({ force: true });
      throw error;
    }
    return client;
  }

  /** How the sidecar ended, once it has (set before any pending call is rejected). */
  get exit(): CloseEvent | undefined {
    return this.rpc.closeEvent;
  }

  /** The sidecar's process id while it runs (for a process transport). */
  get pid(): number | undefined {
    return this.transport.pid;
  }

  /** What the sidecar said in answer to `initialize`. */
  get info(): InitializeResult | undefined {
    return this.serverInfo;
  }

  async initialize(params?: InitializeParams, options?: RequestOptions): Promise<InitializeResult> {
    const clientInfo = this.options.clientInfo ?? { name: 'llama-sidecar-ts-client' };
    this.serverInfo = await this.call(
      'initialize',
      params ?? { protocolVersion: PROTOCOL_VERSION, clientInfo },
      options,
    );
    return this.serverInfo;
  }

  /**
   * Load a model; `onLoadProgress` gets its progress. An aborted `signal` cancels the load: the call
   * then rejects with RequestCancelled (-32800), unless the model was ready first (it then resolves).
   */
  loadModel(params: LoadModelParams, options: LoadCallOptions = {}): Promise<ModelInfo> {
    const { onLoadProgress, ...rest } = options;
    const onNotification = onLoadProgress === undefined ? undefined : only('loadProgress', onLoadProgress);
    return this.call('loadModel', params, { ...rest, onNotification });
  }

  unloadModel(params: UnloadModelParams = {}, options?: RequestOptions): Promise<UnloadModelResult> {
    return this.call('unloadModel', params, options);
  }

  listModels(options?: RequestOptions): Promise<ListModelsResult> {
    return this.call('listModels', {}, options);
  }

  prompt(params: GenerationParams, options?: RequestOptions): Promise<GenerationResult> {
    return this.call('prompt', params, options);
  }

  /** Stream a reply: `onChunk` gets every chunk (the `isFinal` one last), then the result settles. */
  promptStream(
    params: GenerationParams,
    onChunk: (chunk: StreamChunkParams) => void,
    options: StreamOptions = {},
  ): Promise<GenerationResult> {
    return this.call('promptStream', params, { ...options, onNotification: only('streamChunk', onChunk) });
  }

  /** Open a chat session on a loaded model (the default one when `modelId` is absent); prompt it with `sessionId` and `text`. */
  createSession(params: CreateSessionParams = {}, options?: RequestOptions): Promise<SessionInfo> {
    return this.call('createSession', params, options);
  }

  /** A session's history and settings; UnknownSessionId (-32013) when there is no such session. */
  getSession(params: GetSessionParams, options?: RequestOptions): Promise<SessionInfo> {
    return this.call('getSession', params, options);
  }

  /** Clear a session's history (the system prompt stays). */
  resetSession(params: ResetSessionParams, options?: RequestOptions): Promise<SessionInfo> {
    return this.call('resetSession', params, options);
  }

  /** Replace a session's history (without the system prompt), e.g. to restore a saved chat. */
  setSessionHistory(params: SetSessionHistoryParams, options?: RequestOptions): Promise<SessionInfo> {
    return this.call('setSessionHistory', params, options);
  }

  /** Forget a session; `closed` is false when there was none. */
  closeSession(params: CloseSessionParams, options?: RequestOptions): Promise<CloseSessionResult> {
    return this.call('closeSession', params, options);
  }

  tokenize(params: TokenizeParams, options?: RequestOptions): Promise<TokenizeResult> {
    return this.call('tokenize', params, options);
  }

  detokenize(params: DetokenizeParams, options?: RequestOptions): Promise<DetokenizeResult> {
    return this.call('detokenize', params, options);
  }

  /** Prompt tokens exactly as prompt/promptStream would count them, to budget the context. */
  countTokens(params: CountTokensParams, options?: RequestOptions): Promise<CountTokensResult> {
    return this.call('countTokens', params, options);
  }

  /** One vector per input text (mean-pooled unless the model says otherwise; normalized by default). */
  embed(params: EmbedParams, options?: RequestOptions): Promise<EmbedResult> {
    return this.call('embed', params, options);
  }

  /**
   * Download a model into the sidecar's `--models-dir`; `onProgress` gets its progress. An aborted
   * `signal` cancels it: the call then resolves with `complete: false` (the `.part` file stays, and
   * the same download later resumes it).
   */
  downloadModel(params: DownloadModelParams, options: DownloadCallOptions = {}): Promise<DownloadModelResult> {
    const { onProgress, ...rest } = options;
    const onNotification = onProgress === undefined ? undefined : only('downloadProgress', onProgress);
    return this.call('downloadModel', params, { ...rest, onNotification });
  }

  /** A GGUF file's facts from its header, without loading it. */
  inspectModel(params: InspectModelParams, options?: RequestOptions): Promise<InspectModelResult> {
    return this.call('inspectModel', params, options);
  }

  cancel(requestId: RequestId, options?: RequestOptions): Promise<CancelResult> {
    return this.call('cancel', { requestId }, options);
  }

  ping(options?: RequestOptions): Promise<PingResult> {
    return this.call('ping', {}, options);
  }

  shutdown(options?: RequestOptions): Promise<null> {
    return this.call('shutdown', {}, options);
  }

  /** Stop the sidecar: `shutdown` (bounded), then stdin end → SIGTERM → SIGKILL as needed; `force` skips to SIGKILL. */
  async close(options: { force?: boolean } = {}): Promise<void> {
    if (!options.force) {
      await this.shutdown({ timeoutMs: this.options.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS }).catch(
        (error: unknown) => {
          if (!(error instanceof LLMServiceError)) throw error;
        },
      );
    }
    await this.transport.close(options);
  }

  /** The one place where a result is taken to be of its schema's type (the sidecar's tests validate them). */
  private async call<M extends keyof ProtocolMethods>(
    method: M,
    params: ProtocolMethods[M]['params'],
    options: CallOptions = {},
  ): Promise<ProtocolMethods[M]['result']> {
    const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs(method);
    const cancelGraceMs = options.cancelGraceMs ?? this.options.cancelGraceMs;
    const result = await this.rpc.request(method, params, { ...options, timeoutMs, cancelGraceMs });
    return result as ProtocolMethods[M]['result'];
  }

  private defaultTimeoutMs(method: keyof ProtocolMethods): number | undefined {
    if (method === 'prompt' || method === 'promptStream' || method === 'downloadModel') return undefined;
    if (method === 'loadModel') return this.options.loadTimeoutMs ?? 300_000;
    return this.options.requestTimeoutMs ?? 60_000;
  }
}

/**
 * A handler passing one notification method's params on, typed by its schema; other methods
 * about the same request are ignored (a newer sidecar may send ones this client does not know).
 */
function only<M extends keyof ProtocolNotifications>(
  method: M,
  handler: (params: ProtocolNotifications[M]) => void,
): NotificationHandler {
  return (received, params) => {
    if (received === method) handler(params as unknown as ProtocolNotifications[M]);
  };
}
