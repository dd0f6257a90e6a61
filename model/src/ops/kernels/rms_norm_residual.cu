// Fused residual add + RMSNorm: one block per row writes `sum = x + residual` (rounded to the
// storage dtype, as the residual stream is) and `normed = sum / rms(sum) * weight`, so the
// decoder and the vision tower read the row once instead of three times.
#include "common.cuh"

template <typename T>
__device__ void rms_norm_residual(const T *x, const T *residual, const T *weight, T *out,
                                  int rows, int cols, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    const T *x_row = x + (size_t)row * cols;
    const T *r_row = residual + (size_t)row * cols;
    T *sum_row = out + (size_t)row * cols;
    T *norm_row = out + (size_t)rows * cols + (size_t)row * cols;
    float squares = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const T rounded = from_f32<T>(to_f32(x_row[c]) + to_f32(r_row[c]));
        sum_row[c] = rounded;
        const float v = to_f32(rounded);
        squares += v * v;
    }
    const float total = block_sum(squares, scratch);
    const float inv = rsqrtf(total / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        norm_row[c] = from_f32<T>(to_f32(sum_row[c]) * inv * to_f32(weight[c]));
    }
}

#define RMS_NORM_RESIDUAL(NAME, T)                                                            \
    extern "C" __global__ void NAME(const T *x, const T *residual, const T *weight, T *out,   \
                                    int rows, int cols, float eps) {                          \
        rms_norm_residual<T>(x, residual, weight, out, rows, cols, eps);                      \
    }

RMS_NORM_RESIDUAL(rms_norm_residual_f32, float)
RMS_NORM_RESIDUAL(rms_norm_residual_f16, __half)
RMS_NORM_RESIDUAL(rms_norm_residual_bf16, __nv_bfloat16)
