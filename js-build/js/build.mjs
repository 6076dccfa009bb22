// The two steps of a JavaScript script's build, run by wvpc (crate wvpc-js-build) with the
// toolchain's node_modules next to this file:
//   node build.mjs bundle <entry> <shim> <bindings.json> <out-dir>  → <out-dir>/bundle.js, inputs.json
//   node build.mjs componentize <bundle.js> <wit-dir> <out.wasm> <entry, for messages>
// A problem in the script exits with status 2 and its messages (file:line:column) on stderr;
// a failure of the tools exits with 1.
import { readFile, writeFile } from 'node:fs/promises';
import { resolve, relative } from 'node:path';

const [mode, ...args] = process.argv.slice(2);

function scriptProblem(text) {
  process.stderr.write(text.endsWith('\n') ? text : `${text}\n`);
  process.exit(2);
}

async function bundle(entry, shimPath, bindingsJson, outDir) {
  const esbuild = await import('esbuild');
  const absEntry = resolve(entry);
  const shim = await readFile(shimPath, 'utf8');
  const where = (loc) => (loc ? `${relative(process.cwd(), resolve(loc.file))}:${loc.line}:${loc.column + 1}: ` : '');
  let result;
  try {
    result = await esbuild.build({
      stdin: {
        contents: shim
          .replace('"wvpc:entry"', JSON.stringify(absEntry))
          .replace('"wvpc:bindings"', JSON.stringify(JSON.parse(bindingsJson))),
        resolveDir: process.cwd(),
        sourcefile: 'wvpc-shim.js',
        loader: 'js',
      },
      bundle: true,
      write: false,
      format: 'esm',
      platform: 'neutral',
      target: 'es2022',
      mainFields: ['module', 'main'],
      conditions: ['workerd', 'worker', 'browser'],
      external: ['wasi:*', 'wvpc:*'],
      metafile: true,
      logLevel: 'silent',
      legalComments: 'none',
    });
  } catch (failure) {
    if (!failure.errors) throw failure;
    const lines = failure.errors.map((e) => {
      if (/No matching export in .* for import "default"/.test(e.text)) {
        return `${relative(process.cwd(), absEntry)}: the script has no default export; a script exports its handler: export default { async fetch(request, env, ctx) { ... } }`;
      }
      return `${where(e.location)}error: ${e.text}${e.location?.lineText ? `\n    ${e.location.lineText}` : ''}`;
    });
    scriptProblem(lines.join('\n'));
  }
  const inputs = Object.keys(result.metafile.inputs)
    .filter((p) => p !== '<stdin>')
    .map((p) => resolve(p));
  await writeFile(`${outDir}/bundle.js`, result.outputFiles[0].contents);
  await writeFile(`${outDir}/inputs.json`, JSON.stringify(inputs));
}

async function componentizeBundle(bundlePath, witDir, outPath, entry) {
  const { componentize } = await import('@bytecodealliance/componentize-js');
  let component;
  try {
    ({ component } = await componentize({
      sourcePath: bundlePath,
      witPath: witDir,
      worldName: 'script',
      enableAot: false,
    }));
  } catch (failure) {
    // Initialization runs the script's top level: its exceptions are the script's problem.
    const text = String(failure?.message ?? failure);
    const shim = text.match(/wvpc: (.*)/);
    if (shim) scriptProblem(`${entry}: ${shim[1]}`);
    const thrown = text.match(/Exception while evaluating top-level script\n([\s\S]*?)(\nAdditionally|\n\s+at componentize|$)/);
    if (thrown) {
      scriptProblem(`${entry}: the script threw while it was initialized (its top level runs at build time; positions are in the bundle):\n${thrown[1].trim()}`);
    }
    throw failure;
  }
  await writeFile(outPath, component);
}

try {
  if (mode === 'bundle') await bundle(...args);
  else if (mode === 'componentize') await componentizeBundle(...args);
  else throw new Error(`unknown mode ${mode}`);
} catch (failure) {
  process.stderr.write(`${failure?.stack ?? failure}\n`);
  process.exit(1);
}
