/**
 * Crash reports people can read: what the client keeps of a dead sidecar's stderr (without a load's
 * metadata dump), the one-line message (the signal or exit code, and llama.cpp's last error line),
 * and the capped `details`. On the sidecar's real stderr: test/fixtures/crash-stderr.txt was
 * recorded from `python -m sidecar --log-level debug` loading SmolLM2-135M, then killed with SIGSEGV
 * (2,122 lines; each run of one llama.cpp function's lines cut to its first six), and a fake sidecar
 * replays it and dies the same way; the error lines below are a truncated model's, and ggml_abort's.
 */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { type ExitInfo, LLMServiceError } from '../client/src/index.js';
import { sidecarExitedError } from '../client/src/errors.js';
import { llamaErrorText, MAX_DETAILS_CHARS, StderrTail } from '../client/src/stderr-tail.js';
import { fakeService } from './helpers/fake-service.js';
import { PACKAGE_DIR } from './helpers/sidecar.js';

const RECORDED = readFileSync(path.join(PACKAGE_DIR, 'test', 'fixtures', 'crash-stderr.txt'), 'utf8')
  .split('\n')
  .filter((line) => line !== '');

function tailOf(lines: readonly string[], keep = 40): ReturnType<StderrTail['snapshot']> {
  const tail = new StderrTail(keep);
  for (const line of lines) tail.push(line);
  return tail.snapshot();
}

test('the recorded stderr has the dump this is about: metadata keys, print_info, the chat template', () => {
  assert.ok(RECORDED.filter((line) => line.includes('llama_model_loader: - kv')).length > 10);
  assert.ok(RECORDED.some((line) => line.includes('print_info: ')));
  assert.ok(RECORDED.some((line) => line.includes('Using gguf chat template: ')));
});

test('the tail keeps what is worth reading and leaves out the metadata dump and the chat template', () => {
  const { stderrTail } = tailOf(RECORDED, 1000);
  assert.ok(stderrTail.length > 0);
  for (const line of stderrTail) {
    assert.doesNotMatch(
      line,
      /llama_model_loader: - (kv|type) |print_info: |Model metadata: |chat template|<\|im_start\|>/,
    );
  }
  // What is not the dump stays, in order.
  const kept = RECORDED.filter((line) => stderrTail.includes(line));
  assert.deepEqual(kept, stderrTail);
  assert.ok(stderrTail.some((line) => /sidecar INFO sidecar\.\w+: /.test(line)));
});

/** What the sidecar wrote when it failed to load a truncated model (an error response; it lived on). */
const TRUNCATED_LOAD = [
  'sidecar INFO sidecar.methods: initialized by x ',
  'sidecar INFO sidecar.llama: llama.cpp CPU backend: zen4 (portable build), buffer types CPU_REPACK',
  "sidecar ERROR sidecar.llama: llama_model_load: error loading model: tensor 'blk.0.ffn_gate.weight' data is not within the file bounds, model is corrupted or incomplete",
  'sidecar ERROR sidecar.llama: llama_model_load_from_file_impl: failed to load model',
];
/** ggml_abort's first line (a gdb backtrace and SIGABRT follow). */
const ABORT_LINE = '/tmp/build/vendor/llama.cpp/ggml/src/ggml.c:1234: GGML_ASSERT(a->ne[0] == b->ne[0]) failed';

test("llama.cpp's error lines: its logged errors and a native abort, never another logger's", () => {
  assert.equal(llamaErrorText(TRUNCATED_LOAD[3] ?? ''), 'llama_model_load_from_file_impl: failed to load model');
  assert.equal(llamaErrorText(ABORT_LINE), 'ggml.c:1234: GGML_ASSERT(a->ne[0] == b->ne[0]) failed');
  assert.equal(llamaErrorText('sidecar ERROR sidecar.server: something else'), undefined);
  assert.equal(llamaErrorText('sidecar WARNING sidecar.llama: a warning'), undefined);
  assert.equal(llamaErrorText('  File "x.py", line 3, in <module>'), undefined);
});

test('the last llama.cpp error is kept past the tail, and forgotten once it is old', () => {
  const error = 'sidecar ERROR sidecar.llama: ggml_aligned_malloc: insufficient memory';
  const noise = Array.from({ length: 60 }, (_, i) => `backtrace line ${i}`);
  const recent = tailOf([error, ...noise], 10);
  assert.equal(recent.lastLlamaError, 'ggml_aligned_malloc: insufficient memory');
  assert.equal(recent.stderrTail.length, 10);
  const old = tailOf([error, ...Array.from({ length: 500 }, (_, i) => `line ${i}`)]);
  assert.equal(old.lastLlamaError, undefined);
});

test('a template print ends at the next print, at another logger or at a plain line', () => {
  const { stderrTail } = tailOf([
    'sidecar INFO sidecar.stderr: Using gguf chat template: {% for m in messages %}',
    'sidecar INFO sidecar.stderr: {{ m.content }}',
    'sidecar INFO sidecar.stderr: {% endfor %}',
    'sidecar INFO sidecar.stderr: Using chat eos_token: </s>',
    'sidecar INFO sidecar.stderr: Llama.generate: 3 prefix-match hit',
    'sidecar DEBUG sidecar.stderr: Using gguf chat template: {{ x }}',
    'Segmentation fault',
  ]);
  assert.deepEqual(stderrTail, [
    'sidecar INFO sidecar.stderr: Llama.generate: 3 prefix-match hit',
    'Segmentation fault',
  ]);
});

test('the message names the signal and the last llama.cpp error; the details have the lines before it', () => {
  const killed = sidecarExitedError({ exitCode: null, signal: 'SIGKILL', ...tailOf(TRUNCATED_LOAD) });
  assert.equal(
    killed.message,
    'The sidecar exited unexpectedly (signal SIGKILL). llama.cpp: llama_model_load_from_file_impl: failed to load model',
  );
  assert.equal(killed.details, TRUNCATED_LOAD.join('\n'));
  const aborted = sidecarExitedError({
    exitCode: null,
    signal: 'SIGABRT',
    ...tailOf([ABORT_LINE, '#0  0x00007fa9 in wait4 ()']),
  });
  assert.equal(
    aborted.message,
    'The sidecar exited unexpectedly (signal SIGABRT). llama.cpp: ggml.c:1234: GGML_ASSERT(a->ne[0] == b->ne[0]) failed',
  );
});

test('the message is one short line; the tail goes to details, capped', () => {
  const line = 'x'.repeat(2000);
  const info: ExitInfo = {
    exitCode: null,
    signal: 'SIGSEGV',
    stderrTail: Array.from({ length: 40 }, (_, i) => `${i} ${line}`),
    lastLlamaError: `GGML_ASSERT(${'y'.repeat(1000)}) failed`,
  };
  const error = sidecarExitedError(info);
  assert.equal(error.code, 'SIDECAR_EXITED');
  assert.doesNotMatch(error.message, /\n/);
  assert.match(error.message, /^The sidecar exited unexpectedly \(signal SIGSEGV\)\. llama\.cpp: GGML_ASSERT\(y+…$/);
  assert.ok(error.message.length < 400, `${error.message.length} characters`);
  assert.deepEqual(error.data, info);
  const details = error.details ?? '';
  assert.ok(details.length <= MAX_DETAILS_CHARS, `${details.length} characters of details`);
  assert.match(details, /^39 x+…$/m, 'the newest line is kept');
  assert.doesNotMatch(details, /^0 /m, 'the oldest lines go first');

  const plain = sidecarExitedError({ exitCode: 3, signal: null, stderrTail: [] });
  assert.equal(plain.message, 'The sidecar exited unexpectedly (exit code 3).');
  assert.equal(plain.details, undefined);
});

test('a sidecar killed by SIGSEGV right after a load: pending calls get the short message and the details', async () => {
  const { service } = fakeService('crash-on-load');
  try {
    const error: unknown = await service.loadModel('/fake.gguf').catch((reason: unknown) => reason);
    assert.ok(error instanceof LLMServiceError, String(error));
    assert.equal(error.code, 'SIDECAR_EXITED');
    assert.equal(error.message, 'The sidecar exited unexpectedly (signal SIGSEGV).');
    assert.equal((error.data as ExitInfo).signal, 'SIGSEGV');
    const details = error.details ?? '';
    assert.ok(details.split('\n').length <= 40);
    assert.doesNotMatch(details, /llama_model_loader: - kv|print_info: |chat template/);
    assert.match(details, /sidecar INFO /);
  } finally {
    await service.dispose();
  }
});
