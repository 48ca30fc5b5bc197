// Runs a script under MicroPython's WebAssembly port in Node.js, with modules placed in its filesystem.
//   node run_micropython.mjs MICROPYTHON_MJS SCRIPT.py [MODULE.py|MODULE.mpy ...] [-- ARG ...]
// The script's output goes to stdout; an uncaught Python exception exits 1 with its traceback on stderr.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { pathToFileURL } from "node:url";

const [mjs, script, ...rest] = process.argv.slice(2);
const cut = rest.indexOf("--");
const modules = cut < 0 ? rest : rest.slice(0, cut);
const args = cut < 0 ? [] : rest.slice(cut + 1);
const { loadMicroPython } = await import(pathToFileURL(mjs).href);
let out = "";
const mp = await loadMicroPython({
  heapsize: 8 * 1024 * 1024,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
mp.FS.mkdir("/lib");
for (const m of modules) mp.FS.writeFile("/lib/" + basename(m), readFileSync(m));
try {
  mp.runPython("import sys\nsys.path.insert(0, '/lib')\nsys.argv[:] = " + JSON.stringify([script, ...args]) + "\n" +
               readFileSync(script, "utf8"));
} catch (e) {
  process.stderr.write(String(e && e.message ? e.message : e) + "\n");
  process.exit(1);
}
