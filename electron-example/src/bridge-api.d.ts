/**
 * The contract between the renderer and the main process: the `window.llm`
 * API the preload exposes, and the events main sends back. Types only, shared
 * by main (ipc.ts), the preload and the renderer; the IPC channel names live
 * in ipc.ts (the sandboxed preload repeats them; a test keeps them equal).
 */

/** One turn of the chat as the renderer keeps it. */
export interface ChatTurn {
  readonly role: 'user' | 'assistant';
  readonly content: string;
}

/** Where the model is: not asked for yet, loading, ready to chat, or failed. */
export type ModelState =
  | { readonly state: 'idle' }
  | { readonly state: 'loading' }
  | { readonly state: 'ready'; readonly modelName: string }
  | { readonly state: 'error'; readonly message: string };

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
  | { readonly type: 'error'; readonly streamId: number; readonly message: string };

/** `window.llm`: named functions only; nothing of Electron or Node reaches the page. */
export interface LlmBridge {
  /** Load the app's model; progress arrives as `model` events. */
  loadDefaultModel(): Promise<ModelState>;
  /** Start streaming the assistant's reply to `turns` (the last is the user's); returns the stream's id. */
  send(turns: readonly ChatTurn[]): Promise<number>;
  /** Stop a stream; its `done` event then says "cancelled". False when it already ended. */
  stop(streamId: number): Promise<boolean>;
  /** Receive every event; returns the unsubscribe function. */
  onEvent(listener: (event: LlmEvent) => void): () => void;
}
