/**
 * The main process's side of `window.llm`: IPC handlers that validate every
 * argument, run the chat on the `LlmService`, and stream events back.
 *
 * Loading the model reports its progress as `model` events and opens a chat
 * session on it; main keeps the conversation there, so the renderer sends only
 * the user's next message. Each `send` becomes one `session.promptStream` with
 * its own AbortController, so `stop` cancels exactly that stream; `newChat`
 * stops it and resets the session. Chunks, the final stats and errors (a
 * one-line message, and the details apart) go to the renderer through `emit`
 * (webContents.send in the app, a test bridge in the browser test). It takes
 * Electron's `ipcMain` as an argument, so it runs and is tested without
 * Electron; it knows nothing of windows or the DOM.
 */

import type { ChatTurn, Failure, LlmEvent, ModelState } from './bridge-api.js';
import type { ChatSession, LlmService, LoadModelOptions, SessionPromptOptions } from 'llama-sidecar-client';

export const CHANNELS = {
  loadDefaultModel: 'llm:load-default-model',
  send: 'llm:send',
  stop: 'llm:stop',
  newChat: 'llm:new-chat',
  history: 'llm:history',
  event: 'llm:event',
} as const;

export const LIMITS = { messageChars: 32_000 } as const;

/** The part of an IPC event this module reads: which frame sent it. */
export interface InvokeEvent {
  readonly senderFrame: { readonly url: string } | null;
}

/** The part of Electron's `ipcMain` this module uses. */
export interface IpcMainLike {
  handle(channel: string, listener: (event: InvokeEvent, ...args: unknown[]) => unknown): void;
  removeHandler(channel: string): void;
}

/** The part of a chat session this module uses. */
export type ChatSessionLike = Pick<ChatSession, 'promptStream' | 'reset' | 'getHistory' | 'close'>;

export interface LlmIpcOptions {
  readonly service: {
    loadModel: LlmService['loadModel'];
    createSession(...args: Parameters<LlmService['createSession']>): Promise<ChatSessionLike>;
  };
  /** What `loadDefaultModel` loads: "default" (the embedded SmolLM2) in the app. */
  readonly model: string | LoadModelOptions;
  /** The chat's system prompt, if any (the renderer cannot change it). */
  readonly systemPrompt?: string;
  /** Sampling the renderer cannot change: it only sends the user's messages. */
  readonly sampling: Pick<SessionPromptOptions, 'maxTokens' | 'temperature' | 'topK' | 'topP' | 'seed'>;
  readonly emit: (event: LlmEvent) => void;
  /** Whether an IPC call comes from the app's own page (not a navigated-to or injected frame). */
  readonly isTrustedSender: (event: InvokeEvent) => boolean;
}

/** Register the handlers; returns the function that removes them (and closes the chat). */
export function registerLlmIpc(ipcMain: IpcMainLike, options: LlmIpcOptions): () => void {
  const streams = new Map<number, AbortController>();
  let nextStreamId = 1;
  let loading: Promise<ModelState> | undefined;
  let session: ChatSessionLike | undefined;

  const guarded =
    (handler: (args: unknown[]) => unknown) =>
    (event: InvokeEvent, ...args: unknown[]): unknown => {
      if (!options.isTrustedSender(event)) throw new Error('IPC from an untrusted frame');
      return handler(args);
    };

  const chat = (): ChatSessionLike => {
    if (session === undefined) throw new Error('the model is not loaded yet');
    return session;
  };

  ipcMain.handle(
    CHANNELS.loadDefaultModel,
    guarded((args) => {
      expectArgCount(args, 0);
      loading ??= loadModel(options, (opened) => (session = opened)).catch((error: unknown) => {
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
      const text = parseMessage(args[0]);
      const current = chat();
      if (streams.size > 0) throw new Error('a reply is still streaming: stop it or wait for it');
      const streamId = nextStreamId++;
      const controller = new AbortController();
      streams.set(streamId, controller);
      void runStream(options, current, streamId, text, controller.signal).finally(() => streams.delete(streamId));
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

  ipcMain.handle(
    CHANNELS.newChat,
    guarded(async (args) => {
      expectArgCount(args, 0);
      const current = chat();
      for (const controller of streams.values()) controller.abort();
      await current.reset(); // after the stopped reply: the session runs one call at a time
    }),
  );

  ipcMain.handle(
    CHANNELS.history,
    guarded(async (args): Promise<ChatTurn[]> => {
      expectArgCount(args, 0);
      if (session === undefined) return [];
      return (await session.getHistory()).map(({ role, content }) => ({ role, content }));
    }),
  );

  return () => {
    for (const channel of [CHANNELS.loadDefaultModel, CHANNELS.send, CHANNELS.stop, CHANNELS.newChat, CHANNELS.history])
      ipcMain.removeHandler(channel);
    for (const controller of streams.values()) controller.abort();
    void session?.close().catch(() => undefined);
  };
}

async function loadModel(
  { service, model, systemPrompt, emit }: LlmIpcOptions,
  opened: (session: ChatSessionLike) => void,
): Promise<ModelState> {
  emit({ type: 'model', model: { state: 'loading', progress: 0 } });
  try {
    const info = await service.loadModel(model, {
      onLoadProgress: (progress) => emit({ type: 'model', model: { state: 'loading', progress } }),
    });
    opened(
      await service.createSession({ modelId: info.modelId, ...(systemPrompt === undefined ? {} : { systemPrompt }) }),
    );
    const ready: ModelState = { state: 'ready', modelName: info.name ?? info.modelId };
    emit({ type: 'model', model: ready });
    return ready;
  } catch (error) {
    emit({ type: 'model', model: { state: 'error', ...failure(error) } });
    throw error;
  }
}

async function runStream(
  options: LlmIpcOptions,
  session: ChatSessionLike,
  streamId: number,
  text: string,
  signal: AbortSignal,
): Promise<void> {
  const { sampling, emit } = options;
  try {
    const result = await session.promptStream(
      text,
      (chunk) => {
        if (!chunk.isFinal) emit({ type: 'chunk', streamId, index: chunk.index, content: chunk.content });
      },
      { ...sampling, signal },
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
    emit({ type: 'error', streamId, ...failure(error) });
  }
}

/**
 * An error as the page shows it: the first line of its message, and as details the rest of it and
 * the client's `details` (a dead sidecar's stderr tail). Read by shape, not `instanceof`: the
 * error may come from another copy of the client (its ESM and CommonJS builds are two).
 */
export function failure(error: unknown): Failure {
  const text = error instanceof Error ? error.message : String(error);
  const [message = '', ...more] = text.split('\n');
  const attached = (error as { details?: unknown } | null)?.details;
  const details = [more.join('\n').trim(), typeof attached === 'string' ? attached : ''].filter((part) => part !== '');
  return details.length > 0 ? { message, details: details.join('\n\n') } : { message };
}

function expectArgCount(args: unknown[], count: number): void {
  if (args.length !== count) throw new TypeError(`expected ${count} argument(s), got ${args.length}`);
}

/** The user's message from the renderer: a non-blank string of bounded length. */
export function parseMessage(value: unknown): string {
  if (typeof value !== 'string' || value.length > LIMITS.messageChars) {
    throw new TypeError(`the message must be a string of at most ${LIMITS.messageChars} characters`);
  }
  if (value.trim() === '') throw new TypeError('the message must not be blank');
  return value;
}

export function parseStreamId(value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1)
    throw new TypeError('streamId must be a positive integer');
  return value;
}
