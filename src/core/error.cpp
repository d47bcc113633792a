#include "core/error.h"

namespace emo {

void fail(const std::string& op, const std::string& message) {
  throw Error("[" + op + "] " + message);
}

void fail_file(const std::string& op, const std::string& file, const std::string& message) {
  throw Error("[" + op + "] " + file + ": " + message);
}

void fail_at(const std::string& op, const std::string& file, const std::string& position,
             const std::string& message) {
  throw Error("[" + op + "] " + file + ": " + position + ": " + message);
}

}  // namespace emo
