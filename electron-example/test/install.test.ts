/**
 * The client as a host app gets it: installed into a fresh project outside the repository, from
 * the checkout's folder (`npm install <checkout>/electron-example/client`, which builds it with its
 * `prepare` script) and from `npm pack`'s tarball. In each project a CommonJS host `require`s it and
 * an ES module host `import`s it (plain Node, no bundler), both run calls against the fake sidecar,
 * and both type-check under the settings `tsc --init` writes (strict, exactOptionalPropertyTypes,
 * noUncheckedIndexedAccess), without skipLibCheck, and under classic CommonJS resolution.
 *
 * The folders are copies of a fresh clone's (the client's files and protocol/schema, no
 * node_modules, no dist), so their `prepare` has to get its own devDependencies: one is installed,
 * the other packed. npm runs with `--offline`: the client has no dependencies, and its
 * devDependencies come from the npm cache that installing this example filled. Every npm and node
 * run is bounded in time.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';

import ts from 'typescript';

import { FAKE_SIDECAR } from './helpers/fake-service.js';
import { PACKAGE_DIR, REPO_ROOT, tempDir } from './helpers/sidecar.js';

const run = promisify(execFile);
const CLIENT_DIR = path.join(PACKAGE_DIR, 'client');
const NAME = 'llama-sidecar-client';
const HOST = path.join(PACKAGE_DIR, 'test', 'fixtures', 'install-host.ts');
const TYPE_ROOTS = [path.join(PACKAGE_DIR, 'node_modules', '@types')];
/** A prepare that installs devDependencies from the cache and compiles twice: a minute on two busy cores. */
const INSTALL_TIMEOUT_MS = 240_000;

/** npm as a developer runs it in a terminal: nothing inherited from the `npm test` that runs this file. */
async function npm(args: readonly string[], cwd: string): Promise<string> {
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([key]) => !key.toLowerCase().startsWith('npm_') || key === 'npm_config_cache'),
  );
  const flags = ['--offline', '--no-audit', '--no-fund', '--no-update-notifier', '--loglevel=error'];
  const { stdout } = await run('npm', [...args, ...flags], { cwd, env, timeout: INSTALL_TIMEOUT_MS });
  return stdout;
}

async function node(args: readonly string[], cwd: string): Promise<string> {
  return (await run(process.execPath, args, { cwd, timeout: 30_000 })).stdout;
}

/** A fresh clone's client: its files without node_modules or dist, and the schemas its build checks. */
function freshClone(into: string): string {
  const client = path.join(into, 'electron-example', 'client');
  cpSync(CLIENT_DIR, client, {
    recursive: true,
    filter: (source) => !['node_modules', 'dist'].includes(path.basename(source)),
  });
  cpSync(path.join(REPO_ROOT, 'protocol', 'schema'), path.join(into, 'protocol', 'schema'), { recursive: true });
  return client;
}

/** The options `tsc --init` writes, read back from the file it wrote in `dir`. */
async function initOptions(dir: string): Promise<ts.CompilerOptions> {
  await node([path.join(PACKAGE_DIR, 'node_modules', 'typescript', 'bin', 'tsc'), '--init'], dir);
  const file = path.join(dir, 'tsconfig.json');
  const { config, error } = ts.readConfigFile(file, ts.sys.readFile);
  assert.equal(error, undefined);
  const parsed = ts.parseJsonConfigFileContent(config, ts.sys, dir);
  assert.equal(parsed.options.exactOptionalPropertyTypes, true, 'tsc --init turns on exactOptionalPropertyTypes');
  assert.equal(parsed.options.noUncheckedIndexedAccess, true);
  return parsed.options;
}

/** Type-check (and emit, unless noEmit) `file` in `dir`; the diagnostics, as text. */
function compile(dir: string, file: string, options: ts.CompilerOptions): string[] {
  const program = ts.createProgram([path.join(dir, file)], {
    ...options,
    types: ['node'],
    typeRoots: TYPE_ROOTS,
    rootDir: dir,
    outDir: dir,
    declaration: false,
    declarationMap: false,
    sourceMap: false,
  });
  const { diagnostics } = program.emit();
  return [...ts.getPreEmitDiagnostics(program), ...diagnostics].map(
    (d) => `${d.file?.fileName ?? ''}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`,
  );
}

const work = tempDir();
let tarball: string;

before(async () => {
  // As a publisher packs it, in a fresh clone (its prepare installs the devDependencies and builds),
  // which also leaves this checkout's dist alone while other test files read it.
  const packed = await npm(['pack', '--pack-destination', work.dir], freshClone(path.join(work.dir, 'clone-to-pack')));
  tarball = path.join(work.dir, packed.trim().split('\n').at(-1) ?? '');
  assert.ok(existsSync(tarball), `npm pack wrote ${tarball}`);
});
after(() => work.remove());

for (const source of ['folder', 'tarball'] as const) {
  describe(`installed from the ${source}`, () => {
    let project: string;
    let installed: string;

    before(async () => {
      project = path.join(work.dir, `host-from-${source}`);
      mkdirSync(project);
      const manifest = { name: 'host-app', version: '1.0.0', private: true };
      writeFileSync(path.join(project, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
      for (const host of ['host.cts', 'host.mts']) cpSync(HOST, path.join(project, host));
      const spec = source === 'folder' ? freshClone(path.join(work.dir, 'clone-to-install')) : tarball;
      await npm(['install', spec], project);
      installed = path.join(project, 'node_modules', NAME);
    });

    test('the package has its builds and no tests; the project got no other package', () => {
      const manifest = JSON.parse(readFileSync(path.join(installed, 'package.json'), 'utf8')) as {
        name: string;
        dependencies?: unknown;
      };
      assert.equal(manifest.name, NAME);
      assert.equal(manifest.dependencies, undefined, 'no runtime dependencies');
      for (const file of ['dist/esm/index.js', 'dist/esm/index.d.ts', 'dist/cjs/index.js', 'dist/cjs/index.d.ts'])
        assert.ok(existsSync(path.join(installed, file)), `${file} is there`);
      if (source === 'tarball') {
        assert.deepEqual(readdirSync(installed).sort(), ['README.md', 'dist', 'package.json', 'src']);
        assert.deepEqual(
          readdirSync(path.join(project, 'node_modules')).filter((n) => !n.startsWith('.')),
          [NAME],
        );
      } else {
        assert.ok(lstatSync(installed).isSymbolicLink(), 'a folder install links the folder');
      }
    });

    test('require() gets the CommonJS build, import the ES module build', async () => {
      const required = await node(['-p', `require.resolve(${JSON.stringify(NAME)})`], project);
      assert.match(required.trim(), /[/\\]dist[/\\]cjs[/\\]index\.js$/);
      const imported = await node(
        ['--input-type=module', '-e', `console.log(import.meta.resolve(${JSON.stringify(NAME)}))`],
        project,
      );
      assert.match(imported.trim(), /\/dist\/esm\/index\.js$/);
    });

    test("hosts type-check under tsc --init's strict settings, then run with require and with import", async () => {
      const init = await initOptions(project);
      // The ES module host as tsc --init has it, and without skipLibCheck: the client's .d.ts too.
      assert.deepEqual(compile(project, 'host.mts', { ...init, skipLibCheck: false }), []);
      // verbatimModuleSyntax forbids `import` in a CommonJS file (it wants `import x = require()`):
      // an app that compiles `import` to `require` turns it off.
      assert.deepEqual(compile(project, 'host.cts', { ...init, verbatimModuleSyntax: false, skipLibCheck: false }), []);
      const classic = { module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10 };
      assert.deepEqual(
        compile(project, 'host.cts', { ...init, ...classic, verbatimModuleSyntax: false, noEmit: true }),
        [],
      );

      assert.match(readFileSync(path.join(project, 'host.cjs'), 'utf8'), new RegExp(`require\\("${NAME}"\\)`));
      assert.match(readFileSync(path.join(project, 'host.mjs'), 'utf8'), new RegExp(`from '${NAME}'`));
      const expected = { modelId: 'fake', listed: 1, closedCode: 'CLOSED' };
      for (const host of ['host.cjs', 'host.mjs'])
        assert.deepEqual(JSON.parse(await node([host, FAKE_SIDECAR], project)), expected, host);
    });
  });
}
