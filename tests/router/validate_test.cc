// ResolveGenerateRequest against the tiny synthetic model: every rejection and its message, and
// the defaults applied to what is accepted.
#include "router/validate.h"

#include <cmath>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/router/test_model.h"

namespace duet::router {
namespace {

using duet::v1::GenerateRequest;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::kBos;
using testing::TinyModel;

constexpr int64_t kContext = 512;
constexpr int64_t kVocab = 260;

ResolveOptions Options() {
  ResolveOptions options;
  options.default_max_tokens = 100;
  options.fresh_seed = 777;
  return options;
}

GenerateRequest TextRequest(const std::string& text) {
  GenerateRequest request;
  request.set_text(text);
  return request;
}

absl::StatusOr<ResolvedRequest> Resolve(const GenerateRequest& request,
                                        const ResolveOptions& options = Options()) {
  return ResolveGenerateRequest(request, TinyModel().view(), options);
}

// The message of a rejected request; fails the test when it was accepted or has another code.
std::string Rejection(const GenerateRequest& request,
                      absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
  absl::StatusOr<ResolvedRequest> resolved = Resolve(request);
  EXPECT_FALSE(resolved.ok());
  if (resolved.ok()) return "(accepted)";
  EXPECT_EQ(resolved.status().code(), code) << resolved.status();
  return std::string(resolved.status().message());
}

TEST(ValidateTest, TheModelIsWhatTheTestsAssume) {
  EXPECT_EQ(TinyModel().id, "tiny");
  EXPECT_EQ(TinyModel().config.context_length, kContext);
  EXPECT_EQ(TinyModel().config.vocab_size, kVocab);
  EXPECT_TRUE(TinyModel().tokenizer->add_bos());
}

TEST(ValidateTest, TextPromptIsTokenizedWithBosAndDefaultsAreApplied) {
  absl::StatusOr<ResolvedRequest> r = Resolve(TextRequest("hi"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt, TinyModel().tokenizer->Encode("hi", /*add_special=*/true));
  EXPECT_EQ(r->prompt.front(), kBos);
  const duet::v1::SamplingParams& s = r->sampling;
  EXPECT_TRUE(s.has_temperature() && s.has_top_k() && s.has_top_p() && s.has_min_p() &&
              s.has_seed() && s.has_repetition_penalty() && s.has_presence_penalty() &&
              s.has_frequency_penalty() && s.has_max_tokens());
  EXPECT_EQ(s.temperature(), 1.0);
  EXPECT_EQ(s.top_k(), 0);
  EXPECT_EQ(s.top_p(), 1.0);
  EXPECT_EQ(s.min_p(), 0.0);
  EXPECT_EQ(s.seed(), 777u);
  EXPECT_EQ(s.repetition_penalty(), 1.0);
  EXPECT_EQ(s.presence_penalty(), 0.0);
  EXPECT_EQ(s.frequency_penalty(), 0.0);
  EXPECT_EQ(s.max_tokens(), 100);
  EXPECT_EQ(r->speculation, duet::v1::SPECULATION_OFF);
  EXPECT_EQ(r->client_request_id, "");
}

TEST(ValidateTest, ClientValuesAreKept) {
  GenerateRequest request = TextRequest("hi");
  request.set_model("tiny");
  request.set_request_id("client-7");
  request.set_cache_salt("tenant-a");
  request.set_speculation(duet::v1::SPECULATION_ON);
  duet::v1::SamplingParams* s = request.mutable_sampling();
  s->set_temperature(0);
  s->set_top_k(5);
  s->set_top_p(0.5);
  s->set_min_p(1);
  s->set_seed(42);
  s->set_repetition_penalty(1.3);
  s->set_presence_penalty(-2);
  s->set_frequency_penalty(2);
  s->set_max_tokens(7);
  s->add_stop_strings("\n\n");
  s->add_stop_token_ids(259);
  s->set_ignore_eos(true);
  s->set_logprobs(20);
  absl::StatusOr<ResolvedRequest> r = Resolve(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sampling.temperature(), 0);
  EXPECT_EQ(r->sampling.top_k(), 5);
  EXPECT_EQ(r->sampling.top_p(), 0.5);
  EXPECT_EQ(r->sampling.min_p(), 1);
  EXPECT_EQ(r->sampling.seed(), 42u);
  EXPECT_EQ(r->sampling.repetition_penalty(), 1.3);
  EXPECT_EQ(r->sampling.presence_penalty(), -2);
  EXPECT_EQ(r->sampling.frequency_penalty(), 2);
  EXPECT_EQ(r->sampling.max_tokens(), 7);
  EXPECT_THAT(r->sampling.stop_strings(), ElementsAre("\n\n"));
  EXPECT_THAT(r->sampling.stop_token_ids(), ElementsAre(259));
  EXPECT_TRUE(r->sampling.ignore_eos());
  EXPECT_EQ(r->sampling.logprobs(), 20);
  EXPECT_EQ(r->speculation, duet::v1::SPECULATION_ON);
  EXPECT_EQ(r->cache_salt, "tenant-a");
  EXPECT_EQ(r->client_request_id, "client-7");
}

TEST(ValidateTest, SpeculationDefaultFollowsTheCluster) {
  ResolveOptions options = Options();
  options.speculation_default_on = true;
  EXPECT_EQ(Resolve(TextRequest("x"), options)->speculation, duet::v1::SPECULATION_ON);
  GenerateRequest off = TextRequest("x");
  off.set_speculation(duet::v1::SPECULATION_OFF);
  EXPECT_EQ(Resolve(off, options)->speculation, duet::v1::SPECULATION_OFF);
  GenerateRequest bad = TextRequest("x");
  bad.set_speculation(static_cast<duet::v1::Speculation>(9));
  EXPECT_THAT(Rejection(bad), HasSubstr("speculation must be"));
}

TEST(ValidateTest, AddBosOverridesTheModelDefault) {
  GenerateRequest without = TextRequest("hi");
  without.set_add_bos(false);
  absl::StatusOr<ResolvedRequest> r = Resolve(without);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->prompt, TinyModel().tokenizer->Encode("hi", /*add_special=*/false));
  GenerateRequest with = TextRequest("hi");
  with.set_add_bos(true);
  EXPECT_EQ(Resolve(with)->prompt, TinyModel().tokenizer->Encode("hi", /*add_special=*/true));
}

TEST(ValidateTest, EmptyTextIsJustBosWhenTheModelAddsOne) {
  absl::StatusOr<ResolvedRequest> r = Resolve(TextRequest(""));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->prompt, ElementsAre(kBos));
}

TEST(ValidateTest, EmptyPromptsAreRejected) {
  GenerateRequest no_bos = TextRequest("");
  no_bos.set_add_bos(false);
  EXPECT_THAT(Rejection(no_bos), HasSubstr("the prompt is empty"));
  GenerateRequest no_ids;
  no_ids.mutable_token_ids();
  EXPECT_EQ(Rejection(no_ids), "the prompt is empty: token_ids has no ids");
  EXPECT_EQ(Rejection(GenerateRequest()), "a prompt is required: set text or token_ids");
}

TEST(ValidateTest, TokenIdsAreUsedAsIsAndChecked) {
  GenerateRequest request;
  request.mutable_token_ids()->add_ids(5);
  request.mutable_token_ids()->add_ids(259);
  request.set_add_bos(true);  // ignored for token ids
  EXPECT_THAT(Resolve(request)->prompt, ElementsAre(5, 259));
  request.mutable_token_ids()->add_ids(260);
  EXPECT_EQ(Rejection(request), "token_ids.ids[2] must be in [0, 260), got 260");
  request.mutable_token_ids()->set_ids(2, -1);
  EXPECT_EQ(Rejection(request), "token_ids.ids[2] must be in [0, 260), got -1");
}

TEST(ValidateTest, UnknownModelIsNotFoundAndNamesBoth) {
  GenerateRequest request = TextRequest("hi");
  request.set_model("llama-70b");
  EXPECT_EQ(Rejection(request, absl::StatusCode::kNotFound),
            "model 'llama-70b' is not served by this cluster (it serves 'tiny')");
  EXPECT_TRUE(CheckModel("", "tiny").ok());
  EXPECT_TRUE(CheckModel("tiny", "tiny").ok());
}

TEST(ValidateTest, ClientRequestIdMustBeShortPrintableAscii) {
  GenerateRequest request = TextRequest("hi");
  request.set_request_id(std::string(128, 'a'));
  EXPECT_TRUE(Resolve(request).ok());
  request.set_request_id(std::string(129, 'a'));
  EXPECT_EQ(Rejection(request), "request_id must be at most 128 bytes, got 129");
  request.set_request_id("a b");
  EXPECT_EQ(Rejection(request),
            "request_id must be printable ASCII without spaces; byte 1 is 0x20");
  request.set_request_id("\xc3\xa9");
  EXPECT_THAT(Rejection(request), HasSubstr("byte 0 is 0xc3"));
}

TEST(ValidateTest, MaxTokensMustBePositive) {
  GenerateRequest request = TextRequest("hi");
  request.mutable_sampling()->set_max_tokens(0);
  EXPECT_EQ(Rejection(request), "max_tokens must be >= 1, got 0");
  request.mutable_sampling()->set_max_tokens(-3);
  EXPECT_EQ(Rejection(request), "max_tokens must be >= 1, got -3");
}

TEST(ValidateTest, PromptPlusMaxTokensMustFitTheContext) {
  GenerateRequest request;
  for (int i = 0; i < 500; ++i) request.mutable_token_ids()->add_ids(100);
  request.mutable_sampling()->set_max_tokens(12);
  ASSERT_TRUE(Resolve(request).ok());
  request.mutable_sampling()->set_max_tokens(13);
  EXPECT_EQ(Rejection(request),
            "prompt of 500 tokens + max_tokens 13 exceeds the context length 512");
}

TEST(ValidateTest, DefaultMaxTokensIsCappedByTheContext) {
  GenerateRequest request;
  for (int i = 0; i < 500; ++i) request.mutable_token_ids()->add_ids(100);
  EXPECT_EQ(Resolve(request)->sampling.max_tokens(), 12);
  for (int i = 0; i < 12; ++i) request.mutable_token_ids()->add_ids(100);
  EXPECT_EQ(Rejection(request),
            "prompt of 512 tokens leaves no room for completion tokens in the context length 512");
}

struct BadSampling {
  const char* name;
  void (*set)(duet::v1::SamplingParams*);
  const char* message;
};

TEST(ValidateTest, EverySamplingFieldIsRangeChecked) {
  const BadSampling cases[] = {
      {"temperature", [](auto* s) { s->set_temperature(-0.5); },
       "temperature must be >= 0 and finite, got -0.5"},
      {"temperature nan",
       [](auto* s) { s->set_temperature(std::numeric_limits<double>::quiet_NaN()); },
       "temperature must be >= 0 and finite, got nan"},
      {"temperature inf",
       [](auto* s) { s->set_temperature(std::numeric_limits<double>::infinity()); },
       "temperature must be >= 0 and finite, got inf"},
      {"top_k", [](auto* s) { s->set_top_k(-1); }, "top_k must be >= 0, got -1"},
      {"top_p 0", [](auto* s) { s->set_top_p(0); }, "top_p must be in (0, 1], got 0"},
      {"top_p >1", [](auto* s) { s->set_top_p(1.5); }, "top_p must be in (0, 1], got 1.5"},
      {"top_p nan", [](auto* s) { s->set_top_p(std::numeric_limits<double>::quiet_NaN()); },
       "top_p must be in (0, 1], got nan"},
      {"min_p <0", [](auto* s) { s->set_min_p(-0.1); }, "min_p must be in [0, 1], got -0.1"},
      {"min_p >1", [](auto* s) { s->set_min_p(2); }, "min_p must be in [0, 1], got 2"},
      {"repetition_penalty 0", [](auto* s) { s->set_repetition_penalty(0); },
       "repetition_penalty must be > 0 and finite, got 0"},
      {"repetition_penalty inf",
       [](auto* s) { s->set_repetition_penalty(std::numeric_limits<double>::infinity()); },
       "repetition_penalty must be > 0 and finite, got inf"},
      {"presence_penalty", [](auto* s) { s->set_presence_penalty(2.5); },
       "presence_penalty must be in [-2, 2], got 2.5"},
      {"frequency_penalty", [](auto* s) { s->set_frequency_penalty(-3); },
       "frequency_penalty must be in [-2, 2], got -3"},
      {"logprobs <0", [](auto* s) { s->set_logprobs(-1); }, "logprobs must be in [0, 20], got -1"},
      {"logprobs >20", [](auto* s) { s->set_logprobs(21); }, "logprobs must be in [0, 20], got 21"},
      {"stop string", [](auto* s) { s->add_stop_strings("ok"), s->add_stop_strings(""); },
       "stop_strings[1] must be non-empty"},
      {"stop token", [](auto* s) { s->add_stop_token_ids(260); },
       "stop_token_ids[0] must be in [0, 260), got 260"},
      {"stop token <0", [](auto* s) { s->add_stop_token_ids(-2); },
       "stop_token_ids[0] must be in [0, 260), got -2"},
  };
  for (const BadSampling& c : cases) {
    GenerateRequest request = TextRequest("hi");
    c.set(request.mutable_sampling());
    EXPECT_EQ(Rejection(request), c.message) << c.name;
  }
}

TEST(ValidateTest, BoundaryValuesAreAccepted) {
  GenerateRequest request = TextRequest("hi");
  duet::v1::SamplingParams* s = request.mutable_sampling();
  s->set_temperature(0);
  s->set_top_p(1);
  s->set_min_p(0);
  s->set_presence_penalty(2);
  s->set_frequency_penalty(-2);
  s->set_logprobs(0);
  s->add_stop_token_ids(0);
  s->add_stop_token_ids(259);
  EXPECT_TRUE(Resolve(request).ok());
}

TEST(ValidateTest, TokenizeTextRejectsBosTheModelLacks) {
  TokenizerVocab vocab;
  vocab.kind = TokenizerKind::kBpe;
  vocab.tokens = {"a", "b"};
  vocab.merges = {};
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromVocab(vocab);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  ASSERT_LT((*tokenizer)->bos_id(), 0);
  EXPECT_EQ(TokenizeText(**tokenizer, "a", true).status().message(),
            "add_bos is true but the model has no BOS token");
  EXPECT_TRUE(TokenizeText(**tokenizer, "a", false).ok());
  EXPECT_TRUE(TokenizeText(**tokenizer, "a", std::nullopt).ok());
}

}  // namespace
}  // namespace duet::router
