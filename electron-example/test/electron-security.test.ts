/**
 * The Electron app's security settings, checked without Electron: the options
 * main passes to BrowserWindow, what the built preload exposes (run as Electron
 * runs a sandboxed preload), the page's CSP, and main's IPC argument checks.
 */

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { before, test } from 'node:test';
import vm from 'node:vm';

import type { BrowserWindowConstructorOptions } from 'electron';

import type { LlmEvent } from '../src/bridge-api.js';
import { CHANNELS, type InvokeEvent, LIMITS, registerLlmIpc } from '../src/ipc.js';
import { createMainWindow, isAppPage } from '../src/window.js';
import { fakeIpcMain } from './helpers/ipc.js';
import { PACKAGE_DIR } from './helpers/sidecar.js';

const DIST = path.join(PACKAGE_DIR, 'dist');

before(() => {
  assert.ok(existsSync(path.join(DIST, 'preload.cjs')), 'run `npm run build` first (npm test does)');
});

class FakeBrowserWindow {
  static last: FakeBrowserWindow | undefined;
  openHandler: ((details: { url: string }) => { action: 'deny' }) | undefined;
  navigate: ((event: { preventDefault(): void }, url: string) => void) | undefined;
  loaded: string | undefined;
  readonly webContents = {
    setWindowOpenHandler: (handler: (details: { url: string }) => { action: 'deny' }) => {
      this.openHandler = handler;
    },
    on: (_event: 'will-navigate', listener: (event: { preventDefault(): void }, url: string) => void) => {
      this.navigate = listener;
    },
  };

  constructor(readonly options: BrowserWindowConstructorOptions) {
    FakeBrowserWindow.last = this;
  }

  async loadFile(file: string): Promise<void> {
    this.loaded = file;
  }
}

test('main creates the window with context isolation, the sandbox and no Node integration', async () => {
  const indexUrl = 'file:///app/renderer/index.html';
  const window = await createMainWindow({
    BrowserWindow: FakeBrowserWindow,
    preloadPath: '/app/preload.cjs',
    indexPath: '/app/renderer/index.html',
  });
  const prefs = window.options.webPreferences;
  assert.equal(prefs?.contextIsolation, true);
  assert.equal(prefs?.sandbox, true);
  assert.equal(prefs?.nodeIntegration, false);
  assert.equal(prefs?.nodeIntegrationInWorker, false);
  assert.equal(prefs?.nodeIntegrationInSubFrames, false);
  assert.equal(prefs?.webSecurity, true);
  assert.equal(prefs?.webviewTag, false);
  assert.equal(prefs?.preload, '/app/preload.cjs');
  assert.equal(window.loaded, '/app/renderer/index.html');
  assert.deepEqual(window.openHandler?.({ url: 'https://example.com' }), { action: 'deny' });
  const prevented: string[] = [];
  for (const url of ['https://example.com/', 'file:///etc/passwd', indexUrl, `${indexUrl}#top`]) {
    window.navigate?.({ preventDefault: () => prevented.push(url) }, url);
  }
  assert.deepEqual(prevented, ['https://example.com/', 'file:///etc/passwd']);
});

/** Run the built preload the way Electron runs a sandboxed one: a function of (require, process, exports, module). */
function runPreload(): {
  exposed: Map<string, unknown>;
  invoked: unknown[][];
  listeners: Map<string, (...args: unknown[]) => void>;
} {
  const exposed = new Map<string, unknown>();
  const invoked: unknown[][] = [];
  const listeners = new Map<string, (...args: unknown[]) => void>();
  const electron = {
    contextBridge: { exposeInMainWorld: (name: string, api: unknown) => exposed.set(name, api) },
    ipcRenderer: {
      invoke: async (...args: unknown[]) => invoked.push(args),
      on: (channel: string, listener: (...args: unknown[]) => void) => listeners.set(channel, listener),
      removeListener: (channel: string) => listeners.delete(channel),
    },
  };
  const fakeRequire = (name: string): unknown => {
    if (name === 'electron') return electron;
    throw new Error(`module not found: ${name}`); // what Electron's sandboxed require says
  };
  const source = readFileSync(path.join(DIST, 'preload.cjs'), 'utf8');
  const exports = {};
  const preload = vm.runInNewContext(`(function (require, process, exports, module) {${source}\n})`, {}) as (
    ...args: unknown[]
  ) => void;
  preload(fakeRequire, {}, exports, { exports });
  return { exposed, invoked, listeners };
}

test('only the app page counts as the app page, however its URL is written', () => {
  const page = '/opt/My App/renderer/index.html';
  assert.equal(isAppPage('file:///opt/My%20App/renderer/index.html', page), true);
  assert.equal(isAppPage('file:///opt/My%20App/renderer/index.html?x=1#y', page), true);
  for (const url of [
    undefined,
    '',
    'https://example.com/index.html',
    'file:///opt/My%20App/renderer/other.html',
    'file://host/opt/My%20App/renderer/index.html',
  ]) {
    assert.equal(isAppPage(url, page), false, String(url));
  }
});

test('the preload exposes only window.llm: six named functions over the same channels main handles', async () => {
  const { exposed, invoked, listeners } = runPreload();
  assert.deepEqual([...exposed.keys()], ['llm']);
  const llm = exposed.get('llm') as Record<string, (...args: unknown[]) => unknown>;
  assert.deepEqual(Object.keys(llm).sort(), ['history', 'loadDefaultModel', 'newChat', 'onEvent', 'send', 'stop']);
  for (const value of Object.values(llm)) assert.equal(typeof value, 'function');

  await llm['loadDefaultModel']?.();
  await llm['send']?.('hi');
  await llm['stop']?.(3);
  await llm['newChat']?.();
  await llm['history']?.();
  assert.deepEqual(invoked, [
    [CHANNELS.loadDefaultModel],
    [CHANNELS.send, 'hi'],
    [CHANNELS.stop, 3],
    [CHANNELS.newChat],
    [CHANNELS.history],
  ]);
  const handled = new Set(Object.values(CHANNELS));
  assert.ok(
    invoked.every(([channel]) => handled.has(channel as never)),
    'every channel the preload uses is one of main',
  );

  const received: unknown[] = [];
  const unsubscribe = llm['onEvent']?.((event: unknown) => received.push(event)) as () => void;
  const event: LlmEvent = { type: 'chunk', streamId: 1, index: 0, content: 'x' };
  listeners.get(CHANNELS.event)?.({ sender: 'the IpcRendererEvent, which must not reach the page' }, event);
  assert.deepEqual(received, [event], 'listeners get the payload only, never the Electron event');
  unsubscribe();
  assert.equal(listeners.has(CHANNELS.event), false);
});

test('the page has a strict Content-Security-Policy and no inline script', () => {
  const html = readFileSync(path.join(PACKAGE_DIR, 'src', 'renderer', 'index.html'), 'utf8');
  const csp = /http-equiv="Content-Security-Policy"\s+content="([^"]+)"/.exec(html)?.[1] ?? '';
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
  assert.doesNotMatch(html, /<script>|<script(?![^>]*\bsrc=)[^>]*>/, 'every script has a src');
  assert.doesNotMatch(html, /\son[a-z]+=/i, 'no inline event handlers');
});

type IpcOptions = Parameters<typeof registerLlmIpc>[1];

const APP_URL = 'file:///app/index.html';
const TRUSTED: InvokeEvent = { senderFrame: { url: APP_URL } };
/** What a chat session's promptStream resolves with once the reply is done. */
const FINISHED_REPLY = {
  text: '',
  finishReason: 'stop',
  usage: { promptTokens: 1, completionTokens: 0 },
  timings: { ttftMs: 0, promptMs: 0, decodeMs: 0, tokensPerSecond: 0 },
} as never;

/** Main's IPC for the app page at APP_URL, over `service`. */
function registerForTheAppPage(
  ipc: Parameters<typeof registerLlmIpc>[0],
  service: IpcOptions['service'],
  emit: IpcOptions['emit'],
): () => void {
  return registerLlmIpc(ipc, {
    service,
    model: 'default',
    systemPrompt: 'be nice',
    sampling: { maxTokens: 8 },
    emit,
    isTrustedSender: (e) => e.senderFrame?.url === APP_URL,
  });
}

test('main validates every IPC argument and the sending frame', async () => {
  const ipc = fakeIpcMain();
  const sent: [string, unknown][] = [];
  const calls: string[] = [];
  const session = {
    promptStream: async (text: string, _onChunk: unknown, options: unknown) => {
      sent.push([text, options]);
      return FINISHED_REPLY;
    },
    reset: async () => (calls.push('reset'), {}) as never,
    getHistory: async () => [{ role: 'user', content: 'hi', extra: 'not passed on' }] as never,
    close: async () => (calls.push('close'), true),
  };
  const service = {
    loadModel: async (_model: unknown, options?: { onLoadProgress?: (p: number) => void }) => {
      options?.onLoadProgress?.(0.5);
      options?.onLoadProgress?.(1);
      return { modelId: 'm' } as never;
    },
    createSession: async (options: unknown) => (calls.push(`createSession ${JSON.stringify(options)}`), session),
  };
  const events: LlmEvent[] = [];
  const unregister = registerForTheAppPage(ipc, service, (event) => events.push(event));

  const rejected: [string, InvokeEvent, unknown[]][] = [
    [CHANNELS.loadDefaultModel, { senderFrame: { url: 'https://evil.example/' } }, []],
    [CHANNELS.send, { senderFrame: { url: 'https://evil.example/' } }, ['hi']],
    [CHANNELS.send, { senderFrame: null }, ['hi']],
    [CHANNELS.send, TRUSTED, ['hi']], // the model is not loaded yet
    [CHANNELS.loadDefaultModel, TRUSTED, ['/etc/passwd']],
  ];
  const rejectedOnceLoaded: [string, InvokeEvent, unknown[]][] = [
    [CHANNELS.send, { senderFrame: { url: 'https://evil.example/' } }, ['hi']],
    [CHANNELS.newChat, { senderFrame: { url: 'https://evil.example/' } }, []],
    [CHANNELS.history, { senderFrame: null }, []],
    [CHANNELS.send, TRUSTED, []],
    [CHANNELS.send, TRUSTED, [[{ role: 'user', content: 'hi' }]]],
    [CHANNELS.send, TRUSTED, [{ text: 'hi', maxTokens: 1e9 }]],
    [CHANNELS.send, TRUSTED, [42]],
    [CHANNELS.send, TRUSTED, ['   ']],
    [CHANNELS.send, TRUSTED, ['x'.repeat(LIMITS.messageChars + 1)]],
    [CHANNELS.send, TRUSTED, ['hi', 'extra']],
    [CHANNELS.stop, TRUSTED, ['1']],
    [CHANNELS.stop, TRUSTED, [0]],
    [CHANNELS.stop, TRUSTED, [1.5]],
    [CHANNELS.newChat, TRUSTED, ['everything']],
    [CHANNELS.history, TRUSTED, [1]],
  ];
  const expectRejected = async (cases: [string, InvokeEvent, unknown[]][]): Promise<void> => {
    for (const [channel, event, args] of cases) {
      await assert.rejects(
        ipc.call(channel, event, ...args),
        Error,
        `${channel} ${JSON.stringify(args).slice(0, 80)} was accepted`,
      );
    }
  };
  await expectRejected(rejected);
  assert.deepEqual(await ipc.call(CHANNELS.history, TRUSTED), [], 'no chat before the model is loaded');
  assert.deepEqual(await ipc.call(CHANNELS.loadDefaultModel, TRUSTED), { state: 'ready', modelName: 'm' });
  assert.deepEqual(
    events.map((e) => (e.type === 'model' ? e.model : e)),
    [
      { state: 'loading', progress: 0 },
      { state: 'loading', progress: 0.5 },
      { state: 'loading', progress: 1 },
      { state: 'ready', modelName: 'm' },
    ],
  );
  assert.deepEqual(calls, ['createSession {"modelId":"m","systemPrompt":"be nice"}']);
  await expectRejected(rejectedOnceLoaded);
  assert.equal(sent.length, 0, 'nothing invalid reached the session');

  assert.equal(await ipc.call(CHANNELS.send, TRUSTED, 'hi'), 1);
  assert.deepEqual(
    sent.map(([text]) => text),
    ['hi'],
  );
  assert.equal((sent[0]?.[1] as { maxTokens: number }).maxTokens, 8, 'sampling comes from main, not the page');
  assert.equal(await ipc.call(CHANNELS.stop, TRUSTED, 99), false);
  assert.deepEqual(await ipc.call(CHANNELS.history, TRUSTED), [{ role: 'user', content: 'hi' }]);
  assert.equal(await ipc.call(CHANNELS.newChat, TRUSTED), undefined);
  unregister();
  assert.deepEqual(calls.slice(1), ['reset', 'close']);
});

test('one reply streams at a time: a send while one streams is refused, and taken once it ends', async () => {
  const ipc = fakeIpcMain();
  let finish = (): void => {};
  const sent: string[] = [];
  const session = {
    promptStream: async (text: string) => {
      sent.push(text);
      await new Promise<void>((resolve) => (finish = resolve));
      return FINISHED_REPLY;
    },
    reset: async () => ({}) as never,
    getHistory: async () => [] as never,
    close: async () => true,
  };
  const service = {
    loadModel: async () => ({ modelId: 'm' }) as never,
    createSession: async () => session,
  };
  const unregister = registerForTheAppPage(ipc, service, () => {});
  await ipc.call(CHANNELS.loadDefaultModel, TRUSTED);
  assert.equal(await ipc.call(CHANNELS.send, TRUSTED, 'one'), 1);
  await assert.rejects(ipc.call(CHANNELS.send, TRUSTED, 'two'), /still streaming/);
  finish();
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.equal(await ipc.call(CHANNELS.send, TRUSTED, 'three'), 2);
  finish();
  assert.deepEqual(sent, ['one', 'three']);
  unregister();
});
