/**
 * Chaos: the real sidecar is SIGKILLed at random points, 100 times, under one `LlmService`.
 *
 * Each iteration starts a few calls (a stream, sometimes a second one, a prompt, listModels,
 * loadModel), then kills the running sidecar: in the same tick (before anything was answered),
 * after a random 0–30 ms (before the first chunk, mid-stream or after completion, depending on
 * where the work is), or once every call has settled. Every call must then settle within 5 s,
 * resolved with a well-formed result or rejected with `SIDECAR_EXITED`, and the next iteration's
 * first call must succeed on a restarted sidecar with the model reloaded. The choices come from
 * a seeded PRNG (`CHAOS_SEED` overrides the seed, which is printed).
 */

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';

import {
  type ExitInfo,
  type GenerationResult,
  type LlmChunk,
  LlmService,
  LLMServiceError,
  type ModelInfo,
} from '../client/src/index.js';
import {
  devSidecarCommand,
  GREEDY,
  recordingLogger,
  running,
  tempDir,
  TEST_LOAD,
  until,
  writeTinyModel,
} from './helpers/sidecar.js';

const SEED = Number(process.env['CHAOS_SEED'] ?? 20_240_601);
const ITERATIONS = 100;
/** How long every call may take to settle once the sidecar was killed. */
const SETTLE_MS = 5_000;
/** Bound of the waits that include a restart (spawn, initialize, reload): generous, the machine may be busy. */
const RESTART_MS = 30_000;
/** The only way a call may fail here: the sidecar it was sent to was killed. */
const EXPECTED_CODES: ReadonlySet<unknown> = new Set(['SIDECAR_EXITED']);

/** mulberry32: a small, seeded, deterministic PRNG. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

type Outcome = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly error: unknown };

/** One call of an iteration: how it settled, and the chunks it got (before and after settling). */
class Tracked {
  readonly chunks: LlmChunk[] = [];
  chunksAfterSettling = 0;
  settled = false;
  readonly outcome: Promise<Outcome>;

  constructor(
    readonly what: string,
    start: (onChunk: (chunk: LlmChunk) => void) => Promise<unknown>,
    /** Asserts what a resolved call returned. */
    readonly check: (value: unknown, label: string) => void,
  ) {
    const onChunk = (chunk: LlmChunk): void => {
      if (this.settled) this.chunksAfterSettling++;
      this.chunks.push(chunk);
    };
    this.outcome = start(onChunk).then(
      (value): Outcome => {
        this.settled = true;
        return { ok: true, value };
      },
      (error: unknown): Outcome => {
        this.settled = true;
        return { ok: false, error };
      },
    );
  }
}

/** `promise`, or a rejection naming `what` once `ms` have passed. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Linux only: this process's children whose command line names the sidecar (undefined without /proc). */
function sidecarChildren(): number[] | undefined {
  const file = `/proc/${process.pid}/task/${process.pid}/children`;
  if (!existsSync(file)) return undefined;
  const pids = readFileSync(file, 'utf8').split(/\s+/).filter(Boolean).map(Number);
  return pids.filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('sidecar');
    } catch {
      return false; // exited meanwhile
    }
  });
}

describe('LlmService when the sidecar is killed at random points', () => {
  const models = tempDir();
  const { logger, entries } = recordingLogger();
  // The default restart policy allows 5 crashes a minute, then fails calls with RESTART_LIMIT
  // for the rest of the minute, and doubles its backoff from 200 ms up to 5 s. This test kills
  // the sidecar 100 times in well under a minute on purpose: it allows that many crashes in the
  // window, and a 5 ms backoff keeps 100 restarts within the test's time.
  const service = new LlmService({
    sidecar: devSidecarCommand(),
    logger,
    restart: { maxRestarts: 10_000, windowMs: 60_000, initialDelayMs: 5, maxDelayMs: 5 },
  });
  let tiny: string;

  before(async () => {
    tiny = await writeTinyModel(models.dir, 'tiny');
    await service.loadModel({ modelPath: tiny, ...TEST_LOAD });
  });
  after(async () => {
    await service.dispose();
    models.remove();
  });

  test(`${ITERATIONS} kills: every call settles, the next call recovers`, { timeout: 300_000 }, async (t) => {
    const random = prng(SEED);
    const int = (low: number, high: number): number => low + Math.floor(random() * (high - low + 1));
    t.diagnostic(`seed ${SEED} (CHAOS_SEED=n replays another)`);
    const started = Date.now();
    const pids = new Set<number>();
    const modes = { 'same tick': 0, 'after 0-30 ms': 0, 'after every call settled': 0 };
    const killPoints = { 'before the first chunk': 0, 'mid-stream': 0, 'after completion': 0 };
    const codes = new Map<unknown, number>();
    let resolved = 0;

    /** The first call after a kill: a 2-token stream, answered by a new sidecar with the model reloaded. */
    const recover = async (where: string): Promise<number> => {
      const reply = service.promptStream('hello', () => {}, { maxTokens: 2, ...GREEDY });
      const result = await within(reply, RESTART_MS, where);
      assert.equal(result.usage.completionTokens, 2, where);
      const pid = service.sidecarPid;
      assert.ok(pid !== undefined, `${where}: a sidecar runs`);
      assert.ok(!pids.has(pid), `${where}: a new sidecar (pid ${pid}) answered`);
      pids.add(pid);
      return pid;
    };
    const isTiny = (model: unknown, label: string): void =>
      assert.equal((model as ModelInfo).modelPath, tiny, `${label}: the tiny model`);
    const stream = (maxTokens: number): Tracked =>
      new Tracked(
        `promptStream(maxTokens ${maxTokens})`,
        (onChunk) => service.promptStream('hello', onChunk, { maxTokens, ...GREEDY }),
        (value, label) => {
          const result = value as GenerationResult;
          assert.equal(result.usage.completionTokens, maxTokens, label);
          assert.equal(result.finishReason, 'length', label);
        },
      );

    let pid = service.sidecarPid;
    assert.ok(pid !== undefined);
    pids.add(pid);
    for (let iteration = 0; iteration < ITERATIONS; iteration++) {
      const where = `iteration ${iteration} (seed ${SEED})`;
      if (iteration > 0) pid = await recover(`${where}: the first call after the kill`);
      const victim: number = pid;

      const main = stream(int(1, 200));
      const calls = [main];
      if (random() < 0.25) calls.push(stream(int(1, 200)));
      if (random() < 0.3) {
        const maxTokens = int(1, 50);
        const check = (value: unknown, label: string): void => assert.equal(typeof value, 'string', label);
        calls.push(new Tracked(`prompt(maxTokens ${maxTokens})`, () => service.prompt('hi', { maxTokens }), check));
      }
      if (random() < 0.2) {
        const check = (value: unknown, label: string): void => {
          assert.equal((value as ModelInfo[]).length, 1, label);
          isTiny((value as ModelInfo[])[0], label);
        };
        calls.push(new Tracked('listModels', () => service.listModels(), check));
      }
      if (random() < 0.15) {
        // The same file with the same options: the sidecar answers with the model it has.
        const load = (): Promise<ModelInfo> => service.loadModel({ modelPath: tiny, ...TEST_LOAD });
        calls.push(new Tracked('loadModel', load, isTiny));
      }
      const all = Promise.all(calls.map((call) => call.outcome));

      const mode = random();
      const delayMs = int(0, 30);
      if (mode < 0.1) {
        modes['same tick']++;
        // The requests are written after this, to a process that is already dead.
        process.kill(victim, 'SIGKILL');
      } else if (mode < 0.2) {
        modes['after every call settled']++;
        const before = await within(all, RESTART_MS, `${where}: the calls before the kill`);
        assert.ok(
          before.every((outcome) => outcome.ok),
          `${where}: every call succeeds while the sidecar lives`,
        );
        process.kill(victim, 'SIGKILL');
      } else {
        modes['after 0-30 ms']++;
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        process.kill(victim, 'SIGKILL');
      }
      // Every call settles, the kill notwithstanding; a call left pending fails the test here.
      const outcomes = await within(all, SETTLE_MS, `${where}: the calls after the kill`);

      for (const [index, outcome] of outcomes.entries()) {
        const call = calls[index] as Tracked;
        const label = `${where}: ${call.what}`;
        assert.equal(call.chunksAfterSettling, 0, `${label}: no chunk after the call settled`);
        if (outcome.ok) {
          resolved++;
          call.check(outcome.value, label);
          continue;
        }
        const { error } = outcome;
        assert.ok(error instanceof LLMServiceError, `${label}: rejected with ${String(error)}`);
        codes.set(error.code, (codes.get(error.code) ?? 0) + 1);
        assert.ok(EXPECTED_CODES.has(error.code), `${label}: unexpected code ${error.code}: ${error.message}`);
        assert.equal((error.data as ExitInfo).signal, 'SIGKILL', label);
        assert.match(error.message, /SIGKILL/, label);
      }
      for (const call of calls.filter((c) => c.what.startsWith('promptStream') && c.chunks.length > 0)) {
        const finals = call.chunks.map((chunk) => chunk.isFinal);
        assert.deepEqual(
          finals.slice(0, -1),
          finals.slice(1).map(() => false),
          `${where}: only the last chunk is final`,
        );
        assert.deepEqual(
          call.chunks.map((chunk) => chunk.index),
          call.chunks.map((_chunk, i) => i),
          `${where}: chunks in order, none lost`,
        );
      }
      if (mode < 0.1)
        assert.ok(
          outcomes.every((outcome) => !outcome.ok),
          `${where}: no call outlives a same-tick kill`,
        );

      if (outcomes[0]?.ok || main.chunks.at(-1)?.isFinal) killPoints['after completion']++;
      else if (main.chunks.length === 0) killPoints['before the first chunk']++;
      else killPoints['mid-stream']++;

      if (outcomes.some((outcome) => !outcome.ok)) {
        // A call is rejected only once the exit is recorded, so the service has forgotten the sidecar.
        assert.equal(service.sidecarPid, undefined, `${where}: the dead sidecar is forgotten when calls reject`);
      } else {
        // Every call was answered before the kill: only the exit itself tells the service, so wait
        // for it (a call sent before it is noticed goes to the dead process and gets SIDECAR_EXITED).
        await until(() => service.sidecarPid === undefined, SETTLE_MS, `${where}: the kill being noticed`);
      }
    }
    const last = await recover('after the last kill');
    const listed = await service.listModels();
    assert.deepEqual(
      listed.map((model) => model.modelPath),
      [tiny],
    );

    await within(service.dispose(), RESTART_MS, 'dispose()');
    assert.equal(service.sidecarPid, undefined);
    await until(() => !running(last), SETTLE_MS, `the last sidecar (pid ${last}) exiting`);
    assert.deepEqual([...pids].filter(running), [], 'no sidecar process of this test is left running');
    const children = sidecarChildren();
    if (children !== undefined) assert.deepEqual(children, [], 'no sidecar child process is left');

    const crashes = entries.filter((e) => /the sidecar exited unexpectedly/.test(e.message)).length;
    const reloads = entries.filter((e) => /reloaded model tiny after a restart/.test(e.message)).length;
    assert.equal(crashes, ITERATIONS, 'each kill was noticed once');
    assert.equal(reloads, ITERATIONS, 'each restart reloaded the model once');
    assert.equal(pids.size, ITERATIONS + 1, 'one sidecar per kill, plus the first');
    for (const [point, count] of Object.entries(killPoints)) assert.ok(count > 0, `no kill happened ${point}`);

    t.diagnostic(`kill modes: ${JSON.stringify(modes)}`);
    t.diagnostic(`kill points of the first stream: ${JSON.stringify(killPoints)}`);
    t.diagnostic(`calls: ${resolved} resolved, rejected by code: ${JSON.stringify(Object.fromEntries(codes))}`);
    t.diagnostic(`${ITERATIONS} kills and restarts in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  });
});
