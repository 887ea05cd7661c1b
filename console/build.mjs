// Builds the console into trimtab/console/static/: app.js, app.css and index.html.
// Minified, no source maps, no network: the same sources give the same bytes.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "trimtab", "console", "static");
mkdirSync(out, { recursive: true });

const common = {
  bundle: true,
  minify: true,
  sourcemap: false,
  legalComments: "none",
  logLevel: "warning",
  target: "es2020",
};

await build({ ...common, entryPoints: [join(here, "src", "main.js")], outfile: join(out, "app.js"), format: "iife" });
await build({ ...common, entryPoints: [join(here, "src", "app.css")], outfile: join(out, "app.css") });
copyFileSync(join(here, "index.html"), join(out, "index.html"));
console.log(`built ${out}`);
