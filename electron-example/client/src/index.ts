/**
 * The TypeScript client of the llama sidecar.
 *
 * `LlmService` is the drop-in replacement of the app's old in-process service,
 * and `ChatSession` (from `LlmService.createSession`) its multi-turn chat;
 * `SidecarClient` is one sidecar process with a typed method per protocol
 * method; the transport and framing pieces are exported for hosts that wire
 * their own. Protocol types are generated from the repository's protocol/schema.
 */

export type { PromptHandle } from './cancellers.js';
export { ChatSession } from './chat-session.js';
export {
  CancelTimeoutError,
  LLMServiceError,
  StreamIdleTimeoutError,
  TimeLimitError,
  WorkerTimeoutError,
} from './errors.js';
export type { ClientErrorCode, ExitInfo, LLMServiceErrorCode, LLMServiceErrorOptions } from './errors.js';
export { DEFAULT_MAX_LINE_BYTES, encodeMessage, LineReader } from './framing.js';
export type { Frame, Line, LineTooLong } from './framing.js';
export { DEFAULT_STREAM_IDLE_TIMEOUT_MS, DEFAULT_WORKER_TIMEOUT_MS, LlmService } from './llm-service.js';
export type { LlmChunk } from './llm-service.js';
export { defaultLogger } from './log.js';
export type { Logger, LogLevel } from './log.js';
export type {
  IgnoredLoadOptions,
  IgnoredPromptOptions,
  LoadModelOptions,
  NodeLlamaCppLoadCallbacks,
  NodeLlamaCppLoadValues,
  PromptOptions,
  RepeatPenaltyOptions,
  SessionPromptOptions,
  UndefinedAllowed,
} from './options.js';
export { ProcessTransport } from './process-transport.js';
export type { ProcessTransportOptions, SidecarCommand } from './process-transport.js';
export type * from './protocol-types.js';
export { DEFAULT_CANCEL_GRACE_MS, RpcConnection } from './rpc.js';
export type { CallOptions, NotificationHandler, RequestOptions, StreamOptions } from './rpc.js';
export type { StreamLimits } from './stream-bounds.js';
export type {
  CallTimeoutOptions,
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
export { PROTOCOL_VERSION, SidecarClient } from './sidecar-client.js';
export type { DownloadCallOptions, LoadCallOptions, SidecarClientOptions, SpawnOptions } from './sidecar-client.js';
export { DEFAULT_RESTART_POLICY } from './supervisor.js';
export type { RestartPolicy } from './supervisor.js';
export type { CloseEvent, Transport } from './transport.js';
