// Hugging Face tokenizers (Node binding) side of bench_tokenizer: encodes the documents one after another
// (one thread) and prints {"mb_per_s": ..., "tokens": ...} as one JSON line.
//   node bench_tokenizer_hf.js TOKENIZER_JSON DOCUMENTS_JSON PASSES
'use strict';
const fs = require('fs');
const path = require('path');

process.env.TOKENIZERS_PARALLELISM = 'false';
process.env.RAYON_NUM_THREADS = '1';
const cache = process.env.EMO_CACHE || path.join(__dirname, '..', '.cache');
const { Tokenizer } = require(path.join(cache, 'node-tokenizers', 'node_modules', '@anush008', 'tokenizers'));

async function main() {
  const [tokenizerPath, documentsPath, passesArg] = process.argv.slice(2);
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  const documents = JSON.parse(fs.readFileSync(documentsPath, 'utf8'));
  const bytes = documents.reduce((sum, d) => sum + Buffer.byteLength(d, 'utf8'), 0);
  let best = Infinity;
  let tokens = 0;
  for (let pass = 0; pass < Number(passesArg || 3); ++pass) {
    const start = process.hrtime.bigint();
    tokens = 0;
    for (const document of documents) {
      const encoding = await tokenizer.encode(document, null, { addSpecialTokens: false });
      tokens += encoding.getIds().length;
    }
    best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e9);
  }
  process.stdout.write(JSON.stringify({ mb_per_s: bytes / 1e6 / best, tokens, seconds: best }) + '\n');
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + '\n');
  process.exit(1);
});
