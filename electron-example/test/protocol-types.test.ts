/**
 * Drift checks: src/client/protocol-types.ts must be exactly what ../protocol/schema generates, and
 * SidecarClient must have a method for each protocol method.
 */

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { type ProtocolMethods, SidecarClient } from '../client/src/index.js';
import { generateProtocolTypes, OUTPUT_FILE } from '../client/scripts/generate-protocol-types.js';
import { REPO_ROOT } from './helpers/sidecar.js';

/** Compiles only while every protocol method is a method of SidecarClient (under the same name). */
type MissingMethods = Exclude<keyof ProtocolMethods, keyof SidecarClient>;
const everyMethodTyped: [MissingMethods] extends [never] ? true : MissingMethods = true;

test('protocol-types.ts matches the schemas (run `npm run generate` after a schema change)', async () => {
  assert.equal(readFileSync(OUTPUT_FILE, 'utf8'), await generateProtocolTypes());
});

test('every method schema has a typed entry, with the titled params and result types', async () => {
  const generated = await generateProtocolTypes();
  for (const [method, params, result] of [
    ['loadModel', 'LoadModelParams', 'LoadModelResult'],
    ['promptStream', 'PromptStreamParams', 'PromptStreamResult'],
    ['cancel', 'CancelParams', 'CancelResult'],
    ['createSession', 'CreateSessionParams', 'CreateSessionResult'],
    ['setSessionHistory', 'SetSessionHistoryParams', 'SetSessionHistoryResult'],
  ] as const) {
    assert.match(generated, new RegExp(`  ${method}: \\{\\n    params: ${params};\\n    result: ${result};`));
  }
  assert.match(
    generated,
    /export interface ProtocolNotifications \{\n  downloadProgress: DownloadProgressParams;\n  loadProgress: LoadProgressParams;\n  streamChunk: StreamChunkParams;/,
  );
});

test('SidecarClient has one method for each method schema in protocol/schema/methods', () => {
  const dir = path.join(REPO_ROOT, 'protocol', 'schema', 'methods');
  const methods = readdirSync(dir)
    .filter((file) => file.endsWith('.json'))
    .map((file) => (JSON.parse(readFileSync(path.join(dir, file), 'utf8')) as { title: string }).title);
  assert.ok(methods.length >= 20, `only ${methods.length} method schemas found`);
  const prototype = SidecarClient.prototype as unknown as Record<string, unknown>;
  assert.deepEqual(
    methods.filter((method) => typeof prototype[method] !== 'function'),
    [],
    'protocol methods without a SidecarClient method',
  );
  assert.equal(everyMethodTyped, true);
});
