// Whether the test binary is built with AddressSanitizer (the sanitizer suite), for the few tests whose
// figures it changes (resident memory: quarantined blocks, redzones, shadow) or whose mechanism it replaces
// (thread creation).
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define EMO_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMO_TEST_UNDER_ASAN 1
#endif
#endif

namespace emo::test {
#ifdef EMO_TEST_UNDER_ASAN
inline constexpr bool kUnderAddressSanitizer = true;
#else
inline constexpr bool kUnderAddressSanitizer = false;
#endif
}  // namespace emo::test
