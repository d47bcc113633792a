// llama.cpp (node-llama-cpp's prebuilt CPU binding) for the GGUF parity tests:
//   node llama_generate.mjs INSTALL_DIR MODEL.gguf '[prompt ids]' N_NEW ['text to tokenize']
// prints one JSON line {"tokens": [...], "tokenized": [...]}: greedy generation;
//   node llama_generate.mjs INSTALL_DIR MODEL.gguf '[ids]' logprobs
// prints {"logprobs": [log p(ids[1] | ids[0]), log p(ids[2] | ids[0..1]), ...]}: the full distribution of each
// position (temperature 1, no top-k / top-p / min-p cut), read at the next id.
import { createRequire } from "node:module";
import path from "node:path";

const [installDir, modelPath, idsJson, mode, text] = process.argv.slice(2);
const require = createRequire(path.join(installDir, "node_modules", "index.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ contextSize: 64, threads: 1, batchSize: 64 });
const sequence = context.getSequence();
const ids = JSON.parse(idsJson);

async function greedy(limit) {
  const tokens = [];
  for await (const token of sequence.evaluate(ids, { temperature: 0 })) {
    tokens.push(token);
    if (tokens.length >= limit) break;
  }
  const tokenized = text === undefined ? [] : model.tokenize(text);
  return { tokens, tokenized };
}

async function logprobs() {
  const full = { temperature: 1, topK: 0, topP: 1, minP: 0 };
  const input = ids.map((id, i) =>
    i + 1 < ids.length ? [id, { generateNext: { probabilities: true, options: full } }] : id);
  const output = await sequence.controlledEvaluate(input);
  const values = [];
  for (let i = 0; i + 1 < ids.length; ++i) {
    const p = output[i]?.next?.probabilities?.get(ids[i + 1]);
    values.push(p === undefined ? null : Math.log(p));
  }
  return { logprobs: values };
}

console.log(JSON.stringify(mode === "logprobs" ? await logprobs() : await greedy(Number(mode))));
await context.dispose();
await model.dispose();
await llama.dispose();
