// Prints the token ids Hugging Face tokenizers gives for each text: one JSON array per line.
//   node hf_encode.js TOKENIZER_JSON TEXTS_JSON
// TEXTS_JSON holds a JSON array of strings. The tokenizers package is looked up in $EMO_CACHE/node-tokenizers
// (default <repo>/.cache), where setup.sh installs it.
'use strict';
const fs = require('fs');
const path = require('path');

const cache = process.env.EMO_CACHE || path.join(__dirname, '..', '..', '.cache');
const { Tokenizer } = require(path.join(cache, 'node-tokenizers', 'node_modules', '@anush008', 'tokenizers'));

async function main() {
  const [tokenizerPath, textsPath] = process.argv.slice(2);
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  const texts = JSON.parse(fs.readFileSync(textsPath, 'utf8'));
  const lines = [];
  for (const text of texts) {
    const encoding = await tokenizer.encode(text, null, { addSpecialTokens: false });
    lines.push(JSON.stringify(encoding.getIds()));
  }
  process.stdout.write(lines.join('\n') + '\n');
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + '\n');
  process.exit(1);
});
