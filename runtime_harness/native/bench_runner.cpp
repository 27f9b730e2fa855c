// A native benchmark runner for an LLM .pte: ExecuTorch's runtime, its XNNPACK backend and kernels,
// and nothing else: no Python, no torch. This is what an app links, so its peak RSS is comparable
// with llama.cpp's.
//
//   bench_runner PROGRAM.pte [--data WEIGHTS.ptd] --tokens TOKEN_FILE --new-tokens N --threads T
//                [--warmup W] [--logits LOGITS_FILE]
//
// TOKEN_FILE holds the prompt's token ids, whitespace-separated (tokenizing is the caller's job, so
// the tokenizer stays out of the timings). --warmup runs W untimed generations of the same prompt
// (prefill and one decode step) first, as llama-bench does before it times. Prints one JSON object on
// stdout. --logits writes the last-position logits of every timed step as float32, for parity tests
// against the Python runtime.
//
// The two LLM ops the program calls outside its delegates (llama::update_cache, llama::custom_sdpa)
// are linked in by native_runner.py: ExecuTorch's own kernels built from its sources
// (executorch_src/), or, as an experiment, llm_ops.cpp.

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#if __has_include(<executorch/extension/threadpool/threadpool.h>)
#include <executorch/extension/threadpool/threadpool.h>  // with ExecuTorch's kernel sources
#else
namespace executorch::extension::threadpool {
// The wheel ships the thread pool library but not this header; these are its exported symbols.
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
  size_t get_thread_count() const;
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::from_blob;
using executorch::runtime::Error;

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

long status_kib(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(status, line)) {
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') {
      return std::stol(line.substr(n + 1));
    }
  }
  return -1;
}

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "bench_runner: %s\n", message.c_str());
  std::exit(2);
}

struct Options {
  std::string program;
  std::vector<std::string> data;
  std::string tokens;
  std::string logits;
  int new_tokens = 64;
  int threads = 0;
  int warmup = 0;
};

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail("missing value after " + arg);
      return argv[++i];
    };
    if (arg == "--data") options.data.push_back(value());
    else if (arg == "--tokens") options.tokens = value();
    else if (arg == "--logits") options.logits = value();
    else if (arg == "--new-tokens") options.new_tokens = std::stoi(value());
    else if (arg == "--threads") options.threads = std::stoi(value());
    else if (arg == "--warmup") options.warmup = std::stoi(value());
    else if (options.program.empty()) options.program = arg;
    else fail("unexpected argument " + arg);
  }
  if (options.program.empty() || options.tokens.empty()) {
    fail("usage: bench_runner PROGRAM.pte [--data W.ptd] --tokens FILE --new-tokens N --threads T");
  }
  return options;
}

std::vector<int64_t> read_tokens(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read " + path);
  std::vector<int64_t> tokens;
  int64_t token;
  while (in >> token) tokens.push_back(token);
  if (tokens.empty()) fail(path + " holds no token ids");
  return tokens;
}

int64_t constant(Module& module, const char* method) {
  auto result = module.execute(method);
  if (!result.ok()) fail(std::string("the program has no ") + method + " method");
  return result.get()[0].toInt();
}

class Decoder {
 public:
  Decoder(Module& module, const std::string& logits_path) : module_(module), logits_path_(logits_path) {}

  // Logits are written from here on (not during warm-up).
  void record() {
    if (!logits_path_.empty()) {
      logits_out_.open(logits_path_, std::ios::binary);
      if (!logits_out_) fail("cannot write " + logits_path_);
    }
  }

  // Runs tokens[begin, end) at position `pos`; returns the argmax of the last position's logits.
  int64_t step(std::vector<int64_t>& tokens, size_t begin, size_t end, int64_t pos) {
    auto token_tensor = from_blob(tokens.data() + begin, {1, static_cast<int>(end - begin)},
                                  ScalarType::Long);
    int64_t position = pos;
    auto pos_tensor = from_blob(&position, {1}, ScalarType::Long);
    auto outputs = module_.forward({*token_tensor, *pos_tensor});
    if (!outputs.ok()) {
      fail("forward failed with error " + std::to_string(static_cast<int>(outputs.error())));
    }
    const auto& logits = outputs.get()[0].toTensor();
    if (logits.scalar_type() != ScalarType::Float) fail("logits are not float32");
    const int64_t vocab = logits.size(logits.dim() - 1);
    const float* row = logits.const_data_ptr<float>() + (logits.numel() - vocab);
    if (logits_out_.is_open()) {
      logits_out_.write(reinterpret_cast<const char*>(row), vocab * sizeof(float));
    }
    return std::max_element(row, row + vocab) - row;
  }

 private:
  Module& module_;
  std::string logits_path_;
  std::ofstream logits_out_;
};

// Prefills `prompt` from position 0 in chunks of at most max_seq_len (as TextLLMRunner's prefiller
// does); returns the first generated token, and the next position in `pos`.
int64_t prefill(Decoder& decoder, std::vector<int64_t>& prompt, int64_t max_seq_len, int64_t& pos) {
  int64_t next = 0;
  pos = 0;
  for (size_t begin = 0; begin < prompt.size(); begin += max_seq_len) {
    size_t end = std::min(prompt.size(), begin + static_cast<size_t>(max_seq_len));
    next = decoder.step(prompt, begin, end, pos);
    pos += end - begin;
  }
  return next;
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse(argc, argv);
  executorch::runtime::runtime_init();
  if (options.threads > 0) {
    executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(options.threads);
  }
  std::vector<int64_t> prompt = read_tokens(options.tokens);
  const long baseline_kib = status_kib("VmRSS");

  // The same load mode as ExecuTorch's TextLLMRunner.
  Module module(options.program, options.data, Module::LoadMode::File);
  auto load_started = Clock::now();
  if (module.load() != Error::Ok) fail("cannot load " + options.program);
  if (module.load_method("forward") != Error::Ok) fail("cannot load the forward method");
  const double load_ms = ms_since(load_started);
  const int64_t max_seq_len = constant(module, "get_max_seq_len");
  const int64_t context_len = constant(module, "get_max_context_len");
  if (static_cast<int64_t>(prompt.size()) + options.new_tokens > context_len) {
    fail("prompt + new tokens exceed the program's context of " + std::to_string(context_len));
  }

  Decoder decoder(module, options.logits);
  int64_t pos = 0;
  // Warm-up generations start again at position 0: the timed run overwrites the cache entries they
  // wrote, and attention reads no entry past the current position.
  for (int w = 0; w < options.warmup; ++w) {
    std::vector<int64_t> one{prefill(decoder, prompt, max_seq_len, pos)};
    decoder.step(one, 0, 1, pos);
  }
  decoder.record();
  auto started = Clock::now();
  int64_t next = prefill(decoder, prompt, max_seq_len, pos);
  const double ttft_ms = ms_since(started);

  std::vector<int64_t> generated{next};
  auto decode_started = Clock::now();
  for (int i = 1; i < options.new_tokens; ++i) {
    std::vector<int64_t> one{generated.back()};
    generated.push_back(decoder.step(one, 0, 1, pos));
    pos += 1;
  }
  const double decode_ms = ms_since(decode_started);
  const int decoded = options.new_tokens - 1;

  std::printf("{\"prompt_tokens\": %zu, \"generated_tokens\": %zu, \"ttft_ms\": %.3f, "
              "\"prefill_tps\": %.3f, \"decode_tps\": %.3f, \"load_ms\": %.1f, \"warmup\": %d, "
              "\"peak_rss_bytes\": %ld, \"model_rss_bytes\": %ld, \"tokens\": [",
              prompt.size(), generated.size(), ttft_ms, prompt.size() * 1000.0 / ttft_ms,
              decoded > 0 ? decoded * 1000.0 / decode_ms : 0.0, load_ms, options.warmup,
              status_kib("VmHWM") * 1024, (status_kib("VmHWM") - baseline_kib) * 1024);
  for (size_t i = 0; i < generated.size(); ++i) {
    std::printf(i ? ", %lld" : "%lld", static_cast<long long>(generated[i]));
  }
  std::printf("]}\n");
  return 0;
}
