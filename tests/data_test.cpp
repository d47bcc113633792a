// Specification of src/data: the corpus text clean-ups, the split and output determinism, the binary dataset
// format, and the row packer (stream order, EOS, targets, segment ids, resume, ranks, held-out domains).
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/error.h"
#include "core/thread_pool.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "data/packer.h"
#include "data/process.h"
#include "data/text_clean.h"
#include "io/atomic_file.h"

namespace fs = std::filesystem;
using namespace emo::data;

namespace {

// A fresh directory per test under the build tree.
std::string temp_dir(const std::string& name) {
  fs::path dir = fs::path(EMO_BINARY_DIR) / "tests" / "data_test_tmp" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

template <typename Fn>
std::string error_message(Fn&& fn) {
  try {
    fn();
  } catch (const emo::Error& e) {
    return e.what();
  }
  return "(no emo::Error thrown)";
}

constexpr int32_t kEos = 0;

// Document d of the synthetic datasets holds tokens 1000 (d + 1) + i, so every token says where it came from.
std::vector<uint32_t> document_tokens(int d, int64_t length) {
  std::vector<uint32_t> tokens;
  for (int64_t i = 0; i < length; ++i) tokens.push_back(static_cast<uint32_t>(1000 * (d + 1) + i));
  return tokens;
}

std::string write_dataset(const std::string& path, const std::vector<int64_t>& lengths,
                          const std::vector<uint32_t>& domains = {}) {
  DatasetWriter writer({"alpha", "beta"}, 1u << 20);
  for (size_t d = 0; d < lengths.size(); ++d)
    writer.add(std::span<const uint32_t>(document_tokens(static_cast<int>(d), lengths[d])),
               domains.empty() ? 0 : domains[d]);
  writer.write(path);
  return path;
}

// The stream the packer must produce for one epoch: its documents in the packer's order, each plus EOS.
std::vector<int32_t> expected_epoch(const Packer& packer, const Dataset& dataset, uint64_t epoch) {
  std::vector<int32_t> stream;
  for (int64_t i = 0; i < packer.num_documents(); ++i) {
    for (uint32_t token : dataset.document(packer.document_at(epoch, static_cast<uint64_t>(i))))
      stream.push_back(static_cast<int32_t>(token));
    stream.push_back(kEos);
  }
  return stream;
}

std::vector<PackedBatch> take(Packer& packer, int n) {
  std::vector<PackedBatch> batches(n);
  for (auto& batch : batches) EXPECT_TRUE(packer.next(batch));
  return batches;
}

bool same(const PackedBatch& a, const PackedBatch& b) {
  return a.B == b.B && a.T == b.T && a.tokens == b.tokens && a.targets == b.targets &&
         a.doc_ids == b.doc_ids && a.attention_doc_ids == b.attention_doc_ids;
}

}  // namespace

// ---- text clean-ups
// ------------------------------------------------------------------------------------------

TEST(CorpusText, InvalidUtf8BecomesReplacementCharacters) {
  EXPECT_EQ(to_valid_utf8("caf\xC3\xA9"), "caf\xC3\xA9");
  EXPECT_EQ(to_valid_utf8("a\xFF"
                          "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(to_valid_utf8("\xC3"), "\xEF\xBF\xBD");                                  // truncated sequence
  EXPECT_EQ(to_valid_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // UTF-16 surrogate
}

TEST(CorpusText, WhitespaceIsNormalised) {
  EXPECT_EQ(normalize_whitespace("\n\n  Title  \r\n\r\n\r\n\r\nbody\tline \x03\n\n"),
            "  Title\n\nbody\tline");
  EXPECT_EQ(normalize_whitespace("a\rb"), "a\nb");
  EXPECT_EQ(normalize_whitespace("   \n \n"), "");
}

TEST(CorpusText, GutenbergBoilerplateIsStripped) {
  std::string book =
      "The Project Gutenberg EBook of Tiny, by Someone\nThis eBook is for the use of anyone anywhere.\n"
      "*** START OF THIS PROJECT GUTENBERG EBOOK TINY ***\n\nProduced by A Volunteer\n\nCHAPTER I\n\n"
      "It was a dark night.\n\nThe end.\n\n*** END OF THIS PROJECT GUTENBERG EBOOK TINY ***\n"
      "Updated editions will replace the previous one. PROJECT GUTENBERG LICENSE ...\n";
  std::string text = strip_gutenberg_boilerplate(book);
  EXPECT_EQ(text, "CHAPTER I\n\nIt was a dark night.\n\nThe end.");
  std::string body = "A plain text, long enough that the closing line is in its last half.";
  EXPECT_EQ(strip_gutenberg_boilerplate(body + "\n\nEnd of the Project Gutenberg EBook of X\nlicence"), body);
  std::string mention =
      "End of the Project Gutenberg era, said the book. " + body;  // a mention, not a footer
  EXPECT_EQ(strip_gutenberg_boilerplate(mention), mention);
}

TEST(CorpusText, OneLineBooksGetTheirParagraphsBack) {
  EXPECT_EQ(restore_paragraphs("Chapter 1   It was.  So it was.     Next"),
            "Chapter 1\n\nIt was.  So it was.\n\nNext");
}

TEST(CorpusText, BooksSplitByChapterWithSmallPiecesMerged) {
  std::string para(300, 'x');
  std::string book = "CONTENTS\n\nCHAPTER I. A\nCHAPTER II. B\n\nCHAPTER I.\n\n" + para +
                     "\n\nChapter 2\n\n" + para + "\n\nCHAPTER III\n\n" + para;
  auto chapters = split_book_chapters(book, 250, 10000);
  ASSERT_EQ(chapters.size(), 3u);
  EXPECT_EQ(chapters[0].rfind("CONTENTS", 0), 0u);  // the table of contents joined the first chapter
  EXPECT_NE(chapters[0].find(para), std::string::npos);
  EXPECT_EQ(chapters[1].rfind("Chapter 2", 0), 0u);
  EXPECT_EQ(chapters[2].rfind("CHAPTER III", 0), 0u);
  auto pieces = split_at_paragraphs(para + "\n\n" + para + "\n\n" + para, 700);
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[1], para);
}

TEST(CorpusText, BibleSplitsByChapterKeepingBookTitles) {
  std::string bible =
      "The First Book of Moses\n\n1:1 In the beginning.\n\n1:2 And the earth\nwas void.\n\n2:1 Thus.\n\n"
      "The Second Book of Moses\n\n1:1 Now these.\n";
  auto chapters = split_bible_chapters(bible);
  ASSERT_EQ(chapters.size(), 3u);
  EXPECT_EQ(chapters[0], "The First Book of Moses\n\n1:1 In the beginning.\n\n1:2 And the earth\nwas void.");
  EXPECT_EQ(chapters[1], "2:1 Thus.");
  EXPECT_EQ(chapters[2], "The Second Book of Moses\n\n1:1 Now these.");
}

TEST(CorpusText, MetamathProofsAreRemoved) {
  std::string mm =
      "$( Modus ponens. $)\n  ax-mp $a |- ps $.\n  $( Identity. $)\n  id $p |- ( ph -> ph ) $=\n"
      "    ( wi ax-1 mpd ) AAABZCD $.\n  $( Old: a1i $p |- ph $= ( ax-1 ) AB $. end $)\n";
  std::string out = strip_metamath_proofs(mm);
  EXPECT_EQ(out.find("AAABZCD"), std::string::npos);
  EXPECT_EQ(out.find("$="), std::string::npos);
  EXPECT_NE(out.find("id $p |- ( ph -> ph ) $."), std::string::npos);
  EXPECT_NE(out.find("ax-mp $a |- ps $."), std::string::npos);
  EXPECT_NE(out.find("$( Identity. $)"), std::string::npos);
  EXPECT_NE(out.find("end $)"), std::string::npos);
}

TEST(CorpusText, MetamathSplitsAtSectionBanners) {
  std::string mm =
      "header\n$(\n=-=-=-=\n  Logic\n=-=-=-=\n$)\nax-1 $a ph $.\n$(\n=-=-=-=\n  Sets\n=-=-=-=\n$)\nx $.\n";
  auto sections = split_metamath_sections(mm);
  ASSERT_EQ(sections.size(), 3u);
  EXPECT_EQ(sections[0], "header");
  EXPECT_NE(sections[1].find("Logic"), std::string::npos);
  EXPECT_NE(sections[2].find("Sets"), std::string::npos);
}

TEST(CorpusText, BrownWordTagFormatIsStripped) {
  std::string tagged =
      "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, it/pps said/vbd ./.\n\n\n"
      "\tIt/pps was/bedz (/( over/rp )/) ./.\n";
  EXPECT_EQ(brown_to_text(tagged), "The jury said \"no evidence\", it said.\n\nIt was (over).");
}

TEST(CorpusText, NonEnglishTextsAreDropped) {
  std::string english =
      "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
      "associated documentation files, to deal in the Software without restriction, including without "
      "limitation "
      "the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the "
      "Software.";
  std::string french =
      "Ce contrat est une licence de logiciel libre dont l'objectif est de conférer aux utilisateurs la "
      "liberté "
      "de modification et de redistribution du logiciel régi par cette licence dans le cadre d'un modèle de "
      "diffusion en logiciel libre. L'exercice de ces libertés est assorti de certains devoirs à la charge "
      "des "
      "utilisateurs afin de préserver ce statut au cours des redistributions ultérieures.";
  std::string german =
      "Jede Person, die eine Kopie dieser Software und der zugehörigen Dokumentation erhält, darf sie ohne "
      "Einschränkung nutzen, kopieren, verändern, zusammenführen, veröffentlichen und verbreiten, unter der "
      "Bedingung, dass der obige Urheberrechtsvermerk und dieser Erlaubnisvermerk in allen Kopien enthalten "
      "sind.";
  EXPECT_TRUE(looks_english(english));
  EXPECT_FALSE(looks_english(french));
  EXPECT_FALSE(looks_english(german));
  EXPECT_TRUE(looks_english("Use it as you like."));  // short texts need only one function word
  EXPECT_FALSE(looks_english("Licence libre"));
}

namespace {

std::string gzip(const std::string& data) {
  z_stream stream{};
  deflateInit2(&stream, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(compressBound(data.size()) + 64, '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  deflate(&stream, Z_FINISH);
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

}  // namespace

TEST(CorpusText, DictdDictionariesAreRead) {
  std::string dict =
      "info text\nAbdomen \\Ab*do\"men\\, n. [L.]\n   1. (Anat.) The belly, between the thorax and "
      "the pelvis.\n      [1913 Webster]\n\n   2. (Zool.) The posterior section of the body of "
      "insects.\n      [1913 Webster]\n";
  std::string compressed = gzip(dict);
  EXPECT_EQ(gunzip(compressed, "test.dict.dz"), dict);
  EXPECT_NE(error_message([&] {
              gunzip(compressed.substr(0, compressed.size() / 2), "half.dict.dz");
            }).find("half.dict.dz"),
            std::string::npos);
  // Offsets and lengths in dictd's base64 digits.
  auto number = [](uint64_t value) {
    const char* digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    do out.insert(out.begin(), digits[value % 64]), value /= 64;
    while (value > 0);
    return out;
  };
  std::string index = "00-database-info\tA\t" + number(10) + "\nabdomen\t" + number(10) + "\t" +
                      number(dict.size() - 10) + "\nbelly\t" + number(10) + "\tB\n";
  auto entries = read_dictd(index, dict, "test.index");
  ASSERT_EQ(entries.size(), 1u);  // metadata skipped, the alias "belly" at the same offset dropped
  EXPECT_EQ(entries[0].headword, "abdomen");
  auto senses = gcide_senses(entries[0]);
  ASSERT_EQ(senses.size(), 2u);
  EXPECT_EQ(senses[0].label, "Anat.");
  EXPECT_EQ(senses[0].text, "abdomen: (Anat.) The belly, between the thorax and the pelvis.");
  EXPECT_EQ(gcide_label_domain(senses[0].label), "medicine");
  EXPECT_EQ(gcide_label_domain(senses[1].label), "science");
  EXPECT_NE(
      error_message([&] { read_dictd("word\tK\tzzzz\n", dict, "bad.index"); }).find("bad.index: line 1"),
      std::string::npos);
}

// ---- splits and output determinism
// ---------------------------------------------------------------------------

TEST(CorpusSplit, SplitDependsOnTheIdAloneAndIsAbout90_5_5) {
  std::map<std::string, int> counts;
  for (int i = 0; i < 20000; ++i) {
    std::string id = "doc/" + std::to_string(i);
    std::string split = split_of_document(id);
    EXPECT_EQ(split, split_of_document(id));
    ++counts[split];
  }
  EXPECT_NEAR(counts["train"], 18000, 400);
  EXPECT_NEAR(counts["validation"], 1000, 150);
  EXPECT_NEAR(counts["test"], 1000, 150);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cULL);  // the rule must never change: pinned to FNV-1a's value
}

namespace {

std::vector<Document> sample_documents() {
  std::vector<Document> docs;
  for (int i = 0; i < 200; ++i)
    docs.push_back({"news/" + std::to_string(i), i % 3 ? "news" : "law", "src@1",
                    "Document " + std::to_string(i) + " says caf\xC3\xA9.\n\nSecond paragraph " +
                        std::to_string(i % 50)});
  docs.push_back({"news/dup", "news", "src@1", docs[5].text});  // exact duplicate: dropped
  docs.push_back({"news/empty", "news", "src@1", ""});          // empty: dropped
  return docs;
}

std::map<std::string, std::string> read_outputs(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& name : {"train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"})
    files[name] = read_file_bytes((fs::path(dir) / name).string());
  return files;
}

}  // namespace

TEST(CorpusSplit, SameInputsGiveByteIdenticalOutputs) {
  std::vector<SourceRecord> sources = {
      {"src@1", "src", "1", "npm pack", "MIT", "src-1.tgz", "00ff", {"news", "law"}}};
  CorpusOptions options;
  std::string first_dir = temp_dir("identical_a");
  options.out_dir = first_dir;
  emo::set_num_threads(1);
  write_corpus(sample_documents(), sources, options);
  options.out_dir = temp_dir("identical_b");
  emo::set_num_threads(2);
  CorpusSummary summary = write_corpus(sample_documents(), sources, options);
  emo::set_num_threads(0);
  EXPECT_EQ(read_outputs(first_dir), read_outputs(options.out_dir));
  EXPECT_EQ(summary.documents, 200);

  // Documents never in two splits, every kept document in exactly one, each in its id's split.
  std::set<std::string> seen;
  for (const auto& split : split_names())
    for (const auto& doc : read_corpus_jsonl(options.out_dir + "/" + split + ".jsonl")) {
      EXPECT_TRUE(seen.insert(doc.id).second) << doc.id;
      EXPECT_EQ(split_of_document(doc.id), split);
    }
  EXPECT_EQ(seen.size(), 200u);
  EXPECT_EQ(seen.count("news/dup"), 0u);
}

TEST(CorpusSplit, CapSamplesEachDomainIndependentlyOfOrder) {
  auto docs = sample_documents();
  auto reversed = std::vector<Document>(docs.rbegin(), docs.rend());
  cap_domain_bytes(docs, 1000);
  cap_domain_bytes(reversed, 1000);
  std::set<std::string> a, b;
  std::map<std::string, int64_t> bytes;
  for (const auto& d : docs) a.insert(d.id), bytes[d.domain] += static_cast<int64_t>(d.text.size());
  for (const auto& d : reversed) b.insert(d.id);
  EXPECT_EQ(a, b);
  EXPECT_GE(bytes["news"], 1000);
  EXPECT_LT(bytes["news"], 1100);
  EXPECT_GE(bytes["law"], 1000);
}

TEST(CorpusSplit, BadJsonlNamesFileAndLine) {
  std::string path = temp_dir("bad_jsonl") + "/train.jsonl";
  emo::atomic_write_file(path,
                         "{\"id\":\"a\",\"domain\":\"x\",\"source\":\"s\",\"text\":\"t\"}\n{\"id\":1}\n");
  EXPECT_NE(error_message([&] { read_corpus_jsonl(path); }).find("train.jsonl: line 2"), std::string::npos);
}

// ---- dataset file
// ---------------------------------------------------------------------------------------------

TEST(Dataset, RoundTrip) {
  std::string path = write_dataset(temp_dir("roundtrip") + "/d.bin", {3, 0, 5}, {1, 0, 1});
  Dataset dataset = Dataset::open(path);
  EXPECT_EQ(dataset.num_documents(), 3);
  EXPECT_EQ(dataset.num_tokens(), 8);
  EXPECT_EQ(dataset.vocab_size(), 1u << 20);
  EXPECT_EQ(dataset.domain_names(), (std::vector<std::string>{"alpha", "beta"}));
  EXPECT_EQ(dataset.domain_index("beta"), 1);
  EXPECT_EQ(dataset.domain_index("gamma"), -1);
  auto doc2 = dataset.document(2);
  EXPECT_EQ(std::vector<uint32_t>(doc2.begin(), doc2.end()), document_tokens(2, 5));
  EXPECT_EQ(dataset.document_length(1), 0);  // an empty document is stored
  EXPECT_EQ(dataset.domain_of(0), 1u);
  EXPECT_NE(error_message([&] { dataset.document(3); }).find("d.bin: document 3 out of range"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// The dataset is mapped: truncated in place by another program under a running reader (a training), the
// next read of a lost page is an error naming the file (io/mapped_guard), exit 1, not a SIGBUS.
TEST(DatasetDeathTest, ADatasetTruncatedUnderAReaderIsAnErrorNamingItNotASigbus) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string path = write_dataset(temp_dir("truncated_under") + "/d.bin", {40000, 40000});
  EXPECT_EXIT(
      {
        Dataset dataset = Dataset::open(path);
        if (::truncate(path.c_str(), 4096) != 0) std::exit(3);
        uint64_t sum = 0;
        for (uint32_t token : dataset.document(1)) sum += token;
        std::exit(sum == 0 ? 4 : 0);
      },
      ::testing::ExitedWithCode(1),
      "emo: error: \\[dataset\\] .*/d.bin: byte [0-9]+: the file was truncated or rewritten in place");
}

TEST(Dataset, WriterRejectsOutOfRangeIds) {
  DatasetWriter writer({"a"}, 100);
  std::vector<uint32_t> tokens = {5, 100};
  EXPECT_THROW(writer.add(std::span<const uint32_t>(tokens), 0), emo::Error);
  EXPECT_THROW(writer.add(std::span<const uint32_t>(tokens.data(), 1), 1), emo::Error);
}

TEST(Dataset, TruncatedOrCorruptFilesAreNamedErrors) {
  std::string dir = temp_dir("corrupt");
  std::string good = write_dataset(dir + "/good.bin", {4, 6});
  std::string bytes = read_file_bytes(good);

  emo::atomic_write_file(dir + "/truncated.bin", bytes.substr(0, bytes.size() - 4));
  std::string message = error_message([&] { Dataset::open(dir + "/truncated.bin"); });
  EXPECT_NE(message.find("[dataset]"), std::string::npos) << message;
  EXPECT_NE(message.find("truncated.bin"), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;

  emo::atomic_write_file(dir + "/short.bin", bytes.substr(0, 10));
  EXPECT_NE(error_message([&] { Dataset::open(dir + "/short.bin"); }).find("shorter than the 64-byte header"),
            std::string::npos);

  std::string flipped = bytes;
  flipped[64 + 3 * 8 + 5] ^= 0x40;  // inside the tokens
  emo::atomic_write_file(dir + "/flipped.bin", flipped);
  EXPECT_NE(
      error_message([&] { Dataset::open(dir + "/flipped.bin"); }).find("flipped.bin: byte 64: corrupt data"),
      std::string::npos);

  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  emo::atomic_write_file(dir + "/magic.bin", bad_magic);
  EXPECT_NE(error_message([&] { Dataset::open(dir + "/magic.bin"); }).find("not an emo dataset"),
            std::string::npos);

  std::string bad_header = bytes;
  bad_header[16] ^= 1;  // document count
  emo::atomic_write_file(dir + "/header.bin", bad_header);
  EXPECT_NE(error_message([&] { Dataset::open(dir + "/header.bin"); }).find("corrupt header"),
            std::string::npos);

  EXPECT_NE(error_message([&] { Dataset::open(dir + "/missing.bin"); }).find("missing.bin"),
            std::string::npos);
}

// ---- packer
// ---------------------------------------------------------------------------------------------------

TEST(Packer, EveryTokenOfTheStreamAppearsOncePerEpochInOrder) {
  // An empty document (skipped) and documents longer than a row (continued into the next rows).
  std::string path = write_dataset(temp_dir("stream") + "/d.bin", {5, 0, 13, 1, 8, 21, 2, 3, 9});
  Dataset dataset = Dataset::open(path);
  Packer packer(dataset, {.seq_len = 7, .global_batch_rows = 2, .seed = 11, .eos_id = kEos});
  EXPECT_EQ(packer.num_documents(), 8);
  EXPECT_EQ(packer.tokens_per_epoch(), 62 + 8);

  std::vector<int32_t> expected = expected_epoch(packer, dataset, 0);
  auto epoch1 = expected_epoch(packer, dataset, 1), epoch2 = expected_epoch(packer, dataset, 2);
  EXPECT_NE(epoch1, expected);  // reshuffled per epoch
  expected.insert(expected.end(), epoch1.begin(), epoch1.end());
  expected.insert(expected.end(), epoch2.begin(), epoch2.end());

  std::vector<int32_t> stream, next_tokens;
  PackedBatch batch;
  while (stream.size() + 14 < expected.size()) {
    ASSERT_TRUE(packer.next(batch));
    ASSERT_EQ(batch.tokens.size(), 14u);
    stream.insert(stream.end(), batch.tokens.begin(), batch.tokens.end());
    next_tokens.insert(next_tokens.end(), batch.targets.begin(), batch.targets.end());
  }
  for (size_t i = 0; i < stream.size(); ++i) {
    ASSERT_EQ(stream[i], expected[i]) << "stream position " << i;
    ASSERT_EQ(next_tokens[i], expected[i + 1]) << "targets are the next token, position " << i;
  }
  // Each epoch's order is a permutation of the non-empty documents.
  std::set<int64_t> docs;
  for (uint64_t i = 0; i < 8; ++i) docs.insert(packer.document_at(0, i));
  EXPECT_EQ(docs, (std::set<int64_t>{0, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Packer, EosEndsEachDocumentAndStartsTheNextSegment) {
  std::string path = write_dataset(temp_dir("segments") + "/d.bin", {3, 2, 4});
  Dataset dataset = Dataset::open(path);
  Packer packer(dataset, {.seq_len = 8, .global_batch_rows = 2, .shuffle = false, .eos_id = kEos});
  PackedBatch batch;
  ASSERT_TRUE(packer.next(batch));
  // Stream: 1000 1001 1002 EOS 2000 2001 EOS 3000 | 3001 3002 3003 EOS 1000 1001 1002 EOS | 2000 ...
  EXPECT_EQ(batch.tokens, (std::vector<int32_t>{1000, 1001, 1002, 0, 2000, 2001, 0, 3000,  //
                                                3001, 3002, 3003, 0, 1000, 1001, 1002, 0}));
  EXPECT_EQ(batch.targets, (std::vector<int32_t>{1001, 1002, 0, 2000, 2001, 0, 3000, 3001,  //
                                                 3002, 3003, 0, 1000, 1001, 1002, 0, 2000}));
  // A position t > 0 holding EOS starts a new segment: the EOS goes with the document after it. The second
  // row starts inside document 3 (segment 0), and its final EOS opens a segment of its own.
  EXPECT_EQ(batch.doc_ids, (std::vector<int32_t>{0, 0, 0, 1, 1, 1, 2, 2,  //
                                                 0, 0, 0, 1, 1, 1, 1, 2}));
  // For attention an EOS ends its own document: it sees the document it closes, the next one does not.
  EXPECT_EQ(batch.attention_doc_ids, (std::vector<int32_t>{0, 0, 0, 0, 1, 1, 1, 2,  //
                                                           0, 0, 0, 0, 1, 1, 1, 1}));
}

TEST(Packer, DocIdsFollowTheEosRuleEverywhere) {
  std::string path = write_dataset(temp_dir("docids") + "/d.bin", {1, 7, 2, 30, 4, 1, 1, 9});
  Dataset dataset = Dataset::open(path);
  Packer packer(dataset, {.seq_len = 6, .global_batch_rows = 3, .seed = 5, .eos_id = kEos});
  for (const auto& batch : take(packer, 20))
    for (int64_t r = 0; r < batch.B; ++r) {
      const int32_t* tokens = batch.tokens.data() + r * batch.T;
      const int32_t* ids = batch.doc_ids.data() + r * batch.T;
      const int32_t* documents = batch.attention_doc_ids.data() + r * batch.T;
      EXPECT_EQ(ids[0], 0);
      EXPECT_EQ(documents[0], 0);
      for (int64_t t = 1; t < batch.T; ++t) {
        EXPECT_EQ(ids[t], ids[t - 1] + (tokens[t] == kEos ? 1 : 0));
        EXPECT_EQ(documents[t], documents[t - 1] + (tokens[t - 1] == kEos ? 1 : 0));
      }
    }
}

TEST(Packer, ResumeEqualsUninterrupted) {
  std::string path = write_dataset(temp_dir("resume") + "/d.bin", {5, 12, 3, 8, 1, 17, 6});
  Dataset dataset = Dataset::open(path);
  PackerOptions options{.seq_len = 5, .global_batch_rows = 2, .seed = 3, .eos_id = kEos};
  Packer uninterrupted(dataset, options);
  auto all = take(uninterrupted, 12);

  Packer first(dataset, options);
  take(first, 5);
  nlohmann::json saved = first.state().to_json();
  Packer resumed(dataset, options);
  resumed.restore(PackerState::from_json(nlohmann::json::parse(saved.dump())));
  EXPECT_EQ(resumed.state(), first.state());
  auto rest = take(resumed, 7);
  for (int i = 0; i < 7; ++i) EXPECT_TRUE(same(rest[i], all[5 + i])) << "batch " << 5 + i;
  EXPECT_EQ(resumed.state(), uninterrupted.state());
  EXPECT_EQ(resumed.state().batches, 12u);

  PackerState bad = first.state();
  bad.document = 99;
  EXPECT_THROW(resumed.restore(bad), emo::Error);
  EXPECT_THROW(PackerState::from_json({{"epoch", 1}}), emo::Error);
}

TEST(Packer, RanksTakeDisjointSharesWhoseUnionIsTheOneRankBatch) {
  std::string path = write_dataset(temp_dir("ranks") + "/d.bin", {5, 12, 3, 8, 1, 17, 6, 2, 2, 40});
  Dataset dataset = Dataset::open(path);
  PackerOptions options{.seq_len = 4, .global_batch_rows = 6, .seed = 9, .eos_id = kEos};
  Packer single(dataset, options);
  std::vector<Packer> ranks;
  for (int r = 0; r < 3; ++r) {
    PackerOptions rank_options = options;
    rank_options.rank = r, rank_options.world_size = 3;
    ranks.emplace_back(dataset, rank_options);
  }
  for (int step = 0; step < 10; ++step) {
    PackedBatch whole;
    ASSERT_TRUE(single.next(whole));
    PackedBatch joined{0, 4, {}, {}, {}, {}};
    for (auto& rank : ranks) {
      PackedBatch part;
      ASSERT_TRUE(rank.next(part));
      EXPECT_EQ(part.B, 2);
      joined.B += part.B;
      joined.tokens.insert(joined.tokens.end(), part.tokens.begin(), part.tokens.end());
      joined.targets.insert(joined.targets.end(), part.targets.begin(), part.targets.end());
      joined.doc_ids.insert(joined.doc_ids.end(), part.doc_ids.begin(), part.doc_ids.end());
      joined.attention_doc_ids.insert(joined.attention_doc_ids.end(), part.attention_doc_ids.begin(),
                                      part.attention_doc_ids.end());
      EXPECT_EQ(rank.state(), single.state());
    }
    EXPECT_TRUE(same(joined, whole)) << "step " << step;
  }
  PackerOptions uneven = options;
  uneven.world_size = 4;
  EXPECT_THROW({ Packer packer(dataset, uneven); }, emo::Error);
}

TEST(Packer, HeldOutDomainIsIteratedOnceWithPadding) {
  std::string path = write_dataset(temp_dir("domain") + "/d.bin", {3, 4, 0, 5, 2}, {0, 1, 1, 0, 1});
  Dataset dataset = Dataset::open(path);
  Packer packer(dataset, {.seq_len = 4,
                          .global_batch_rows = 2,
                          .shuffle = false,
                          .domain = 1,
                          .single_pass = true,
                          .eos_id = kEos,
                          .pad_id = 7});
  // Domain 1: documents 1 (4 tokens) and 4 (2 tokens): 2000..2003 EOS 5000 5001 EOS = 8 stream tokens.
  PackedBatch batch;
  ASSERT_TRUE(packer.next(batch));
  EXPECT_EQ(batch.tokens, (std::vector<int32_t>{2000, 2001, 2002, 2003, 0, 5000, 5001, 0}));
  EXPECT_EQ(batch.targets, (std::vector<int32_t>{2001, 2002, 2003, 0, 5000, 5001, 0, -1}));
  EXPECT_FALSE(packer.next(batch));

  Packer longer(dataset, {.seq_len = 5,
                          .global_batch_rows = 1,
                          .shuffle = false,
                          .domain = 1,
                          .single_pass = true,
                          .eos_id = kEos,
                          .pad_id = 7});
  ASSERT_TRUE(longer.next(batch));
  ASSERT_TRUE(longer.next(batch));
  EXPECT_EQ(batch.tokens, (std::vector<int32_t>{5000, 5001, 0, 7, 7}));
  EXPECT_EQ(batch.targets, (std::vector<int32_t>{5001, 0, -1, -1, -1}));
  EXPECT_EQ(batch.doc_ids, (std::vector<int32_t>{0, 0, 1, 2, 2}));            // padding: a segment of its own
  EXPECT_EQ(batch.attention_doc_ids, (std::vector<int32_t>{0, 0, 0, 1, 1}));  // and a document of its own
  EXPECT_FALSE(longer.next(batch));
}

TEST(Packer, RejectsDatasetsWithoutEligibleDocuments) {
  std::string path = write_dataset(temp_dir("empty") + "/d.bin", {0, 0}, {0, 1});
  Dataset dataset = Dataset::open(path);
  EXPECT_NE(error_message([&] {
              Packer packer(dataset, {.seq_len = 4, .eos_id = kEos});
            }).find("no non-empty document"),
            std::string::npos);
}
