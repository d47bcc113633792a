// The request bodies of emo serve's OpenAI API (serve/openai.h): the first byte chooses /v1/completions or
// /v1/chat/completions, the rest is the body. An accepted request is rendered with the chat template, its
// text streamed through the stop-string cutter and written back as a response, a chunk and a usage chunk.
// A rejection is an ApiError (the 4xx a client gets) or an emo::Error; anything else is a finding.
#include <string_view>

#include "fuzz_input.h"
#include "infer/text_stream.h"
#include "serve/chat_template.h"
#include "serve/openai.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool chat = (data[0] & 1) != 0;
  const std::string_view body = emo::fuzz::as_text(data + 1, size - 1);
  return emo::fuzz::run_parser([&] {
    using namespace emo::serve;
    CompletionRequest request;
    try {
      request = parse_completion_request(body, chat);
    } catch (const ApiError& rejected) {
      // As the server sends it: the message may quote the client's invalid UTF-8.
      rejected.to_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      return;
    }
    const std::string text =
        chat ? ChatTemplate::chatml().render_text(request.messages) : request.prompt_text.value_or("");
    emo::TextStream stream(request.stop);
    CompletionResult result;
    for (size_t at = 0; at < text.size() && !stream.stopped(); at += 3)
      result.text += stream.push(std::string_view(text).substr(at, 3));
    result.text += stream.finish();
    result.finish_reason = stream.stopped() ? "stop" : "length";
    const ResponseIds ids{"cmpl-fuzz", 0, request.model};
    response_json(request, ids, result).dump();
    chunk_json(request, ids, result.text, result.finish_reason, true).dump();
    usage_chunk_json(request, ids, result).dump();
  });
}
