// Group norm and instance norm (optionally affine) fused with a leaky ReLU, forward and backward, on the CPU.
//
// A map is (B, C, S) with S the flattened spatial size, stored channels-last (x[b][s][c], channel fastest) or
// channels-first (x[b][c][s], PyTorch's default layout); values are fp32 or bf16 (raw uint16), arithmetic is
// fp32 with per-block sums gathered in double. The forward reads the map twice (statistics, then normalise
// and activate) and writes it once; the backward recomputes the activation's mask from the input, so it reads
// the gradient and the input twice and writes once. PyTorch's own path (batch norm, then leaky ReLU, and their
// backwards) passes over the map about twice as often.
//
// Plain pointers and no torch headers, so it compiles in about a second; medzoo.accel.kernels builds and loads it
// (torch.utils.cpp_extension), calls it through ctypes and falls back to PyTorch's ops when it cannot. Threads: OpenMP, the count passed in; built
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

constexpr int64_t kBlock = 64;  // channels-last: this many patterns summed in float, then added in double

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

// Group statistics -> per-channel scale a = gamma * invstd and shift b = beta - mean * a (one sample).
inline void finish_group(double sum, double sumsq, float offset, int64_t count, float eps, const float* w,
                         const float* bias, int64_t c0, int64_t cpg, float* mean, float* invstd, float* a,
                         float* b) {
  double m = sum / count;
  double var = sumsq / count - m * m;
  if (var < 0) var = 0;
  float is = static_cast<float>(1.0 / std::sqrt(var + eps));
  float mu = static_cast<float>(m + offset);
  *mean = mu;
  *invstd = is;
  for (int64_t c = c0; c < c0 + cpg; ++c) {
    a[c] = (w ? w[c] : 1.f) * is;
    b[c] = (bias ? bias[c] : 0.f) - mu * a[c];
  }
}

// Input-gradient coefficients of one group, dx = k1 * gy + k2 * x + k3 per channel, from the per-channel sums
// s = sum(gy) and q = sum(gy * xhat) (gy: the gradient behind the activation, xhat = (x - mean) * invstd):
// dx = invstd * (gamma * gy - M1 - xhat * M2) with M1 = sum_c(gamma * s) / n, M2 = sum_c(gamma * q) / n.
inline void input_grad_coefficients(const double* s, const double* q, const float* w, float mu, float is,
                                    int64_t count, int64_t c0, int64_t cpg, float* k1, float* k2, float* k3) {
  double m1 = 0, m2 = 0;
  for (int64_t c = c0; c < c0 + cpg; ++c) {
    double g = w ? w[c] : 1.0;
    m1 += g * s[c];
    m2 += g * q[c];
  }
  float fm1 = static_cast<float>(m1 / count), fm2 = static_cast<float>(m2 / count);
  for (int64_t c = c0; c < c0 + cpg; ++c) {
    k1[c] = (w ? w[c] : 1.f) * is;
    k2[c] = -is * is * fm2;
    k3[c] = is * (mu * is * fm2 - fm1);
  }
}

inline float activate(float y, int act, float slope) {
  return act ? (y > 0.f ? y : y * slope + 0.f) : y;  // + 0: a ReLU (slope 0) gives +0, not -0
}
inline float activation_grad(float y, float g, int act, float slope) { return act && !(y > 0.f) ? g * slope : g; }

// ---------------------------------------------------------------- channels-last: x[n][s][c]
// A sample is S rows of C channels. The loops run over "patterns" of P values (rep = P / C rows): P is
// lcm(C, 16), times the smallest whole number that makes it at least kMinPattern, with per-channel constants
// repeated to length P, so that a few channels (segresnet's and unet3d's 8) still fill whole vectors and each
// inner loop is long enough to pay for itself; the S % rep rows left over (the tail) run row by row.
constexpr int64_t kMinPattern = 256;
inline int64_t pattern_length(int64_t C) {
  int64_t a = C, b = 16;
  while (b) {
    int64_t t = a % b;
    a = b;
    b = t;
  }
  const int64_t lcm = C / a * 16;
  return lcm * ((kMinPattern + lcm - 1) / lcm);
}

inline void repeat(const float* per_channel, int64_t C, int64_t P, float* out) {
  for (int64_t j = 0; j < P; ++j) out[j] = per_channel[j % C];
}

// Per-position sums over patterns [r0, r1) of one sample (and the tail rows when tail is set), in float per block
// of kBlock patterns and in double across blocks: su[j] += u(x[j], g[j]), sv[j] += v(...), j < P.
template <typename T, typename F>
inline void pattern_sums(const T* x, const T* g, int64_t r0, int64_t r1, int64_t P, int64_t C, int64_t S,
                         bool tail, double* su, double* sv, F f) {
  const int64_t rep = P / C, per_block = kBlock;  // each float accumulator takes kBlock values
  std::vector<float> fu(P), fv(P);
  float* fup = fu.data();
  float* fvp = fv.data();
  for (int64_t blk = r0; blk < r1; blk += per_block) {
    int64_t end = blk + per_block < r1 ? blk + per_block : r1;
    std::fill(fu.begin(), fu.end(), 0.f);
    std::fill(fv.begin(), fv.end(), 0.f);
    for (int64_t r = blk; r < end; ++r) f(x + r * P, g ? g + r * P : nullptr, P, fup, fvp);
    for (int64_t j = 0; j < P; ++j) {
      su[j] += fup[j];
      sv[j] += fvp[j];
    }
  }
  if (tail) {  // rows rep * (S / rep) .. S - 1, each of C channels: positions 0 .. C - 1 of the pattern
    std::fill(fu.begin(), fu.end(), 0.f);
    std::fill(fv.begin(), fv.end(), 0.f);
    for (int64_t s = S / rep * rep; s < S; ++s) f(x + s * C, g ? g + s * C : nullptr, C, fup, fvp);
    for (int64_t j = 0; j < C; ++j) {
      su[j] += fup[j];
      sv[j] += fvp[j];
    }
  }
}

// Per-channel totals of the per-thread pattern sums (nt blocks of 2 * P doubles).
inline void gather(const std::vector<double>& part, int nt, int64_t P, int64_t C, double* sum, double* sq) {
  for (int64_t c = 0; c < C; ++c) sum[c] = sq[c] = 0;
  for (int t = 0; t < nt; ++t)
    for (int64_t j = 0; j < P; ++j) {
      sum[j % C] += part[static_cast<size_t>(t) * 2 * P + j];
      sq[j % C] += part[static_cast<size_t>(t) * 2 * P + P + j];
    }
}

template <typename T>
void forward_cl(const T* x, T* out, const float* w, const float* bias, float* mean, float* invstd, int64_t B,
                int64_t C, int64_t G, int64_t S, float eps, float slope, int act, int nt) {
  const int64_t cpg = C / G, P = pattern_length(C), R = S / (P / C);
  std::vector<double> part(static_cast<size_t>(nt) * 2 * P), sum(C), sq(C);
  std::vector<float> a(C), b(C), offset(C), offp(P), ap(P), bp(P);
  for (int64_t n = 0; n < B; ++n) {
    const T* xb = x + n * S * C;
    T* ob = out + n * S * C;
    // sums of x - x[0][first channel of the group] lose less to cancellation
    for (int64_t c = 0; c < C; ++c) offset[c] = load(xb, c / cpg * cpg);
    repeat(offset.data(), C, P, offp.data());
    std::fill(part.begin(), part.end(), 0.0);
    const float* off = offp.data();
#pragma omp parallel num_threads(nt)
    {
      int t = omp_get_thread_num(), tn = omp_get_num_threads();
      double* pu = part.data() + static_cast<size_t>(t) * 2 * P;
      pattern_sums(xb, static_cast<const T*>(nullptr), R * t / tn, R * (t + 1) / tn, P, C, S, t == tn - 1, pu,
                   pu + P, [&](const T* row, const T*, int64_t len, float* __restrict fu, float* __restrict fv) {
#pragma omp simd
                     for (int64_t j = 0; j < len; ++j) {
                       float v = load(row, j) - off[j];
                       fu[j] += v;
                       fv[j] += v * v;
                     }
                   });
    }
    gather(part, nt, P, C, sum.data(), sq.data());
    for (int64_t g = 0; g < G; ++g) {
      double u = 0, v = 0;
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        u += sum[c];
        v += sq[c];
      }
      finish_group(u, v, offset[g * cpg], cpg * S, eps, w, bias, g * cpg, cpg, mean + n * G + g,
                   invstd + n * G + g, a.data(), b.data());
    }
    repeat(a.data(), C, P, ap.data());
    repeat(b.data(), C, P, bp.data());
    const float* A = ap.data();
    const float* Bc = bp.data();
    const int64_t rows = R + (S - R * (P / C) > 0 ? 1 : 0);  // patterns, and one more for the tail
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t len = r < R ? P : (S - R * (P / C)) * C;
      const T* row = xb + r * P;
      T* orow = ob + r * P;
      if (act) {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) store(orow, j, activate(A[j] * load(row, j) + Bc[j], 1, slope));
      } else {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) store(orow, j, A[j] * load(row, j) + Bc[j]);
      }
    }
  }
}

template <typename T>
void backward_cl(const T* g, const T* x, T* dx, const float* w, const float* bias, const float* mean,
                 const float* invstd, float* dw, float* db, int64_t B, int64_t C, int64_t G, int64_t S,
                 float slope, int act, int nt) {
  const int64_t cpg = C / G, P = pattern_length(C), R = S / (P / C);
  std::vector<double> part(static_cast<size_t>(nt) * 2 * P), sum(C), sq(C);
  std::vector<float> a(C), b(C), mu(C), is(C), k1(C), k2(C), k3(C);
  std::vector<float> ap(P), bp(P), mup(P), isp(P), k1p(P), k2p(P), k3p(P);
  for (int64_t n = 0; n < B; ++n) {
    const T* gb = g + n * S * C;
    const T* xb = x + n * S * C;
    for (int64_t c = 0; c < C; ++c) {
      mu[c] = mean[n * G + c / cpg];
      is[c] = invstd[n * G + c / cpg];
      a[c] = (w ? w[c] : 1.f) * is[c];
      b[c] = (bias ? bias[c] : 0.f) - mu[c] * a[c];
    }
    repeat(a.data(), C, P, ap.data());
    repeat(b.data(), C, P, bp.data());
    repeat(mu.data(), C, P, mup.data());
    repeat(is.data(), C, P, isp.data());
    std::fill(part.begin(), part.end(), 0.0);
    const float* A = ap.data();
    const float* Bc = bp.data();
    const float* M = mup.data();
    const float* I = isp.data();
#pragma omp parallel num_threads(nt)
    {
      int t = omp_get_thread_num(), tn = omp_get_num_threads();
      double* pu = part.data() + static_cast<size_t>(t) * 2 * P;
      pattern_sums(xb, gb, R * t / tn, R * (t + 1) / tn, P, C, S, t == tn - 1, pu, pu + P,
                   [&](const T* xrow, const T* grow, int64_t len, float* __restrict fu, float* __restrict fv) {
#pragma omp simd
                     for (int64_t j = 0; j < len; ++j) {
                       float xv = load(xrow, j);
                       float gv = activation_grad(A[j] * xv + Bc[j], load(grow, j), act, slope);
                       fu[j] += gv;
                       fv[j] += gv * ((xv - M[j]) * I[j]);
                     }
                   });
    }
    gather(part, nt, P, C, sum.data(), sq.data());
    for (int64_t c = 0; c < C; ++c) {
      if (db) db[c] += static_cast<float>(sum[c]);
      if (dw) dw[c] += static_cast<float>(sq[c]);
    }
    if (!dx) continue;
    for (int64_t grp = 0; grp < G; ++grp)
      input_grad_coefficients(sum.data(), sq.data(), w, mean[n * G + grp], invstd[n * G + grp], cpg * S,
                              grp * cpg, cpg, k1.data(), k2.data(), k3.data());
    repeat(k1.data(), C, P, k1p.data());
    repeat(k2.data(), C, P, k2p.data());
    repeat(k3.data(), C, P, k3p.data());
    T* dxb = dx + n * S * C;
    const float* K1 = k1p.data();
    const float* K2 = k2p.data();
    const float* K3 = k3p.data();
    const int64_t rows = R + (S - R * (P / C) > 0 ? 1 : 0);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t len = r < R ? P : (S - R * (P / C)) * C;
      const T* grow = gb + r * P;
      const T* xrow = xb + r * P;
      T* drow = dxb + r * P;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        float xv = load(xrow, j);
        float gv = activation_grad(A[j] * xv + Bc[j], load(grow, j), act, slope);
        store(drow, j, K1[j] * gv + K2[j] * xv + K3[j]);
      }
    }
  }
}

// ---------------------------------------------------------------- channels-first: x[n][c][s]
constexpr int64_t kRowBlock = 1024;  // elements of a row summed in float before they are added in double

// sum and sum of squares of row[i] - off over [0, len), in float per kRowBlock and in double across blocks
template <typename T, typename F>
inline void row_sums(int64_t len, double* su, double* sv, F f) {
  for (int64_t blk = 0; blk < len; blk += kRowBlock) {
    int64_t end = blk + kRowBlock < len ? blk + kRowBlock : len;
    float fu = 0.f, fv = 0.f;
#pragma omp simd reduction(+ : fu, fv)
    for (int64_t i = blk; i < end; ++i) {
      float u, v;
      f(i, u, v);
      fu += u;
      fv += v;
    }
    *su += fu;
    *sv += fv;
  }
}

// sum and sum of squares of x[i] - off over [0, len), in float per kRowBlock and in double across blocks
template <typename T>
inline void shifted_sums(const T* __restrict x, int64_t len, float off, double* su, double* sv) {
  for (int64_t blk = 0; blk < len; blk += kRowBlock) {
    int64_t end = blk + kRowBlock < len ? blk + kRowBlock : len;
    float fu = 0.f, fv = 0.f;
#pragma omp simd reduction(+ : fu, fv)
    for (int64_t i = blk; i < end; ++i) {
      float d = load(x, i) - off;
      fu += d;
      fv += d * d;
    }
    *su += fu;
    *sv += fv;
  }
}

template <typename T>
inline void scale_shift_row(const T* __restrict row, T* __restrict orow, int64_t len, float a, float b, int act,
                            float slope) {
  if (act) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) store(orow, i, activate(a * load(row, i) + b, 1, slope));
  } else {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) store(orow, i, a * load(row, i) + b);
  }
}

template <typename T>
void forward_cf(const T* x, T* out, const float* w, const float* bias, float* mean, float* invstd, int64_t B,
                int64_t C, int64_t G, int64_t S, float eps, float slope, int act, int nt) {
  const int64_t cpg = C / G;
  std::vector<float> a(B * C), b(B * C);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < B * G; ++r) {  // one group of one sample: cpg rows of S, contiguous
    const int64_t n = r / G, g = r % G;
    const T* blk = x + r * cpg * S;
    const float off = load(blk, 0);
    double u = 0, v = 0;
    shifted_sums(blk, cpg * S, off, &u, &v);
    float* an = a.data() + n * C;
    float* bn = b.data() + n * C;
    finish_group(u, v, off, cpg * S, eps, w, bias, g * cpg, cpg, mean + r, invstd + r, an, bn);
    for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c)
      scale_shift_row(x + (n * C + c) * S, out + (n * C + c) * S, S, an[c], bn[c], act, slope);
  }
}

template <typename T>
void backward_cf(const T* g, const T* x, T* dx, const float* w, const float* bias, const float* mean,
                 const float* invstd, float* dw, float* db, int64_t B, int64_t C, int64_t G, int64_t S,
                 float slope, int act, int nt) {
  const int64_t cpg = C / G;
  std::vector<double> sum(B * C), sq(B * C);
  std::vector<float> k1(B * C), k2(B * C), k3(B * C);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < B * G; ++r) {
    const int64_t n = r / G, grp = r % G;
    const float mu = mean[r], is = invstd[r];
    for (int64_t c = grp * cpg; c < (grp + 1) * cpg; ++c) {
      const T* grow = g + (n * C + c) * S;
      const T* xrow = x + (n * C + c) * S;
      const float a = (w ? w[c] : 1.f) * is, b = (bias ? bias[c] : 0.f) - mu * a;
      double u = 0, v = 0;
      row_sums<T>(S, &u, &v, [&](int64_t i, float& fu, float& fv) {
        float xv = load(xrow, i);
        float gv = activation_grad(a * xv + b, load(grow, i), act, slope);
        fu = gv;
        fv = gv * ((xv - mu) * is);
      });
      sum[n * C + c] = u;
      sq[n * C + c] = v;
    }
    if (!dx) continue;
    input_grad_coefficients(sum.data() + n * C, sq.data() + n * C, w, mu, is, cpg * S, grp * cpg, cpg,
                            k1.data() + n * C, k2.data() + n * C, k3.data() + n * C);
    for (int64_t c = grp * cpg; c < (grp + 1) * cpg; ++c) {
      const T* grow = g + (n * C + c) * S;
      const T* xrow = x + (n * C + c) * S;
      T* drow = dx + (n * C + c) * S;
      const float a = (w ? w[c] : 1.f) * is, b = (bias ? bias[c] : 0.f) - mu * a;
      const float c1 = k1[n * C + c], c2 = k2[n * C + c], c3 = k3[n * C + c];
#pragma omp simd
      for (int64_t i = 0; i < S; ++i) {
        float xv = load(xrow, i);
        float gv = activation_grad(a * xv + b, load(grow, i), act, slope);
        store(drow, i, c1 * gv + c2 * xv + c3);
      }
    }
  }
  for (int64_t i = 0; i < B * C; ++i) {  // in a fixed order, so the parameter gradients are deterministic
    if (db) db[i % C] += static_cast<float>(sum[i]);
    if (dw) dw[i % C] += static_cast<float>(sq[i]);
  }
}

}  // namespace

// Entry points: G groups of C / G channels share their statistics (G = C: instance norm); mean and invstd are
// (B, G). layout 1 = channels-last, 0 = channels-first; dtype 1 = bf16, 0 = fp32. w, bias, dx, dw, db may be
// null (no affine parameters, or a gradient that is not wanted). Returns 0, or -1 for bad arguments.
extern "C" int medzoo_norm_act_forward(const void* x, void* out, const float* w, const float* bias, float* mean,
                                       float* invstd, int64_t B, int64_t C, int64_t G, int64_t S, float eps,
                                       float slope, int act, int layout, int dtype, int nt) {
  if (nt < 1) nt = 1;
  if (G < 1 || C % G != 0) return -1;
  if (dtype == 1) {
    auto* xi = static_cast<const uint16_t*>(x);
    auto* o = static_cast<uint16_t*>(out);
    layout ? forward_cl(xi, o, w, bias, mean, invstd, B, C, G, S, eps, slope, act, nt)
           : forward_cf(xi, o, w, bias, mean, invstd, B, C, G, S, eps, slope, act, nt);
  } else if (dtype == 0) {
    auto* xi = static_cast<const float*>(x);
    auto* o = static_cast<float*>(out);
    layout ? forward_cl(xi, o, w, bias, mean, invstd, B, C, G, S, eps, slope, act, nt)
           : forward_cf(xi, o, w, bias, mean, invstd, B, C, G, S, eps, slope, act, nt);
  } else {
    return -1;
  }
  return 0;
}

extern "C" int medzoo_norm_act_backward(const void* g, const void* x, void* dx, const float* w, const float* bias,
                                        const float* mean, const float* invstd, float* dw, float* db, int64_t B,
                                        int64_t C, int64_t G, int64_t S, float slope, int act, int layout,
                                        int dtype, int nt) {
  if (nt < 1) nt = 1;
  if (G < 1 || C % G != 0) return -1;
  if (dtype == 1) {
    auto* gi = static_cast<const uint16_t*>(g);
    auto* xi = static_cast<const uint16_t*>(x);
    auto* d = static_cast<uint16_t*>(dx);
    layout ? backward_cl(gi, xi, d, w, bias, mean, invstd, dw, db, B, C, G, S, slope, act, nt)
           : backward_cf(gi, xi, d, w, bias, mean, invstd, dw, db, B, C, G, S, slope, act, nt);
  } else if (dtype == 0) {
    auto* gi = static_cast<const float*>(g);
    auto* xi = static_cast<const float*>(x);
    auto* d = static_cast<float*>(dx);
    layout ? backward_cl(gi, xi, d, w, bias, mean, invstd, dw, db, B, C, G, S, slope, act, nt)
           : backward_cf(gi, xi, d, w, bias, mean, invstd, dw, db, B, C, G, S, slope, act, nt);
  } else {
    return -1;
  }
  return 0;
}
