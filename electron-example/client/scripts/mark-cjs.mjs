// Marks dist/cjs as CommonJS (the package is "type": "module"), so that Node and TypeScript read
// its .js and .d.ts files as CommonJS: the `require` condition of the package's exports.
import { writeFileSync } from 'node:fs';

writeFileSync(new URL('../dist/cjs/package.json', import.meta.url), `${JSON.stringify({ type: 'commonjs' })}\n`);
