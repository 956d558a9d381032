/**
 * Generates src/protocol-types.ts from the protocol's JSON Schemas (the
 * repository's protocol/schema, two folders above this package).
 *
 *   tsx scripts/generate-protocol-types.ts          write the file
 *   tsx scripts/generate-protocol-types.ts --check  exit 1 if the file differs (drift)
 *
 * Every titled `$defs` entry of ../protocol/schema becomes a named type (its
 * title is the name), plus `ProtocolMethods` and `ProtocolNotifications` maps
 * built from the method and notification files. `$ref`s become references to
 * those names (json-schema-to-typescript's ref resolver mis-resolves a nested
 * relative ref inside a cross-file ref, and would duplicate types that carry a
 * description beside the ref). Keywords that only constrain values and that
 * TypeScript cannot express (`oneOf`/`allOf` of `required` lists and conditions,
 * `if`/`then`/`else`, `not`) are dropped: the sidecar enforces them.
 */

import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { compile, type JSONSchema } from 'json-schema-to-typescript';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const SCHEMA_DIR = path.resolve(HERE, '../../../protocol/schema');
export const OUTPUT_FILE = path.resolve(HERE, '../src/protocol-types.ts');

/** Titles that would shadow a global in the generated module. */
const RENAMES: Readonly<Record<string, string>> = { Error: 'ErrorObject' };
const CONSTRAINT_KEYWORDS = ['if', 'then', 'else', 'not', 'required'];
const DROPPED_KEYWORDS = new Set(['$schema', '$defs', '$id', 'if', 'then', 'else', 'not', 'x-oneOfMessage']);
const COMBINATORS = new Set(['oneOf', 'anyOf', 'allOf']);
/** Keywords that describe a value without constraining it. */
const ANNOTATION_KEYWORDS = new Set(['title', 'description', '$comment', 'examples', 'default', 'deprecated']);

type Schema = { [key: string]: unknown };

const BANNER = `/**
 * The protocol's types, generated from the repository's protocol/schema by
 * scripts/generate-protocol-types.ts. Do not edit: run \`npm run generate\`.
 * A test fails when this file differs from what the schemas produce.
 */`;

export async function generateProtocolTypes(schemaDir: string = SCHEMA_DIR): Promise<string> {
  const files = schemaFiles(schemaDir);
  const schemas = new Map(
    files.map((file) => [file, JSON.parse(readFileSync(path.join(schemaDir, file), 'utf8')) as Schema]),
  );
  const defs: Record<string, unknown> = {};
  for (const [file, schema] of schemas) {
    if (file === 'error.json') defs['error.json'] = convert(schema, file, schemas);
    for (const [name, def] of Object.entries(definitions(schema)))
      defs[`${file}#${name}`] = convert(def, file, schemas);
  }
  const root: JSONSchema = {
    title: 'ProtocolMethods',
    description: 'Every method: its params and result types.',
    type: 'object',
    additionalProperties: false,
    properties: Object.fromEntries(
      files.filter((f) => f.startsWith('methods/')).map((file) => [stem(file), pair(file, schemas)]),
    ),
    required: files.filter((f) => f.startsWith('methods/')).map(stem),
    $defs: defs,
  } as JSONSchema;
  const methods = await compile(root, 'ProtocolMethods', {
    bannerComment: BANNER,
    additionalProperties: false,
    unreachableDefinitions: true,
    ignoreMinAndMaxItems: true,
    strictIndexSignatures: true,
  });
  return `${methods}\n${notificationMap(files, schemas)}`;
}

function schemaFiles(schemaDir: string): string[] {
  const inDir = (dir: string): string[] =>
    readdirSync(path.join(schemaDir, dir))
      .filter((f) => f.endsWith('.json'))
      .sort()
      .map((f) => path.posix.join(dir, f));
  return ['common.json', 'error.json', 'message.json', ...inDir('methods'), ...inDir('notifications')];
}

function definitions(schema: Schema): Record<string, unknown> {
  const defs = schema['$defs'];
  return typeof defs === 'object' && defs !== null ? (defs as Record<string, unknown>) : {};
}

function stem(file: string): string {
  return path.posix.basename(file, '.json');
}

function pair(file: string, schemas: ReadonlyMap<string, Schema>): JSONSchema {
  const ref = (name: string): JSONSchema => ({ tsType: typeName(file, `/$defs/${name}`, schemas) }) as JSONSchema;
  return {
    type: 'object',
    additionalProperties: false,
    required: ['params', 'result'],
    properties: { params: ref('params'), result: ref('result') },
  };
}

function notificationMap(files: readonly string[], schemas: ReadonlyMap<string, Schema>): string {
  const entries = files
    .filter((file) => file.startsWith('notifications/'))
    .map((file) => `  ${stem(file)}: ${typeName(file, '/$defs/params', schemas)};`);
  return `/**\n * Every notification the sidecar sends: its params type.\n */\nexport interface ProtocolNotifications {\n${entries.join('\n')}\n}\n`;
}

/** A copy of `node` with refs turned into type names and inexpressible keywords dropped. */
function convert(node: unknown, file: string, schemas: ReadonlyMap<string, Schema>): unknown {
  if (Array.isArray(node)) return node.map((item) => convert(item, file, schemas));
  if (typeof node !== 'object' || node === null) return node;
  const schema = node as Schema;
  const out: Schema = {};
  for (const [key, value] of Object.entries(schema)) {
    if (DROPPED_KEYWORDS.has(key) || (COMBINATORS.has(key) && constraintsOnly(value))) continue;
    if (key === '$ref') out['tsType'] = refName(String(value), file, schemas);
    else if (key === 'properties') out[key] = convertProperties(value, file, schemas);
    else if (key === 'title') out['title'] = RENAMES[String(value)] ?? value;
    else out[key] = convert(value, file, schemas);
  }
  return out;
}

/**
 * A `properties` map; a property whose schema only annotates (any JSON value, like a
 * result's parsed `json`) becomes `unknown`, where json-schema-to-typescript would make it
 * an object.
 */
function convertProperties(node: unknown, file: string, schemas: ReadonlyMap<string, Schema>): unknown {
  if (typeof node !== 'object' || node === null || Array.isArray(node)) return convert(node, file, schemas);
  return Object.fromEntries(
    Object.entries(node).map(([name, schema]) => {
      const converted = convert(schema, file, schemas);
      const anyValue =
        typeof schema === 'object' && schema !== null && Object.keys(schema).every((k) => ANNOTATION_KEYWORDS.has(k));
      return [name, anyValue ? { ...(converted as Schema), tsType: 'unknown' } : converted];
    }),
  );
}

/** A combinator whose branches only constrain (required keys, conditions): no shapes of their own. */
function constraintsOnly(branches: unknown): boolean {
  const isConstraint = (branch: unknown): boolean =>
    typeof branch === 'object' && branch !== null && Object.keys(branch).every((k) => CONSTRAINT_KEYWORDS.includes(k));
  return Array.isArray(branches) && branches.every(isConstraint);
}

function refName(ref: string, file: string, schemas: ReadonlyMap<string, Schema>): string {
  const [target = '', pointer = ''] = ref.split('#');
  return typeName(target === '' ? file : path.posix.join(path.posix.dirname(file), target), pointer, schemas);
}

/** The generated name of the schema at `file#pointer`: its title. */
function typeName(file: string, pointer: string, schemas: ReadonlyMap<string, Schema>): string {
  let node: unknown = schemas.get(file);
  for (const part of pointer.split('/').filter(Boolean)) node = (node as Schema | undefined)?.[part];
  const title = (node as Schema | undefined)?.['title'];
  if (typeof title !== 'string') throw new Error(`${file}#${pointer} has no title to name its type`);
  const name = (RENAMES[title] ?? title).replace(/(^|[^A-Za-z0-9])([a-z])/g, (_m, _sep: string, c: string) =>
    c.toUpperCase(),
  );
  return name.replace(/[^A-Za-z0-9]/g, '');
}

async function main(): Promise<void> {
  const generated = await generateProtocolTypes();
  if (process.argv.includes('--check')) {
    const current = readFileSync(OUTPUT_FILE, 'utf8');
    if (current !== generated) {
      console.error(`${OUTPUT_FILE} is out of date with ${SCHEMA_DIR}; run npm run generate`);
      process.exit(1);
    }
    console.log('protocol-types.ts matches the schemas');
  } else {
    writeFileSync(OUTPUT_FILE, generated);
    console.log(`wrote ${OUTPUT_FILE}`);
  }
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main();
}
