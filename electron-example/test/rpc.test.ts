/** The JSON-RPC layer over an in-memory transport: correlation, routing, timeouts, cancel, exit. */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  CancelTimeoutError,
  LLMServiceError,
  RpcConnection,
  type StreamChunkParams,
  StreamIdleTimeoutError,
  WorkerTimeoutError,
} from '../client/src/index.js';
import { MemoryTransport } from './helpers/memory-transport.js';

const quiet = (): void => {};

async function connected(): Promise<{ transport: MemoryTransport; rpc: RpcConnection }> {
  const transport = new MemoryTransport();
  await transport.start();
  return { transport, rpc: new RpcConnection(transport, quiet) };
}

const chunk = (requestId: number, index: number, content: string, isFinal = false): unknown => ({
  jsonrpc: '2.0',
  method: 'streamChunk',
  params: { requestId, index, content, isFinal, timestamp: 0, ...(isFinal ? { finishReason: 'stop' } : {}) },
});

test('responses settle their own requests, in any order, batches included', async () => {
  const { transport, rpc } = await connected();
  const first = rpc.request('ping', {});
  const second = rpc.request('listModels', {});
  const third = rpc.request('ping', {});
  const [a, b, c] = transport.sent.map((m) => m['id']);
  transport.deliver({ jsonrpc: '2.0', id: b, result: { models: [] } });
  transport.deliver([
    { jsonrpc: '2.0', id: c, result: { n: 3 } },
    { jsonrpc: '2.0', id: a, result: { n: 1 } },
  ]);
  assert.deepEqual(await Promise.all([first, second, third]), [{ n: 1 }, { models: [] }, { n: 3 }]);
});

test('an error response rejects with the numeric code and data', async () => {
  const { transport, rpc } = await connected();
  const call = rpc.request('loadModel', { modelPath: '/nope' });
  const id = transport.sent[0]?.['id'];
  transport.deliver({ jsonrpc: '2.0', id, error: { code: -32001, message: 'no file', data: { modelPath: '/nope' } } });
  await assert.rejects(call, (error: unknown) => {
    assert.ok(error instanceof LLMServiceError);
    assert.equal(error.code, -32001);
    assert.equal(error.fromSidecar, true);
    assert.deepEqual(error.data, { modelPath: '/nope' });
    return true;
  });
});

test('interleaved streams each get only their own chunks; unknown ids are dropped', async () => {
  const { transport, rpc } = await connected();
  const seen: Record<string, string[]> = { a: [], b: [] };
  const content = (params: Record<string, unknown>): string => (params as unknown as StreamChunkParams).content;
  const a = rpc.request('promptStream', {}, { onNotification: (_m, params) => seen['a']?.push(content(params)) });
  const b = rpc.request('promptStream', {}, { onNotification: (_m, params) => seen['b']?.push(content(params)) });
  const [idA, idB] = transport.sent.map((m) => m['id'] as number) as [number, number];
  transport.deliver(chunk(idA, 0, 'a0'));
  transport.deliver(chunk(idB, 0, 'b0'));
  transport.deliver(chunk(999, 0, 'stray'));
  transport.deliver(chunk(idA, 1, '', true));
  transport.deliver(chunk(idB, 1, 'b1'));
  transport.deliver({ jsonrpc: '2.0', id: idA, result: 'A' });
  transport.deliver(chunk(idB, 2, '', true));
  transport.deliver({ jsonrpc: '2.0', id: idB, result: 'B' });
  assert.deepEqual(await Promise.all([a, b]), ['A', 'B']);
  assert.deepEqual(seen, { a: ['a0', ''], b: ['b0', 'b1', ''] });
});

test('any notification naming a pending request goes to its handler, whatever the method', async () => {
  const { transport, rpc } = await connected();
  const seen: [string, unknown][] = [];
  const call = rpc.request('downloadModel', {}, { onNotification: (method, params) => seen.push([method, params]) });
  const id = transport.sent[0]?.['id'] as number;
  const progress = (bytes: number): unknown => ({
    jsonrpc: '2.0',
    method: 'downloadProgress',
    params: { requestId: id, bytes, total: 10, bytesPerSecond: 5 },
  });
  transport.deliver(progress(4));
  transport.deliver({ jsonrpc: '2.0', method: 'somethingNewer', params: { requestId: id, n: 1 } });
  transport.deliver({ jsonrpc: '2.0', method: 'downloadProgress', params: { requestId: id + 1, bytes: 1 } });
  transport.deliver({ jsonrpc: '2.0', method: 'downloadProgress', params: { bytes: 1 } });
  transport.deliver({ jsonrpc: '2.0', method: 'downloadProgress' });
  transport.deliver(progress(10));
  transport.deliver({ jsonrpc: '2.0', id, result: { complete: true } });
  transport.deliver(progress(11)); // after the response: the call is settled, nothing more arrives
  assert.deepEqual(await call, { complete: true });
  assert.deepEqual(seen, [
    ['downloadProgress', { requestId: id, bytes: 4, total: 10, bytesPerSecond: 5 }],
    ['somethingNewer', { requestId: id, n: 1 }],
    ['downloadProgress', { requestId: id, bytes: 10, total: 10, bytesPerSecond: 5 }],
  ]);
});

test('a timeout rejects with WorkerTimeoutError, cancels the request, and ignores the late answer', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { transport, rpc } = await connected();
  const call = rpc.request('prompt', {}, { timeoutMs: 20 });
  t.mock.timers.tick(20);
  await assert.rejects(call, WorkerTimeoutError);
  const id = transport.sent[0]?.['id'];
  assert.deepEqual(
    transport.requests('cancel').map((m) => m['params']),
    [{ requestId: id }],
  );
  assert.equal('id' in (transport.requests('cancel')[0] ?? {}), false, 'cancel goes as a notification');
  transport.deliver({ jsonrpc: '2.0', id, result: 'late' });
});

test('the first-chunk timeout stops counting at the first chunk', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { transport, rpc } = await connected();
  const silent = rpc.request('promptStream', {}, { firstChunkTimeoutMs: 20, onNotification: quiet });
  t.mock.timers.tick(20);
  await assert.rejects(silent, /sent no first chunk within 20 ms/);
  const talking = rpc.request('promptStream', {}, { firstChunkTimeoutMs: 30, onNotification: quiet });
  const id = transport.sent.at(-1)?.['id'] as number;
  transport.deliver(chunk(id, 0, 'x'));
  t.mock.timers.tick(1000); // far past the timeout: nothing may fire
  transport.deliver({ jsonrpc: '2.0', id, result: 'done' });
  assert.equal(await talking, 'done');
});

test('the idle timeout: each chunk starts it again; none within it after one rejects with StreamIdleTimeoutError and cancels', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { transport, rpc } = await connected();
  const options = { idleTimeoutMs: 50, callName: 'prompt', onNotification: quiet };
  const call = rpc.request('promptStream', {}, options);
  const id = transport.sent[0]?.['id'] as number;
  t.mock.timers.tick(1000); // no chunk yet: the first-chunk timeout's business, unset here
  for (let index = 0; index < 3; index++) {
    transport.deliver(chunk(id, index, 'x'));
    t.mock.timers.tick(49);
  }
  assert.equal(transport.requests('cancel').length, 0, 'chunks kept coming');
  t.mock.timers.tick(1);
  await assert.rejects(call, (error: unknown) => {
    assert.ok(error instanceof StreamIdleTimeoutError && error.code === 'TIMEOUT', String(error));
    assert.equal(error.message, 'prompt stalled: no chunk within 50 ms of the one before.');
    return true;
  });
  assert.deepEqual(
    transport.requests('cancel').map((m) => m['params']),
    [{ requestId: id }],
  );
  // An abort stops it: from then on the cancel grace bounds the wait.
  const controller = new AbortController();
  const cancelled = rpc.request('promptStream', {}, { ...options, signal: controller.signal, cancelGraceMs: Infinity });
  const second = transport.sent.at(-1)?.['id'] as number;
  transport.deliver(chunk(second, 0, 'x'));
  controller.abort();
  t.mock.timers.tick(1_000_000);
  transport.deliver({ jsonrpc: '2.0', id: second, result: { finishReason: 'cancelled' } });
  assert.deepEqual(await cancelled, { finishReason: 'cancelled' });
});

test('callName names the call in its errors', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { rpc } = await connected();
  const silent = rpc.request(
    'promptStream',
    {},
    { firstChunkTimeoutMs: 20, callName: 'prompt', onNotification: quiet },
  );
  t.mock.timers.tick(20);
  await assert.rejects(silent, { message: 'prompt sent no first chunk within 20 ms.' });
  const aborted = rpc.request('promptStream', {}, { signal: AbortSignal.abort(), callName: 'promptWithResult' });
  await assert.rejects(aborted, { code: 'ABORTED', message: 'promptWithResult was aborted before it was sent.' });
});

test('an abort sends cancel and still settles with the response', async () => {
  const { transport, rpc } = await connected();
  const controller = new AbortController();
  const call = rpc.request('promptStream', {}, { signal: controller.signal, onNotification: quiet });
  const id = transport.sent[0]?.['id'];
  controller.abort();
  assert.deepEqual(
    transport.requests('cancel').map((m) => m['params']),
    [{ requestId: id }],
  );
  transport.deliver({ jsonrpc: '2.0', id, result: { finishReason: 'cancelled' } });
  assert.deepEqual(await call, { finishReason: 'cancelled' });
});

test('an abort whose cancel gets no answer rejects with CancelTimeoutError after the grace time', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { transport, rpc } = await connected();
  const controller = new AbortController();
  const call = rpc.request('promptStream', {}, { signal: controller.signal, cancelGraceMs: 50, onNotification: quiet });
  let settled = false;
  void call.catch(() => (settled = true));
  t.mock.timers.tick(10_000); // before the abort, no grace runs
  controller.abort();
  t.mock.timers.tick(49);
  await Promise.resolve();
  assert.equal(settled, false);
  t.mock.timers.tick(1);
  await assert.rejects(call, (error: unknown) => {
    assert.ok(error instanceof CancelTimeoutError);
    assert.equal(error.code, 'TIMEOUT');
    assert.equal(
      error.message,
      'promptStream was cancelled, but the sidecar did not answer within 50 ms of the cancel.',
    );
    return true;
  });
  assert.equal(transport.requests('cancel').length, 1, 'one cancel, not a second one at the grace');
});

test('an abort stops the first-chunk timeout (a cancelled call is never retried); Infinity waits as long as it takes', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { transport, rpc } = await connected();
  const controller = new AbortController();
  const options = {
    signal: controller.signal,
    firstChunkTimeoutMs: 20,
    cancelGraceMs: Infinity,
    onNotification: quiet,
  };
  const call = rpc.request('promptStream', {}, options);
  controller.abort();
  t.mock.timers.tick(1_000_000);
  transport.deliver({ jsonrpc: '2.0', id: transport.sent[0]?.['id'], result: { finishReason: 'cancelled' } });
  assert.deepEqual(await call, { finishReason: 'cancelled' });
});

test('an already-aborted signal rejects with ABORTED and sends nothing', async () => {
  const { transport, rpc } = await connected();
  await assert.rejects(rpc.request('prompt', {}, { signal: AbortSignal.abort() }), { code: 'ABORTED' });
  assert.equal(transport.sent.length, 0);
});

test('an exit rejects every pending call at once with SIDECAR_EXITED, the stderr tail as details', async () => {
  const { transport, rpc } = await connected();
  const calls = [rpc.request('prompt', {}), rpc.request('promptStream', {}, { onNotification: quiet })];
  transport.exit({ exitCode: null, signal: 'SIGKILL', stderrTail: ['last words'] });
  for (const call of calls) {
    await assert.rejects(call, (error: unknown) => {
      assert.ok(error instanceof LLMServiceError);
      assert.equal(error.code, 'SIDECAR_EXITED');
      assert.equal(error.message, 'The sidecar exited unexpectedly (signal SIGKILL).');
      assert.equal(error.details, 'last words');
      assert.deepEqual(error.data, { exitCode: null, signal: 'SIGKILL', stderrTail: ['last words'] });
      return true;
    });
  }
  await assert.rejects(rpc.request('ping', {}), { code: 'SIDECAR_EXITED' });
  assert.deepEqual(await rpc.closed, {
    expected: false,
    exit: { exitCode: null, signal: 'SIGKILL', stderrTail: ['last words'] },
  });
});

test('a requested close rejects pending calls with CLOSED', async () => {
  const { transport, rpc } = await connected();
  const call = rpc.request('prompt', {});
  await transport.close();
  await assert.rejects(call, { code: 'CLOSED' });
});

test('a throwing chunk callback rejects the call with its own error and cancels the stream', async () => {
  const { transport, rpc } = await connected();
  const call = rpc.request(
    'promptStream',
    {},
    {
      onNotification: () => {
        throw new RangeError('callback failed');
      },
    },
  );
  const id = transport.sent[0]?.['id'] as number;
  transport.deliver(chunk(id, 0, 'x'));
  await assert.rejects(call, RangeError);
  assert.equal(transport.requests('cancel').length, 1);
});

test('a response with neither result nor error rejects with PROTOCOL_ERROR', async () => {
  const { transport, rpc } = await connected();
  const call = rpc.request('ping', {});
  transport.deliver({ jsonrpc: '2.0', id: transport.sent[0]?.['id'] });
  await assert.rejects(call, { code: 'PROTOCOL_ERROR' });
});
