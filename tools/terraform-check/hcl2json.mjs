#!/usr/bin/env node
// Usage: node tools/terraform-check/hcl2json.mjs <dir>
// Prints one JSON document: { "<file>.tf": <hcl2json output>, ... } for every *.tf in <dir>, so tests can see which
// file a block came from. Exits 1 with the parser's message on invalid HCL.
import { parse } from '@cdktf/hcl2json';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: hcl2json.mjs <terraform dir>');
  process.exit(2);
}
const files = (await readdir(dir)).filter((f) => f.endsWith('.tf')).sort();
const out = {};
try {
  for (const f of files) {
    out[f] = await parse(f, await readFile(path.join(dir, f), 'utf8'));
  }
} catch (e) {
  console.error(String(e?.message ?? e));
  process.exit(1);
}
process.stdout.write(JSON.stringify(out));
