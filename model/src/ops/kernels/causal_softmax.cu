// Softmax over the last dimension with a causal mask computed from indices: row r of a
// `[.., rows, cols]` score matrix is query `q = r % query_len` (grouped-query heads are folded
// into the rows) and sees the keys `0..=past + q`; later keys get probability 0. No mask
// tensor is built on the host or uploaded. One block per row, f32 accumulation.
#include "common.cuh"

template <typename T>
__device__ void causal_softmax(const T *scores, T *out, int cols, int query_len, int past) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const int query = (int)(row % (size_t)query_len);
    const int visible = min(cols, past + query + 1);
    const T *in_row = scores + row * cols;
    T *out_row = out + row * cols;
    float local_max = -FLT_MAX;
    for (int c = threadIdx.x; c < visible; c += blockDim.x) {
        local_max = fmaxf(local_max, to_f32(in_row[c]));
    }
    const float row_max = block_max(local_max, scratch);
    float local_sum = 0.0f;
    for (int c = threadIdx.x; c < visible; c += blockDim.x) {
        local_sum += __expf(to_f32(in_row[c]) - row_max);
    }
    const float inv = 1.0f / block_sum(local_sum, scratch);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float p = c < visible ? __expf(to_f32(in_row[c]) - row_max) * inv : 0.0f;
        out_row[c] = from_f32<T>(p);
    }
}

#define CAUSAL_SOFTMAX(NAME, T)                                                              \
    extern "C" __global__ void NAME(const T *scores, T *out, int cols, int query_len,        \
                                    int past) {                                              \
        causal_softmax<T>(scores, out, cols, query_len, past);                               \
    }

CAUSAL_SOFTMAX(causal_softmax_f32, float)
CAUSAL_SOFTMAX(causal_softmax_f16, __half)
CAUSAL_SOFTMAX(causal_softmax_bf16, __nv_bfloat16)
