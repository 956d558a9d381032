/** Drift check: src/client/protocol-types.ts must be exactly what ../protocol/schema generates. */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { generateProtocolTypes, OUTPUT_FILE } from '../scripts/generate-protocol-types.js';

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
