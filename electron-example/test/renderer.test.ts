/**
 * The renderer page in headless Chromium (Debian's `chromium`, driven by
 * playwright-core), with Electron replaced by a bridge: the built preload runs
 * in the page against a stand-in `ipcRenderer` whose `invoke` reaches main's
 * real IPC handlers (ipc.ts) in this process, and whose events come from them.
 * Behind those handlers is a real LlmService, sidecar and tiny model, and a
 * chat session per page. Skipped,
 * saying why, when Chromium is not installed.
 */

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { type Browser, chromium, type Page } from 'playwright-core';

import { LlmService } from '../client/src/index.js';
import { CHANNELS, type LlmIpcOptions, registerLlmIpc } from '../src/ipc.js';
import { fakeService } from './helpers/fake-service.js';
import { fakeIpcMain } from './helpers/ipc.js';
import {
  devSidecarCommand,
  PACKAGE_DIR,
  recordingLogger,
  tempDir,
  TEST_LOAD,
  writeTinyModel,
} from './helpers/sidecar.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
];
const RENDERER_DIR = path.join(PACKAGE_DIR, 'dist', 'renderer');
const TYPES: Readonly<Record<string, string>> = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };
const WAIT = { timeout: 30_000 };

/** Records, from before the page's script runs, every change of the load progress bar's value and visibility. */
const PROGRESS_RECORDER = `(() => {
  const seen = [];
  Object.defineProperty(window, '__progress', { value: seen });
  new MutationObserver((records) => {
    for (const record of records) {
      if (record.target.id !== 'load-progress') continue;
      seen.push({ value: record.target.getAttribute('value'), hidden: record.target.hidden });
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ['value', 'hidden'] });
})();`;

interface ProgressChange {
  readonly value: string | null;
  readonly hidden: boolean;
}

/** The turns the page shows, in order. */
async function shownTurns(page: Page): Promise<{ role: string; content: string }[]> {
  return page.$$eval('.turn', (bubbles) =>
    bubbles.map((bubble) => ({
      role: bubble.classList.contains('user') ? 'user' : 'assistant',
      content: bubble.textContent ?? '',
    })),
  );
}

/** Send `text` from the page and wait for its reply's stats line. */
async function sendAndWait(page: Page, text: string): Promise<void> {
  await page.fill('#prompt', text);
  await page.click('#send');
  await page.waitForFunction(
    () => document.getElementById('stats')?.textContent?.includes('tokens/s'),
    undefined,
    WAIT,
  );
}

const skip = existsSync(CHROMIUM)
  ? false
  : `Chromium not found at ${CHROMIUM}: install Debian's package (apt-get install -y chromium) or set CHROMIUM_PATH`;

/** What Electron gives a sandboxed preload, built from the page's side: the preload's ipcRenderer calls reach `window.__invoke`. */
function electronStandIn(preloadSource: string): string {
  return `(() => {
    const listeners = new Map();
    const ipcRenderer = {
      invoke: (channel, ...args) => window.__invoke(channel, args),
      on: (channel, listener) => (listeners.get(channel) ?? listeners.set(channel, new Set()).get(channel)).add(listener),
      removeListener: (channel, listener) => listeners.get(channel)?.delete(listener),
    };
    const contextBridge = { exposeInMainWorld: (name, api) => Object.defineProperty(window, name, { value: Object.freeze({ ...api }) }) };
    Object.defineProperty(window, '__deliver', {
      value: (channel, payload) => { for (const listener of listeners.get(channel) ?? []) listener({}, payload); },
    });
    const require = (name) => {
      if (name === 'electron') return { contextBridge, ipcRenderer };
      throw new Error('module not found: ' + name);
    };
    const exports = {};
    (function (require, process, exports, module) {\n${preloadSource}\n})(require, {}, exports, { exports });
  })();`;
}

function serveRenderer(): Promise<Server> {
  const server = createServer((request, response) => {
    const file = path.join(
      RENDERER_DIR,
      path.basename(new URL(request.url ?? '/', 'http://x').pathname) || 'index.html',
    );
    const type = TYPES[path.extname(file)];
    if (type === undefined || !existsSync(file)) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': type }).end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

// The skip goes on each test (not the suite) so that the runner's summary counts them as skipped.
describe('the chat page in headless Chromium, driving the real client', () => {
  const models = tempDir();
  const { logger } = recordingLogger();
  const service = new LlmService({ sidecar: devSidecarCommand(), logger });
  let model: string;
  let server: Server;
  let browser: Browser;
  let pageUrl: string;

  before(async () => {
    if (skip) return;
    assert.ok(existsSync(path.join(RENDERER_DIR, 'renderer.js')), 'run `npm run build` first (npm test does)');
    // Wider than the default tiny model: a few hundred tokens/s, so Stop lands mid-stream.
    [model, server, browser] = await Promise.all([
      writeTinyModel(models.dir, 'chat', ['--hidden', '384', '--layers', '6']),
      serveRenderer(),
      chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 30_000 }),
    ]);
    pageUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/index.html`;
  });
  after(async () => {
    await browser?.close();
    server?.close();
    await service.dispose();
    models.remove();
  });

  /** A page whose window.llm is the real preload over main's real IPC handlers, on `llm` loading `load`. */
  async function openPage(
    sampling: LlmIpcOptions['sampling'],
    llm: LlmIpcOptions['service'] = service,
    load: LlmIpcOptions['model'] = { modelPath: model, ...TEST_LOAD },
  ): Promise<Page> {
    const page = await browser.newPage();
    const ipc = fakeIpcMain();
    let delivered = Promise.resolve();
    registerLlmIpc(ipc, {
      service: llm,
      model: load,
      sampling,
      // One after another, so the page sees events in the order main sent them.
      emit: (event) => {
        delivered = delivered
          .then(() =>
            page.evaluate(
              ([channel, payload]) =>
                (window as unknown as { __deliver: (c: string, p: unknown) => void }).__deliver(channel, payload),
              [CHANNELS.event, event] as const,
            ),
          )
          .catch(() => undefined);
      },
      isTrustedSender: (event) => event.senderFrame?.url === pageUrl,
    });
    await page.exposeFunction('__invoke', (channel: string, args: unknown[]) =>
      ipc.call(channel, { senderFrame: { url: pageUrl } }, ...args),
    );
    await page.addInitScript({
      content: electronStandIn(readFileSync(path.join(PACKAGE_DIR, 'dist', 'preload.cjs'), 'utf8')),
    });
    await page.addInitScript({ content: PROGRESS_RECORDER });
    await page.goto(pageUrl);
    return page;
  }

  /** `openPage` on the tiny model, once the model is ready. */
  async function openChat(sampling: LlmIpcOptions['sampling']): Promise<Page> {
    const page = await openPage(sampling);
    await page.waitForSelector('#model-state[data-state="ready"]', WAIT);
    return page;
  }

  test(
    'the page shows a progress bar while the model loads, then the reply as it streams, then tokens/s',
    { skip },
    async () => {
      const sampling = { maxTokens: 40, temperature: 0, seed: 1 };
      const page = await openChat(sampling);
      assert.match((await page.textContent('#model-state')) ?? '', /Ready: tiny-random-llama/);
      // The first page loads the model: the bar showed, rose to 1, then hid.
      const progress = await page.evaluate(() => (window as unknown as { __progress: ProgressChange[] }).__progress);
      const values = progress.flatMap((change) => (change.value === null ? [] : [Number(change.value)]));
      assert.ok(
        progress.some((change) => !change.hidden),
        `the bar was shown: ${JSON.stringify(progress)}`,
      );
      assert.deepEqual(
        values,
        [...values].sort((a, b) => a - b),
        'the bar only moves forward',
      );
      assert.equal(values.at(-1), 1, `the bar reached 1: ${JSON.stringify(progress)}`);
      assert.equal(await page.isHidden('#load-progress'), true, 'the bar hides once the model is ready');

      await page.evaluate(() => {
        const seen: number[] = [];
        Object.assign(window, { seenLengths: seen });
        new MutationObserver(() =>
          seen.push(document.querySelector('.turn.assistant')?.textContent?.length ?? 0),
        ).observe(document.getElementById('transcript') as Node, {
          subtree: true,
          childList: true,
          characterData: true,
        });
      });
      await sendAndWait(page, 'hello there');

      const shown = await page.textContent('.turn.assistant');
      const expected = await service.prompt('hello there', sampling);
      assert.equal(shown, expected, 'the page shows exactly the reply');
      const lengths = await page.evaluate(() => (window as unknown as { seenLengths: number[] }).seenLengths);
      assert.ok(new Set(lengths.filter((n) => n > 0)).size > 1, `the text grew in steps: ${lengths.join(',')}`);
      assert.match(
        (await page.textContent('#stats')) ?? '',
        /^40 tokens · [\d.]+ tokens\/s · first token \d+ ms · length$/,
      );
      assert.equal(await page.isDisabled('#stop'), true);
      assert.equal(await page.isEnabled('#send'), true);
      await page.close();
    },
  );

  test('a second message continues the chat: main keeps the conversation, as the page shows it', { skip }, async () => {
    const page = await openChat({ maxTokens: 12, temperature: 0, seed: 1 });
    await sendAndWait(page, 'hello there');
    await sendAndWait(page, 'and what then?');
    const turns = await shownTurns(page);
    assert.deepEqual(
      turns.map((turn) => turn.role),
      ['user', 'assistant', 'user', 'assistant'],
    );
    assert.deepEqual(
      turns.filter((turn) => turn.role === 'user').map((turn) => turn.content),
      ['hello there', 'and what then?'],
    );
    assert.ok(turns.every((turn) => turn.content.length > 0));
    // The chat main keeps (the session's history) is exactly what the page shows.
    assert.deepEqual(await page.evaluate(() => window.llm.history()), turns);
    await page.close();
  });

  test('New chat clears the page and the conversation; the next message starts afresh', { skip }, async () => {
    const page = await openChat({ maxTokens: 6, temperature: 0, seed: 1 });
    await sendAndWait(page, 'first chat');
    await page.click('#new-chat');
    await page.waitForFunction(() => document.querySelectorAll('.turn').length === 0, undefined, WAIT);
    assert.deepEqual(await page.evaluate(() => window.llm.history()), []);
    assert.equal(await page.textContent('#stats'), '');
    await sendAndWait(page, 'second chat');
    const turns = await shownTurns(page);
    assert.deepEqual(turns.map((turn) => turn.content).slice(0, 1), ['second chat']);
    assert.deepEqual(await page.evaluate(() => window.llm.history()), turns);
    await page.close();
  });

  test('Stop ends the stream mid-way: the reply keeps its text and says "cancelled"', { skip }, async () => {
    const page = await openChat({ maxTokens: 2000, temperature: 0 });
    await page.fill('#prompt', 'tell me a long story');
    await page.click('#send');
    await page.waitForFunction(
      () => {
        const text = document.querySelector('.turn.assistant')?.textContent ?? '';
        return text.length > 0 && !(document.getElementById('stop') as HTMLButtonElement).disabled;
      },
      undefined,
      WAIT,
    );
    await page.click('#stop');
    await page.waitForFunction(
      () => document.getElementById('stats')?.textContent?.endsWith('cancelled'),
      undefined,
      WAIT,
    );
    const tokens = Number(/^(\d+) tokens/.exec((await page.textContent('#stats')) ?? '')?.[1]);
    assert.ok(tokens > 0 && tokens < 1500, `stopped after ${tokens} tokens`);
    assert.ok(((await page.textContent('.turn.assistant')) ?? '').length > 0);
    assert.equal(await page.isDisabled('#stop'), true);
    // The chat keeps the stopped reply as far as the page shows it.
    assert.deepEqual(await page.evaluate(() => window.llm.history()), await shownTurns(page));
    await page.close();
  });

  test('after a reload the page still shows the loaded model and the conversation', { skip }, async () => {
    const page = await openChat({ maxTokens: 4, temperature: 0, seed: 1 });
    await sendAndWait(page, 'remember me');
    const before = await shownTurns(page);
    await page.reload();
    await page.waitForSelector('#model-state[data-state="ready"]', WAIT);
    await page.waitForFunction(() => document.querySelectorAll('.turn').length === 2, undefined, WAIT);
    assert.deepEqual(await shownTurns(page), before);
    assert.equal(await page.isEnabled('#send'), true);
    await page.close();
  });

  test('the page has no require or process, only window.llm, and its CSP blocks inline script', { skip }, async () => {
    const page = await openChat({ maxTokens: 1 });
    const globals = await page.evaluate(() => ({
      require: typeof (window as unknown as { require?: unknown }).require,
      process: typeof (window as unknown as { process?: unknown }).process,
      module: typeof (window as unknown as { module?: unknown }).module,
      llm: Object.keys(window.llm).sort(),
    }));
    assert.deepEqual(globals, {
      require: 'undefined',
      process: 'undefined',
      module: 'undefined',
      llm: ['history', 'loadDefaultModel', 'newChat', 'onEvent', 'send', 'stop'],
    });
    const violated = await page.evaluate(
      () =>
        new Promise<string>((resolve) => {
          document.addEventListener('securitypolicyviolation', (event) => resolve(event.violatedDirective), {
            once: true,
          });
          const script = document.createElement('script');
          script.textContent = 'window.inlineRan = true';
          document.body.append(script);
        }),
    );
    assert.match(violated, /^script-src/);
    assert.equal(await page.evaluate(() => 'inlineRan' in window), false);
    await page.close();
  });

  test(
    'a sidecar that dies during the load: one line in the header, its stderr behind "details"',
    { skip },
    async () => {
      const crashing = fakeService('crash-on-load', { restart: { maxRestarts: 0 } }).service;
      try {
        const page = await openPage({ maxTokens: 1 }, crashing, '/fake.gguf');
        await page.waitForSelector('#model-state[data-state="error"]', WAIT);
        const state = page.locator('#model-state');
        assert.equal(await state.textContent(), 'Model error: The sidecar exited unexpectedly (signal SIGSEGV).');
        const box = await state.boundingBox();
        const lineHeight = await state.evaluate((node) => parseFloat(getComputedStyle(node).lineHeight) || 20);
        assert.ok(box !== null && box.height <= lineHeight * 1.5, `one line high: ${JSON.stringify(box)}`);
        // The details: closed at first, the stderr tail (no metadata dump) once opened.
        const details = page.locator('#model-details details');
        assert.equal(await details.count(), 1);
        assert.equal(await details.evaluate((node) => (node as HTMLDetailsElement).open), false);
        assert.equal(await page.locator('#model-details pre').isVisible(), false);
        await page.click('#model-details summary');
        assert.equal(await page.locator('#model-details pre').isVisible(), true);
        const text = (await page.textContent('#model-details pre')) ?? '';
        assert.match(text, /sidecar INFO /);
        assert.doesNotMatch(text, /llama_model_loader: - kv|print_info: |chat template/);
        assert.equal(await page.isEnabled('#load'), true, 'the load can be tried again');
        await page.close();
      } finally {
        await crashing.dispose();
      }
    },
  );
});
