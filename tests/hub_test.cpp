// The Hub's response heads parsed without I/O (hub/http_head.h), and the digests that verify Hub files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/process.h"
#include "hub/http_head.h"

namespace emo {
namespace {

TEST(HttpHead, LastHeadOfARedirectChainCountsAndNamesAreCaseInsensitive) {
  const HttpHead head = parse_http_head(
      "HTTP/1.1 302 Found\r\nLocation: https://cdn.example/x\r\nX-Linked-Size: 99\r\n\r\n"
      "HTTP/2 206 \r\ncontent-range: bytes 0-7/1234\r\nContent-Length: 8\r\n\r\n");
  EXPECT_EQ(head.status, 206);
  EXPECT_EQ(head.header("Content-Range"), "bytes 0-7/1234");
  EXPECT_EQ(head.header("x-linked-size"), "");  // belonged to the redirect
}

TEST(HttpHead, HubFileHeadersOfAnLfsFileAndOfAGitFile) {
  const HttpHead lfs = parse_http_head(
      "HTTP/1.1 302 Found\r\nX-Repo-Commit: 0123abcd\r\nETag: W/\"git-oid\"\r\n"
      "X-Linked-Etag: \"5f0c\"\r\nX-Linked-Size: 27000000000\r\nLocation: https://cdn/a?x=1\r\n\r\n");
  HubFileInfo info = hub_file_info(lfs);
  EXPECT_EQ(info.commit, "0123abcd");
  EXPECT_TRUE(info.lfs);
  EXPECT_EQ(info.etag, "5f0c");
  EXPECT_EQ(info.size, 27000000000);
  EXPECT_EQ(info.location, "https://cdn/a?x=1");
  const HttpHead git =
      parse_http_head("HTTP/1.1 200 OK\r\nX-Repo-Commit: c\r\nETag: \"ce0136\"\r\nContent-Length: 6\r\n\r\n");
  info = hub_file_info(git);
  EXPECT_FALSE(info.lfs);
  EXPECT_EQ(info.etag, "ce0136");
  EXPECT_EQ(info.size, 6);
  EXPECT_EQ(info.location, "");
}

TEST(HttpHead, ErrorsRetryAfterAndContentRange) {
  const HttpHead gated = parse_http_head(
      "HTTP/1.1 401 Unauthorized\r\nX-Error-Code: GatedRepo\r\nX-Error-Message: Access restricted\r\n\r\n");
  EXPECT_EQ(hub_error_text(gated), "HTTP 401 (GatedRepo: Access restricted)");
  EXPECT_EQ(retry_after_seconds(parse_http_head("HTTP/1.1 429 x\r\nRetry-After: 3\r\n")), 3.0);
  EXPECT_FALSE(retry_after_seconds(parse_http_head("HTTP/1.1 429 x\r\nRetry-After: Wed, 21 Oct\r\n")));
  auto range = parse_content_range("bytes 8-1031/5000");
  ASSERT_TRUE(range);
  EXPECT_EQ(range->begin, 8u);
  EXPECT_EQ(range->end, 1031u);
  EXPECT_EQ(range->total, 5000u);
  EXPECT_FALSE(parse_content_range("bytes 9-8/100"));
  EXPECT_FALSE(parse_content_range("bytes 0-99/100x"));
  EXPECT_FALSE(parse_content_range("bytes 0-100/100"));
  EXPECT_FALSE(parse_content_range("items 0-1/2"));
  EXPECT_TRUE(parse_content_range("bytes 0-1/*"));
}

TEST(HttpHead, MalformedHeadsAreErrorsNamingTheLine) {
  EXPECT_THROW(parse_http_head(""), Error);
  EXPECT_THROW(parse_http_head("Content-Length: 3\r\n"), Error);
  try {
    parse_http_head("HTTP/1.1 200 OK\r\nno colon here\r\n");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  EXPECT_EQ(hub_file_info(parse_http_head("HTTP/1.1 200 OK\r\nContent-Length: -4\r\n")).size, -1);
}

TEST(HubDigests, GitBlobIdAndRangesOfAFile) {
  EXPECT_EQ(data::git_blob_sha1_hex("hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a");  // git hash-object
  const auto path = std::filesystem::temp_directory_path() / "emo_hub_digest_test.bin";
  std::ofstream(path, std::ios::binary) << "0123456789";
  EXPECT_EQ(data::sha256_file_range_hex(path.string(), 2, 3), data::sha256_hex("234"));
  EXPECT_EQ(data::sha256_file_hex(path.string()), data::sha256_hex("0123456789"));
  EXPECT_THROW(data::sha256_file_range_hex(path.string(), 8, 5), Error);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace emo
