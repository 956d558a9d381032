// Copies the renderer's static files (HTML, CSS) next to the compiled renderer.js.
import { cpSync } from 'node:fs';

for (const file of ['index.html', 'style.css']) {
  cpSync(new URL(`../src/renderer/${file}`, import.meta.url), new URL(`../dist/renderer/${file}`, import.meta.url));
}
