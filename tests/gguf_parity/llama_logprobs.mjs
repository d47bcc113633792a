// Next-token log-probabilities through llama.cpp (node-llama-cpp's prebuilt CPU binding) for the GGUF
// perplexity test:
//   node llama_logprobs.mjs INSTALL_DIR MODEL.gguf '[token ids]'
// prints one JSON line {"logprobs": [log p(ids[1] | ids[0]), log p(ids[2] | ids[0..1]), ...]}: the full
// distribution of each position (temperature 1, no top-k / top-p / min-p cut), read at the next id.
import { createRequire } from "node:module";
import path from "node:path";

const [installDir, modelPath, idsJson] = process.argv.slice(2);
const require = createRequire(path.join(installDir, "node_modules", "index.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ contextSize: 64, threads: 1, batchSize: 64 });
const sequence = context.getSequence();
const ids = JSON.parse(idsJson);
const full = { temperature: 1, topK: 0, topP: 1, minP: 0 };
const input = ids.map((id, i) =>
  i + 1 < ids.length ? [id, { generateNext: { probabilities: true, options: full } }] : id);
const output = await sequence.controlledEvaluate(input);
const logprobs = [];
for (let i = 0; i + 1 < ids.length; ++i) {
  const p = output[i]?.next?.probabilities?.get(ids[i + 1]);
  logprobs.push(p === undefined ? null : Math.log(p));
}
console.log(JSON.stringify({ logprobs }));
await context.dispose();
await model.dispose();
await llama.dispose();
