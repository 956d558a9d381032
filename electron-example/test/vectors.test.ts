/**
 * The protocol vectors (../protocol/vectors/*.jsonl), each replayed against a
 * fresh real sidecar through the client's ProcessTransport and framing, with
 * the rules of the Python runner (tests/vectors.py).
 */

import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { REPO_ROOT, tempDir, writeTinyModel } from './helpers/sidecar.js';
import { matches, runVector } from './helpers/vector-runner.js';

const VECTOR_DIR = path.join(REPO_ROOT, 'protocol', 'vectors');
const VECTOR_FILES = readdirSync(VECTOR_DIR)
  .filter((f) => f.endsWith('.jsonl'))
  .sort();
const PLACEHOLDER = /"(\$\{[A-Z_]+\})"/g;

/** The distinct placeholders quoted in `text`. */
function placeholdersIn(text: string): Set<string> {
  return new Set([...text.matchAll(PLACEHOLDER)].map((match) => match[1] ?? ''));
}

describe('protocol vectors', () => {
  const models = tempDir();
  const placeholders: Record<string, string> = {};

  before(async () => {
    // The sidecar answers with resolved paths (macOS's temp dir is behind a symlink).
    const dir = realpathSync.native(models.dir);
    const [tiny, eos, plain] = await Promise.all([
      writeTinyModel(dir, 'tiny'),
      writeTinyModel(dir, 'eos', ['--eos', 'always']),
      writeTinyModel(dir, 'plain', ['--no-chat-template']),
    ]);
    const notAModel = path.join(dir, 'not-a-model.gguf');
    writeFileSync(notAModel, 'This is a text file, not a GGUF model.\n');
    // Only the vector that runs with --models-dir uses this directory: sharing it is safe.
    const allowed = path.join(dir, 'allowed');
    mkdirSync(allowed);
    const allowedModel = path.join(allowed, 'allowed.gguf');
    copyFileSync(tiny, allowedModel);
    Object.assign(placeholders, {
      '${TINY_MODEL}': tiny,
      '${EOS_MODEL}': eos,
      '${PLAIN_MODEL}': plain,
      '${MISSING_MODEL}': path.join(dir, 'missing.gguf'),
      '${NOT_A_MODEL}': notAModel,
      '${MODELS_DIR}': allowed,
      '${ALLOWED_MODEL}': allowedModel,
    });
  });
  after(() => models.remove());

  test('there are vectors', () => {
    assert.ok(VECTOR_FILES.length >= 8, `only ${VECTOR_FILES.length} vector files`);
  });

  test('every placeholder is documented and provided', () => {
    // The Python runner has the same check: the README's table keeps the two in step.
    const used = placeholdersIn(VECTOR_FILES.map((f) => readFileSync(path.join(VECTOR_DIR, f), 'utf8')).join('\n'));
    const readme = readFileSync(path.join(VECTOR_DIR, 'README.md'), 'utf8');
    const documented = placeholdersIn(
      readme
        .split('\n')
        .filter((line) => line.startsWith('| `'))
        .join('\n'),
    );
    assert.deepEqual(
      [...used].filter((name) => !documented.has(name)),
      [],
      'used but not in the README',
    );
    assert.deepEqual(Object.keys(placeholders).sort(), [...documented].sort());
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
