// The Hub's response heads parsed without I/O (hub/http_head.h), and the digests that verify Hub files.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/process.h"
#include "fake_hub.h"
#include "hub/http_head.h"
#include "hub/hub_client.h"

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

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7919) >> 3);
  return s;
}

TEST(HubClient, FileInfoOfAnLfsFileAndAGitFileAndRangesThroughTheRedirect) {
  testing::FakeHub hub("org/tiny");
  const std::string weights = pattern(100000);
  hub.add_file("model.safetensors", weights, true);
  hub.add_file("config.json", "{\"a\": 1}", false);
  HubClient client = testing::fast_client(hub);
  auto info = client.file_info("org/tiny", "main", "model.safetensors");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->commit, testing::FakeHub::kCommit);
  EXPECT_TRUE(info->lfs);
  EXPECT_EQ(info->etag, data::sha256_hex(weights));
  EXPECT_EQ(info->size, 100000);
  EXPECT_NE(info->location.find("/lfs/model.safetensors"), std::string::npos);
  auto config = client.file_info("org/tiny", "main", "config.json");
  ASSERT_TRUE(config);
  EXPECT_FALSE(config->lfs);
  EXPECT_EQ(config->etag, data::git_blob_sha1_hex("{\"a\": 1}"));
  EXPECT_FALSE(client.file_info("org/tiny", "main", "missing.json"));

  const std::string url = client.resolve_url("org/tiny", testing::FakeHub::kCommit, "model.safetensors");
  EXPECT_EQ(client.get(url, "range", 8, 4000), weights.substr(8, 3992));
  EXPECT_EQ(client.get(client.resolve_url("org/tiny", "main", "config.json"), "config"), "{\"a\": 1}");
  EXPECT_EQ(hub.body_bytes(), 3992u + 8u);

  // Handles are kept between calls: ten ranges do not open ten connections.
  const int64_t opened = client.connections();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(client.get(url, "range", i, i + 1), weights.substr(i, 1));
  EXPECT_LE(client.connections() - opened, 6);
}

TEST(HubClient, PassingFaultsAreRetried) {
  testing::FakeHub hub("org/tiny");
  const std::string weights = pattern(50000);
  hub.add_file("model.safetensors", weights, true);
  HubClient client = testing::fast_client(hub);
  const std::string url = client.resolve_url("org/tiny", "main", "model.safetensors");
  using F = testing::FakeHub::Fault;
  for (F fault : {F::kDropMidBody, F::kServerError, F::kTruncatedRange}) {
    hub.inject(fault, "/lfs/");
    EXPECT_EQ(client.get(url, "range", 100, 40000), weights.substr(100, 39900)) << static_cast<int>(fault);
    EXPECT_EQ(hub.faults_left(), 0);
  }
  // A 429 is retried after the Retry-After it gives (1 s), not the client's own short wait.
  hub.inject(F::kRateLimited, "/lfs/");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(client.get(url, "range", 0, 10), weights.substr(0, 10));
  EXPECT_GE(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 0.9);
}

TEST(HubClient, PersistentFaultsAreReportedByName) {
  testing::FakeHub hub("org/tiny");
  hub.add_file("model.safetensors", pattern(5000), true);
  HubClient client = testing::fast_client(hub);
  hub.inject(testing::FakeHub::Fault::kServerError, "/lfs/", 10);
  const std::string url = client.resolve_url("org/tiny", "main", "model.safetensors");
  try {
    client.get(url, "model.safetensors bytes 0-9", 0, 10);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[hub] model.safetensors bytes 0-9: HTTP 500"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("gave up after 4 tries"), std::string::npos) << e.what();
  }
}

TEST(HubClient, AGatedRepositoryNeedsTheTokenWhichStaysOnTheHub) {
  testing::FakeHub hub("org/gated");
  const std::string weights = pattern(3000);
  hub.add_file("model.safetensors", weights, true);
  hub.require_token("hf_secret");
  HubClient anonymous = testing::fast_client(hub);
  try {
    anonymous.file_info("org/gated", "main", "model.safetensors");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("HTTP 401 (GatedRepo"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("HF_TOKEN"), std::string::npos) << e.what();
  }
  HubClient client = testing::fast_client(hub, "hf_secret");
  EXPECT_TRUE(client.file_info("org/gated", "main", "model.safetensors"));
  EXPECT_EQ(client.get(client.resolve_url("org/gated", "main", "model.safetensors"), "r", 0, 3000), weights);
  EXPECT_EQ(hub.storage_auth_headers(), 0) << "the token was sent to the storage host";
}

TEST(HubClient, ConfigFromTheEnvironment) {
  const auto dir = std::filesystem::temp_directory_path() / "emo_hub_config_test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "token") << "hf_from_file\n";
  setenv("HF_ENDPOINT", "http://127.0.0.1:1/", 1);
  unsetenv("HF_TOKEN");
  setenv("HF_HOME", dir.c_str(), 1);
  HubConfig config = hub_config_from_environment();
  EXPECT_EQ(config.endpoint, "http://127.0.0.1:1");
  EXPECT_EQ(config.token, "hf_from_file");
  setenv("HF_TOKEN", "hf_env", 1);
  EXPECT_EQ(hub_config_from_environment().token, "hf_env");
  unsetenv("HF_TOKEN");
  unsetenv("HF_HOME");
  unsetenv("HF_ENDPOINT");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace emo
