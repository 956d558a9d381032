/**
 * The chat page. It talks to the model only through `window.llm` (the
 * preload's six functions): loads the model at start (a progress bar while it
 * loads), sends each message of the conversation (main keeps the conversation
 * in a chat session, so every reply follows the earlier turns), shows the reply
 * as it streams, stops it on request, starts a new chat, and shows the load
 * state and tokens/s. A failure shows as one line, with its details (a crashed
 * sidecar's last stderr lines) behind a "details" toggle. After a reload it
 * shows the conversation again. A classic
 * script (no imports: none are needed, and it loads from file:// in Electron);
 * text goes into the DOM as text only.
 */

type LlmEvent = import('../bridge-api.js').LlmEvent;
type ChatTurn = import('../bridge-api.js').ChatTurn;
type ModelState = import('../bridge-api.js').ModelState;
type Failure = import('../bridge-api.js').Failure;
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
  modelDetails: element<HTMLSpanElement>('model-details'),
  loadProgress: element<HTMLProgressElement>('load-progress'),
  load: element<HTMLButtonElement>('load'),
  newChat: element<HTMLButtonElement>('new-chat'),
  transcript: element<HTMLElement>('transcript'),
  composer: element<HTMLFormElement>('composer'),
  prompt: element<HTMLTextAreaElement>('prompt'),
  send: element<HTMLButtonElement>('send'),
  stop: element<HTMLButtonElement>('stop'),
  stats: element<HTMLElement>('stats'),
};

let modelReady = false;
let reply: Reply | undefined;
/** Events of the current reply that arrived before `send` told us its stream id. */
let early: StreamEvent[] = [];
/** Whether the conversation kept by main was shown (once, after the model is ready). */
let historyShown = false;

function refreshButtons(): void {
  ui.send.disabled = !modelReady || reply !== undefined;
  ui.stop.disabled = reply?.streamId === undefined;
  ui.newChat.disabled = !modelReady;
}

function modelLabel(model: ModelState): string {
  switch (model.state) {
    case 'idle':
      return 'No model loaded';
    case 'loading':
      return `Loading model… ${Math.round(model.progress * 100)}%`;
    case 'ready':
      return `Ready: ${model.modelName}`;
    case 'error':
      return `Model error: ${model.message}`;
  }
}

/** A closed "details" toggle over `text` (as text, never markup). */
function detailsToggle(text: string): HTMLDetailsElement {
  const toggle = document.createElement('details');
  toggle.className = 'details';
  const summary = document.createElement('summary');
  summary.textContent = 'details';
  const body = document.createElement('pre');
  body.textContent = text;
  toggle.append(summary, body);
  return toggle;
}

function showModelState(model: ModelState): void {
  const label = modelLabel(model);
  ui.modelState.textContent = label;
  ui.modelState.title = label; // the whole line, where it is cut to fit
  ui.modelState.dataset['state'] = model.state;
  const details = model.state === 'error' ? model.details : undefined;
  ui.modelDetails.replaceChildren(...(details === undefined ? [] : [detailsToggle(details)]));
  ui.loadProgress.hidden = model.state !== 'loading';
  if (model.state === 'loading') ui.loadProgress.value = model.progress;
  modelReady = model.state === 'ready';
  ui.load.disabled = model.state === 'loading' || model.state === 'ready';
  refreshButtons();
  if (modelReady && !historyShown) {
    historyShown = true;
    void showHistory();
  }
}

/** After a reload: the conversation main kept, if the page shows none yet. */
async function showHistory(): Promise<void> {
  const turns = await window.llm.history().catch((): ChatTurn[] => []);
  if (ui.transcript.childElementCount > 0) return;
  for (const turn of turns) addBubble(turn.role, turn.content);
}

function addBubble(role: ChatTurn['role'], text: string): HTMLElement {
  const bubble = document.createElement('div');
  bubble.className = `turn ${role}`;
  bubble.textContent = text;
  ui.transcript.append(bubble);
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  return bubble;
}

function endReply(current: Reply, failure?: Failure): void {
  current.bubble.classList.remove('streaming');
  if (failure !== undefined) {
    current.bubble.classList.add('error');
    current.bubble.textContent = `Error: ${failure.message}`;
    if (failure.details !== undefined) current.bubble.append(detailsToggle(failure.details));
  }
  if (reply === current) reply = undefined;
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
    endReply(current, event);
  }
}

async function send(text: string): Promise<void> {
  addBubble('user', text);
  const current: Reply = { streamId: undefined, bubble: addBubble('assistant', ''), text: '' };
  current.bubble.classList.add('streaming');
  reply = current;
  early = [];
  ui.stats.textContent = '';
  refreshButtons();
  try {
    current.streamId = await window.llm.send(text);
  } catch (error) {
    endReply(current, { message: error instanceof Error ? error.message : String(error) });
    return;
  }
  if (reply !== current) return; // a new chat began meanwhile
  refreshButtons();
  const waiting = early;
  early = [];
  for (const event of waiting) onStreamEvent(event);
}

async function newChat(): Promise<void> {
  ui.newChat.disabled = true;
  try {
    await window.llm.newChat();
    reply = undefined;
    early = [];
    ui.transcript.replaceChildren();
    ui.stats.textContent = '';
  } catch (error) {
    ui.stats.textContent = `Could not start a new chat: ${error instanceof Error ? error.message : String(error)}`;
  } finally {
    refreshButtons();
    ui.prompt.focus();
  }
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

ui.newChat.addEventListener('click', () => void newChat());

ui.load.addEventListener('click', loadModel);

loadModel();
