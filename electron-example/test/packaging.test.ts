/**
 * The packaged app. electron-builder.json copies the frozen sidecar (the repository's
 * dist/llama-sidecar, which `make package` builds) into the app's resources as llama-sidecar/,
 * where main.ts's packaged path (`packagedSidecarCommand`) looks for it.
 *
 * Electron's own binary cannot be downloaded here, so electron-builder runs (`--dir`, the real
 * configuration file, its schema validation included) with a stand-in for Electron's unpacked
 * distribution (`electronDist`: a shell script named `electron`), in a copy of this project whose
 * ../dist/llama-sidecar is a stand-in sidecar (a shell script running the checkout's sidecar) or,
 * once `make package` has built it, the frozen one (skipped, saying so, until then). The client
 * then starts the sidecar from the packaged resources, as the packaged app would, with nothing but
 * PATH in its environment, and streams a reply.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';

import { type LlmChunk, LlmService, type SidecarCommand } from '../client/src/index.js';
import { devPython, packagedSidecarCommand, SIDECAR_RESOURCE_DIR, sidecarExecutable } from '../src/sidecar-command.js';
import { PACKAGE_DIR, recordingLogger, REPO_ROOT, tempDir, TEST_LOAD, writeTinyModel } from './helpers/sidecar.js';

const run = promisify(execFile);

interface BuilderConfig {
  readonly extraResources: readonly { readonly from: string; readonly to: string; readonly filter?: string[] }[];
  readonly linux: { readonly executableName: string };
}

const CONFIG_FILE = 'electron-builder.json';
const CONFIG = JSON.parse(readFileSync(path.join(PACKAGE_DIR, CONFIG_FILE), 'utf8')) as BuilderConfig;
const BUILDER = path.join(PACKAGE_DIR, 'node_modules', 'electron-builder', 'cli.js');
const FROZEN_DIR = path.join(REPO_ROOT, 'dist', SIDECAR_RESOURCE_DIR);
const FROZEN = sidecarExecutable(FROZEN_DIR);
/** A packaged sidecar gets no environment but this: it must need no Python, venv or variables. */
const BARE_ENV = { PATH: '/usr/bin:/bin' };

/** An executable shell script at `file`. */
function script(file: string, text: string): string {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, `#!/bin/sh\n${text}\n`);
  chmodSync(file, 0o755);
  return file;
}

/**
 * Package this app with electron-builder (`--dir`: the unpacked app, no installer) in a copy of the
 * project under `dir` whose ../dist/llama-sidecar is `sidecarFolder` (linked); `config` replaces the
 * configuration file's content when given. The packaged app's resources folder.
 */
async function packageApp(dir: string, sidecarFolder: string, config?: object): Promise<string> {
  const project = path.join(dir, 'repo', 'electron-example');
  mkdirSync(path.join(dir, 'repo', 'dist'), { recursive: true });
  symlinkSync(sidecarFolder, path.join(dir, 'repo', 'dist', SIDECAR_RESOURCE_DIR));
  for (const file of ['package.json', CONFIG_FILE, 'dist'])
    cpSync(path.join(PACKAGE_DIR, file), path.join(project, file), { recursive: true });
  if (config !== undefined) writeFileSync(path.join(project, CONFIG_FILE), JSON.stringify(config));
  symlinkSync(path.join(PACKAGE_DIR, 'node_modules'), path.join(project, 'node_modules'));
  // What electron-builder copies of an unpacked Electron: its executable, renamed to the app's.
  const electronDist = path.dirname(
    script(path.join(dir, 'electron-dist', 'electron'), 'echo "a stand-in for Electron"'),
  );
  const output = path.join(dir, 'out');
  const args = [BUILDER, '--dir', '--linux', `-c.electronDist=${electronDist}`, `-c.directories.output=${output}`];
  await run(process.execPath, args, { cwd: project, timeout: 120_000 }).catch((error: { stdout?: string }) => {
    // electron-builder reports what it rejects on stdout.
    throw new Error(`electron-builder failed: ${error.stdout ?? String(error)}`, { cause: error });
  });
  return path.join(output, 'linux-unpacked', 'resources');
}

/** Load a tiny model through the sidecar `command` starts, and stream a few tokens. */
async function streamThrough(command: SidecarCommand, modelDir: string): Promise<void> {
  const { logger, entries } = recordingLogger();
  const service = new LlmService({ sidecar: command, logger, startTimeoutMs: 60_000 });
  try {
    const tiny = await writeTinyModel(modelDir, 'packaged');
    const model = await service.loadModel({ modelPath: tiny, ...TEST_LOAD });
    assert.equal(model.name, 'tiny-random-llama');
    const chunks: LlmChunk[] = [];
    const result = await service.promptStream('hello', (chunk) => chunks.push(chunk), { maxTokens: 8, seed: 1 });
    assert.equal(result.usage.completionTokens, 8);
    assert.equal(chunks.at(-1)?.isFinal, true);
    const log = entries.map((entry) => entry.message).join('\n');
    assert.equal(chunks.map((chunk) => chunk.content).join(''), result.text, log);
  } finally {
    await service.dispose();
  }
}

test("the configuration copies the repo's dist/llama-sidecar, whole, to where the packaged app looks", () => {
  const entries = CONFIG.extraResources.filter((entry) => entry.to === SIDECAR_RESOURCE_DIR);
  assert.equal(entries.length, 1, JSON.stringify(CONFIG.extraResources));
  const [entry] = entries;
  assert.equal(path.resolve(PACKAGE_DIR, entry?.from ?? ''), FROZEN_DIR);
  assert.deepEqual(entry?.filter, ['**/*'], 'the whole folder: the executable needs its _internal files');
});

test('the packaged-app path finds the executable in a resources folder, and says what is wrong when it cannot', () => {
  const dir = tempDir();
  try {
    const resources = path.join(dir.dir, 'resources');
    const executable = script(path.join(resources, 'llama-sidecar', 'llama-sidecar'), 'exit 0');
    assert.deepEqual(packagedSidecarCommand(resources, 'linux'), {
      command: executable,
      cwd: path.join(resources, 'llama-sidecar'),
    });
    assert.equal(sidecarExecutable('/r/llama-sidecar', 'win32'), path.join('/r/llama-sidecar', 'llama-sidecar.exe'));
    assert.throws(
      () => packagedSidecarCommand(path.join(dir.dir, 'elsewhere'), 'linux'),
      /llama-sidecar is missing: build it with `make package`/,
    );
    chmodSync(executable, 0o644);
    assert.throws(() => packagedSidecarCommand(resources, 'linux'), /llama-sidecar is not executable/);
  } finally {
    dir.remove();
  }
});

describe('electron-builder packages the app with the sidecar in its resources', () => {
  const dirs: { remove: () => void }[] = [];
  after(() => dirs.forEach((dir) => dir.remove()));
  const newDir = (): string => {
    const dir = tempDir();
    dirs.push(dir);
    return dir.dir;
  };

  test('a configuration electron-builder does not accept fails the build (its schema is checked)', async () => {
    const dir = newDir();
    const stub = path.join(dir, 'sidecar');
    script(path.join(stub, 'llama-sidecar'), 'exit 0');
    await assert.rejects(packageApp(dir, stub, { ...CONFIG, extraResourcez: [] }), /unknown property 'extraResourcez'/);
  });

  test('the packaged layout: the app in app.asar, the sidecar folder in resources; the client streams from it', async () => {
    const dir = newDir();
    const stub = path.join(dir, 'sidecar');
    const standIn = `# Stands in for the frozen sidecar: the checkout's, run by the venv's python.\ncd '${REPO_ROOT}' && exec '${devPython()}' -m sidecar "$@"`;
    script(path.join(stub, 'llama-sidecar'), standIn);
    mkdirSync(path.join(stub, '_internal'));
    writeFileSync(path.join(stub, '_internal', 'libllama.so'), '');
    const resources = await packageApp(dir, stub);

    const app = path.dirname(resources);
    assert.ok(existsSync(path.join(app, CONFIG.linux.executableName)), "the app's executable");
    const asar = createRequire(path.join(PACKAGE_DIR, 'node_modules', 'electron-builder', 'package.json'))(
      '@electron/asar',
    ) as { listPackage(archive: string): string[] };
    const files = new Set(asar.listPackage(path.join(resources, 'app.asar')));
    for (const file of [
      '/package.json',
      '/dist/main.js',
      '/dist/preload.cjs',
      '/dist/renderer/index.html',
      '/node_modules/llama-sidecar-client/package.json',
      '/node_modules/llama-sidecar-client/dist/esm/index.js',
    ])
      assert.ok(files.has(file), `app.asar has ${file}`);
    assert.ok(existsSync(path.join(resources, SIDECAR_RESOURCE_DIR, '_internal', 'libllama.so')), 'the whole folder');

    await streamThrough({ ...packagedSidecarCommand(resources), env: BARE_ENV }, dir);
  });

  const frozenMissing = existsSync(FROZEN)
    ? false
    : `${FROZEN} does not exist yet: \`make package\` at the repository root builds it`;
  test(
    'the frozen sidecar from `make package`, packaged, streams with only PATH set',
    { skip: frozenMissing },
    async () => {
      const dir = newDir();
      const resources = await packageApp(dir, FROZEN_DIR);
      await streamThrough({ ...packagedSidecarCommand(resources), env: BARE_ENV }, dir);
    },
  );
});
