// Paged decode attention on a CPU, reading K/V in place from the block pool.
//
// One task per (row, KV head): walk the row's blocks through its block table, and for each
// of the KV head's rep query heads keep the online softmax (running max m, sum l,
// unnormalised output acc) as each block's scores arrive; divide once at the end. Nothing
// is copied: each block's K and V are read where they live, once per row that reads them.
// The math is infer_lab.serving.paged_attention.paged_decode_attention's, block by block.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

using Vec = at::vec::Vectorized<float>;

// q . k over D floats: vector lanes, one horizontal sum at the end.
static inline float dot(const float* a, const float* b, int64_t D) {
  int64_t d = 0;
  Vec acc(0.0f);
  for (; d + Vec::size() <= D; d += Vec::size())
    acc = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), acc);
  float s = at::vec::vec_reduce_all<float>([](Vec x, Vec y) { return x + y; }, acc);
  for (; d < D; ++d) s += a[d] * b[d];
  return s;
}

// y = y * alpha + p * x over D floats.
static inline void scale_add(float* y, float alpha, float p, const float* x, int64_t D) {
  int64_t d = 0;
  const Vec va(alpha), vp(p);
  for (; d + Vec::size() <= D; d += Vec::size())
    at::vec::fmadd(vp, Vec::loadu(x + d), Vec::loadu(y + d) * va).store(y + d);
  for (; d < D; ++d) y[d] = y[d] * alpha + p * x[d];
}

torch::Tensor paged_decode(torch::Tensor q, torch::Tensor k_pool, torch::Tensor v_pool,
                           torch::Tensor tables, torch::Tensor lens) {
  // q (B, H, D), pools (N, H_kv, bs, D): contiguous float32; tables (B, n) and lens (B,) int64
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t Hkv = k_pool.size(1), bs = k_pool.size(2), rep = H / Hkv;
  const int64_t n_tab = tables.size(1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_pool.data_ptr<float>();
  const float* vp = v_pool.data_ptr<float>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    // per query head r of the group: running max m, sum l, output acc; this block's scores
    std::vector<float> m(rep), l(rep), acc(rep * D), s(rep * bs);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, g = task % Hkv, len = lp[b];
      const float* qg = qp + (b * H + g * rep) * D;  // (rep, D): the group's queries
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < n_tab && j * bs < len; ++j) {
        const int64_t blk = tp[b * n_tab + j], n = std::min(bs, len - j * bs);
        const float* kb = kp + (blk * Hkv + g) * bs * D;  // (bs, D) of KV head g
        const float* vb = vp + (blk * Hkv + g) * bs * D;
        for (int64_t t = 0; t < n; ++t)  // each key read once for the whole group
          for (int64_t r = 0; r < rep; ++r) s[r * bs + t] = dot(qg + r * D, kb + t * D, D) * scale;
        for (int64_t r = 0; r < rep; ++r) {
          float* sr = s.data() + r * bs;
          const float m_new = std::max(m[r], *std::max_element(sr, sr + n));
          const float alpha = std::exp(m[r] - m_new);  // m = -inf at the first block: 0
          // p = exp(s - m_new) for the block's n scores at once (ATen's vectorised exp)
          at::vec::map([m_new](Vec x) { return (x - Vec(m_new)).exp(); }, sr, sr, n);
          float block_sum = 0.0f;
          for (int64_t t = 0; t < n; ++t) block_sum += sr[t];
          l[r] = l[r] * alpha + block_sum;
          m[r] = m_new;
          float* ar = acc.data() + r * D;
          scale_add(ar, alpha, sr[0], vb, D);  // rescale the old terms, add token 0
          for (int64_t t = 1; t < n; ++t) scale_add(ar, 1.0f, sr[t], vb + t * D, D);
        }
      }
      for (int64_t r = 0; r < rep; ++r) {
        float* o = op + (b * H + g * rep + r) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = acc[r * D + d] / l[r];
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode", &paged_decode, "paged decode attention, K/V read in place (CPU)");
}
