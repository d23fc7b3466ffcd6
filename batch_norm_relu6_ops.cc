// Batch normalization in training mode fused with ReLU6, for float32 NHWC
// tensors on CPU: the pair every MobileNet V1 body layer trains through.
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
#include <algorithm>
#include <cmath>
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
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

REGISTER_OP("FusedBatchNormRelu6")
    .Input("x: float")
    .Input("scale: float")
    .Input("offset: float")
    .Output("y: float")
    .Output("batch_mean: float")
    .Output("batch_variance: float")
    .Output("inverse_std: float")
    .Attr("epsilon: float = 0.001")
    .Doc(R"doc(
Training-mode batch normalization of the last (channel) dimension, then ReLU6.

batch_variance: unbiased (Bessel-corrected), for the moving average, as
  FusedBatchNormV3 gives it; y is normalized with the biased variance.
inverse_std: 1 / sqrt(biased variance + epsilon), for the gradient.
)doc")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      auto channels = c->Dim(c->input(0), -1);
      for (int i = 1; i < 4; ++i) c->set_output(i, c->Vector(channels));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("FusedBatchNormRelu6Grad")
    .Input("y_backprop: float")
    .Input("x: float")
    .Input("scale: float")
    .Input("offset: float")
    .Input("batch_mean: float")
    .Input("inverse_std: float")
    .Output("x_backprop: float")
    .Output("scale_backprop: float")
    .Output("offset_backprop: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(2));
      return ::tensorflow::OkStatus();
    });

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
// against the spread.
void ShiftedSums(const float* __restrict x, int64_t begin, int64_t end,
                 int64_t channels, const float* __restrict shift,
                 double* __restrict sum, double* __restrict sum_sq) {
  ChunkedSums(begin, end, channels, sum, sum_sq,
              [=](int64_t r, float* __restrict ps, float* __restrict pq) {
                const float* __restrict row = x + r * channels;
                for (int64_t c = 0; c < channels; ++c) {
                  const float d = row[c] - shift[c];
                  ps[c] += d;
                  pq[c] += d * d;
                }
              });
}

// The outputs (activations and their gradients, megabytes per layer) are far
// larger than the caches, so the kernels write them with streaming stores,
// which skip reading each cache line before overwriting it: a third less
// write traffic, 2-3% of a training step. They need whole 8-float vectors on
// 32-byte boundaries, which every MobileNet layer has (channels are
// multiples of 8); other shapes take the plain loops.
bool CanStream(const float* out, int64_t channels) {
  return channels % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 32 == 0;
}

// z = (x - mean) * a + offset, ReLU6's input. Every kernel computes it
// here, so the forward clipping and the backward mask agree bit for bit; it
// multiplies then adds, as TensorFlow's batch norm does (BUILD turns off FMA
// contraction), so they also agree with TensorFlow's at the clipping edges.
inline float PreActivation(float x, float mean, float a, float offset) {
  return (x - mean) * a + offset;
}

inline __m256 CenteredX8(const float* x, const float* mean) {
  return _mm256_sub_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(mean));
}

// PreActivation on 8 channels, from CenteredX8.
inline __m256 PreActivation8(__m256 centered_x, const float* a,
                             const float* offset) {
  return _mm256_add_ps(_mm256_mul_ps(centered_x, _mm256_loadu_ps(a)),
                       _mm256_loadu_ps(offset));
}

// ReLU6 passes the gradient where its input lies strictly inside (0, 6).
inline float Gate(float z, float dy) {
  return (z > 0.f) & (z < 6.f) ? dy : 0.f;
}

// y = min(max(z, 0), 6) over rows [begin, end).
void AffineRelu6(const float* __restrict x, int64_t begin, int64_t end,
                 int64_t channels, const float* __restrict mean,
                 const float* __restrict a, const float* __restrict offset,
                 float* __restrict y) {
  if (CanStream(y, channels)) {
    const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
    for (int64_t i = begin * channels; i < end * channels; i += channels) {
      for (int64_t c = 0; c < channels; c += 8) {
        const __m256 z =
            PreActivation8(CenteredX8(x + i + c, mean + c), a + c, offset + c);
        _mm256_stream_ps(y + i + c, _mm256_min_ps(_mm256_max_ps(z, zero), six));
      }
    }
    _mm_sfence();
    return;
  }
  for (int64_t r = begin; r < end; ++r) {
    const float* __restrict xr = x + r * channels;
    float* __restrict yr = y + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float z = PreActivation(xr[c], mean[c], a[c], offset[c]);
      yr[c] = std::min(std::max(z, 0.f), 6.f);
    }
  }
}

// With g = Gate(z, dy):
// sum_g += g and sum_gx += g * (x - mean) * inv_std over rows [begin, end).
void GatedSums(const float* __restrict x, const float* __restrict dy,
               int64_t begin, int64_t end, int64_t channels,
               const float* __restrict mean, const float* __restrict a,
               const float* __restrict offset,
               const float* __restrict inv_std,
               double* __restrict sum_g, double* __restrict sum_gx) {
  ChunkedSums(begin, end, channels, sum_g, sum_gx,
              [=](int64_t r, float* __restrict pg, float* __restrict px) {
                const float* __restrict xr = x + r * channels;
                const float* __restrict dr = dy + r * channels;
                for (int64_t c = 0; c < channels; ++c) {
                  const float g = Gate(
                      PreActivation(xr[c], mean[c], a[c], offset[c]), dr[c]);
                  pg[c] += g;
                  px[c] += g * ((xr[c] - mean[c]) * inv_std[c]);
                }
              });
}

// dx = a * (g - mean_g - x_hat * mean_gx), g as in GatedSums.
void InputGradient(const float* __restrict x, const float* __restrict dy,
                   int64_t begin, int64_t end, int64_t channels,
                   const float* __restrict mean, const float* __restrict a,
                   const float* __restrict offset,
                   const float* __restrict inv_std,
                   const float* __restrict mean_g,
                   const float* __restrict mean_gx, float* __restrict dx) {
  if (CanStream(dx, channels)) {
    const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
    for (int64_t i = begin * channels; i < end * channels; i += channels) {
      for (int64_t c = 0; c < channels; c += 8) {
        const __m256 centered_x = CenteredX8(x + i + c, mean + c);
        const __m256 z = PreActivation8(centered_x, a + c, offset + c);
        const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(z, zero, _CMP_GT_OQ),
                                            _mm256_cmp_ps(z, six, _CMP_LT_OQ));
        const __m256 g = _mm256_and_ps(inside, _mm256_loadu_ps(dy + i + c));
        const __m256 x_hat =
            _mm256_mul_ps(centered_x, _mm256_loadu_ps(inv_std + c));
        const __m256 centered = _mm256_sub_ps(
            _mm256_sub_ps(g, _mm256_loadu_ps(mean_g + c)),
            _mm256_mul_ps(x_hat, _mm256_loadu_ps(mean_gx + c)));
        _mm256_stream_ps(dx + i + c,
                         _mm256_mul_ps(_mm256_loadu_ps(a + c), centered));
      }
    }
    _mm_sfence();
    return;
  }
  for (int64_t r = begin; r < end; ++r) {
    const float* __restrict xr = x + r * channels;
    const float* __restrict dr = dy + r * channels;
    float* __restrict out = dx + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float g =
          Gate(PreActivation(xr[c], mean[c], a[c], offset[c]), dr[c]);
      const float x_hat = (xr[c] - mean[c]) * inv_std[c];
      out[c] = a[c] * (g - mean_g[c] - x_hat * mean_gx[c]);
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

class FusedBatchNormRelu6Op : public OpKernel {
 public:
  explicit FusedBatchNormRelu6Op(OpKernelConstruction* context)
      : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& scale = context->input(1);
    const Tensor& offset = context->input(2);
    OP_REQUIRES(context, x.dims() >= 1 && x.dim_size(x.dims() - 1) > 0,
                InvalidArgument("x has no channels"));
    const int64_t channels = x.dim_size(x.dims() - 1);
    const int64_t rows = x.NumElements() / channels;
    OP_REQUIRES(context, rows > 1,
                InvalidArgument("batch norm needs 2+ values per channel"));
    for (int i = 1; i < 3; ++i) {
      OP_REQUIRES(context, context->input(i).shape() == TensorShape({channels}),
                  InvalidArgument("scale and offset must have shape [",
                                  channels, "]"));
    }
    Tensor *y, *mean_out, *variance_out, *inv_std_out;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    TensorShape vec({channels});
    OP_REQUIRES_OK(context, context->allocate_output(1, vec, &mean_out));
    OP_REQUIRES_OK(context, context->allocate_output(2, vec, &variance_out));
    OP_REQUIRES_OK(context, context->allocate_output(3, vec, &inv_std_out));
    const float* xp = x.flat<float>().data();
    const int blocks = NumBlocks(context);

    std::vector<double> sums(2 * blocks * channels, 0.0);
    ForEachBlock(context, rows, blocks, 2 * channels,
                 [&](int64_t begin, int64_t end, int64_t block) {
                   double* sum = &sums[2 * block * channels];
                   ShiftedSums(xp, begin, end, channels, xp, sum,
                               sum + channels);
                 });
    auto mean = mean_out->flat<float>();
    auto variance = variance_out->flat<float>();
    auto inv_std = inv_std_out->flat<float>();
    std::vector<float> a(channels);
    const float* scale_p = scale.flat<float>().data();
    const float* offset_p = offset.flat<float>().data();
    for (int64_t c = 0; c < channels; ++c) {
      double s = 0, q = 0;
      for (int block = 0; block < blocks; ++block) {
        s += sums[2 * block * channels + c];
        q += sums[(2 * block + 1) * channels + c];
      }
      const double shifted_mean = s / rows;
      const double v = std::max(q / rows - shifted_mean * shifted_mean, 0.0);
      const double m = xp[c] + shifted_mean;
      mean(c) = m;
      variance(c) = v * rows / (rows - 1);  // Bessel's, as FusedBatchNormV3.
      inv_std(c) = 1.0 / std::sqrt(v + epsilon_);
      a[c] = scale_p[c] * inv_std(c);
    }
    float* yp = y->flat<float>().data();
    ForEachBlock(context, rows, blocks, 2 * channels,
                 [&](int64_t begin, int64_t end, int64_t) {
                   AffineRelu6(xp, begin, end, channels, mean.data(),
                               a.data(), offset_p, yp);
                 });
  }

 private:
  float epsilon_;
};

class FusedBatchNormRelu6GradOp : public OpKernel {
 public:
  explicit FusedBatchNormRelu6GradOp(OpKernelConstruction* context)
      : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& dy = context->input(0);
    const Tensor& x = context->input(1);
    OP_REQUIRES(context, x.dims() >= 1 && dy.shape() == x.shape(),
                InvalidArgument("y_backprop and x must have the same shape"));
    for (int i = 2; i < 6; ++i) {
      OP_REQUIRES(context,
                  context->input(i).shape() ==
                      TensorShape({x.dim_size(x.dims() - 1)}),
                  InvalidArgument("per-channel inputs must be [channels]"));
    }
    const float* scale_p = context->input(2).flat<float>().data();
    const float* offset_p = context->input(3).flat<float>().data();
    const float* mean_p = context->input(4).flat<float>().data();
    const float* inv_std_p = context->input(5).flat<float>().data();
    const int64_t channels = x.dim_size(x.dims() - 1);
    OP_REQUIRES(context, channels > 0, InvalidArgument("x has no channels"));
    const int64_t rows = x.NumElements() / channels;
    Tensor *dx, *dscale, *doffset;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx));
    TensorShape vec({channels});
    OP_REQUIRES_OK(context, context->allocate_output(1, vec, &dscale));
    OP_REQUIRES_OK(context, context->allocate_output(2, vec, &doffset));
    const float* xp = x.flat<float>().data();
    const float* dyp = dy.flat<float>().data();
    const int blocks = NumBlocks(context);
    std::vector<float> a(channels);
    for (int64_t c = 0; c < channels; ++c) a[c] = scale_p[c] * inv_std_p[c];
    std::vector<double> sums(2 * blocks * channels, 0.0);
    ForEachBlock(context, rows, blocks, 3 * channels,
                 [&](int64_t begin, int64_t end, int64_t block) {
                   double* sum = &sums[2 * block * channels];
                   GatedSums(xp, dyp, begin, end, channels, mean_p, a.data(),
                             offset_p, inv_std_p, sum, sum + channels);
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
      mean_g[c] = g / rows;
      mean_gx[c] = gx / rows;
    }
    float* dxp = dx->flat<float>().data();
    ForEachBlock(context, rows, blocks, 3 * channels,
                 [&](int64_t begin, int64_t end, int64_t) {
                   InputGradient(xp, dyp, begin, end, channels, mean_p,
                                 a.data(), offset_p, inv_std_p, mean_g.data(),
                                 mean_gx.data(), dxp);
                 });
  }
};

REGISTER_KERNEL_BUILDER(Name("FusedBatchNormRelu6").Device(DEVICE_CPU),
                        FusedBatchNormRelu6Op);
REGISTER_KERNEL_BUILDER(Name("FusedBatchNormRelu6Grad").Device(DEVICE_CPU),
                        FusedBatchNormRelu6GradOp);

}  // namespace
