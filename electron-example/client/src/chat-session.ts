/**
 * `ChatSession`: one conversation with one model, node-llama-cpp's `LlamaChatSession` style.
 *
 * The sidecar keeps the session (`createSession`): its history, its system
 * prompt and the model's evaluated context between turns, so a turn sends only
 * the new user message. `LlmService.createSession` opens one; `prompt`,
 * `promptWithResult` and `promptStream` each add a turn (the user's text and
 * the reply, appended by the sidecar once the reply ends; a cancelled reply is
 * kept as far as it got). A session runs one call at a time: calls made while
 * one runs wait for it, in order.
 *
 * The session also keeps its history here, so that it survives the sidecar: a
 * call after a restart (a crash, or a hung sidecar killed by a timeout) opens
 * the session again on the new sidecar, with the same model, system prompt,
 * context size and history. Its `id` then changes.
 *
 * Every turn runs as a stream (`prompt`'s too), so that the timeouts are the
 * service's first-chunk timeouts (`workerTimeoutMs`, `maxAttempts`), with one
 * difference that keeps a retried turn from being added twice: a timed-out
 * attempt is cancelled and its answer awaited (for up to `cancelGraceMs`).
 * An answer with a whole reply (it won the race with the cancel) is the
 * result, and is not tried again. A cancelled answer means the sidecar kept a
 * partial turn: the history is set back to what it was before the attempt,
 * then the turn is tried again. No answer at all: a sidecar that does not
 * answer ping either is killed, and the retry goes to a fresh one, where the
 * session is opened again from the history kept here; a sidecar that answers
 * ping but not the cancelled turn is not sent the turn again (it may still add
 * it), the call fails with TIMEOUT, and the next call reads the history back
 * from the sidecar once the stray turn has ended. A turn its caller cancelled
 * waits as long for its answer; without one, it fails with
 * `CancelTimeoutError` (after the same ping, and restart if it hangs). A turn
 * cancelled before it was sent resolves as cancelled, the history unchanged.
 * A stream that stalls after its first chunk (`streamIdleTimeoutMs`) is
 * cancelled too, and fails with `StreamIdleTimeoutError` once the sidecar has
 * answered (the session keeps the turn as far as it got) or after the same
 * grace, ping and restart; it is not tried again.
 */

import { beforeAbort, type CancelOptions } from './cancellers.js';
import { cancelledIfUnsent, type LlmChunk, withTextChunks } from './chunks.js';
import { CancelTimeoutError, LLMServiceError, timedOutError, WorkerTimeoutError } from './errors.js';
import type { Logger } from './log.js';
import { sessionTurnParams, type SessionPromptOptions } from './options.js';
import type {
  GenerationParams,
  GenerationResult,
  SessionInfo,
  SessionMessage,
  StreamChunkParams,
} from './protocol-types.js';
import type { ChatSessionOptions } from './service-options.js';
import type { SidecarClient } from './sidecar-client.js';
import { boundedStream } from './stream-bounds.js';

/** What a `ChatSession` uses of its `LlmService`. Internal: the service builds it. */
export interface SessionHost {
  readonly logger: Logger;
  /** The running sidecar, started (or restarted, with its models reloaded) when needed. */
  acquire(): Promise<SidecarClient>;
  /** The running sidecar, if there is one; never starts one. */
  current(): SidecarClient | undefined;
  /** Tries per turn when the worker times out, the first included. */
  readonly maxAttempts: number;
  /** How long a begun stream may go without a chunk; undefined when turned off. */
  readonly idleTimeoutMs: number | undefined;
  /** A turn's worker timeout (its own, else the service's); undefined when turned off. */
  timeoutFor(options: SessionPromptOptions): number | undefined;
  /** After an attempt got no answer: true when the sidecar did not answer ping and was killed (the next acquire starts a new one). */
  restartIfHung(client: SidecarClient, timeoutMs: number): Promise<boolean>;
  /** Run `body` with a signal that fires on `options.signal` or on `LlmService.cancel(options.requestId)`. */
  withCanceller<T>(options: CancelOptions, body: (signal: AbortSignal) => Promise<T>): Promise<T>;
  /** How long a cancelled turn waits for its answer. */
  readonly cancelGraceMs: number;
}

type TurnKind = 'prompt' | 'promptStream';
type TurnParams = Omit<GenerationParams, 'sessionId' | 'text'> & { readonly text: string };

/** How one attempt of a turn ended: with a result, or timed out (answered: a cancelled answer came back). */
type Attempt =
  { readonly result: GenerationResult } | { readonly timeout: WorkerTimeoutError; readonly answered: boolean };

export class ChatSession {
  /** The sidecar that holds the session; another one (after a restart) gets it opened again. */
  private client: SidecarClient;
  /** The session as the sidecar last described it: id, model, system prompt, context size. */
  private info: SessionInfo;
  /** The history as it stands, kept to open the session again or to undo a timed-out attempt. */
  private history: readonly SessionMessage[];
  /** The end of the queue of this session's calls. */
  private tail: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** A turn that got no answer in time ended later: the sidecar's history may have changed. */
  private stale = false;

  /** Use `LlmService.createSession`. */
  private constructor(
    private readonly host: SessionHost,
    client: SidecarClient,
    info: SessionInfo,
  ) {
    this.client = client;
    this.info = info;
    this.history = info.messages;
  }

  /** Internal: `LlmService.createSession` opens sessions through this. */
  static async open(host: SessionHost, options: ChatSessionOptions = {}): Promise<ChatSession> {
    const client = await host.acquire();
    const { modelId, systemPrompt, contextSize } = options;
    const info = await client.createSession({
      ...(modelId === undefined ? {} : { modelId }),
      ...(systemPrompt === undefined ? {} : { systemPrompt }),
      ...(contextSize === undefined ? {} : { contextSize }),
    });
    return new ChatSession(host, client, info);
  }

  /** The sidecar's id of the session (it changes when a restarted sidecar gets the session again). */
  get id(): string {
    return this.info.sessionId;
  }

  /** The model the session prompts. */
  get modelId(): string {
    return this.info.modelId;
  }

  get systemPrompt(): string | undefined {
    return this.info.systemPrompt;
  }

  /** Tokens the session's prompt and reply may take together. */
  get contextSize(): number {
    return this.info.contextSize;
  }

  /** Whether `close` was called. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** The reply to the user's `text`, after the session's history; the turn is added to it. */
  async prompt(text: string, options: SessionPromptOptions = {}): Promise<string> {
    return (await this.promptWithResult(text, options)).text;
  }

  /** `prompt`, resolving to the whole result (`finishReason`, `usage`, `timings`, `json` with a `jsonSchema`). */
  promptWithResult(text: string, options: SessionPromptOptions = {}): Promise<GenerationResult> {
    return this.turn('prompt', text, options, undefined);
  }

  /**
   * Stream the reply to `text` into `onChunk` (`{content, isFinal, timestamp}`, as `LlmService.promptStream`);
   * resolves with the result once the final chunk is out. An aborted `options.signal` ends the reply:
   * it resolves with finishReason "cancelled", and the session keeps the reply as far as it got.
   */
  promptStream(
    text: string | { readonly text: string },
    onChunk: (chunk: LlmChunk) => void,
    options: SessionPromptOptions = {},
  ): Promise<GenerationResult> {
    return this.turn('promptStream', typeof text === 'string' ? text : text.text, options, onChunk);
  }

  /** The history, oldest first, without the system prompt (the oldest turns may have been dropped to fit the context). */
  async getHistory(): Promise<SessionMessage[]> {
    return (await this.getInfo()).messages;
  }

  /** The session as the sidecar has it: history, system prompt, context size, `droppedMessages`. */
  getInfo(): Promise<SessionInfo> {
    return this.serialized(async () => {
      const client = await this.ready();
      return copyInfo(this.update(await client.getSession({ sessionId: this.id })));
    });
  }

  /** Replace the history (without the system prompt), e.g. to restore a saved chat. */
  setHistory(messages: readonly SessionMessage[]): Promise<SessionInfo> {
    const copy = messages.map(({ role, content }) => ({ role, content }));
    return this.serialized(async () => {
      const client = await this.ready();
      return copyInfo(this.update(await client.setSessionHistory({ sessionId: this.id, messages: copy })));
    });
  }

  /** Start over: the history is cleared, the system prompt stays. */
  reset(): Promise<SessionInfo> {
    return this.serialized(async () => {
      const client = await this.ready();
      return copyInfo(this.update(await client.resetSession({ sessionId: this.id })));
    });
  }

  /**
   * Close the session, after the calls already made; later calls reject with CLOSED. Resolves to
   * whether the sidecar had it (false when it was closed already, or the sidecar that had it is gone).
   */
  close(): Promise<boolean> {
    return this.serialized(async () => {
      if (this.closed) return false;
      this.closed = true;
      const client = this.host.current();
      if (client !== this.client) return false; // the sidecar that had it is gone, and the session with it
      try {
        return (await client.closeSession({ sessionId: this.id })).closed;
      } catch (error) {
        if (error instanceof LLMServiceError && error.code === -32013) return false;
        throw error;
      }
    });
  }

  private turn(
    kind: TurnKind,
    text: string,
    options: SessionPromptOptions,
    onChunk: ((chunk: LlmChunk) => void) | undefined,
  ): Promise<GenerationResult> {
    const params: TurnParams = sessionTurnParams(text, options, this.host.logger);
    const timeoutMs = this.host.timeoutFor(options);
    const receiver = withTextChunks(onChunk, options.onTextChunk);
    // The canceller first: a turn cancelled while the calls before it run ends as soon as they have.
    return this.host.withCanceller(options, (signal) =>
      this.serialized(() =>
        cancelledIfUnsent(signal, receiver, () => this.attempts(kind, params, timeoutMs, signal, receiver)),
      ),
    );
  }

  /** Try a turn up to `maxAttempts` times while it times out, putting the history back between tries. */
  private async attempts(
    kind: TurnKind,
    params: TurnParams,
    timeoutMs: number | undefined,
    signal: AbortSignal,
    onChunk: ((chunk: LlmChunk) => void) | undefined,
  ): Promise<GenerationResult> {
    const attempts = Math.max(this.host.maxAttempts, 1);
    let last: WorkerTimeoutError | undefined;
    let number = 1;
    for (; ; number++) {
      const client = await this.ready(signal);
      const before = this.history;
      const outcome = await this.attempt(client, kind, params, timeoutMs, signal, onChunk);
      if ('result' in outcome) return outcome.result;
      last = outcome.timeout;
      this.host.logger('warn', `session ${kind}: attempt ${number} of ${attempts} timed out: ${last.message}`);
      if (number >= attempts || !(await this.undo(client, outcome.answered, before, last.timeoutMs))) break;
    }
    throw timedOutError(`session ${kind}`, number, last);
  }

  /**
   * One attempt, streamed whatever the kind: on a timeout (no first chunk in time, or no next one),
   * cancel it; once cancelled, by a timeout or the caller, wait up to `cancelGraceMs` for its answer.
   * Chunks that come after a timeout are held back: they reach `onChunk` only if this attempt's
   * answer is a whole reply after all. Only a first-chunk timeout is tried again.
   */
  private async attempt(
    client: SidecarClient,
    kind: TurnKind,
    params: TurnParams,
    timeoutMs: number | undefined,
    signal: AbortSignal,
    onChunk: ((chunk: LlmChunk) => void) | undefined,
  ): Promise<Attempt> {
    const graceMs = this.host.cancelGraceMs;
    const limits = { firstChunkTimeoutMs: timeoutMs, idleTimeoutMs: this.host.idleTimeoutMs };
    // The grace is bounded here (Infinity for the call), so that a late answer is still heard of.
    const stream = (deliver: (chunk: StreamChunkParams) => void, callSignal: AbortSignal) =>
      client.promptStream({ ...params, sessionId: this.id }, deliver, { signal: callSignal, cancelGraceMs: Infinity });
    const { settled, answer, expired, callbackFailed, held } = await boundedStream(stream, {
      name: kind,
      limits,
      signal,
      graceMs,
      onChunk,
    });
    const timeout = expired instanceof WorkerTimeoutError ? expired : undefined;

    if (settled === undefined) {
      // No answer even to the cancel. Should the turn still end, the sidecar's history has it.
      void answer.then(() => {
        if (this.client === client) this.stale = true;
      });
      if (timeout !== undefined) return { timeout, answered: false };
      await this.host.restartIfHung(client, graceMs);
      if (callbackFailed !== undefined) throw callbackFailed.error;
      throw expired ?? new CancelTimeoutError(kind, graceMs);
    }
    if ('error' in settled) {
      if (settled.error instanceof LLMServiceError && settled.error.fromSidecar && settled.error.code !== -32013)
        await this.resync(client); // e.g. a generation that failed midway: see what the sidecar kept
      throw callbackFailed === undefined ? settled.error : callbackFailed.error;
    }
    const { result } = settled;
    const ourCancel = result.finishReason === 'cancelled' && !signal.aborted && callbackFailed === undefined;
    if (ourCancel && timeout !== undefined) return { timeout, answered: true };
    // A whole reply (perhaps after the timeout: it won the race with the cancel), or a reply the
    // caller cancelled, or one whose callback failed: the sidecar added the turn; so does the history here.
    await this.record(client, params.text, result);
    if (callbackFailed !== undefined) throw callbackFailed.error;
    // A stream that stalled: the sidecar kept the turn as far as it got, and so did the history here.
    if (ourCancel && expired !== undefined) throw expired;
    for (const chunk of held) onChunk?.(chunk);
    return { result };
  }

  /**
   * Before trying a timed-out turn again: true when the session is back as it was before the
   * attempt. A cancelled answer came back: the sidecar kept a partial turn, which goes. None came:
   * a hung sidecar is killed, and the next one gets the session from the history kept here.
   */
  private async undo(
    client: SidecarClient,
    answered: boolean,
    before: readonly SessionMessage[],
    timeoutMs: number,
  ): Promise<boolean> {
    if (answered) {
      this.update(await client.setSessionHistory({ sessionId: this.id, messages: [...before] }));
      return true;
    }
    if (await this.host.restartIfHung(client, timeoutMs)) return true;
    this.host.logger(
      'warn',
      `session ${this.id}: the sidecar answers ping but not the cancelled turn; not sending the turn again`,
    );
    return false;
  }

  /**
   * The client that holds the session, opening it again on a new sidecar first. When `signal` fires
   * while a sidecar starts, stop waiting for it (ABORTED).
   */
  private async ready(signal?: AbortSignal): Promise<SidecarClient> {
    if (this.closed) throw new LLMServiceError('CLOSED', 'The chat session was closed.');
    const acquired = this.host.acquire();
    const client = await (signal === undefined ? acquired : beforeAbort(acquired, signal, 'session turn'));
    if (client !== this.client) await this.reopen(client);
    else if (this.stale) await this.resync(client);
    return client;
  }

  /** Open the session on a new sidecar, with the same settings and history. */
  private async reopen(client: SidecarClient): Promise<void> {
    const { sessionId: old, modelId, systemPrompt, contextSize } = this.info;
    const created = await client.createSession({
      modelId,
      contextSize,
      ...(systemPrompt === undefined ? {} : { systemPrompt }),
    });
    let info = created;
    if (this.history.length > 0) {
      try {
        info = await client.setSessionHistory({ sessionId: created.sessionId, messages: [...this.history] });
      } catch (error) {
        await client.closeSession({ sessionId: created.sessionId }).catch(() => undefined);
        throw error;
      }
    }
    this.client = client;
    this.stale = false;
    this.update(info);
    this.host.logger(
      'info',
      `reopened chat session ${old} as ${info.sessionId} on a new sidecar (${info.messages.length} messages)`,
    );
  }

  /** After a reply: the turn is in the history (a cancelled one as the sidecar kept it). */
  private async record(client: SidecarClient, text: string, result: GenerationResult): Promise<void> {
    if (result.finishReason === 'cancelled' && (await this.resync(client))) return;
    this.history = [...this.history, { role: 'user', content: text }, { role: 'assistant', content: result.text }];
  }

  /** Read the history back from the sidecar; false when it could not be read. */
  private async resync(client: SidecarClient): Promise<boolean> {
    try {
      this.update(await client.getSession({ sessionId: this.id }));
      this.stale = false;
      return true;
    } catch (error) {
      this.host.logger('debug', `session ${this.id}: could not read the history back: ${(error as Error).message}`);
      return false;
    }
  }

  private update(info: SessionInfo): SessionInfo {
    this.info = info;
    this.history = info.messages;
    return info;
  }

  /** Run `body` after every call made before it has settled. */
  private serialized<T>(body: () => Promise<T>): Promise<T> {
    const run = this.tail.then(body);
    this.tail = run.catch(() => undefined);
    return run;
  }
}

function copyInfo(info: SessionInfo): SessionInfo {
  return { ...info, messages: info.messages.map(({ role, content }) => ({ role, content })) };
}
