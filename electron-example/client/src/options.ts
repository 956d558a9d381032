/**
 * The old `LlmService` call shapes → protocol params.
 *
 * Prompt options use the protocol's camelCase names; a few node-llama-cpp
 * names users already know are accepted too (`customStopTriggers`,
 * `systemPrompt`, `repeatPenalty: {penalty}`, `onTextChunk`; `loadModel`'s
 * `onLoadProgress` and `loadSignal`). Other node-llama-cpp names are
 * typed (deprecated), so that old calls compile; like any unknown name, they
 * are reported to the logger and left out, so an old call keeps working
 * instead of being refused by the sidecar's strict params check. It knows
 * names and shapes, not processes or timeouts.
 */

import type { Logger } from './log.js';
import type { ChatMessage, CountTokensParams, GenerationParams, LoadModelParams } from './protocol-types.js';
import type { LoadOptions } from './service-options.js';

/**
 * node-llama-cpp's model and context options that the sidecar does not take: typed so that an old
 * `loadModel({...})` compiles; at run time they are left out, with a logged warning.
 */
export interface IgnoredLoadOptions {
  /** @deprecated Ignored (a warning is logged). */
  useMlock?: boolean | undefined;
  /** @deprecated Ignored (a warning is logged). */
  vocabOnly?: boolean | undefined;
  /** @deprecated Ignored (a warning is logged). */
  checkTensors?: boolean | undefined;
  /** @deprecated Ignored (a warning is logged). */
  lora?: unknown;
  /** @deprecated Ignored (a warning is logged). */
  ignoreMemorySafetyChecks?: boolean | undefined;
  /** @deprecated Ignored (a warning is logged). */
  sequences?: number | undefined;
  /** @deprecated Ignored (a warning is logged). */
  batching?: unknown;
  /** @deprecated Ignored (a warning is logged). */
  swaFullCache?: boolean | undefined;
  /** @deprecated Ignored (a warning is logged). */
  performanceTracking?: boolean | undefined;
}

/**
 * node-llama-cpp's non-numeric values of two load options. Its `'auto'` fits them to the memory
 * there is; the sidecar does not measure that, so `'auto'` leaves the sidecar's default (with a
 * logged note). `gpuLayers: 'max'` offloads every layer, as in node-llama-cpp.
 */
export interface NodeLlamaCppLoadValues {
  /** Layers to offload to a GPU; `'max'`: all of them; `'auto'`: the sidecar's default, 0 (a note is logged). */
  gpuLayers?: number | 'auto' | 'max' | undefined;
  /** Context size in tokens; `'auto'`: the sidecar's default, min(training context, 4096) (a note is logged). */
  contextSize?: number | 'auto' | undefined;
  /** node-llama-cpp's model-level name for `flashAttention` (used when that is not given). */
  defaultContextFlashAttention?: boolean | undefined;
}

/**
 * node-llama-cpp's progress and cancel of a load, in the options object: the same as
 * `onLoadProgress` and `signal` in `loadModel`'s second argument, which win when both are given.
 */
export interface NodeLlamaCppLoadCallbacks {
  /** The load's progress, 0 to 1 (see `LoadOptions.onLoadProgress`). */
  onLoadProgress?: ((progress: number) => void) | undefined;
  /** Cancels the load (see `LoadOptions.signal`). */
  loadSignal?: AbortSignal | undefined;
}

/**
 * `T` whose optional properties take `undefined` too (meaning: the default), as every option of this
 * client does, so that a host built with exactOptionalPropertyTypes can pass its own optional values on.
 */
export type UndefinedAllowed<T> = { [K in keyof T]: {} extends Pick<T, K> ? T[K] | undefined : T[K] };

/** `loadModel`'s options: the protocol's params (node-llama-cpp uses the same names, and values), and node-llama-cpp's others. */
export type LoadModelOptions = UndefinedAllowed<Omit<LoadModelParams, keyof NodeLlamaCppLoadValues>> &
  NodeLlamaCppLoadValues &
  NodeLlamaCppLoadCallbacks &
  IgnoredLoadOptions;

/** node-llama-cpp's `repeatPenalty` object: only `penalty` has a counterpart in the sidecar. */
export interface RepeatPenaltyOptions {
  penalty?: number | undefined;
  /** @deprecated Ignored (a warning is logged). */
  frequencyPenalty?: number | undefined;
  /** @deprecated Ignored (a warning is logged). */
  presencePenalty?: number | undefined;
  /** @deprecated Ignored (a warning is logged). */
  lastTokens?: number | undefined;
  /** @deprecated Ignored (a warning is logged). */
  penalizeNewLine?: boolean | undefined;
  /** @deprecated Ignored (a warning is logged). */
  punishTokensFilter?: ((tokens: number[]) => number[]) | undefined;
}

/**
 * node-llama-cpp's prompt options that the sidecar does not take: typed so that an old call
 * compiles; at run time they are left out, with a logged warning.
 */
export interface IgnoredPromptOptions {
  /** @deprecated Ignored (a warning is logged). */
  onToken?: ((tokens: number[]) => void) | undefined;
  /** @deprecated Ignored (a warning is logged): a cancelled prompt always resolves with the text so far. */
  stopOnAbortSignal?: boolean | undefined;
  /** @deprecated Ignored (a warning is logged). */
  trimWhitespaceSuffix?: boolean | undefined;
  /** @deprecated Ignored (a warning is logged). */
  responsePrefix?: string | undefined;
  /** @deprecated Ignored (a warning is logged). */
  evaluationPriority?: number | undefined;
  /** @deprecated Ignored (a warning is logged). */
  tokenBias?: unknown;
  /** @deprecated Ignored (a warning is logged). */
  functions?: Record<string, unknown> | undefined;
  /** @deprecated Ignored (a warning is logged). */
  documentFunctionParams?: boolean | undefined;
  /** @deprecated Ignored (a warning is logged). */
  budgets?: { thoughtTokens?: number; commentTokens?: number } | undefined;
}

export interface PromptOptions extends IgnoredPromptOptions {
  maxTokens?: number | undefined;
  temperature?: number | undefined;
  topK?: number | undefined;
  topP?: number | undefined;
  minP?: number | undefined;
  /** A number, or node-llama-cpp's `{penalty}` object (its other fields are ignored); `false` turns it off. */
  repeatPenalty?: number | false | RepeatPenaltyOptions | undefined;
  seed?: number | undefined;
  stop?: string[] | undefined;
  /** node-llama-cpp's name for `stop` (only string triggers are supported). */
  customStopTriggers?: readonly (string | readonly unknown[])[] | undefined;
  /** Earlier turns of the conversation; the prompt text follows them as the user's turn. */
  messages?: ChatMessage[] | undefined;
  /** node-llama-cpp's system prompt: sent as the first, `system`, message. */
  systemPrompt?: string | undefined;
  /** A GBNF grammar (llama.cpp's format, rule `root` first) every token of the reply must follow. Not with `jsonSchema`. */
  grammar?: string | undefined;
  /**
   * A JSON Schema the reply must satisfy. The result (`promptWithResult`, `promptStream`) then has
   * `json`, the reply parsed, when it ended with finishReason "stop". Not with `grammar`.
   */
  jsonSchema?: Record<string, unknown> | undefined;
  /** Send the text as a raw completion prompt instead of a user chat message. */
  raw?: boolean | undefined;
  modelId?: string | undefined;
  /** Cancels the prompt; the call then resolves with what was generated so far (finishReason "cancelled"). */
  signal?: AbortSignal | undefined;
  /** A key for `LlmService.cancel(requestId)`; one is made up when absent (the handle's `requestId`). */
  requestId?: string | undefined;
  /** This call's worker timeout, instead of the service's `workerTimeoutMs`. */
  timeoutMs?: number | undefined;
  /** node-llama-cpp's: the text of each chunk, as it comes (`prompt` too runs as a stream); after `onChunk`. */
  onTextChunk?: ((text: string) => void) | undefined;
}

/**
 * The options of a chat session's turn (`ChatSession.prompt` and the like): `prompt`'s, but the
 * conversation, the system prompt and the model are the session's.
 */
export type SessionPromptOptions = Omit<PromptOptions, 'messages' | 'systemPrompt' | 'raw' | 'modelId'>;

/** Sampling options sent as they are, under the same name. */
const SAMPLING_KEYS = ['maxTokens', 'temperature', 'topK', 'topP', 'minP', 'seed', 'grammar', 'jsonSchema'] as const;
/** Options of the call itself, not sent to the sidecar. */
const CALL_KEYS = ['signal', 'requestId', 'timeoutMs', 'onTextChunk'] as const;
const SESSION_PROMPT_KEYS = new Set<string>([
  ...SAMPLING_KEYS,
  ...CALL_KEYS,
  'repeatPenalty',
  'stop',
  'customStopTriggers',
]);
const PROMPT_KEYS = new Set<string>([...SESSION_PROMPT_KEYS, 'modelId', 'messages', 'systemPrompt', 'raw']);
/** `loadModel`'s options sent as they are. */
const PASSED_LOAD_KEYS = ['modelPath', 'modelId', 'threads', 'batchSize', 'useMmap', 'seed'] as const;
/** `loadModel`'s options the service takes (the callbacks), not sent either. */
const LOAD_CALL_KEYS = ['onLoadProgress', 'loadSignal'] as const;
const LOAD_KEYS = new Set<string>([
  ...PASSED_LOAD_KEYS,
  ...LOAD_CALL_KEYS,
  'contextSize',
  'gpuLayers',
  'flashAttention',
  'defaultContextFlashAttention',
]);
/**
 * gpuLayers `'max'`: the maximum protocol/schema/methods/loadModel.json allows, more layers than any
 * model has, so llama.cpp offloads them all.
 */
const ALL_GPU_LAYERS = 100_000;
/** What `'auto'` becomes: the sidecar's default, since it does not fit options to the free memory. */
const AUTO_DEFAULTS = { gpuLayers: '0 (no GPU offload)', contextSize: 'min(training context, 4096)' } as const;

/** The params of `prompt`/`promptStream` for `text` with the old-style `options`. */
export function generationParams(text: string, options: PromptOptions, logger: Logger): GenerationParams {
  warnUnknown(options, PROMPT_KEYS, 'prompt', logger);
  warnRepeatPenalty(options.repeatPenalty, 'prompt', logger);
  const params = samplingParams(options);
  if (options.modelId !== undefined) params.modelId = options.modelId;
  if (options.raw) {
    params.prompt = text;
  } else {
    const system = options.systemPrompt === undefined ? [] : [{ role: 'system', content: options.systemPrompt }];
    const user = text === '' ? [] : [{ role: 'user', content: text }];
    params.messages = [...system, ...(options.messages ?? []), ...user];
  }
  return params;
}

/**
 * The params of a session's turn without its `sessionId` (the caller adds it: it changes when a
 * restarted sidecar gets the session again): the user's `text` and the sampling options. Options a
 * session sets itself (`messages`, `systemPrompt`, `raw`, `modelId`) are reported and left out.
 */
export function sessionTurnParams(
  text: string,
  options: SessionPromptOptions,
  logger: Logger,
): Omit<GenerationParams, 'sessionId' | 'text'> & { text: string } {
  warnUnknown(options, SESSION_PROMPT_KEYS, 'session prompt', logger);
  warnRepeatPenalty(options.repeatPenalty, 'session prompt', logger);
  return { ...samplingParams(options), text };
}

/** The sampling part of `prompt`'s params, the same for every kind of prompt. */
function samplingParams(options: SessionPromptOptions): GenerationParams {
  const params: GenerationParams = {};
  for (const key of SAMPLING_KEYS) {
    if (options[key] !== undefined) Object.assign(params, { [key]: options[key] });
  }
  const repeatPenalty = repeatPenaltyValue(options.repeatPenalty);
  if (repeatPenalty !== undefined) params.repeatPenalty = repeatPenalty;
  const stop = [...(options.stop ?? []), ...(options.customStopTriggers ?? []).filter(isString)];
  if (stop.length > 0) params.stop = stop;
  return params;
}

/**
 * `countTokens`'s params for what `prompt(text, options)` would evaluate: the same system prompt,
 * earlier messages and user turn (or raw text). Given messages instead of a text, they follow
 * `options.messages` as the conversation. Sampling options do not change the count and are left out.
 */
export function countTokensParams(
  textOrMessages: string | readonly ChatMessage[],
  options: PromptOptions,
  logger: Logger,
): CountTokensParams {
  const params =
    typeof textOrMessages === 'string'
      ? generationParams(textOrMessages, options, logger)
      : generationParams(
          '',
          { ...options, raw: false, messages: [...(options.messages ?? []), ...textOrMessages] },
          logger,
        );
  const { prompt, messages, modelId } = params;
  return {
    ...(modelId === undefined ? {} : { modelId }),
    ...(prompt === undefined ? { messages: messages ?? [] } : { prompt }),
  };
}

/** `loadModel`'s params from a path or an options object. */
export function loadModelParams(pathOrOptions: string | LoadModelOptions, logger: Logger): LoadModelParams {
  if (typeof pathOrOptions === 'string') return { modelPath: pathOrOptions };
  warnUnknown(pathOrOptions, LOAD_KEYS, 'loadModel', logger);
  const params: LoadModelParams = { modelPath: pathOrOptions.modelPath };
  for (const key of PASSED_LOAD_KEYS) {
    if (pathOrOptions[key] !== undefined) Object.assign(params, { [key]: pathOrOptions[key] });
  }
  const { gpuLayers, contextSize } = pathOrOptions;
  const flashAttention = pathOrOptions.flashAttention ?? pathOrOptions.defaultContextFlashAttention;
  if (flashAttention !== undefined) params.flashAttention = flashAttention;
  if (typeof contextSize === 'number') params.contextSize = contextSize;
  if (typeof gpuLayers === 'number') params.gpuLayers = gpuLayers;
  if (gpuLayers === 'max') params.gpuLayers = ALL_GPU_LAYERS;
  noteAuto(pathOrOptions, logger);
  return params;
}

/**
 * `loadModel`'s call options: its second argument, with node-llama-cpp's `onLoadProgress` and
 * `loadSignal` from the options object where the second argument has none.
 */
export function loadCallOptions(pathOrOptions: string | LoadModelOptions, options: LoadOptions): LoadOptions {
  if (typeof pathOrOptions === 'string') return options;
  const onLoadProgress = options.onLoadProgress ?? pathOrOptions.onLoadProgress;
  const signal = options.signal ?? pathOrOptions.loadSignal;
  return {
    ...options,
    ...(onLoadProgress === undefined ? {} : { onLoadProgress }),
    ...(signal === undefined ? {} : { signal }),
  };
}

/** Log which options were node-llama-cpp's `'auto'`, left to the sidecar's default. */
function noteAuto(options: NodeLlamaCppLoadValues, logger: Logger): void {
  for (const key of ['gpuLayers', 'contextSize'] as const) {
    if (options[key] === 'auto')
      logger('info', `loadModel: ${key} 'auto' is approximated by the sidecar's default, ${AUTO_DEFAULTS[key]}`);
  }
}

function repeatPenaltyValue(value: PromptOptions['repeatPenalty']): number | undefined {
  if (value === false) return 1;
  return typeof value === 'object' ? value.penalty : value;
}

function warnUnknown(options: object, known: ReadonlySet<string>, call: string, logger: Logger, prefix = ''): void {
  const unknown = Object.keys(options).filter((key) => !known.has(key));
  if (unknown.length > 0)
    logger(
      'warn',
      `${call}: ignored option(s) the sidecar does not support: ${unknown.map((key) => prefix + key).join(', ')}`,
    );
}

const REPEAT_PENALTY_KEYS = new Set(['penalty']);

/** node-llama-cpp's `repeatPenalty` object: only its `penalty` is sent. */
function warnRepeatPenalty(value: PromptOptions['repeatPenalty'], call: string, logger: Logger): void {
  if (typeof value === 'object') warnUnknown(value, REPEAT_PENALTY_KEYS, call, logger, 'repeatPenalty.');
}

/** `options` without its `undefined` values: the protocol's params take a value or nothing. */
export function definedOnly<T extends object>(options: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as {
    [K in keyof T]: Exclude<T[K], undefined>;
  };
}

function isString(value: unknown): value is string {
  return typeof value === 'string';
}
