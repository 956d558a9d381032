/**
 * The chat page. It talks to the model only through `window.llm` (the
 * preload's four functions): loads the model at start, sends the
 * conversation, shows the reply as it streams, stops it on request, and shows
 * the load state and tokens/s. A classic script (no imports: none are needed,
 * and it loads from file:// in Electron); text goes into the DOM as text only.
 */

type LlmEvent = import('../bridge-api.js').LlmEvent;
type ChatTurn = import('../bridge-api.js').ChatTurn;
type ModelState = import('../bridge-api.js').ModelState;
type StreamEvent = Exclude<LlmEvent, { type: 'model' }>;

interface Reply {
  streamId: number | undefined;
  readonly bubble: HTMLElement;
  text: string;
}

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`the page has no #${id}`);
  return found as T;
}

const ui = {
  modelState: element<HTMLSpanElement>('model-state'),
  load: element<HTMLButtonElement>('load'),
  transcript: element<HTMLElement>('transcript'),
  composer: element<HTMLFormElement>('composer'),
  prompt: element<HTMLTextAreaElement>('prompt'),
  send: element<HTMLButtonElement>('send'),
  stop: element<HTMLButtonElement>('stop'),
  stats: element<HTMLElement>('stats'),
};

const turns: ChatTurn[] = [];
let modelReady = false;
let reply: Reply | undefined;
/** Events of the current reply that arrived before `send` told us its stream id. */
let early: StreamEvent[] = [];

function refreshButtons(): void {
  ui.send.disabled = !modelReady || reply !== undefined;
  ui.stop.disabled = reply?.streamId === undefined;
}

function modelLabel(model: ModelState): string {
  switch (model.state) {
    case 'idle':
      return 'No model loaded';
    case 'loading':
      return 'Loading model…';
    case 'ready':
      return `Ready: ${model.modelName}`;
    case 'error':
      return `Model error: ${model.message}`;
  }
}

function showModelState(model: ModelState): void {
  ui.modelState.textContent = modelLabel(model);
  ui.modelState.dataset['state'] = model.state;
  modelReady = model.state === 'ready';
  ui.load.disabled = model.state === 'loading' || model.state === 'ready';
  refreshButtons();
}

function addBubble(role: ChatTurn['role'], text: string): HTMLElement {
  const bubble = document.createElement('div');
  bubble.className = `turn ${role}`;
  bubble.textContent = text;
  ui.transcript.append(bubble);
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  return bubble;
}

function endReply(current: Reply, error?: string): void {
  current.bubble.classList.remove('streaming');
  if (error === undefined) {
    turns.push({ role: 'assistant', content: current.text });
  } else {
    current.bubble.classList.add('error');
    current.bubble.textContent = `Error: ${error}`;
    turns.pop(); // the question went unanswered: leave it out of the conversation
  }
  reply = undefined;
  refreshButtons();
  ui.prompt.focus();
}

function onStreamEvent(event: StreamEvent): void {
  const current = reply;
  if (current === undefined) return;
  if (current.streamId === undefined) {
    early.push(event);
    return;
  }
  if (event.streamId !== current.streamId) return;
  if (event.type === 'chunk') {
    current.text += event.content;
    current.bubble.textContent = current.text;
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  } else if (event.type === 'done') {
    const speed = `${event.tokensPerSecond.toFixed(1)} tokens/s`;
    ui.stats.textContent = `${event.completionTokens} tokens · ${speed} · first token ${Math.round(event.ttftMs)} ms · ${event.finishReason}`;
    endReply(current);
  } else {
    endReply(current, event.message);
  }
}

async function send(text: string): Promise<void> {
  turns.push({ role: 'user', content: text });
  addBubble('user', text);
  const current: Reply = { streamId: undefined, bubble: addBubble('assistant', ''), text: '' };
  current.bubble.classList.add('streaming');
  reply = current;
  early = [];
  ui.stats.textContent = '';
  refreshButtons();
  try {
    current.streamId = await window.llm.send(turns);
  } catch (error) {
    endReply(current, error instanceof Error ? error.message : String(error));
    return;
  }
  refreshButtons();
  const waiting = early;
  early = [];
  for (const event of waiting) onStreamEvent(event);
}

function loadModel(): void {
  // The answer matters after a page reload (the model is already loaded: no events come);
  // a failure also arrives as a `model` event with state "error", and the button allows another try.
  window.llm.loadDefaultModel().then(showModelState, () => undefined);
}

window.llm.onEvent((event) => {
  if (event.type === 'model') showModelState(event.model);
  else onStreamEvent(event);
});

ui.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.prompt.value.trim();
  if (text === '' || !modelReady || reply !== undefined) return;
  ui.prompt.value = '';
  void send(text);
});

ui.prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.stop.addEventListener('click', () => {
  if (reply?.streamId !== undefined) void window.llm.stop(reply.streamId);
});

ui.load.addEventListener('click', loadModel);

loadModel();
