/** The byte-level line framing: pure, no processes. */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { encodeMessage, type Frame, LineReader } from '../client/src/index.js';

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

function readAll(reader: LineReader): Frame[] {
  const frames: Frame[] = [];
  for (let frame = reader.read(); frame !== undefined; frame = reader.read()) frames.push(frame);
  return frames;
}

const texts = (frames: Frame[]): string[] => frames.map((f) => (f.tooLong ? `<too long ${f.size}>` : f.text));

test('a multi-byte character split across two reads is decoded whole', () => {
  const line = bytes('{"content":"€ and 日本 and 😀"}\n');
  const euro = line.indexOf(0xe2); // first byte of the 3-byte €
  const reader = new LineReader();
  reader.append(line.subarray(0, euro + 1));
  assert.deepEqual(readAll(reader), []);
  reader.append(line.subarray(euro + 1));
  const frames = readAll(reader);
  assert.deepEqual(texts(frames), ['{"content":"€ and 日本 and 😀"}']);
  assert.equal(frames[0]?.tooLong === false && frames[0].validUtf8, true);
});

test('every split point of a line with 4-byte characters gives the same line', () => {
  const line = bytes('😀é€\n');
  for (let split = 0; split <= line.length; split++) {
    const reader = new LineReader();
    reader.append(line.subarray(0, split));
    reader.append(line.subarray(split));
    assert.deepEqual(texts(readAll(reader)), ['😀é€'], `split at ${split}`);
  }
});

test('CRLF endings are stripped, blank lines skipped, several lines per read', () => {
  const reader = new LineReader();
  reader.append(bytes('one\r\n\n\r\ntwo\nthr'));
  assert.deepEqual(texts(readAll(reader)), ['one', 'two']);
  reader.append(bytes('ee\n'));
  assert.deepEqual(texts(readAll(reader)), ['three']);
});

test('a line over the cap is skipped whole and reported; the next line reads normally', () => {
  const reader = new LineReader(10);
  reader.append(bytes('short\n0123456'));
  reader.append(bytes('789abcdef'));
  reader.append(bytes('ghij\nok\n'));
  assert.deepEqual(texts(readAll(reader)), ['short', '<too long 20>', 'ok']);
});

test('invalid UTF-8 is flagged, not thrown', () => {
  const reader = new LineReader();
  reader.append(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d, 0x0a]));
  const [frame] = readAll(reader);
  assert.ok(frame !== undefined && !frame.tooLong);
  assert.equal(frame.validUtf8, false);
  assert.equal(frame.text, '{\ufffd\ufffd}');
});

test('flush yields a last line that has no newline', () => {
  const reader = new LineReader();
  reader.append(bytes('{"a":1}\n{"b":2}'));
  assert.deepEqual(texts(readAll(reader)), ['{"a":1}']);
  reader.flush();
  assert.deepEqual(texts(readAll(reader)), ['{"b":2}']);
});

test('the reader copies what it keeps: a reused buffer does not change a pending line', () => {
  const reader = new LineReader();
  const chunk = bytes('abc');
  reader.append(chunk);
  chunk.fill(0x21);
  reader.append(bytes('\n'));
  assert.deepEqual(texts(readAll(reader)), ['abc']);
});

test('encodeMessage writes one compact JSON line, escaping newlines inside strings', () => {
  const line = new TextDecoder().decode(encodeMessage({ text: 'a\nb', n: 1 }));
  assert.equal(line, '{"text":"a\\nb","n":1}\n');
});
