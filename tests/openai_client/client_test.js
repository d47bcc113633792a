// emo serve against OpenAI's official Node client (openai, fetched by scripts/fetch-npm): the client parses
// every response and stream of the server as it parses OpenAI's own.
//   node client_test.js OPENAI_PACKAGE_DIR PORT
'use strict';
const assert = require('assert');
const OpenAI = require(process.argv[2]).OpenAI;
const port = process.argv[3];

async function main() {
  const client = new OpenAI({baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'test-key', maxRetries: 0});
  const models = await client.models.list();
  assert.strictEqual(models.data[0].id, 'emo');

  const messages = [{role: 'user', content: 'Hello there'}];
  const chat = await client.chat.completions.create(
      {model: 'emo', messages, max_tokens: 6, temperature: 0, experts: 'all'});
  assert.strictEqual(chat.object, 'chat.completion');
  assert.strictEqual(typeof chat.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(chat.choices[0].finish_reason));
  assert.strictEqual(chat.experts.id, 'all');

  const stream = await client.chat.completions.create({
    model: 'emo', messages, max_tokens: 6, temperature: 0, stream: true,
    stream_options: {include_usage: true}});
  let text = '', finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.delta.content || '';
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  assert.strictEqual(text, chat.choices[0].message.content);
  assert.strictEqual(finish, chat.choices[0].finish_reason);
  assert.strictEqual(usage.completion_tokens, chat.usage.completion_tokens);

  const completion = await client.completions.create({model: 'emo', prompt: 'abc', max_tokens: 4, temperature: 0});
  assert.strictEqual(completion.object, 'text_completion');
  let streamed = '';
  for await (const chunk of await client.completions.create(
                 {model: 'emo', prompt: 'abc', max_tokens: 4, temperature: 0, stream: true})) {
    streamed += chunk.choices[0].text;
  }
  assert.strictEqual(streamed, completion.choices[0].text);

  try {
    await client.chat.completions.create({model: 'emo', messages, n: 2});
    assert.fail('n=2 was accepted');
  } catch (e) {
    assert.ok(e instanceof OpenAI.BadRequestError, String(e));
    assert.strictEqual(e.status, 400);
    assert.strictEqual(e.param, 'n');
  }
  const wrongKey = new OpenAI({baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'other', maxRetries: 0});
  try {
    await wrongKey.models.list();
    assert.fail('a wrong key was accepted');
  } catch (e) {
    assert.ok(e instanceof OpenAI.AuthenticationError, String(e));
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e);
  process.exit(1);
});
