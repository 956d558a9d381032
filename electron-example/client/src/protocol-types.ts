/**
 * The protocol's types, generated from the repository's protocol/schema by
 * scripts/generate-protocol-types.ts. Do not edit: run `npm run generate`.
 * A test fails when this file differs from what the schemas produce.
 */

/**
 * A JSON-RPC request id: a string, a number or null. Booleans are not ids. Strings and integers within ±(2^53−1) are echoed exactly; integers beyond 64 bits are read as floats and echoed rounded. Ids are compared by value (40 and 40.0 are one id).
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#RequestId".
 */
export type RequestId = string | number | null;
/**
 * Why generation ended: an end-of-generation token or a stop string (stop); maxTokens or the end of the context (length); cancel, unloadModel or shutdown (cancelled).
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#FinishReason".
 */
export type FinishReason = "stop" | "length" | "cancelled";
/**
 * Who said a turn of a session's history (the system prompt is kept apart).
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#SessionRole".
 */
export type SessionRole = "user" | "assistant";
/**
 * Every code the server sends.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "error.json#ErrorCode".
 */
export type ErrorCode =
  | ParseError
  | InvalidRequest
  | MethodNotFound
  | InvalidParams
  | InternalError
  | ModelFileNotFound
  | NotInitialized
  | ModelLoadFailed
  | NoModelLoaded
  | UnknownModelId
  | ContextOverflow
  | ShuttingDown
  | GenerationFailed
  | DuplicateRequestId
  | MessageTooLarge
  | ModelPathNotAllowed
  | DownloadFailed
  | UnknownSessionId
  | RequestCancelled;
/**
 * The line is not valid UTF-8 JSON. The response id is null.
 */
export type ParseError = -32700;
/**
 * Not a JSON-RPC 2.0 request object (or an empty batch).
 */
export type InvalidRequest = -32600;
/**
 * No method of that name (also before initialize and while shutting down); data is the name.
 */
export type MethodNotFound = -32601;
/**
 * A param is missing, unknown, or of the wrong type or range; the message names it and data.field says where. Also: params as an array, an unsupported protocolVersion (data: supported, requested), messages without a chat template or refused by it, a session turn's text refused by the template, createSession on a model without a chat template or with a contextSize beyond the model's, embed on a reranker, a grammar or jsonSchema llama.cpp cannot use or nesting groups more than 128 deep, a token id outside the vocabulary, a loadModel contextSize beyond the training context or free memory, a download URL that is not http(s) or names no file without a destination.
 */
export type InvalidParams = -32602;
/**
 * A bug in the sidecar; the traceback is in its stderr log, never in the response.
 */
export type InternalError = -32603;
/**
 * The model path names no file (for "default": the embedded model is not installed). data.modelPath is the path as resolved (absolute, symlinks and .. resolved), or "default".
 */
export type ModelFileNotFound = -32001;
/**
 * A request for a method that exists, other than initialize, came before a successful initialize (also one sent right behind an initialize that then failed).
 */
export type NotInitialized = -32002;
/**
 * llama.cpp could not load the file (or it is a directory or unreadable); inspectModel could not read the header or found a tensor table declaring more weights than the file has bits; embed found no memory for the embedding context. data.reason holds llama.cpp's own words where it gave them.
 */
export type ModelLoadFailed = -32003;
/**
 * The request needs a model (prompt, promptStream, tokenize, detokenize, countTokens, embed, createSession), names none, and none is loaded.
 */
export type NoModelLoaded = -32004;
/**
 * The modelId names no loaded model.
 */
export type UnknownModelId = -32005;
/**
 * The prompt does not fit the model's context; or a session turn's system prompt and message leave no room for the reply in the session's context; or an embed input is longer than the embedding context. data.contextSize is the size of that context.
 */
export type ContextOverflow = -32006;
/**
 * The sidecar is shutting down and takes no new requests: the request was read after the stop began (after the shutdown response, end of stdin or a signal).
 */
export type ShuttingDown = -32007;
/**
 * llama.cpp failed in the middle of generating; a stream got a final chunk with finishReason "error".
 */
export type GenerationFailed = -32008;
/**
 * The id is already used by a request still in flight; the new request is refused, the old one goes on.
 */
export type DuplicateRequestId = -32009;
/**
 * An input line exceeded the maximum line size and was skipped (the response id is null), or a response would exceed 64 MiB and this error takes its place (the request's id).
 */
export type MessageTooLarge = -32010;
/**
 * The model path resolves (symlinks included) outside the directories given with --models-dir; or a download: the sidecar has no --models-dir, or the destination resolves outside those directories. data.modelPath is the path or destination as sent (the URL's file name, or the URL without --models-dir, when no destination was sent).
 */
export type ModelPathNotAllowed = -32011;
/**
 * A download failed or did not match its sha256. data.reason: "connection closed", "sha256 mismatch" (with expected and actual), "busy" (another request, in this sidecar or another sharing the directory, downloads to that destination), "exists" (a different file is already there), "size unknown" (a body of unannounced size without sha256), "bad range" (a resume answered from the wrong byte), "unsafe partial file" (the .part is a symbolic link, has other hard links or is not a regular file), "unsupported encoding" (a compressed or otherwise encoded body), "conflicting lengths" (two different Content-Lengths), "too many redirects", or free text (an HTTP status, a refused redirect, a stalled server, an OS error). data.bytes: how far it got, in bytes.
 */
export type DownloadFailed = -32012;
/**
 * The sessionId names no open session.
 */
export type UnknownSessionId = -32013;
/**
 * A loadModel was cancelled before it finished (LSP's code), by cancel or by the stop sequence (shutdown, end of stdin, a signal); what it had loaded is freed.
 */
export type RequestCancelled = -32800;
/**
 * Anything the sidecar writes: a response, a notification, or a batch of responses.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "message.json#ServerMessage".
 */
export type ServerMessage = SuccessResponse | ErrorResponse | ServerNotification | (SuccessResponse | ErrorResponse)[];
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/closeSession.json#params".
 */
export type CloseSessionParams = SessionIdParams;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/createSession.json#result".
 */
export type CreateSessionResult = SessionInfo;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/getSession.json#params".
 */
export type GetSessionParams = SessionIdParams;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/getSession.json#result".
 */
export type GetSessionResult = SessionInfo;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/listModels.json#params".
 */
export type ListModelsParams = NoParams;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/loadModel.json#result".
 */
export type LoadModelResult = ModelInfo;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/ping.json#params".
 */
export type PingParams = NoParams;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/prompt.json#params".
 */
export type PromptParams = GenerationParams;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/prompt.json#result".
 */
export type PromptResult = GenerationResult;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/promptStream.json#params".
 */
export type PromptStreamParams = GenerationParams;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/promptStream.json#result".
 */
export type PromptStreamResult = GenerationResult;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/resetSession.json#params".
 */
export type ResetSessionParams = SessionIdParams;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/resetSession.json#result".
 */
export type ResetSessionResult = SessionInfo;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/setSessionHistory.json#result".
 */
export type SetSessionHistoryResult = SessionInfo;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/shutdown.json#params".
 */
export type ShutdownParams = NoParams;
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/shutdown.json#result".
 */
export type ShutdownResult = null;

/**
 * Every method: its params and result types.
 */
export interface ProtocolMethods {
  cancel: {
    params: CancelParams;
    result: CancelResult;
  };
  closeSession: {
    params: CloseSessionParams;
    result: CloseSessionResult;
  };
  countTokens: {
    params: CountTokensParams;
    result: CountTokensResult;
  };
  createSession: {
    params: CreateSessionParams;
    result: CreateSessionResult;
  };
  detokenize: {
    params: DetokenizeParams;
    result: DetokenizeResult;
  };
  downloadModel: {
    params: DownloadModelParams;
    result: DownloadModelResult;
  };
  embed: {
    params: EmbedParams;
    result: EmbedResult;
  };
  getSession: {
    params: GetSessionParams;
    result: GetSessionResult;
  };
  initialize: {
    params: InitializeParams;
    result: InitializeResult;
  };
  inspectModel: {
    params: InspectModelParams;
    result: InspectModelResult;
  };
  listModels: {
    params: ListModelsParams;
    result: ListModelsResult;
  };
  loadModel: {
    params: LoadModelParams;
    result: LoadModelResult;
  };
  ping: {
    params: PingParams;
    result: PingResult;
  };
  prompt: {
    params: PromptParams;
    result: PromptResult;
  };
  promptStream: {
    params: PromptStreamParams;
    result: PromptStreamResult;
  };
  resetSession: {
    params: ResetSessionParams;
    result: ResetSessionResult;
  };
  setSessionHistory: {
    params: SetSessionHistoryParams;
    result: SetSessionHistoryResult;
  };
  shutdown: {
    params: ShutdownParams;
    result: ShutdownResult;
  };
  tokenize: {
    params: TokenizeParams;
    result: TokenizeResult;
  };
  unloadModel: {
    params: UnloadModelParams;
    result: UnloadModelResult;
  };
}
/**
 * A loaded model.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#ModelInfo".
 */
export interface ModelInfo {
  /**
   * The id that addresses this model in later requests.
   */
  modelId: string;
  /**
   * The file that was loaded, as resolved (absolute, symlinks resolved; "default" resolved to the embedded model's path).
   */
  modelPath: string;
  /**
   * Tokens the context holds (a multiple of 256).
   */
  contextSize: number;
  /**
   * The context size the model was trained with (the header's <architecture>.context_length as llama.cpp read it); 0 when the file says 0.
   */
  trainContextSize: number;
  /**
   * Number of tokens in the vocabulary.
   */
  vocabSize: number;
  /**
   * Size of the model file in bytes.
   */
  sizeBytes: number;
  /**
   * general.architecture from the GGUF metadata, e.g. "llama".
   */
  architecture: string;
  /**
   * general.name from the GGUF metadata, when present.
   */
  name?: string;
  /**
   * True when the model has a chat template, so `messages` can be used.
   */
  chatTemplate: boolean;
  /**
   * Milliseconds the load took.
   */
  loadMs: number;
  /**
   * When a request last used the model (loaded it included), in milliseconds since the Unix epoch. The least recently used model is unloaded first when the model limit is reached.
   */
  lastUsedAt: number;
  /**
   * The ids of the open sessions on this model, oldest first.
   */
  sessions: string[];
  backend?: CpuBackend;
}
/**
 * The llama.cpp CPU backend the model runs on: one per sidecar process, chosen for the CPU at the first load. Absent when the engine cannot tell.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#CpuBackend".
 */
export interface CpuBackend {
  /**
   * The CPU variant llama.cpp's loader picked for this CPU, e.g. "zen4", "haswell", "sapphirerapids", "x64"; null when the build links one CPU backend in.
   */
  variant: string | null;
  /**
   * The file name of the library the CPU backend runs from, e.g. "libggml-cpu-zen4.so"; null where the platform cannot tell.
   */
  library: string | null;
  /**
   * The instruction-set features the backend was compiled for, as llama.cpp names them ("AVX2", "AVX512", "AMX_INT8", …), and its options ("OPENMP", "REPACK", …).
   */
  features: string[];
  /**
   * The extra buffer types weights may be placed in, in llama.cpp's order of preference: "AMX" (Intel AMX tiles), "CPU_REPACK" (weights reordered for the CPU's SIMD kernels).
   */
  bufferTypes: string[];
  /**
   * Buffer types the CPU offers that the sidecar keeps models out of, and why (AMX from a build whose tile config is not checked).
   */
  leftOut: {
    bufferType: string;
    reason: string;
  }[];
  /**
   * "portable": the project's build with CPU variants for every x86-64 CPU; "native": the project's build for the CPU it was built on; "other": a llama-cpp-python built elsewhere.
   */
  build: "portable" | "native" | "other";
  /**
   * The identity of the project's build (a hash of its recipe, source and compiler); null for other builds.
   */
  buildId: string | null;
}
/**
 * One turn of a conversation.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#ChatMessage".
 */
export interface ChatMessage {
  /**
   * "system", "user", "assistant", or any role the model's template knows.
   */
  role: string;
  content: string;
}
/**
 * Params of prompt and promptStream. Exactly one of prompt, messages, or sessionId with text.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#GenerationParams".
 */
export interface GenerationParams {
  /**
   * Which loaded model; the most recently loaded one when absent.
   */
  modelId?: string;
  /**
   * Raw completion: the text the model continues (BOS added as the model requires).
   */
  prompt?: string;
  /**
   * Chat: rendered with the model's own chat template, generation prompt added.
   *
   * @minItems 1
   * @maxItems 10000
   */
  messages?: ChatMessage[];
  /**
   * A chat session (createSession): the turn is appended to its history and answered with its cached context. Not with modelId: the session's model is used.
   */
  sessionId?: string;
  /**
   * With sessionId: the user's message for this turn.
   */
  text?: string;
  /**
   * Most tokens to generate; the rest of the context when absent.
   */
  maxTokens?: number;
  /**
   * 0 is greedy (deterministic). Default 0.8.
   */
  temperature?: number;
  /**
   * Default 40; 0 disables.
   */
  topK?: number;
  /**
   * Default 0.95; 1 disables.
   */
  topP?: number;
  /**
   * Default 0.05; 0 disables.
   */
  minP?: number;
  /**
   * Default 1.0 (off).
   */
  repeatPenalty?: number;
  /**
   * Sampling seed; the model's load seed, else random, when absent.
   */
  seed?: number;
  /**
   * Generation ends before the first of these strings; it is not included in the text.
   *
   * @maxItems 64
   */
  stop?: string[];
  /**
   * A GBNF grammar (llama.cpp's format, rule `root` first) the reply must follow. Not with jsonSchema.
   */
  grammar?: string;
  /**
   * A JSON Schema the reply must satisfy; turned into a grammar. The result then has `json`, the parsed reply, when the reply ended by itself (finishReason "stop", not cut by a stop string) and parses. Not with grammar.
   */
  jsonSchema?: {};
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#Usage".
 */
export interface Usage {
  /**
   * Tokens in the prompt as the model saw it (template and BOS included).
   */
  promptTokens: number;
  /**
   * Tokens generated (an end-of-generation token is not counted).
   */
  completionTokens: number;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#Timings".
 */
export interface Timings {
  /**
   * From the request's arrival to the first generated token: queueing, preparing the prompt (a session's context switch included) and prompt processing.
   */
  ttftMs: number;
  /**
   * Prompt processing: from the start of generation to the first token.
   */
  promptMs: number;
  /**
   * From the first token to the last.
   */
  decodeMs: number;
  /**
   * Decode speed in tokens per second: (completionTokens − 1) / (decodeMs / 1000), rounded to 2 decimals; 0 with fewer than 2 tokens.
   */
  tokensPerSecond: number;
}
/**
 * Result of prompt and promptStream.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#GenerationResult".
 */
export interface GenerationResult {
  /**
   * The whole reply (for a cancelled stream: what was produced before the cancel).
   */
  text: string;
  finishReason: FinishReason;
  usage: Usage;
  timings: Timings;
  /**
   * The reply parsed as JSON: present only when the request had jsonSchema, the reply ended by itself (finishReason "stop" from an end-of-generation token, not a stop string) and its text parses. A reply cut by a stop string, maxTokens or a cancel has none.
   */
  json?: unknown;
}
/**
 * The method takes no params: omit them or send {}.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#NoParams".
 */
export interface NoParams {}
/**
 * One message of a session's history.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#SessionMessage".
 */
export interface SessionMessage {
  role: SessionRole;
  content: string;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#SessionId".
 */
export interface SessionIdParams {
  /**
   * The id createSession returned.
   */
  sessionId: string;
}
/**
 * A chat session as it stands.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "common.json#SessionInfo".
 */
export interface SessionInfo {
  sessionId: string;
  /**
   * The model the session prompts.
   */
  modelId: string;
  /**
   * The system prompt, when the session has one; never dropped.
   */
  systemPrompt?: string;
  /**
   * Tokens the session's prompt and reply may take together; older turns are dropped to stay within it.
   */
  contextSize: number;
  /**
   * The history, oldest first, without the system prompt.
   */
  messages: SessionMessage[];
  /**
   * How many of the oldest messages were dropped to fit the context since the history was last set or reset.
   */
  droppedMessages: number;
}
/**
 * The error member of a JSON-RPC error response. data is present exactly for the codes that define it.
 *
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "error.json".
 */
export interface ErrorObject {
  code: ErrorCode;
  /**
   * One sentence for a person; do not parse it.
   */
  message: string;
  data?: unknown;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "message.json#Request".
 */
export interface Request {
  jsonrpc: "2.0";
  method: string;
  params?: {} | unknown[];
  id: RequestId;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "message.json#Notification".
 */
export interface Notification {
  jsonrpc: "2.0";
  method: string;
  params?: {} | unknown[];
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "message.json#SuccessResponse".
 */
export interface SuccessResponse {
  jsonrpc: "2.0";
  result: unknown;
  id: RequestId;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "message.json#ErrorResponse".
 */
export interface ErrorResponse {
  jsonrpc: "2.0";
  error: ErrorObject;
  id: RequestId;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "message.json#ServerNotification".
 */
export interface ServerNotification {
  jsonrpc: "2.0";
  method: "streamChunk" | "downloadProgress" | "loadProgress";
  params: {};
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/cancel.json#params".
 */
export interface CancelParams {
  /**
   * The id of the request to cancel.
   */
  requestId: RequestId;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/cancel.json#result".
 */
export interface CancelResult {
  /**
   * False when the id is unknown, finished, or already cancelled.
   */
  cancelled: boolean;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/closeSession.json#result".
 */
export interface CloseSessionResult {
  /**
   * False when there was no such session.
   */
  closed: boolean;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/countTokens.json#params".
 */
export interface CountTokensParams {
  /**
   * Which loaded model; the most recently loaded one when absent.
   */
  modelId?: string;
  prompt?: string;
  /**
   * @minItems 1
   * @maxItems 10000
   */
  messages?: ChatMessage[];
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/countTokens.json#result".
 */
export interface CountTokensResult {
  promptTokens: number;
  /**
   * The model's context; a prompt fits if promptTokens < contextSize.
   */
  contextSize: number;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/createSession.json#params".
 */
export interface CreateSessionParams {
  /**
   * Which model; the default (latest loaded) one when absent. It must have a chat template.
   */
  modelId?: string;
  /**
   * The first message of every prompt of the session; never dropped.
   */
  systemPrompt?: string;
  /**
   * Tokens the session may take (prompt and reply); at most the model's contextSize, which is the default.
   */
  contextSize?: number;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/detokenize.json#params".
 */
export interface DetokenizeParams {
  /**
   * Which loaded model; the most recently loaded one when absent.
   */
  modelId?: string;
  /**
   * @maxItems 1048576
   */
  tokens: number[];
  /**
   * Render control tokens as their text. Default false.
   */
  special?: boolean;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/detokenize.json#result".
 */
export interface DetokenizeResult {
  text: string;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/downloadModel.json#params".
 */
export interface DownloadModelParams {
  /**
   * An http:// or https:// URL.
   */
  url: string;
  /**
   * A file name (in the first --models-dir directory) or a path inside an allowed directory; the URL's last path segment (percent-decoded) when absent, and InvalidParams when the URL names no file.
   */
  destination?: string;
  /**
   * The expected sha256 (hex); a mismatch fails the download and deletes the partial file.
   */
  sha256?: string;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/downloadModel.json#result".
 */
export interface DownloadModelResult {
  /**
   * The final path (when complete is false, where a retry will put the file).
   */
  modelPath: string;
  /**
   * Bytes on disk: the whole file, or the partial one when cancelled.
   */
  sizeBytes: number;
  /**
   * The file's sha256 (hex) when complete; null when cancelled.
   */
  sha256: string | null;
  /**
   * Bytes already on disk that the server let this request skip (HTTP Range); 0 for a fresh start.
   */
  resumedFrom: number;
  /**
   * False when cancelled: the partial file stays as <modelPath>.part and the same request resumes it.
   */
  complete: boolean;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/embed.json#params".
 */
export interface EmbedParams {
  /**
   * Which loaded model; the most recently loaded one when absent.
   */
  modelId?: string;
  /**
   * A text, or texts: one vector each, in order.
   */
  input: string | string[];
  /**
   * Scale each vector to length 1 (for cosine similarity as a dot product). Default true.
   */
  normalize?: boolean;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/embed.json#result".
 */
export interface EmbedResult {
  /**
   * One vector per input, in order; pooled as the model says, or the mean of its tokens when it does not say.
   */
  embeddings: number[][];
  /**
   * Tokens read across all inputs.
   */
  promptTokens: number;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/initialize.json#params".
 */
export interface InitializeParams {
  /**
   * The protocol version the client speaks, "MAJOR.MINOR". Any version with the server's major is accepted; anything else (another major, or not MAJOR.MINOR) gets -32602 with data {supported, requested}.
   */
  protocolVersion: string;
  clientInfo?: ClientInfo;
}
/**
 * Who the client is; logged, never acted on.
 */
export interface ClientInfo {
  name: string;
  version?: string;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/initialize.json#result".
 */
export interface InitializeResult {
  /**
   * The version the server speaks.
   */
  protocolVersion: string;
  serverInfo: ServerInfo;
  capabilities: Capabilities;
}
export interface ServerInfo {
  name: "llama-sidecar";
  version: string;
  /**
   * The installed llama-cpp-python's version; the project's own build carries a local label naming it, e.g. "0.3.36+portable.e9b0a3bd098c".
   */
  llamaCppPythonVersion: string;
}
export interface Capabilities {
  /**
   * Every method this server answers.
   */
  methods: string[];
  /**
   * Every notification this server may send.
   */
  notifications: string[];
  /**
   * Longest line the server reads; longer lines get MessageTooLarge (-32010).
   */
  maxLineBytes: number;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/inspectModel.json#params".
 */
export interface InspectModelParams {
  /**
   * A .gguf file, or "default".
   */
  modelPath: string;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/inspectModel.json#result".
 */
export interface InspectModelResult {
  /**
   * The resolved path.
   */
  modelPath: string;
  sizeBytes: number;
  architecture: string;
  name?: string;
  /**
   * Sum of the tensors' element counts.
   */
  parameterCount: number;
  /**
   * general.file_type as llama.cpp names it, e.g. "Q4_1", "Q4_K_M", "F16".
   */
  quantization?: string;
  /**
   * The header's <architecture>.context_length; absent when the header has none or says 0.
   */
  trainContextSize?: number;
  vocabSize?: number;
  chatTemplate: boolean;
  /**
   * The header's scalar values; arrays and strings over 256 characters are left out.
   */
  metadata: {
    [k: string]: string | number | boolean | undefined;
  };
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/listModels.json#result".
 */
export interface ListModelsResult {
  models: ModelInfo[];
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/loadModel.json#params".
 */
export interface LoadModelParams {
  /**
   * Path of a .gguf file, or "default" for the embedded SmolLM2-135M-Instruct.
   */
  modelPath: string;
  /**
   * Id to address the model by; when absent, the file name without extension, made unique with -2, -3, … A modelId in use by another file or options replaces that model.
   */
  modelId?: string;
  /**
   * Context size in tokens, at most the model's training context, rounded up to a multiple of 256; min(training context, 4096) when absent. Refused (-32602) when its KV cache would not fit in the memory available.
   */
  contextSize?: number;
  /**
   * CPU threads for generation and prompt processing; half the logical CPUs when absent.
   */
  threads?: number;
  /**
   * Layers to offload to a GPU (when llama.cpp was built with one). Default 0.
   */
  gpuLayers?: number;
  /**
   * Prompt processing batch size. Default 512.
   */
  batchSize?: number;
  /**
   * Memory-map the file. Default true.
   */
  useMmap?: boolean;
  /**
   * Use llama.cpp's flash attention (true) or not (false). Default: llama.cpp decides, as llama-server and node-llama-cpp do: on wherever the backend supports it, which the CPU backend always does (SmolLM2 on 2 cores: 1,500-token prompts at 445 against 380 tokens/s).
   */
  flashAttention?: boolean;
  /**
   * Default sampling seed for this model's requests; a random seed per request when absent.
   */
  seed?: number;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/ping.json#result".
 */
export interface PingResult {}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/setSessionHistory.json#params".
 */
export interface SetSessionHistoryParams {
  /**
   * The id createSession returned.
   */
  sessionId: string;
  /**
   * The new history, oldest first, without the system prompt.
   *
   * @maxItems 100000
   */
  messages: SessionMessage[];
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/tokenize.json#params".
 */
export interface TokenizeParams {
  /**
   * Which loaded model; the most recently loaded one when absent.
   */
  modelId?: string;
  text: string;
  /**
   * Apply the model's beginning-of-sequence rule, as a raw prompt does. Default true.
   */
  addBos?: boolean;
  /**
   * Read control-token text such as <|im_start|> as the control token, as a raw prompt does. Default true.
   */
  special?: boolean;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/tokenize.json#result".
 */
export interface TokenizeResult {
  tokens: number[];
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/unloadModel.json#params".
 */
export interface UnloadModelParams {
  /**
   * Which model; the default (latest loaded) one when absent.
   */
  modelId?: string;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "methods/unloadModel.json#result".
 */
export interface UnloadModelResult {
  /**
   * False when there was no such model.
   */
  unloaded: boolean;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "notifications/downloadProgress.json#params".
 */
export interface DownloadProgressParams {
  /**
   * The id of the downloadModel request.
   */
  requestId: RequestId;
  /**
   * Bytes on disk so far (a resumed start included); never decreases within a request.
   */
  bytes: number;
  /**
   * The file's size, when the server says it.
   */
  total?: number;
  /**
   * Average speed of this request's transfer.
   */
  bytesPerSecond: number;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "notifications/loadProgress.json#params".
 */
export interface LoadProgressParams {
  /**
   * The id of the loadModel request.
   */
  requestId: RequestId;
  /**
   * 0 to 1; increases strictly within a request.
   */
  progress: number;
}
/**
 * This interface was referenced by `ProtocolMethods`'s JSON-Schema
 * via the `definition` "notifications/streamChunk.json#params".
 */
export interface StreamChunkParams {
  /**
   * The id of the promptStream request.
   */
  requestId: RequestId;
  /**
   * 0, 1, 2, ... per stream, with no gaps; the final chunk has the highest.
   */
  index: number;
  /**
   * Text: whole UTF-8 characters, never part of a stop string. Empty in the final chunk.
   */
  content: string;
  /**
   * True on the last chunk of the stream, and only there.
   */
  isFinal: boolean;
  /**
   * Milliseconds since the Unix epoch when the server sent the chunk.
   */
  timestamp: number;
  /**
   * Final chunk only. "error": generation failed; the response is then an error.
   */
  finishReason?: "stop" | "length" | "cancelled" | "error";
  /**
   * Final chunk only, and never when finishReason is "error".
   */
  usage?: Usage;
  /**
   * Final chunk only, and never when finishReason is "error".
   */
  timings?: Timings;
}

/**
 * Every notification the sidecar sends: its params type.
 */
export interface ProtocolNotifications {
  downloadProgress: DownloadProgressParams;
  loadProgress: LoadProgressParams;
  streamChunk: StreamChunkParams;
}
