// The version of emo, as `emo --version` prints it and as emo records it in what it writes.
#pragma once

namespace emo {

inline constexpr const char* kEmoVersion = "0.1.0";

}  // namespace emo
