// The package's `prepare`: build it where npm installs it from (a folder, a git checkout) or packs it.
//
// The build needs the devDependencies. npm installs them first for a git dependency, and for a
// folder inside the installing project (this example's `file:client`), but not for a folder
// anywhere else (`npm install <checkout>/electron-example/client`): then this installs them into
// the folder first, from package-lock.json, with npm's own settings (an `--offline` install stays
// offline; the cache has them once this example was installed).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const manifestUrl = new URL('../package.json', import.meta.url);
const root = fileURLToPath(new URL('.', manifestUrl));
const { devDependencies = {} } = JSON.parse(readFileSync(manifestUrl, 'utf8'));
// Found here or in a folder above (this example's node_modules): what the build's tools resolve too.
const resolve = createRequire(manifestUrl).resolve;
const missing = Object.keys(devDependencies).filter((name) => {
  try {
    resolve(`${name}/package.json`);
    return false;
  } catch {
    return true;
  }
});
const npm = (args) => execFileSync('npm', args, { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
if (missing.length > 0) {
  console.error(`llama-sidecar-client: installing the devDependencies its build needs (${missing.join(', ')})`);
  npm(['ci', '--include=dev', '--ignore-scripts', '--no-audit', '--no-fund']);
}
npm(['run', 'build']);
