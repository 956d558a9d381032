/** What the renderer may use beyond the DOM: only the preload's `window.llm` (no Node types are loaded here). */
interface Window {
  readonly llm: import('../bridge-api.js').LlmBridge;
}
