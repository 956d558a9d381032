/**
 * The contract between the renderer and the main process: the `window.llm`
 * API the preload exposes, and the events main sends back. Types only, shared
 * by main (ipc.ts), the preload and the renderer; the IPC channel names live
 * in ipc.ts (the sandboxed preload repeats them; a test keeps them equal).
 */

/** One turn of the chat as the renderer shows it. */
export interface ChatTurn {
  readonly role: 'user' | 'assistant';
  readonly content: string;
}

/**
 * A failure as the page shows it: a one-line `message`, and the `details` behind a toggle (for a
 * sidecar that died: the last lines of its stderr), when there are any.
 */
export interface Failure {
  readonly message: string;
  readonly details?: string;
}

/** Where the model is: not asked for yet, loading (with its progress, 0 to 1), ready to chat, or failed. */
export type ModelState =
  | { readonly state: 'idle' }
  | { readonly state: 'loading'; readonly progress: number }
  | { readonly state: 'ready'; readonly modelName: string }
  | ({ readonly state: 'error' } & Failure);

export type LlmEvent =
  | { readonly type: 'model'; readonly model: ModelState }
  | { readonly type: 'chunk'; readonly streamId: number; readonly index: number; readonly content: string }
  | {
      readonly type: 'done';
      readonly streamId: number;
      readonly finishReason: string;
      readonly completionTokens: number;
      readonly tokensPerSecond: number;
      readonly ttftMs: number;
    }
  | ({ readonly type: 'error'; readonly streamId: number } & Failure);

/** `window.llm`: named functions only; nothing of Electron or Node reaches the page. */
export interface LlmBridge {
  /** Load the app's model and open the chat; progress arrives as `model` events. */
  loadDefaultModel(): Promise<ModelState>;
  /**
   * Send the user's next message; main keeps the conversation (a chat session), so the reply
   * follows every earlier turn. Returns the id of the reply's stream; one reply at a time.
   */
  send(text: string): Promise<number>;
  /** Stop a stream; its `done` event then says "cancelled" (the chat keeps the reply so far). False when it already ended. */
  stop(streamId: number): Promise<boolean>;
  /** Start a new chat: stops a running reply and clears the conversation. */
  newChat(): Promise<void>;
  /** The conversation so far (to show it again after a reload). */
  history(): Promise<ChatTurn[]>;
  /** Receive every event; returns the unsubscribe function. */
  onEvent(listener: (event: LlmEvent) => void): () => void;
}
