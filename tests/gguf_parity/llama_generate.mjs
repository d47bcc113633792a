// Greedy generation through llama.cpp (node-llama-cpp's prebuilt CPU binding) for the GGUF parity test:
//   node llama_generate.mjs INSTALL_DIR MODEL.gguf '[prompt ids]' N_NEW ['text to tokenize']
// prints one JSON line {"tokens": [...], "tokenized": [...]}.
import { createRequire } from "node:module";
import path from "node:path";

const [installDir, modelPath, promptJson, nNew, text] = process.argv.slice(2);
const require = createRequire(path.join(installDir, "node_modules", "index.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ contextSize: 64, threads: 1, batchSize: 64 });
const sequence = context.getSequence();
const tokens = [];
const limit = Number(nNew);
for await (const token of sequence.evaluate(JSON.parse(promptJson), { temperature: 0 })) {
  tokens.push(token);
  if (tokens.length >= limit) break;
}
const tokenized = text === undefined ? [] : model.tokenize(text);
console.log(JSON.stringify({ tokens, tokenized }));
await context.dispose();
await model.dispose();
await llama.dispose();
