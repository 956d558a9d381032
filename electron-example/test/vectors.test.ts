/**
 * The protocol vectors (../protocol/vectors/*.jsonl), each replayed against a
 * fresh real sidecar through the client's ProcessTransport and framing, with
 * the rules of the Python runner (tests/vectors.py).
 */

import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { REPO_ROOT, tempDir, writeTinyModel } from './helpers/sidecar.js';
import { matches, runVector } from './helpers/vector-runner.js';

const VECTOR_DIR = path.join(REPO_ROOT, 'protocol', 'vectors');
const VECTOR_FILES = readdirSync(VECTOR_DIR)
  .filter((f) => f.endsWith('.jsonl'))
  .sort();

describe('protocol vectors', () => {
  const models = tempDir();
  const placeholders: Record<string, string> = {};

  before(async () => {
    const [tiny, eos] = await Promise.all([
      writeTinyModel(models.dir, 'tiny'),
      writeTinyModel(models.dir, 'eos', ['--eos', 'always']),
    ]);
    Object.assign(placeholders, {
      '${TINY_MODEL}': tiny,
      '${EOS_MODEL}': eos,
      '${MISSING_MODEL}': path.join(models.dir, 'missing.gguf'),
    });
  });
  after(() => models.remove());

  test('there are vectors', () => {
    assert.ok(VECTOR_FILES.length >= 8, `only ${VECTOR_FILES.length} vector files`);
  });

  for (const file of VECTOR_FILES) {
    test(path.basename(file, '.jsonl'), { timeout: 60_000 }, () =>
      runVector(path.join(VECTOR_DIR, file), placeholders),
    );
  }
});

test('pattern rules match the Python runner', () => {
  const cases: [unknown, unknown, boolean][] = [
    [{ a: '$integer' }, { a: 1 }, true],
    [{ a: '$integer' }, { a: 1.5 }, false],
    [{ a: '$any' }, {}, false],
    [{ a: 1 }, { a: 1, b: 2 }, false],
    [[1, '$string'], [1, 'x'], true],
    [[1], [1, 2], false],
    [true, 1, false],
    [null, null, true],
    ['$boolean', false, true],
  ];
  for (const [pattern, value, expected] of cases) {
    assert.equal(matches(pattern as never, value as never), expected, JSON.stringify([pattern, value]));
  }
});
