/**
 * The CommonJS build of the client (dist/cjs, the `require` condition of the package's exports): a
 * CommonJS host type-checks against it and runs with it. Needs `npm run build` (npm test does it).
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import ts from 'typescript';

import { FAKE_SIDECAR } from './helpers/fake-service.js';
import { PACKAGE_DIR, tempDir } from './helpers/sidecar.js';

const run = promisify(execFile);
const app = tempDir();
const HOST = path.join(app.dir, 'cjs-host.cts');

/** An app directory that depends on this package (node_modules/<name> → the package), with the host in it. */
before(() => {
  const built = path.join(PACKAGE_DIR, 'dist', 'cjs', 'client', 'index.js');
  assert.ok(existsSync(built), `${built} is missing: run \`npm run build\` first`);
  const name = (JSON.parse(readFileSync(path.join(PACKAGE_DIR, 'package.json'), 'utf8')) as { name: string }).name;
  mkdirSync(path.join(app.dir, 'node_modules'));
  symlinkSync(PACKAGE_DIR, path.join(app.dir, 'node_modules', name), 'junction');
  copyFileSync(path.join(PACKAGE_DIR, 'test', 'fixtures', 'cjs-host.cts'), HOST);
});
after(() => app.remove());

/** Type-check (and emit) the host with these module settings; the diagnostics, as text. */
function compileHost(options: ts.CompilerOptions): string[] {
  const program = ts.createProgram([HOST], {
    target: ts.ScriptTarget.ES2022,
    strict: true,
    skipLibCheck: true,
    types: ['node'],
    typeRoots: [path.join(PACKAGE_DIR, 'node_modules', '@types')],
    outDir: app.dir,
    ...options,
  });
  const { diagnostics } = program.emit();
  return [...ts.getPreEmitDiagnostics(program), ...diagnostics].map((d) =>
    ts.flattenDiagnosticMessageText(d.messageText, '\n'),
  );
}

test('a CommonJS host type-checks against the client: module node16, and classic commonjs', () => {
  const classic = { module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10, noEmit: true };
  assert.deepEqual(compileHost(classic), []);
  const node16 = { module: ts.ModuleKind.Node16, moduleResolution: ts.ModuleResolutionKind.Node16 };
  assert.deepEqual(compileHost(node16), []);
});

test('a CommonJS host require()s the client and runs calls with it', async () => {
  const host = path.join(app.dir, 'cjs-host.cjs');
  if (!existsSync(host))
    compileHost({ module: ts.ModuleKind.Node16, moduleResolution: ts.ModuleResolutionKind.Node16 });
  assert.match(readFileSync(host, 'utf8'), /require\("llama-sidecar-electron-example\/client"\)/);
  const { stdout } = await run(process.execPath, [host, FAKE_SIDECAR], { cwd: app.dir, timeout: 20_000 });
  assert.deepEqual(JSON.parse(stdout), { modelId: 'fake', listed: 1, closedCode: 'CLOSED' });
});
