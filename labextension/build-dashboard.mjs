// Bundles the admin dashboard for the engine's own page (/services/potluck/ under a Hub):
// lib/standalone.js (tsc's output) and what it imports into one script, and the styles into one
// sheet, next to the lab extension's files: ../jupyter_ext/labextension/static/potluck-dashboard.{js,css}.
// The wheel installs that folder (share/jupyter/labextensions/jupyter-potluck/static/), where the
// engine's http/dashboard.py finds them. Run by `jlpm build:prod` after the lab extension's build.
//
// Uses @rspack/core, the bundler @jupyter/builder already brings: no dependency of its own.

import { createRequire } from 'module';
import { mkdirSync, readFileSync, writeFileSync } from 'fs';
import path from 'path';
import { fileURLToPath } from 'url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const { rspack } = require('@rspack/core');
const out = path.resolve(here, '../jupyter_ext/labextension/static');
const production = !process.argv.includes('--development');

mkdirSync(out, { recursive: true });
// The page has no JupyterLab around it: its variables first, then the panel's and dashboard's rules.
const css = ['standalone.css', 'index.css', 'dashboard.css']
  .map((f) => `/* ${f} */\n` + readFileSync(path.join(here, 'style', f), 'utf8').replace(/^@import .*$/gm, ''))
  .join('\n');
writeFileSync(path.join(out, 'potluck-dashboard.css'), css);

rspack({
  mode: production ? 'production' : 'development',
  context: here,
  entry: './lib/standalone.js',
  target: 'web',
  devtool: production ? false : 'source-map',
  output: { path: out, filename: 'potluck-dashboard.js', clean: false },
  optimization: { splitChunks: false },
}, (err, stats) => {
  if (err || stats.hasErrors()) {
    console.error(err || stats.toString({ all: false, errors: true }));
    process.exit(1);
  }
  console.log(`potluck-dashboard.js and .css -> ${out}`);
});
