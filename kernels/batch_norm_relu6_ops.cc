// Batch normalization in training mode fused with ReLU6, for NHWC tensors on
// CPU: the pair every MobileNet V1 body layer trains through. Activations
// (x, y and their gradients) are float32, or bfloat16 under mixed-precision
// training; scale, offset and the statistics are float32 either way, as in
// FusedBatchNormV3 with T=bfloat16, U=float.
//
// TensorFlow runs them as FusedBatchNormV3, Relu6, Relu6Grad and
// FusedBatchNormGradV3, which stream the activations through memory about
// 13 times per step; these two kernels do it in 8 (forward: statistics, then
// normalize-and-clip; backward: the two sums, then the input gradient, with
// the ReLU6 mask recomputed from x instead of stored). The layers are
// memory-bound on CPU, so that is most of what they cost.
//
// Forward:  y = min(max((x - mean) * a + offset, 0), 6), with the batch's
//           mean and (biased) var, a = scale / sqrt(var + epsilon).
// Backward: g = dy where 0 < (x - mean) * a + offset < 6 else 0,
//           x_hat = (x - mean) * inverse_std; d_offset = sum(g),
//           d_scale = sum(g * x_hat),
//           dx = a * (g - mean(g) - x_hat * mean(g * x_hat)).
//
// Quantization-aware training puts a fake quant on every such y, with a
// range that moves with each batch's maximum of y. The second pair of ops
// folds it in: BatchNormRelu6Moments gives the statistics and that maximum
// (from each channel's extremes of x, in the statistics pass), and
// BatchNormRelu6FakeQuant writes FakeQuantWithMinMaxVars(y) directly, so y
// itself is never stored, reduced or read back. Its gradient is the one
// above with the fake quant's straight-through mask (its nudged range) on
// g: four more passes saved forward and backward. These two take float32
// activations only: under mixed bfloat16, quantization-aware training keeps
// TensorFlow's fake quant on a float32 cast of the bfloat16 y.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include <immintrin.h>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"

namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using bfloat16 = ::Eigen::bfloat16;

// The gradient ops' outputs: x_backprop shaped as x (input 1),
// scale_backprop and offset_backprop as scale (input 2).
::tensorflow::Status GradientShapes(
    ::tensorflow::shape_inference::InferenceContext* c) {
  c->set_output(0, c->input(1));
  c->set_output(1, c->input(2));
  c->set_output(2, c->input(2));
  return ::tensorflow::OkStatus();
}

REGISTER_OP("FusedBatchNormRelu6")
    .Input("x: T")
    .Input("scale: float")
    .Input("offset: float")
    .Output("y: T")
    .Output("batch_mean: float")
    .Output("batch_variance: float")
    .Output("inverse_std: float")
    .Attr("T: {float, bfloat16} = DT_FLOAT")
    .Attr("epsilon: float = 0.001")
    .Doc(R"doc(
Training-mode batch normalization of the last (channel) dimension, then ReLU6.

batch_variance: unbiased (Bessel-corrected), for the moving average, as
  FusedBatchNormV3 gives it; y is normalized with the biased variance.
inverse_std: 1 / sqrt(biased variance + epsilon), for the gradient.
T: x and y. bfloat16 x is widened to float, and y rounded to nearest even.
)doc")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      ::tensorflow::shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &x));
      auto channels = c->Dim(x, -1);
      for (int i = 1; i < 4; ++i) c->set_output(i, c->Vector(channels));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("FusedBatchNormRelu6Grad")
    .Input("y_backprop: T")
    .Input("x: T")
    .Input("scale: float")
    .Input("offset: float")
    .Input("batch_mean: float")
    .Input("inverse_std: float")
    .Output("x_backprop: T")
    .Output("scale_backprop: float")
    .Output("offset_backprop: float")
    .Attr("T: {float, bfloat16} = DT_FLOAT")
    .SetShapeFn(GradientShapes);

REGISTER_OP("BatchNormRelu6Moments")
    .Input("x: float")
    .Input("scale: float")
    .Input("offset: float")
    .Output("batch_mean: float")
    .Output("batch_variance: float")
    .Output("inverse_std: float")
    .Output("y_max: float")
    .Attr("epsilon: float = 0.001")
    .Doc(R"doc(
FusedBatchNormRelu6's statistics, and the largest value of its y (a scalar,
at least 0), without computing y.
)doc")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &x));
      auto channels = c->Dim(x, -1);
      for (int i = 0; i < 3; ++i) c->set_output(i, c->Vector(channels));
      c->set_output(3, c->Scalar());
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("BatchNormRelu6FakeQuant")
    .Input("x: float")
    .Input("scale: float")
    .Input("offset: float")
    .Input("batch_mean: float")
    .Input("inverse_std: float")
    .Input("min: float")
    .Input("max: float")
    .Output("y: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Doc(R"doc(
FakeQuantWithMinMaxVars(FusedBatchNormRelu6(x).y, min, max), bit for bit,
given the batch statistics BatchNormRelu6Moments computed from x.
)doc")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("BatchNormRelu6FakeQuantGrad")
    .Input("y_backprop: float")
    .Input("x: float")
    .Input("scale: float")
    .Input("offset: float")
    .Input("batch_mean: float")
    .Input("inverse_std: float")
    .Input("min: float")
    .Input("max: float")
    .Output("x_backprop: float")
    .Output("scale_backprop: float")
    .Output("offset_backprop: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Doc(R"doc(
The gradient of BatchNormRelu6FakeQuant through the batch statistics, as
FusedBatchNormRelu6Grad's, where the fake quant passes it (straight
through, inside its nudged range).
)doc")
    .SetShapeFn(GradientShapes);

// Activations are float or bfloat16; every loop below computes in float,
// reading them through ToFloat / Load8 and writing them through FromFloat /
// Stream8, so one loop body serves both types with the same arithmetic: a
// bfloat16 kernel gives the float kernel's results (on the same values),
// rounded to bfloat16.
inline float ToFloat(float v) { return v; }
inline float ToFloat(bfloat16 v) { return static_cast<float>(v); }  // Exact.

// Rounds to nearest even, as TensorFlow's Cast does (Eigen's conversion); a
// NaN becomes a quiet NaN of the same sign, never the infinity truncating
// its significand could leave.
template <typename T>
inline T FromFloat(float v) {
  return T(v);
}

inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }

// A bfloat16 is a float's upper half: widen to 32 bits, shift into place.
inline __m256 Load8(const bfloat16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// FromFloat<bfloat16> on 8 values, each in the low half of a 32-bit lane:
// add just under half a bfloat16 unit in the last place, plus its last bit
// (so ties go to even), and keep the upper 16 bits; NaNs become 0x7fc0 with
// their sign, as Eigen's scalar conversion makes them, so vector and scalar
// loops give the same bits.
inline __m256i ToBfloat16Bits8(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i last_bit =
      _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)),
                       last_bit),
      16);
  const __m256i quiet_nan = _mm256_or_si256(
      _mm256_srli_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(INT32_MIN)),
                        16),
      _mm256_set1_epi32(0x7fc0));
  return _mm256_blendv_epi8(
      rounded, quiet_nan,
      _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}

inline void Stream8(float* p, __m256 v) { _mm256_stream_ps(p, v); }

inline void Stream8(bfloat16* p, __m256 v) {
  const __m256i halves = ToBfloat16Bits8(v);
  // Every 32-bit lane holds a value below 2^16, which packing keeps as is.
  _mm_stream_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(halves),
                                    _mm256_extracti128_si256(halves, 1)));
}

// v as a T holds it, back in float. The gradient kernels take ReLU6's mask
// from z as the forward kernel stored it, so that the gradient passes
// exactly where 0 < y < 6, as TensorFlow's Relu6Grad decides it from y: in
// bfloat16, z in [6 - 2^-6, 6) is stored as y = 6 and passes none.
template <typename T>
inline float AsStored(float v) {
  if constexpr (std::is_same_v<T, bfloat16>) {
    // FromFloat's rounding without its NaN branch, which kept the gradient
    // sums' loop from vectorizing (13x slower, measured). A NaN z rounds to
    // an infinity or a zero here instead, which passes no gradient either.
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    bits = (bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff0000u;
    std::memcpy(&v, &bits, sizeof(v));
  }
  return v;
}

template <typename T>
inline __m256 AsStored8(__m256 v) {
  if constexpr (std::is_same_v<T, bfloat16>) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(ToBfloat16Bits8(v), 16));
  } else {
    return v;
  }
}

// Rows (pixels) summed in float before adding into double totals.
constexpr int64_t kChunkRows = 128;

// Per channel, sum_a += A(row) and sum_b += B(row) over rows [begin, end),
// where add_row(r, a, b) adds row r's terms into the float arrays a and b:
// float sums of kChunkRows rows at a time, then into double.
template <typename AddRow>
void ChunkedSums(int64_t begin, int64_t end, int64_t channels,
                 double* __restrict sum_a, double* __restrict sum_b,
                 AddRow add_row) {
  std::vector<float> part(2 * channels);
  float* __restrict part_a = part.data();
  float* __restrict part_b = part_a + channels;
  for (int64_t r0 = begin; r0 < end; r0 += kChunkRows) {
    std::fill(part.begin(), part.end(), 0.f);
    const int64_t r1 = std::min(end, r0 + kChunkRows);
    for (int64_t r = r0; r < r1; ++r) add_row(r, part_a, part_b);
    for (int64_t c = 0; c < channels; ++c) {
      sum_a[c] += part_a[c];
      sum_b[c] += part_b[c];
    }
  }
}

// sum += x - shift, sum_sq += (x - shift)^2 over rows [begin, end), per
// channel. Shifting by a value of the channel (its first) keeps the one-pass
// variance, E[(x - shift)^2] - E[x - shift]^2, exact when the mean is large
// against the spread. With x_min and x_max, also each channel's extremes of
// x (min into x_min, max into x_max), in the same pass.
template <bool kExtremes, typename T>
void ShiftedSums(const T* __restrict x, int64_t begin, int64_t end,
                 int64_t channels, const T* __restrict shift,
                 double* __restrict sum, double* __restrict sum_sq,
                 float* __restrict x_min, float* __restrict x_max) {
  ChunkedSums(begin, end, channels, sum, sum_sq,
              [=](int64_t r, float* __restrict ps, float* __restrict pq) {
                const T* __restrict row = x + r * channels;
                for (int64_t c = 0; c < channels; ++c) {
                  const float xc = ToFloat(row[c]);
                  const float d = xc - ToFloat(shift[c]);
                  ps[c] += d;
                  pq[c] += d * d;
                  if constexpr (kExtremes) {
                    x_min[c] = std::min(x_min[c], xc);
                    x_max[c] = std::max(x_max[c], xc);
                  }
                }
              });
}

// The outputs (activations and their gradients, megabytes per layer) are far
// larger than the caches, so the kernels write them with streaming stores,
// which skip reading each cache line before overwriting it: a third less
// write traffic, 2-3% of a training step. They need whole 8-value vectors
// on their own size's boundaries (32 bytes of float, 16 of bfloat16), which
// every MobileNet layer has (channels are multiples of 8); other shapes take
// the plain loops.
template <typename T>
bool CanStream(const T* out, int64_t channels) {
  return channels % 8 == 0 &&
         reinterpret_cast<uintptr_t>(out) % (8 * sizeof(T)) == 0;
}

// z = (x - mean) * a + offset, ReLU6's input. Every kernel computes it
// here, so the forward clipping and the backward mask agree bit for bit; it
// multiplies then adds, as TensorFlow's batch norm does (BUILD turns off FMA
// contraction), so they also agree with TensorFlow's at the clipping edges.
inline float PreActivation(float x, float mean, float a, float offset) {
  return (x - mean) * a + offset;
}

template <typename T>
inline __m256 CenteredX8(const T* x, const float* mean) {
  return _mm256_sub_ps(Load8(x), _mm256_loadu_ps(mean));
}

// PreActivation on 8 channels, from CenteredX8.
inline __m256 PreActivation8(__m256 centered_x, const float* a,
                             const float* offset) {
  return _mm256_add_ps(_mm256_mul_ps(centered_x, _mm256_loadu_ps(a)),
                       _mm256_loadu_ps(offset));
}

// The gradient passes where ReLU6's input lies strictly inside (0, 6) and,
// under a fake quant, ReLU6's output (then equal to its input) inside
// [pass_min, pass_max]; without one, those are -inf and inf.
struct Gate {
  float pass_min = -INFINITY, pass_max = INFINITY;

  float operator()(float z, float dy) const {
    return (z > 0.f) & (z < 6.f) & (z >= pass_min) & (z <= pass_max) ? dy
                                                                      : 0.f;
  }

  __m256 operator()(__m256 z, __m256 dy) const {
    const __m256 inside = _mm256_and_ps(
        _mm256_and_ps(_mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GT_OQ),
                      _mm256_cmp_ps(z, _mm256_set1_ps(6.f), _CMP_LT_OQ)),
        _mm256_and_ps(
            _mm256_cmp_ps(z, _mm256_set1_ps(pass_min), _CMP_GE_OQ),
            _mm256_cmp_ps(z, _mm256_set1_ps(pass_max), _CMP_LE_OQ)));
    return _mm256_and_ps(inside, dy);
  }
};

// TensorFlow's FakeQuantWithMinMaxVars (fake_quant_ops_functor.h), the same
// float operations in the same order, so that its values match bit for bit.
class FakeQuant {
 public:
  FakeQuant(float min, float max, int num_bits, bool narrow_range) {
    zero_range_ = min == 0.f && max == 0.f;
    if (zero_range_) {
      // TensorFlow outputs 0 and passes every gradient.
      pass_min_ = -INFINITY;
      pass_max_ = INFINITY;
      return;
    }
    const float quant_min = narrow_range ? 1.f : 0.f;
    const float quant_max = static_cast<float>((1 << num_bits) - 1);
    scale_ = (max - min) / (quant_max - quant_min);
    const float inv_scale = (quant_max - quant_min) / (max - min);
    const float zero_point_from_min = quant_min - min / scale_;
    uint16_t zero_point;
    if (zero_point_from_min < quant_min) {
      zero_point = static_cast<uint16_t>(quant_min);
    } else if (zero_point_from_min > quant_max) {
      zero_point = static_cast<uint16_t>(quant_max);
    } else {
      zero_point = static_cast<uint16_t>(std::round(zero_point_from_min));
    }
    pass_min_ = (quant_min - zero_point) * scale_;
    pass_max_ = (quant_max - zero_point) * scale_;
    quant_zero_ = std::floor(-pass_min_ * inv_scale + 0.5f);
  }

  // ReLU6's gate narrowed to the nudged range, where the gradient passes.
  Gate gate() const { return Gate{pass_min_, pass_max_}; }

  float operator()(float y) const {
    if (zero_range_) return 0.f;
    const float clamped = std::max(std::min(y, pass_max_), pass_min_);
    return std::floor((clamped - pass_min_) / scale_ - quant_zero_ + 0.5f) *
           scale_;
  }

  __m256 operator()(__m256 y) const {
    if (zero_range_) return _mm256_setzero_ps();
    const __m256 clamped = _mm256_max_ps(
        _mm256_min_ps(y, _mm256_set1_ps(pass_max_)),
        _mm256_set1_ps(pass_min_));
    const __m256 steps = _mm256_add_ps(
        _mm256_sub_ps(_mm256_div_ps(_mm256_sub_ps(clamped,
                                                  _mm256_set1_ps(pass_min_)),
                                    _mm256_set1_ps(scale_)),
                      _mm256_set1_ps(quant_zero_)),
        _mm256_set1_ps(0.5f));
    return _mm256_mul_ps(_mm256_floor_ps(steps), _mm256_set1_ps(scale_));
  }

 private:
  bool zero_range_;
  float scale_ = 0.f, quant_zero_ = 0.f, pass_min_, pass_max_;
};

// The identity, in FakeQuant's place where y is not quantized.
struct NoQuant {
  float operator()(float y) const { return y; }
  __m256 operator()(__m256 y) const { return y; }
};

// y = quantize(min(max(z, 0), 6)) over rows [begin, end).
template <typename T, typename Quantize>
void AffineRelu6(const T* __restrict x, int64_t begin, int64_t end,
                 int64_t channels, const float* __restrict mean,
                 const float* __restrict a, const float* __restrict offset,
                 const Quantize& quantize, T* __restrict y) {
  if (CanStream(y, channels)) {
    const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
    for (int64_t i = begin * channels; i < end * channels; i += channels) {
      for (int64_t c = 0; c < channels; c += 8) {
        const __m256 z =
            PreActivation8(CenteredX8(x + i + c, mean + c), a + c, offset + c);
        Stream8(y + i + c,
                quantize(_mm256_min_ps(_mm256_max_ps(z, zero), six)));
      }
    }
    _mm_sfence();
    return;
  }
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict xr = x + r * channels;
    T* __restrict yr = y + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float z = PreActivation(ToFloat(xr[c]), mean[c], a[c], offset[c]);
      yr[c] = FromFloat<T>(quantize(std::min(std::max(z, 0.f), 6.f)));
    }
  }
}

// With g = gate(z as stored, dy):
// sum_g += g and sum_gx += g * (x - mean) * inv_std over rows [begin, end).
template <typename T>
void GatedSums(const T* __restrict x, const T* __restrict dy, int64_t begin,
               int64_t end, int64_t channels, const float* __restrict mean,
               const float* __restrict a, const float* __restrict offset,
               const float* __restrict inv_std, const Gate& gate,
               double* __restrict sum_g, double* __restrict sum_gx) {
  ChunkedSums(begin, end, channels, sum_g, sum_gx,
              [=](int64_t r, float* __restrict pg, float* __restrict px) {
                const T* __restrict xr = x + r * channels;
                const T* __restrict dr = dy + r * channels;
                for (int64_t c = 0; c < channels; ++c) {
                  const float xc = ToFloat(xr[c]);
                  const float g = gate(
                      AsStored<T>(PreActivation(xc, mean[c], a[c], offset[c])),
                      ToFloat(dr[c]));
                  pg[c] += g;
                  px[c] += g * ((xc - mean[c]) * inv_std[c]);
                }
              });
}

// dx = a * (g - mean_g - x_hat * mean_gx), g as in GatedSums.
template <typename T>
void InputGradient(const T* __restrict x, const T* __restrict dy,
                   int64_t begin, int64_t end, int64_t channels,
                   const float* __restrict mean, const float* __restrict a,
                   const float* __restrict offset,
                   const float* __restrict inv_std, const Gate& gate,
                   const float* __restrict mean_g,
                   const float* __restrict mean_gx, T* __restrict dx) {
  if (CanStream(dx, channels)) {
    for (int64_t i = begin * channels; i < end * channels; i += channels) {
      for (int64_t c = 0; c < channels; c += 8) {
        const __m256 centered_x = CenteredX8(x + i + c, mean + c);
        const __m256 z =
            AsStored8<T>(PreActivation8(centered_x, a + c, offset + c));
        const __m256 g = gate(z, Load8(dy + i + c));
        const __m256 x_hat =
            _mm256_mul_ps(centered_x, _mm256_loadu_ps(inv_std + c));
        const __m256 centered = _mm256_sub_ps(
            _mm256_sub_ps(g, _mm256_loadu_ps(mean_g + c)),
            _mm256_mul_ps(x_hat, _mm256_loadu_ps(mean_gx + c)));
        Stream8(dx + i + c, _mm256_mul_ps(_mm256_loadu_ps(a + c), centered));
      }
    }
    _mm_sfence();
    return;
  }
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict xr = x + r * channels;
    const T* __restrict dr = dy + r * channels;
    T* __restrict out = dx + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float xc = ToFloat(xr[c]);
      const float g = gate(
          AsStored<T>(PreActivation(xc, mean[c], a[c], offset[c])),
          ToFloat(dr[c]));
      const float x_hat = (xc - mean[c]) * inv_std[c];
      out[c] = FromFloat<T>(a[c] * (g - mean_g[c] - x_hat * mean_gx[c]));
    }
  }
}

// Runs fn(begin_row, end_row, block) over `rows` split into blocks.
template <typename Fn>
void ForEachBlock(OpKernelContext* context, int64_t rows, int blocks,
                  int64_t cost_per_row, Fn fn) {
  auto* pool = context->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(blocks, cost_per_row * rows / blocks,
                    [&](int64_t first, int64_t last) {
                      for (int64_t b = first; b < last; ++b) {
                        fn(rows * b / blocks, rows * (b + 1) / blocks, b);
                      }
                    });
}

int NumBlocks(OpKernelContext* context) {
  return 4 * context->device()->tensorflow_cpu_worker_threads()->num_threads;
}

// Outputs first_output.. of a statistics op: the batch mean, the unbiased
// variance and 1 / sqrt(biased variance + epsilon) of x (input 0) per
// channel, with a = scale * inverse_std. With y_max, also the largest
// min(max((x - mean) * a + offset, 0), 6), at least 0.
template <typename T>
Status ComputeMoments(OpKernelContext* context, int first_output,
                      float epsilon, std::vector<float>* a, Tensor** mean_out,
                      Tensor** inv_std_out, float* y_max) {
  const Tensor& x = context->input(0);
  if (x.dims() < 1 || x.dim_size(x.dims() - 1) == 0) {
    return InvalidArgument("x has no channels");
  }
  const int64_t channels = x.dim_size(x.dims() - 1);
  const int64_t rows = x.NumElements() / channels;
  if (rows < 2) {
    return InvalidArgument("batch norm needs 2+ values per channel");
  }
  for (int i = 1; i < 3; ++i) {
    if (context->input(i).shape() != TensorShape({channels})) {
      return InvalidArgument("scale and offset must have shape [", channels,
                             "]");
    }
  }
  Tensor* variance_out;
  TensorShape vec({channels});
  TF_RETURN_IF_ERROR(context->allocate_output(first_output, vec, mean_out));
  TF_RETURN_IF_ERROR(
      context->allocate_output(first_output + 1, vec, &variance_out));
  TF_RETURN_IF_ERROR(
      context->allocate_output(first_output + 2, vec, inv_std_out));
  const T* xp = x.flat<T>().data();
  const int blocks = NumBlocks(context);
  std::vector<double> sums(2 * blocks * channels, 0.0);
  std::vector<float> x_min, x_max;
  if (y_max != nullptr) {
    x_min.assign(blocks * channels, INFINITY);
    x_max.assign(blocks * channels, -INFINITY);
  }
  ForEachBlock(context, rows, blocks, 2 * channels,
               [&](int64_t begin, int64_t end, int64_t block) {
                 double* sum = &sums[2 * block * channels];
                 if (y_max == nullptr) {
                   ShiftedSums<false>(xp, begin, end, channels, xp, sum,
                                      sum + channels, nullptr, nullptr);
                 } else {
                   ShiftedSums<true>(xp, begin, end, channels, xp, sum,
                                     sum + channels, &x_min[block * channels],
                                     &x_max[block * channels]);
                 }
               });
  auto mean = (*mean_out)->flat<float>();
  auto variance = variance_out->flat<float>();
  auto inv_std = (*inv_std_out)->flat<float>();
  const float* scale_p = context->input(1).flat<float>().data();
  const float* offset_p = context->input(2).flat<float>().data();
  a->resize(channels);
  if (y_max != nullptr) *y_max = 0.f;
  for (int64_t c = 0; c < channels; ++c) {
    double s = 0, q = 0;
    for (int block = 0; block < blocks; ++block) {
      s += sums[2 * block * channels + c];
      q += sums[(2 * block + 1) * channels + c];
    }
    const double shifted_mean = s / rows;
    const double v = std::max(q / rows - shifted_mean * shifted_mean, 0.0);
    const double m = ToFloat(xp[c]) + shifted_mean;
    mean(c) = m;
    variance(c) = v * rows / (rows - 1);  // Bessel's, as FusedBatchNormV3.
    inv_std(c) = 1.0 / std::sqrt(v + epsilon);
    (*a)[c] = scale_p[c] * inv_std(c);
    if (y_max != nullptr) {
      // Float rounding keeps (x - mean) * a + offset monotonic in x, so the
      // channel's largest value comes from one of its extremes.
      float lowest = INFINITY, highest = -INFINITY;
      for (int block = 0; block < blocks; ++block) {
        lowest = std::min(lowest, x_min[block * channels + c]);
        highest = std::max(highest, x_max[block * channels + c]);
      }
      const float z = PreActivation((*a)[c] >= 0.f ? highest : lowest,
                                    mean(c), (*a)[c], offset_p[c]);
      *y_max = std::max(*y_max, std::min(std::max(z, 0.f), 6.f));
    }
  }
  return ::tensorflow::OkStatus();
}

template <typename T>
class FusedBatchNormRelu6Op : public OpKernel {
 public:
  explicit FusedBatchNormRelu6Op(OpKernelConstruction* context)
      : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* context) override {
    std::vector<float> a;
    Tensor *mean, *inv_std, *y;
    OP_REQUIRES_OK(context, ComputeMoments<T>(context, 1, epsilon_, &a, &mean,
                                              &inv_std, nullptr));
    const Tensor& x = context->input(0);
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    const int64_t channels = a.size();
    const int64_t rows = x.NumElements() / channels;
    const T* xp = x.flat<T>().data();
    const float* offset_p = context->input(2).flat<float>().data();
    T* yp = y->flat<T>().data();
    ForEachBlock(context, rows, NumBlocks(context), 2 * channels,
                 [&](int64_t begin, int64_t end, int64_t) {
                   AffineRelu6(xp, begin, end, channels,
                               mean->flat<float>().data(), a.data(), offset_p,
                               NoQuant(), yp);
                 });
  }

 private:
  float epsilon_;
};

class BatchNormRelu6MomentsOp : public OpKernel {
 public:
  explicit BatchNormRelu6MomentsOp(OpKernelConstruction* context)
      : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* context) override {
    std::vector<float> a;
    Tensor *mean, *inv_std, *y_max;
    float y_max_value;
    OP_REQUIRES_OK(context, ComputeMoments<float>(context, 0, epsilon_, &a,
                                                  &mean, &inv_std,
                                                  &y_max_value));
    OP_REQUIRES_OK(context,
                   context->allocate_output(3, TensorShape({}), &y_max));
    y_max->scalar<float>()() = y_max_value;
  }

 private:
  float epsilon_;
};

// The per-channel inputs first..first+3 (scale, offset, batch_mean,
// inverse_std) of an op normalizing x, with a = scale * inverse_std.
struct Normalization {
  int64_t channels, rows;
  const float *offset, *mean, *inv_std;
  std::vector<float> a;
};

Status ReadNormalization(OpKernelContext* context, const Tensor& x, int first,
                         Normalization* n) {
  if (x.dims() < 1 || x.dim_size(x.dims() - 1) == 0) {
    return InvalidArgument("x has no channels");
  }
  n->channels = x.dim_size(x.dims() - 1);
  n->rows = x.NumElements() / n->channels;
  for (int i = first; i < first + 4; ++i) {
    if (context->input(i).shape() != TensorShape({n->channels})) {
      return InvalidArgument("per-channel inputs must be [channels]");
    }
  }
  const float* scale = context->input(first).flat<float>().data();
  n->offset = context->input(first + 1).flat<float>().data();
  n->mean = context->input(first + 2).flat<float>().data();
  n->inv_std = context->input(first + 3).flat<float>().data();
  n->a.resize(n->channels);
  for (int64_t c = 0; c < n->channels; ++c) n->a[c] = scale[c] * n->inv_std[c];
  return ::tensorflow::OkStatus();
}

// The num_bits and narrow_range attrs of a fake-quant op.
struct FakeQuantAttrs {
  int num_bits;
  bool narrow_range;

  Status Read(OpKernelConstruction* construction) {
    TF_RETURN_IF_ERROR(construction->GetAttr("num_bits", &num_bits));
    if (num_bits < 2 || num_bits > 16) {
      return InvalidArgument("num_bits must be in [2, 16], not ", num_bits);
    }
    return construction->GetAttr("narrow_range", &narrow_range);
  }

  // The fake quant of scalar inputs min_input (min) and min_input + 1 (max).
  Status Make(OpKernelContext* context, int min_input,
              std::optional<FakeQuant>* fake_quant) const {
    const Tensor& min = context->input(min_input);
    const Tensor& max = context->input(min_input + 1);
    if (min.dims() != 0 || max.dims() != 0) {
      return InvalidArgument("min and max must be scalars");
    }
    fake_quant->emplace(min.scalar<float>()(), max.scalar<float>()(),
                        num_bits, narrow_range);
    return ::tensorflow::OkStatus();
  }
};

class BatchNormRelu6FakeQuantOp : public OpKernel {
 public:
  explicit BatchNormRelu6FakeQuantOp(OpKernelConstruction* context)
      : OpKernel(context) {
    OP_REQUIRES_OK(context, attrs_.Read(context));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    Normalization n;
    std::optional<FakeQuant> fake_quant;
    OP_REQUIRES_OK(context, ReadNormalization(context, x, 1, &n));
    OP_REQUIRES_OK(context, attrs_.Make(context, 5, &fake_quant));
    Tensor* y;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    const float* xp = x.flat<float>().data();
    float* yp = y->flat<float>().data();
    ForEachBlock(context, n.rows, NumBlocks(context), 3 * n.channels,
                 [&](int64_t begin, int64_t end, int64_t) {
                   AffineRelu6(xp, begin, end, n.channels, n.mean, n.a.data(),
                               n.offset, *fake_quant, yp);
                 });
  }

 private:
  FakeQuantAttrs attrs_;
};

// The gradient of y = fake_quant(relu6(batch_norm(x))) through the batch
// statistics, for the gate of the fake quant (or none).
template <typename T>
void BackpropThroughBatchNorm(OpKernelContext* context, const Normalization& n,
                              const Gate& gate) {
  const Tensor& dy = context->input(0);
  const Tensor& x = context->input(1);
  Tensor *dx, *dscale, *doffset;
  OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx));
  TensorShape vec({n.channels});
  OP_REQUIRES_OK(context, context->allocate_output(1, vec, &dscale));
  OP_REQUIRES_OK(context, context->allocate_output(2, vec, &doffset));
  const T* xp = x.flat<T>().data();
  const T* dyp = dy.flat<T>().data();
  const int64_t channels = n.channels;
  const int blocks = NumBlocks(context);
  std::vector<double> sums(2 * blocks * channels, 0.0);
  ForEachBlock(context, n.rows, blocks, 3 * channels,
               [&](int64_t begin, int64_t end, int64_t block) {
                 double* sum = &sums[2 * block * channels];
                 GatedSums(xp, dyp, begin, end, channels, n.mean, n.a.data(),
                           n.offset, n.inv_std, gate, sum, sum + channels);
               });
  auto ds = dscale->flat<float>();
  auto dof = doffset->flat<float>();
  std::vector<float> mean_g(channels), mean_gx(channels);
  for (int64_t c = 0; c < channels; ++c) {
    double g = 0, gx = 0;
    for (int block = 0; block < blocks; ++block) {
      g += sums[2 * block * channels + c];
      gx += sums[(2 * block + 1) * channels + c];
    }
    dof(c) = g;
    ds(c) = gx;
    mean_g[c] = g / n.rows;
    mean_gx[c] = gx / n.rows;
  }
  T* dxp = dx->flat<T>().data();
  ForEachBlock(context, n.rows, blocks, 3 * channels,
               [&](int64_t begin, int64_t end, int64_t) {
                 InputGradient(xp, dyp, begin, end, channels, n.mean,
                               n.a.data(), n.offset, n.inv_std, gate,
                               mean_g.data(), mean_gx.data(), dxp);
               });
}

Status CheckGradientShapes(OpKernelContext* context) {
  if (context->input(1).dims() < 1 ||
      context->input(0).shape() != context->input(1).shape()) {
    return InvalidArgument("y_backprop and x must have the same shape");
  }
  return ::tensorflow::OkStatus();
}

// FusedBatchNormRelu6Grad, or with kFakeQuant BatchNormRelu6FakeQuantGrad
// (whose min and max, inputs 6 and 7, narrow the gate; float only).
template <bool kFakeQuant, typename T = float>
class BatchNormRelu6GradOp : public OpKernel {
 public:
  explicit BatchNormRelu6GradOp(OpKernelConstruction* context)
      : OpKernel(context) {
    if constexpr (kFakeQuant) OP_REQUIRES_OK(context, attrs_.Read(context));
  }

  void Compute(OpKernelContext* context) override {
    Normalization n;
    OP_REQUIRES_OK(context, CheckGradientShapes(context));
    OP_REQUIRES_OK(context,
                   ReadNormalization(context, context->input(1), 2, &n));
    Gate gate;
    if constexpr (kFakeQuant) {
      std::optional<FakeQuant> fake_quant;
      OP_REQUIRES_OK(context, attrs_.Make(context, 6, &fake_quant));
      gate = fake_quant->gate();
    }
    BackpropThroughBatchNorm<T>(context, n, gate);
  }

 private:
  FakeQuantAttrs attrs_;
};

REGISTER_KERNEL_BUILDER(Name("FusedBatchNormRelu6")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<float>("T"),
                        FusedBatchNormRelu6Op<float>);
REGISTER_KERNEL_BUILDER(Name("FusedBatchNormRelu6")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<bfloat16>("T"),
                        FusedBatchNormRelu6Op<bfloat16>);
REGISTER_KERNEL_BUILDER(Name("FusedBatchNormRelu6Grad")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<float>("T"),
                        BatchNormRelu6GradOp<false, float>);
REGISTER_KERNEL_BUILDER(Name("FusedBatchNormRelu6Grad")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<bfloat16>("T"),
                        BatchNormRelu6GradOp<false, bfloat16>);
REGISTER_KERNEL_BUILDER(Name("BatchNormRelu6Moments").Device(DEVICE_CPU),
                        BatchNormRelu6MomentsOp);
REGISTER_KERNEL_BUILDER(Name("BatchNormRelu6FakeQuant").Device(DEVICE_CPU),
                        BatchNormRelu6FakeQuantOp);
REGISTER_KERNEL_BUILDER(Name("BatchNormRelu6FakeQuantGrad").Device(DEVICE_CPU),
                        BatchNormRelu6GradOp<true>);

}  // namespace
