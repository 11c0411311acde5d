// Instance norm (optionally affine) fused with a leaky ReLU, forward and backward, on the CPU.
//
// A map is (B, C, S) with S the flattened spatial size, stored channels-last (x[b][s][c], channel fastest) or
// channels-first (x[b][c][s], PyTorch's default layout); values are fp32 or bf16 (raw uint16), arithmetic is
// fp32 with per-block sums gathered in double. The forward reads the map twice (statistics, then normalise
// and activate) and writes it once; the backward recomputes the activation's mask from the input, so it reads
// the gradient and the input twice and writes once. PyTorch's own path (batch norm, then leaky ReLU, and their
// backwards) passes over the map about twice as often.
//
// Plain pointers and no torch headers, so it compiles in about a second; medzoo.kernels builds and loads it
// through ctypes and falls back to PyTorch's ops when it cannot. Threads: OpenMP, the count passed in; built
// without OpenMP (a compiler that lacks it) it runs on one thread.
#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;  // rows (channels-last) summed in float before they are added in double

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  uint32_t u = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) {  // round to nearest even, NaN kept NaN
  uint32_t u;
  std::memcpy(&u, &v, 4);
  uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  p[i] = (v != v) ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(r);
}

// The statistics of one sample: scale a = gamma * invstd and shift b = beta - mean * a per channel.
inline void finish_stats(double sum, double sumsq, float offset, int64_t n, float eps, const float* w,
                         const float* bias, int64_t c, float* mean, float* invstd, float* a, float* b) {
  double m = sum / n;
  double var = sumsq / n - m * m;
  if (var < 0) var = 0;
  float is = static_cast<float>(1.0 / std::sqrt(var + eps));
  float mu = static_cast<float>(m + offset);
  *mean = mu;
  *invstd = is;
  float g = w ? w[c] : 1.f;
  float be = bias ? bias[c] : 0.f;
  *a = g * is;
  *b = be - mu * *a;
}

// ---------------------------------------------------------------- channels-last
template <typename T>
void forward_cl(const T* x, T* out, const float* w, const float* bias, float* mean, float* invstd, int64_t B,
                int64_t C, int64_t S, float eps, float slope, int act, int nt) {
  std::vector<double> part(static_cast<size_t>(nt) * 2 * C);
  std::vector<float> a(C), b(C), offset(C);
  for (int64_t n = 0; n < B; ++n) {
    const T* xb = x + n * S * C;
    T* ob = out + n * S * C;
    for (int64_t c = 0; c < C; ++c) offset[c] = load(xb, c);  // sums of x - x[0] lose less to cancellation
    std::fill(part.begin(), part.end(), 0.0);
    const float* off = offset.data();
#pragma omp parallel num_threads(nt)
    {
      int t = omp_get_thread_num(), tn = omp_get_num_threads();
      int64_t s0 = S * t / tn, s1 = S * (t + 1) / tn;
      double* ps = part.data() + static_cast<size_t>(t) * 2 * C;
      double* pq = ps + C;
      std::vector<float> fs(C), fq(C);
      float* fsp = fs.data();
      float* fqp = fq.data();
      for (int64_t blk = s0; blk < s1; blk += kBlock) {
        int64_t end = blk + kBlock < s1 ? blk + kBlock : s1;
        std::fill(fs.begin(), fs.end(), 0.f);
        std::fill(fq.begin(), fq.end(), 0.f);
        for (int64_t s = blk; s < end; ++s) {
          const T* row = xb + s * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float v = load(row, c) - off[c];
            fsp[c] += v;
            fqp[c] += v * v;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          ps[c] += fsp[c];
          pq[c] += fqp[c];
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      double s = 0, q = 0;
      for (int t = 0; t < nt; ++t) {
        s += part[static_cast<size_t>(t) * 2 * C + c];
        q += part[static_cast<size_t>(t) * 2 * C + C + c];
      }
      finish_stats(s, q, offset[c], S, eps, w, bias, c, mean + n * C + c, invstd + n * C + c, &a[c], &b[c]);
    }
    const float* ap = a.data();
    const float* bp = b.data();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t s = 0; s < S; ++s) {
      const T* row = xb + s * C;
      T* orow = ob + s * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        float y = ap[c] * load(row, c) + bp[c];
        if (act) y = y > 0.f ? y : y * slope + 0.f;  // + 0: a ReLU (slope 0) gives +0, not -0
        store(orow, c, y);
      }
    }
  }
}

template <typename T>
void backward_cl(const T* g, const T* x, T* dx, const float* w, const float* bias, const float* mean,
                 const float* invstd, float* dw, float* db, int64_t B, int64_t C, int64_t S, float slope, int act,
                 int nt) {
  std::vector<double> part(static_cast<size_t>(nt) * 2 * C);
  std::vector<float> a(C), b(C), mu(C), is(C), k1(C), k2(C), k3(C);
  for (int64_t n = 0; n < B; ++n) {
    const T* gb = g + n * S * C;
    const T* xb = x + n * S * C;
    for (int64_t c = 0; c < C; ++c) {
      mu[c] = mean[n * C + c];
      is[c] = invstd[n * C + c];
      a[c] = (w ? w[c] : 1.f) * is[c];
      b[c] = (bias ? bias[c] : 0.f) - mu[c] * a[c];
    }
    std::fill(part.begin(), part.end(), 0.0);
    const float* ap = a.data();
    const float* bp = b.data();
    const float* mup = mu.data();
    const float* isp = is.data();
#pragma omp parallel num_threads(nt)
    {
      int t = omp_get_thread_num(), tn = omp_get_num_threads();
      int64_t s0 = S * t / tn, s1 = S * (t + 1) / tn;
      double* ps = part.data() + static_cast<size_t>(t) * 2 * C;
      double* pq = ps + C;
      std::vector<float> fs(C), fq(C);
      float* fsp = fs.data();
      float* fqp = fq.data();
      for (int64_t blk = s0; blk < s1; blk += kBlock) {
        int64_t end = blk + kBlock < s1 ? blk + kBlock : s1;
        std::fill(fs.begin(), fs.end(), 0.f);
        std::fill(fq.begin(), fq.end(), 0.f);
        for (int64_t s = blk; s < end; ++s) {
          const T* grow = gb + s * C;
          const T* xrow = xb + s * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float xv = load(xrow, c), gv = load(grow, c);
            if (act) gv = ap[c] * xv + bp[c] > 0.f ? gv : gv * slope;
            fsp[c] += gv;
            fqp[c] += gv * ((xv - mup[c]) * isp[c]);
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          ps[c] += fsp[c];
          pq[c] += fqp[c];
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      double s = 0, q = 0;
      for (int t = 0; t < nt; ++t) {
        s += part[static_cast<size_t>(t) * 2 * C + c];
        q += part[static_cast<size_t>(t) * 2 * C + C + c];
      }
      if (db) db[c] += static_cast<float>(s);
      if (dw) dw[c] += static_cast<float>(q);
      // dx = a * (gy - mean(gy) - xhat * mean(gy * xhat)), xhat = (x - mu) * is, as k1 * gy + k2 * x + k3
      float mg = static_cast<float>(s / S), mgx = static_cast<float>(q / S);
      k1[c] = a[c];
      k2[c] = -a[c] * is[c] * mgx;
      k3[c] = a[c] * (mu[c] * is[c] * mgx - mg);
    }
    if (!dx) continue;
    T* dxb = dx + n * S * C;
    const float* k1p = k1.data();
    const float* k2p = k2.data();
    const float* k3p = k3.data();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t s = 0; s < S; ++s) {
      const T* grow = gb + s * C;
      const T* xrow = xb + s * C;
      T* drow = dxb + s * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        float xv = load(xrow, c), gv = load(grow, c);
        if (act) gv = ap[c] * xv + bp[c] > 0.f ? gv : gv * slope;
        store(drow, c, k1p[c] * gv + k2p[c] * xv + k3p[c]);
      }
    }
  }
}

// ---------------------------------------------------------------- channels-first (one row of S per b, c)
constexpr int64_t kRowBlock = 1024;  // elements of a row summed in float before they are added in double

template <typename T>
void forward_cf(const T* x, T* out, const float* w, const float* bias, float* mean, float* invstd, int64_t B,
                int64_t C, int64_t S, float eps, float slope, int act, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < B * C; ++r) {
    const int64_t c = r % C;
    const T* row = x + r * S;
    T* orow = out + r * S;
    const float off = load(row, 0);
    double s = 0, q = 0;
    for (int64_t blk = 0; blk < S; blk += kRowBlock) {
      int64_t end = blk + kRowBlock < S ? blk + kRowBlock : S;
      float fs = 0.f, fq = 0.f;
#pragma omp simd reduction(+ : fs, fq)
      for (int64_t i = blk; i < end; ++i) {
        float v = load(row, i) - off;
        fs += v;
        fq += v * v;
      }
      s += fs;
      q += fq;
    }
    float a, b;
    finish_stats(s, q, off, S, eps, w, bias, c, mean + r, invstd + r, &a, &b);
#pragma omp simd
    for (int64_t i = 0; i < S; ++i) {
      float y = a * load(row, i) + b;
      if (act) y = y > 0.f ? y : y * slope + 0.f;  // + 0: a ReLU (slope 0) gives +0, not -0
      store(orow, i, y);
    }
  }
}

template <typename T>
void backward_cf(const T* g, const T* x, T* dx, const float* w, const float* bias, const float* mean,
                 const float* invstd, float* dw, float* db, int64_t B, int64_t C, int64_t S, float slope, int act,
                 int nt) {
  std::vector<double> sums(static_cast<size_t>(B) * C * 2);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < B * C; ++r) {
    const int64_t c = r % C;
    const T* grow = g + r * S;
    const T* xrow = x + r * S;
    const float mu = mean[r], is = invstd[r];
    const float a = (w ? w[c] : 1.f) * is, b = (bias ? bias[c] : 0.f) - mu * a;
    double s = 0, q = 0;
    for (int64_t blk = 0; blk < S; blk += kRowBlock) {
      int64_t end = blk + kRowBlock < S ? blk + kRowBlock : S;
      float fs = 0.f, fq = 0.f;
#pragma omp simd reduction(+ : fs, fq)
      for (int64_t i = blk; i < end; ++i) {
        float xv = load(xrow, i), gv = load(grow, i);
        if (act) gv = a * xv + b > 0.f ? gv : gv * slope;
        fs += gv;
        fq += gv * ((xv - mu) * is);
      }
      s += fs;
      q += fq;
    }
    sums[2 * r] = s;
    sums[2 * r + 1] = q;
    if (!dx) continue;
    float mg = static_cast<float>(s / S), mgx = static_cast<float>(q / S);
    float k1 = a, k2 = -a * is * mgx, k3 = a * (mu * is * mgx - mg);
    T* drow = dx + r * S;
#pragma omp simd
    for (int64_t i = 0; i < S; ++i) {
      float xv = load(xrow, i), gv = load(grow, i);
      if (act) gv = a * xv + b > 0.f ? gv : gv * slope;
      store(drow, i, k1 * gv + k2 * xv + k3);
    }
  }
  for (int64_t r = 0; r < B * C; ++r) {  // in a fixed order, so the parameter gradients are deterministic
    if (db) db[r % C] += static_cast<float>(sums[2 * r]);
    if (dw) dw[r % C] += static_cast<float>(sums[2 * r + 1]);
  }
}

}  // namespace

// Entry points: layout 1 = channels-last, 0 = channels-first; dtype 1 = bf16, 0 = fp32. w, bias, dx, dw, db may
// be null (no affine parameters, or a gradient that is not wanted). Returns 0, or -1 for an unknown dtype.
extern "C" int medzoo_instance_norm_act_forward(const void* x, void* out, const float* w, const float* bias,
                                                float* mean, float* invstd, int64_t B, int64_t C, int64_t S,
                                                float eps, float slope, int act, int layout, int dtype, int nt) {
  if (nt < 1) nt = 1;
  if (dtype == 1) {
    auto* xi = static_cast<const uint16_t*>(x);
    auto* o = static_cast<uint16_t*>(out);
    layout ? forward_cl(xi, o, w, bias, mean, invstd, B, C, S, eps, slope, act, nt)
           : forward_cf(xi, o, w, bias, mean, invstd, B, C, S, eps, slope, act, nt);
  } else if (dtype == 0) {
    auto* xi = static_cast<const float*>(x);
    auto* o = static_cast<float*>(out);
    layout ? forward_cl(xi, o, w, bias, mean, invstd, B, C, S, eps, slope, act, nt)
           : forward_cf(xi, o, w, bias, mean, invstd, B, C, S, eps, slope, act, nt);
  } else {
    return -1;
  }
  return 0;
}

extern "C" int medzoo_instance_norm_act_backward(const void* g, const void* x, void* dx, const float* w,
                                                 const float* bias, const float* mean, const float* invstd,
                                                 float* dw, float* db, int64_t B, int64_t C, int64_t S, float slope,
                                                 int act, int layout, int dtype, int nt) {
  if (nt < 1) nt = 1;
  if (dtype == 1) {
    auto* gi = static_cast<const uint16_t*>(g);
    auto* xi = static_cast<const uint16_t*>(x);
    auto* d = static_cast<uint16_t*>(dx);
    layout ? backward_cl(gi, xi, d, w, bias, mean, invstd, dw, db, B, C, S, slope, act, nt)
           : backward_cf(gi, xi, d, w, bias, mean, invstd, dw, db, B, C, S, slope, act, nt);
  } else if (dtype == 0) {
    auto* gi = static_cast<const float*>(g);
    auto* xi = static_cast<const float*>(x);
    auto* d = static_cast<float*>(dx);
    layout ? backward_cl(gi, xi, d, w, bias, mean, invstd, dw, db, B, C, S, slope, act, nt)
           : backward_cf(gi, xi, d, w, bias, mean, invstd, dw, db, B, C, S, slope, act, nt);
  } else {
    return -1;
  }
  return 0;
}
