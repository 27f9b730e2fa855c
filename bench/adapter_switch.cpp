// Switching LoRA adapters (export --adapter) on ExecuTorch's C++ runtime, as an app would: load the base
// program over model.ptd and run one token, then load an adapter program over the same model.ptd and run one
// token. --weight-cache turns on XNNPACK's weights cache first (the backend option "weight_cache_enabled"):
// packed weights are then shared between programs by their data key, so an adapter opened while the base
// (or the previous adapter) is still loaded skips packing the base weights again. --drop-base frees the base
// first. Prints one JSON line; "adapter_logit_sum" lets the caller check that the cache changes no output.
// Built and run by bench/adapter_switch.py.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/runtime.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>
using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::from_blob;
using executorch::runtime::Error;
using Clock = std::chrono::steady_clock;
static double ms_since(Clock::time_point s) { return std::chrono::duration<double, std::milli>(Clock::now() - s).count(); }
static long status_kib(const char* field) {
  std::ifstream status("/proc/self/status"); std::string line; size_t n = std::strlen(field);
  while (std::getline(status, line)) if (line.compare(0, n, field) == 0 && line[n] == ':') return std::stol(line.substr(n + 1));
  return -1;
}
static double logit_sum = 0.0;
static double load_and_step(Module& m) {
  auto t = Clock::now();
  if (m.load() != Error::Ok || m.load_method("forward") != Error::Ok) { std::fprintf(stderr, "load failed\n"); std::exit(2); }
  int64_t token = 1, pos = 0;
  auto tt = from_blob(&token, {1, 1}, ScalarType::Long);
  auto pt = from_blob(&pos, {1}, ScalarType::Long);
  auto out = m.forward({*tt, *pt});
  if (!out.ok()) { std::fprintf(stderr, "forward failed\n"); std::exit(2); }
  const double ms = ms_since(t);
  const auto& logits = out.get()[0].toTensor();
  const float* row = logits.const_data_ptr<float>();
  logit_sum = 0.0;
  for (ssize_t i = 0; i < logits.numel(); ++i) logit_sum += row[i];
  return ms;
}
int main(int argc, char** argv) {
  if (argc < 4) { std::fprintf(stderr, "usage: switch_probe BASE.pte ADAPTER.pte DATA.ptd [--weight-cache] [--drop-base]\n"); return 2; }
  executorch::runtime::runtime_init();
  bool cache = false, drop = false;
  for (int i = 4; i < argc; ++i) { if (!std::strcmp(argv[i], "--weight-cache")) cache = true; if (!std::strcmp(argv[i], "--drop-base")) drop = true; }
  if (cache) {
    executorch::runtime::BackendOptions<1> options;
    options.set_option("weight_cache_enabled", true);
    Error e = executorch::runtime::set_option("XnnpackBackend", options.view());
    if (e != Error::Ok) { std::fprintf(stderr, "set_option failed: %d\n", (int)e); return 2; }
  }
  std::vector<std::string> data{argv[3]};
  auto* base = new Module(argv[1], data, Module::LoadMode::File);
  double base_ms = load_and_step(*base);
  long after_base = status_kib("VmRSS");
  if (drop) { delete base; base = nullptr; }
  Module adapter(argv[2], data, Module::LoadMode::File);
  double switch_ms = load_and_step(adapter);
  long after_adapter = status_kib("VmRSS");
  std::printf("{\"weight_cache\": %d, \"drop_base\": %d, \"base_load_ms\": %.1f, \"adapter_load_ms\": %.1f, \"rss_after_base_mib\": %.0f, \"rss_after_adapter_mib\": %.0f, \"hwm_mib\": %.0f, \"adapter_logit_sum\": %.6f}\n",
              cache, drop, base_ms, switch_ms, after_base / 1024.0, after_adapter / 1024.0, status_kib("VmHWM") / 1024.0,
              logit_sum);
  delete base;
  return 0;
}
