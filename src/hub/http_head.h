// The parts of an HTTP response that `emo pull` reads, parsed without any I/O so that they can be tested and
// fuzzed on their own: the status line and headers (as libcurl hands them over, several heads when
// redirects were followed: the last one counts), Content-Range, Retry-After, and the Hugging Face Hub's file
// headers (X-Repo-Commit, ETag, X-Linked-Etag = the sha256 of a file kept in LFS, X-Linked-Size, Location,
// X-Error-Code / X-Error-Message).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace emo {

struct HttpHead {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased; a repeated header keeps the last value

  // The header's value, or "" when absent (name in any case).
  std::string header(const std::string& name) const;
};

// Parses a block of response-head lines ("HTTP/1.1 206 Partial Content\r\nContent-Range: ...\r\n\r\n").
// Each status line starts a new head (redirects followed). Throws emo::Error "[http] response: line N: ..."
// for a line that is neither a status line nor "Name: value", or a block with no status line.
HttpHead parse_http_head(std::string_view block);

struct ContentRange {
  uint64_t begin = 0, end = 0;  // inclusive, as in the header
  std::optional<uint64_t> total;
};
// "bytes 0-7/1234" (total may be "*"); nullopt when malformed.
std::optional<ContentRange> parse_content_range(std::string_view value);

// Seconds a 429 / 503 asks to wait: Retry-After as a number of seconds; nullopt when absent or an HTTP date.
std::optional<double> retry_after_seconds(const HttpHead& head);

// An ETag without W/ and quotes, as the Hub's client compares them.
std::string normalize_etag(std::string_view etag);

// What the Hub says of one file of a repository at a revision (the answer to HEAD resolve/REV/FILE).
struct HubFileInfo {
  std::string commit;    // X-Repo-Commit: the revision resolved to a commit id
  std::string etag;      // X-Linked-Etag when present (LFS: sha256 of the content), else ETag (git blob sha1)
  bool lfs = false;      // X-Linked-Etag was present
  int64_t size = -1;     // X-Linked-Size, else Content-Length
  std::string location;  // where the content is (a redirect to the storage host), "" when served directly
};
HubFileInfo hub_file_info(const HttpHead& head);

// "401 (GatedRepo: Access to model x is restricted)" style description of a failed Hub answer.
std::string hub_error_text(const HttpHead& head);

}  // namespace emo
