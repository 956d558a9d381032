/**
 * downloadModel through LlmService and SidecarClient on the real sidecar (started with --models-dir),
 * from a local HTTP server that paces its ~2 MB body and honours Range: progress, sha256, cancel and
 * resume, and the errors: a wrong sha256, a destination outside the models directory, a dropped
 * connection.
 */

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { type DownloadProgress, type DownloadProgressParams, LlmService, SidecarClient } from '../client/src/index.js';
import { devSidecarCommand, recordingLogger, sidecarError, tempDir } from './helpers/sidecar.js';

const BODY = randomBytes(2 * 1024 * 1024 + 12_345);
const SHA256 = createHash('sha256').update(BODY).digest('hex');

/** Per path: bytes per write and the pause between writes (paced: about 1 s in all; slow: about 13 s). */
const PACE: Readonly<Record<string, { bytes: number; everyMs: number }>> = {
  '/paced/model.gguf': { bytes: 64 * 1024, everyMs: 30 },
  '/slow/model.gguf': { bytes: 16 * 1024, everyMs: 100 },
  '/fast/model.gguf': { bytes: BODY.length, everyMs: 0 },
  '/drop/model.gguf': { bytes: BODY.length, everyMs: 0 },
};
/** The first request for this path from the start gets half the body, then the connection closes. */
const DROP = '/drop/model.gguf';
const HALF = Math.floor(BODY.length / 2);

/** Serves BODY at the PACE paths, from the `Range: bytes=N-` start when asked (at full speed:
 * a resume need not wait); drops DROP once. */
function bodyServer(): Server {
  let dropped = false;
  return createServer((request, response) => {
    const range = /^bytes=(\d+)-$/.exec(request.headers.range ?? '');
    const pace = range === null ? PACE[request.url ?? ''] : PACE['/fast/model.gguf'];
    if (pace === undefined || PACE[request.url ?? ''] === undefined) {
      response.writeHead(404).end();
      return;
    }
    let offset = range === null ? 0 : Number(range[1]);
    const length = BODY.length - offset;
    const headers = { 'Content-Type': 'application/octet-stream', 'Content-Length': length, 'Accept-Ranges': 'bytes' };
    if (range === null) response.writeHead(200, headers);
    else response.writeHead(206, { ...headers, 'Content-Range': `bytes ${offset}-${BODY.length - 1}/${BODY.length}` });
    if (request.url === DROP && offset === 0 && !dropped) {
      dropped = true;
      response.write(BODY.subarray(0, HALF), () => response.destroy()); // short of Content-Length
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    const next = (): void => {
      const end = Math.min(offset + pace.bytes, BODY.length);
      response.write(BODY.subarray(offset, end));
      offset = end;
      if (offset < BODY.length) timer = setTimeout(next, pace.everyMs);
      else response.end();
    };
    response.on('close', () => clearTimeout(timer)); // the client went away (a cancel)
    next();
  });
}

describe('downloadModel on the real sidecar', () => {
  const models = tempDir();
  const { logger } = recordingLogger();
  const server = bodyServer();
  let service: LlmService;
  let client: SidecarClient;
  let base = '';

  before(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    // A proxy from the environment must not take the sidecar's local requests.
    const env = { ...process.env, NO_PROXY: '127.0.0.1', no_proxy: '127.0.0.1' };
    const sidecar = { ...devSidecarCommand(['--models-dir', models.dir]), env };
    service = new LlmService({ sidecar, logger });
    client = await SidecarClient.spawn({ ...sidecar, logger });
  });
  after(async () => {
    await service.dispose();
    await client.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    models.remove();
  });

  test('progress rises to the whole size; the result is the complete file with its sha256', async () => {
    const progress: DownloadProgress[] = [];
    const result = await service.downloadModel(`${base}/paced/model.gguf`, {
      destination: 'paced.gguf',
      sha256: SHA256,
      onProgress: (update) => progress.push(update),
    });
    assert.deepEqual(result, {
      modelPath: path.join(realpathSync(models.dir), 'paced.gguf'), // the sidecar answers with real paths
      sizeBytes: BODY.length,
      sha256: SHA256,
      resumedFrom: 0,
      complete: true,
    });
    assert.equal(statSync(result.modelPath).size, BODY.length);
    assert.ok(progress.length >= 2, `${progress.length} progress update(s)`);
    const bytes = progress.map((p) => p.bytes);
    assert.deepEqual(
      bytes,
      [...bytes].sort((a, b) => a - b),
      'bytes never decrease',
    );
    assert.ok((bytes[0] ?? 0) < BODY.length, 'an update came before the end');
    assert.deepEqual(
      progress.map((p) => p.total),
      progress.map(() => BODY.length),
    );
    assert.equal(progress.at(-1)?.bytes, BODY.length);
    assert.ok(progress.every((p) => p.bytesPerSecond > 0 && !('requestId' in p)));
  });

  test('an abort mid-download resolves with complete: false; the next download resumes the partial file', async () => {
    const controller = new AbortController();
    const progress: DownloadProgress[] = [];
    const started = Date.now();
    const cancelled = await service.downloadModel(`${base}/slow/model.gguf`, {
      destination: 'resumed.gguf',
      sha256: SHA256, // with it (or the server's ETag) the sidecar may resume the partial file
      onProgress: (update) => {
        progress.push(update);
        controller.abort();
      },
      signal: controller.signal,
    });
    assert.ok(Date.now() - started < 8000, 'cancelled long before the slow body ends');
    assert.equal(cancelled.complete, false);
    assert.equal(cancelled.sha256, null);
    assert.ok(cancelled.sizeBytes > 0 && cancelled.sizeBytes < BODY.length, `${cancelled.sizeBytes} bytes`);
    assert.equal(existsSync(cancelled.modelPath), false, 'the final name never names half a file');
    assert.equal(statSync(`${cancelled.modelPath}.part`).size, cancelled.sizeBytes);
    assert.ok(progress.length >= 1);

    // The same URL: a partial file is only ever resumed from where it came.
    const resumed = await service.downloadModel(`${base}/slow/model.gguf`, {
      destination: 'resumed.gguf',
      sha256: SHA256,
    });
    assert.deepEqual(resumed, {
      modelPath: cancelled.modelPath,
      sizeBytes: BODY.length,
      sha256: SHA256,
      resumedFrom: cancelled.sizeBytes,
      complete: true,
    });
  });

  test('SidecarClient.downloadModel: two at once, each onProgress gets only its own downloadProgress; sha256 verified', async () => {
    const progress: DownloadProgressParams[][] = [[], []];
    const results = await Promise.all(
      ['first.gguf', 'second.gguf'].map((destination, i) =>
        client.downloadModel(
          { url: `${base}/paced/model.gguf`, destination, sha256: SHA256 },
          { onProgress: (update) => progress[i]?.push(update) },
        ),
      ),
    );
    const requestIds = progress.map((updates) => new Set(updates.map((update) => update.requestId)));
    assert.deepEqual(
      requestIds.map((ids) => ids.size),
      [1, 1],
      'one request per callback',
    );
    assert.notDeepEqual(requestIds[0], requestIds[1], "each callback gets its own call's progress");
    for (const [i, result] of results.entries()) {
      assert.deepEqual(
        { ...result, modelPath: path.basename(result.modelPath) },
        {
          modelPath: i === 0 ? 'first.gguf' : 'second.gguf',
          sizeBytes: BODY.length,
          sha256: SHA256,
          resumedFrom: 0,
          complete: true,
        },
      );
      assert.equal(createHash('sha256').update(readFileSync(result.modelPath)).digest('hex'), SHA256);
      assert.ok((progress[i]?.length ?? 0) >= 2, `${progress[i]?.length} update(s)`);
      assert.equal(progress[i]?.at(-1)?.bytes, BODY.length);
    }
  });

  test("a wrong sha256 is DownloadFailed (-32012), data.reason 'sha256 mismatch', and leaves no file", async () => {
    const wrong = '0'.repeat(64);
    const call = service.downloadModel(`${base}/fast/model.gguf`, { destination: 'mismatch.gguf', sha256: wrong });
    const error = await sidecarError(call, -32012);
    assert.deepEqual(error.data, { reason: 'sha256 mismatch', bytes: BODY.length, expected: wrong, actual: SHA256 });
    assert.deepEqual(
      readdirSync(models.dir).filter((name) => name.startsWith('mismatch')),
      [],
    );
  });

  test('a destination outside --models-dir is ModelPathNotAllowed (-32011), relative or absolute', async () => {
    const outside = path.join(tmpdir(), `outside-${process.pid}.gguf`);
    for (const destination of ['../escape.gguf', outside]) {
      const call = service.downloadModel(`${base}/fast/model.gguf`, { destination });
      const error = await sidecarError(call, -32011);
      assert.deepEqual(error.data, { modelPath: destination });
    }
    assert.equal(existsSync(outside), false);
    assert.equal(existsSync(path.join(models.dir, '..', 'escape.gguf')), false);
  });

  test('a connection dropped midway is DownloadFailed (-32012); the next call resumes the partial file and completes', async () => {
    const url = `${base}${DROP}`;
    const error = await sidecarError(
      service.downloadModel(url, { destination: 'dropped.gguf', sha256: SHA256 }),
      -32012,
    );
    const { reason, bytes } = error.data as { reason: string; bytes: number };
    assert.equal(reason, 'connection closed');
    assert.equal(bytes, HALF, 'all the bytes sent before the drop');
    const partial = path.join(models.dir, 'dropped.gguf');
    assert.equal(existsSync(partial), false, 'the final name never names half a file');
    assert.equal(statSync(`${partial}.part`).size, bytes);

    const resumed = await service.downloadModel(url, {
      destination: 'dropped.gguf',
      sha256: SHA256,
    });
    assert.deepEqual(resumed, {
      modelPath: path.join(realpathSync(models.dir), 'dropped.gguf'),
      sizeBytes: BODY.length,
      sha256: SHA256,
      resumedFrom: bytes,
      complete: true,
    });
    assert.equal(existsSync(`${partial}.part`), false);
  });
});
