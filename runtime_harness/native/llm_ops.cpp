// llama::update_cache.out and llama::custom_sdpa.out for float32 programs, registered with the
// ExecuTorch runtime when this file is linked. ExecuTorch's own kernels for these ops ship only in
// libcustom_ops_aot_lib.so, which links libtorch; these follow the same schemas and semantics:
//   update_cache(value[B,S,Hkv,D], cache[B,T,Hkv,D], start_pos) writes cache[:, start_pos:start_pos+S]
//   custom_sdpa(q[B,S,H,D], k_cache, v_cache, start_pos, mask=None, dropout=0, is_causal, scale)
//     attends query i (absolute position start_pos+i) to cache positions [0, start_pos+i] when
//     causal, [0, start_pos+S) otherwise; query head h reads KV head h / (H / Hkv).

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

// x86-64 builds also carry an AVX2+FMA version of the softmax and decode loops, picked at load time,
// so one binary runs on any x86-64 machine and uses the wide units where they exist.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LLM_OPS_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define LLM_OPS_CLONES
#endif

namespace executorch::cpublas {
enum class TransposeType { NoTranspose, Transpose, ConjTranspose };
void gemm(TransposeType transa, TransposeType transb, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
}  // namespace executorch::cpublas

namespace llm_ops {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

namespace {

bool is_float_4d(const Tensor& t) {
  return t.dim() == 4 && t.scalar_type() == ScalarType::Float;
}

// exp(x) for x <= 0 (softmax after subtracting the maximum), in a form the compiler vectorizes:
// 2^n * p(r) with x = n ln2 + r, |r| <= ln2/2, p the degree-6 Taylor polynomial (relative error < 3e-7).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.f);
  const float n = std::nearbyint(x * 1.44269504f);
  const float r = x - n * 0.693147181f;
  const float p = 1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r / 720)))));
  int32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += static_cast<int32_t>(n) << 23;
  float result;
  std::memcpy(&result, &bits, sizeof result);
  return result;
}


}  // namespace

Tensor& update_cache_out(KernelRuntimeContext& ctx, const Tensor& value, const Tensor& cache,
                         int64_t start_pos, Tensor& out) {
  (void)out;  // the op's result is a placeholder; the cache is written in place
  const bool shapes_match = is_float_4d(value) && is_float_4d(cache) &&
                            value.size(0) == cache.size(0) && value.size(2) == cache.size(2) &&
                            value.size(3) == cache.size(3);
  const int64_t seq_len = value.size(1);
  if (!shapes_match || start_pos < 0 || start_pos + seq_len > cache.size(1)) {
    ET_LOG(Error, "llama::update_cache: needs float32 [B,S,H,D] tensors that fit the cache at %lld",
           static_cast<long long>(start_pos));
    ctx.fail(Error::InvalidArgument);
    return out;
  }
  const int64_t row = value.size(2) * value.size(3);
  for (int64_t b = 0; b < value.size(0); ++b) {
    std::memcpy(cache.mutable_data_ptr<float>() + (b * cache.size(1) + start_pos) * row,
                value.const_data_ptr<float>() + b * seq_len * row, seq_len * row * sizeof(float));
  }
  return out;
}

namespace {

// Attention for a block of consecutive query positions of one head (a prefill's rows become one
// matrix product). Rows are consecutive positions; when causal, the last row attends to keys_of_last
// keys and each row before it to one key fewer.
struct AttentionBlock {
  const float* q;  // row r at q + r * row_stride
  const float* k;  // key j at k + j * kv_stride
  const float* v;
  float* out;      // row r at out + r * row_stride
  int64_t rows, head_dim, row_stride, kv_stride;
  int64_t keys_of_last;  // keys the block's last row attends to
  bool causal;
  float scale;
};

// Scores and the weighted sum of values are matrix products on ExecuTorch's own float GEMM (the
// one its custom_sdpa kernel calls; libexecutorch_kernels_optimized exports it, no header ships).
// Column-major, BLAS style: a row-major [R x N] result is a column-major [N x R] one.
LLM_OPS_CLONES
void attend(const AttentionBlock& a, float* scores) {
  using executorch::cpublas::TransposeType;
  const int64_t n = a.keys_of_last, d = a.head_dim;
  if (a.rows == 1) {  // decode: a dot product per key beats a one-column GEMM
    const float* query = a.q;
    for (int64_t j = 0; j < n; ++j) {
      const float* key = a.k + j * a.kv_stride;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < d; ++c) sum += query[c] * key[c];
      scores[j] = a.scale * sum;
    }
  } else {
    executorch::cpublas::gemm(TransposeType::Transpose, TransposeType::NoTranspose, n, a.rows, d, a.scale,
                              a.k, a.kv_stride, a.q, a.row_stride, 0.f, scores, n);
  }
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t keys = a.causal ? n - (a.rows - 1 - r) : n;
    float* row = scores + r * n;
    float max_score = row[0];
    for (int64_t j = 1; j < keys; ++j) max_score = std::max(max_score, row[j]);
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < keys; ++j) {
      row[j] = exp_nonpositive(row[j] - max_score);
      total += row[j];
    }
    const float inverse = 1.f / total;
#pragma omp simd
    for (int64_t j = 0; j < keys; ++j) row[j] *= inverse;
    std::fill(row + keys, row + n, 0.f);  // keys after this row's position
  }
  if (a.rows == 1) {
    float* result = a.out;  // a local pointer: through `a` the compiler assumed aliasing (2x slower)
    std::fill(result, result + d, 0.f);
    for (int64_t j = 0; j < n; ++j) {
      const float* value = a.v + j * a.kv_stride;
      const float weight = scores[j];
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) result[c] += weight * value[c];
    }
    return;
  }
  executorch::cpublas::gemm(TransposeType::NoTranspose, TransposeType::NoTranspose, d, a.rows, n, 1.f,
                            a.v, a.kv_stride, scores, n, 0.f, a.out, a.row_stride);
}

}  // namespace

Tensor& custom_sdpa_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k_cache,
                        const Tensor& v_cache, int64_t start_pos,
                        const std::optional<Tensor>& attn_mask, double dropout_p, bool is_causal,
                        std::optional<double> scale, Tensor& out) {
  const bool supported = is_float_4d(q) && is_float_4d(k_cache) && is_float_4d(v_cache) &&
                         !attn_mask.has_value() && dropout_p == 0.0 &&
                         k_cache.size(3) == q.size(3) && q.size(2) % k_cache.size(2) == 0;
  const int64_t batch = q.size(0), seq_len = q.size(1), heads = q.size(2), head_dim = q.size(3);
  const int64_t context = k_cache.size(1), kv_heads = k_cache.size(2);
  if (!supported || start_pos < 0 || start_pos + seq_len > context ||
      executorch::runtime::resize_tensor(out, q.sizes()) != Error::Ok) {
    ET_LOG(Error, "llama::custom_sdpa: needs float32 [B,S,H,D] tensors, no mask or dropout, and a "
           "query that fits the cache at %lld", static_cast<long long>(start_pos));
    ctx.fail(Error::InvalidArgument);
    return out;
  }
  const float softmax_scale =
      static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(double(head_dim)));
  const int64_t group = heads / kv_heads;
  const int64_t positions = std::min<int64_t>(64, seq_len);  // query rows per block
  const int64_t blocks_per_head = (seq_len + positions - 1) / positions;
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k_cache.const_data_ptr<float>();
  const float* vp = v_cache.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();

  executorch::extension::parallel_for(
      0, batch * heads * blocks_per_head, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> scores(positions * (start_pos + seq_len));
        for (int64_t item = begin; item < end; ++item) {
          const int64_t block = item % blocks_per_head;
          const int64_t h = (item / blocks_per_head) % heads;
          const int64_t b = item / (blocks_per_head * heads);
          const int64_t first = block * positions;
          const int64_t count = std::min(positions, seq_len - first);
          const int64_t q_offset = ((b * seq_len + first) * heads + h) * head_dim;
          const int64_t kv_offset = (b * context * kv_heads + h / group) * head_dim;
          AttentionBlock a{qp + q_offset, kp + kv_offset, vp + kv_offset, op + q_offset,
                           count, head_dim, heads * head_dim, kv_heads * head_dim,
                           is_causal ? start_pos + first + count : start_pos + seq_len,
                           is_causal, softmax_scale};
          attend(a, scores.data());
        }
      });
  return out;
}

}  // namespace llm_ops

EXECUTORCH_LIBRARY(llama, "update_cache.out", llm_ops::update_cache_out);
EXECUTORCH_LIBRARY(llama, "custom_sdpa.out", llm_ops::custom_sdpa_out);
