/**
 * The main process's side of `window.llm`: IPC handlers that validate every
 * argument, run prompts on the `LlmService`, and stream events back.
 *
 * Each `send` becomes one `promptStream` with its own AbortController, so
 * `stop` cancels exactly that stream; chunks, the final stats and errors go to
 * the renderer through `emit` (webContents.send in the app, a test bridge in
 * the browser test). It takes Electron's `ipcMain` as an argument, so it runs
 * and is tested without Electron; it knows nothing of windows or the DOM.
 */

import type { ChatTurn, LlmEvent, ModelState } from './bridge-api.js';
import type { LlmService, LoadModelOptions, PromptOptions } from './client/index.js';

export const CHANNELS = {
  loadDefaultModel: 'llm:load-default-model',
  send: 'llm:send',
  stop: 'llm:stop',
  event: 'llm:event',
} as const;

export const LIMITS = { turns: 200, turnChars: 32_000, totalChars: 200_000 } as const;

/** The part of an IPC event this module reads: which frame sent it. */
export interface InvokeEvent {
  readonly senderFrame: { readonly url: string } | null;
}

/** The part of Electron's `ipcMain` this module uses. */
export interface IpcMainLike {
  handle(channel: string, listener: (event: InvokeEvent, ...args: unknown[]) => unknown): void;
  removeHandler(channel: string): void;
}

export interface LlmIpcOptions {
  readonly service: Pick<LlmService, 'loadModel' | 'promptStream'>;
  /** What `loadDefaultModel` loads: "default" (the embedded SmolLM2) in the app. */
  readonly model: string | LoadModelOptions;
  /** Sampling the renderer cannot change: it only sends the conversation. */
  readonly sampling: Pick<PromptOptions, 'maxTokens' | 'temperature' | 'topK' | 'topP' | 'seed'>;
  readonly emit: (event: LlmEvent) => void;
  /** Whether an IPC call comes from the app's own page (not a navigated-to or injected frame). */
  readonly isTrustedSender: (event: InvokeEvent) => boolean;
}

/** Register the handlers; returns the function that removes them. */
export function registerLlmIpc(ipcMain: IpcMainLike, options: LlmIpcOptions): () => void {
  const streams = new Map<number, AbortController>();
  let nextStreamId = 1;
  let loading: Promise<ModelState> | undefined;

  const guarded =
    (handler: (args: unknown[]) => unknown) =>
    (event: InvokeEvent, ...args: unknown[]): unknown => {
      if (!options.isTrustedSender(event)) throw new Error('IPC from an untrusted frame');
      return handler(args);
    };

  ipcMain.handle(
    CHANNELS.loadDefaultModel,
    guarded((args) => {
      expectArgCount(args, 0);
      loading ??= loadModel(options).catch((error: unknown) => {
        loading = undefined; // a later click may try again
        throw error;
      });
      return loading;
    }),
  );

  ipcMain.handle(
    CHANNELS.send,
    guarded((args) => {
      expectArgCount(args, 1);
      const turns = parseTurns(args[0]);
      const streamId = nextStreamId++;
      const controller = new AbortController();
      streams.set(streamId, controller);
      void runStream(options, streamId, turns, controller.signal).finally(() => streams.delete(streamId));
      return streamId;
    }),
  );

  ipcMain.handle(
    CHANNELS.stop,
    guarded((args) => {
      expectArgCount(args, 1);
      const controller = streams.get(parseStreamId(args[0]));
      controller?.abort();
      return controller !== undefined;
    }),
  );

  return () => {
    for (const channel of [CHANNELS.loadDefaultModel, CHANNELS.send, CHANNELS.stop]) ipcMain.removeHandler(channel);
    for (const controller of streams.values()) controller.abort();
  };
}

async function loadModel({ service, model, emit }: LlmIpcOptions): Promise<ModelState> {
  emit({ type: 'model', model: { state: 'loading' } });
  try {
    const info = await service.loadModel(model);
    const ready: ModelState = { state: 'ready', modelName: info.name ?? info.modelId };
    emit({ type: 'model', model: ready });
    return ready;
  } catch (error) {
    emit({ type: 'model', model: { state: 'error', message: (error as Error).message } });
    throw error;
  }
}

async function runStream(
  options: LlmIpcOptions,
  streamId: number,
  turns: ChatTurn[],
  signal: AbortSignal,
): Promise<void> {
  const { service, sampling, emit } = options;
  try {
    const result = await service.promptStream(
      '',
      (chunk) => {
        if (!chunk.isFinal) emit({ type: 'chunk', streamId, index: chunk.index, content: chunk.content });
      },
      { ...sampling, messages: turns, signal },
    );
    const { finishReason, usage, timings } = result;
    emit({
      type: 'done',
      streamId,
      finishReason,
      completionTokens: usage.completionTokens,
      tokensPerSecond: timings.tokensPerSecond,
      ttftMs: timings.ttftMs,
    });
  } catch (error) {
    emit({ type: 'error', streamId, message: (error as Error).message });
  }
}

function expectArgCount(args: unknown[], count: number): void {
  if (args.length !== count) throw new TypeError(`expected ${count} argument(s), got ${args.length}`);
}

/** The conversation from the renderer: a bounded array of {role, content}, ending with the user's turn. */
export function parseTurns(value: unknown): ChatTurn[] {
  if (!Array.isArray(value) || value.length === 0 || value.length > LIMITS.turns) {
    throw new TypeError(`turns must be an array of 1 to ${LIMITS.turns} turns`);
  }
  let total = 0;
  const turns = value.map((turn: unknown, i): ChatTurn => {
    if (typeof turn !== 'object' || turn === null || Object.keys(turn).sort().join() !== 'content,role') {
      throw new TypeError(`turn ${i} must be {role, content}`);
    }
    const { role, content } = turn as Record<string, unknown>;
    if (role !== 'user' && role !== 'assistant') throw new TypeError(`turn ${i}: role must be "user" or "assistant"`);
    if (typeof content !== 'string' || content.length > LIMITS.turnChars) {
      throw new TypeError(`turn ${i}: content must be a string of at most ${LIMITS.turnChars} characters`);
    }
    total += content.length;
    return { role, content };
  });
  if (total > LIMITS.totalChars) throw new TypeError(`the conversation exceeds ${LIMITS.totalChars} characters`);
  if (turns.at(-1)?.role !== 'user' || turns.at(-1)?.content.trim() === '')
    throw new TypeError('the last turn must be a non-empty user turn');
  return turns;
}

export function parseStreamId(value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1)
    throw new TypeError('streamId must be a positive integer');
  return value;
}
