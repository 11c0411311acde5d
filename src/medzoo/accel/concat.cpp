// Concatenation of channels-last maps along the channel axis, on the CPU.
//
// A channels-last map (B, C, *S) is B * S rows of C values; the concatenation of maps with C_0, C_1, ... channels
// is B * S rows of sum(C_i) values, row r being row r of each input in turn. PyTorch's cat runs this as a strided
// copy, well below what the memory traffic allows when rows are short (a few channels). Here each thread copies blocks of rows, input after input, with
// the row length a compile-time constant for the common lengths (whole vectors, no loop per row).
//
// Values are copied as opaque units of 4, 2 or 1 bytes (the largest that divides every row), so any dtype works.
#ifdef _OPENMP
#include <omp.h>
#endif

#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kRows = 512;  // rows per block: each thread fills whole blocks of the output

template <typename U, int N>
inline void copy_rows(const U* src, U* dst, int64_t r0, int64_t r1, int64_t stride) {
  for (int64_t r = r0; r < r1; ++r) {
    const U* s = src + r * N;
    U* d = dst + r * stride;
#pragma omp simd
    for (int k = 0; k < N; ++k) d[k] = s[k];
  }
}

// rows [r0, r1) of one input (n units per row) into the output (stride units per row, already offset)
template <typename U>
inline void copy_input(const U* src, U* dst, int64_t r0, int64_t r1, int64_t n, int64_t stride) {
  switch (n) {
    case 1: return copy_rows<U, 1>(src, dst, r0, r1, stride);
    case 2: return copy_rows<U, 2>(src, dst, r0, r1, stride);
    case 4: return copy_rows<U, 4>(src, dst, r0, r1, stride);
    case 8: return copy_rows<U, 8>(src, dst, r0, r1, stride);
    case 16: return copy_rows<U, 16>(src, dst, r0, r1, stride);
    case 32: return copy_rows<U, 32>(src, dst, r0, r1, stride);
    case 64: return copy_rows<U, 64>(src, dst, r0, r1, stride);
    default:
      for (int64_t r = r0; r < r1; ++r) std::memcpy(dst + r * stride, src + r * n, static_cast<size_t>(n) * sizeof(U));
  }
}

template <typename U>
void concat(const void* const* inputs, const int64_t* row_bytes, int64_t count, void* out, int64_t rows, int nt) {
  int64_t stride = 0;
  for (int64_t i = 0; i < count; ++i) stride += row_bytes[i] / static_cast<int64_t>(sizeof(U));
  const int64_t blocks = (rows + kRows - 1) / kRows;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kRows, r1 = r0 + kRows < rows ? r0 + kRows : rows;
    int64_t offset = 0;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t n = row_bytes[i] / static_cast<int64_t>(sizeof(U));
      copy_input(static_cast<const U*>(inputs[i]), static_cast<U*>(out) + offset, r0, r1, n, stride);
      offset += n;
    }
  }
}

}  // namespace

// inputs[i]: rows x row_bytes[i] bytes, dense; out: rows x sum(row_bytes) bytes. Returns 0, or 1 for bad sizes.
extern "C" int medzoo_concat_rows(const void* const* inputs, const int64_t* row_bytes, int64_t count, void* out,
                                  int64_t rows, int threads) {
  if (count < 1 || rows < 0) return 1;
  int64_t common = 0;  // OR of the row sizes: its low bits say which unit divides them all
  for (int64_t i = 0; i < count; ++i) {
    if (row_bytes[i] < 0) return 1;
    common |= row_bytes[i];
  }
  const int nt = threads > 0 ? threads : 1;
  if (common % 4 == 0)
    concat<uint32_t>(inputs, row_bytes, count, out, rows, nt);
  else if (common % 2 == 0)
    concat<uint16_t>(inputs, row_bytes, count, out, rows, nt);
  else
    concat<uint8_t>(inputs, row_bytes, count, out, rows, nt);
  return 0;
}
