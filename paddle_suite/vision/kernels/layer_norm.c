/* LayerNorm over the last axis of a contiguous float32 [rows, cols] array, forward and backward.
 * The forward keeps each row's mean and 1/std for the backward, which recomputes x_hat from x
 * (no [rows, cols] temporary). Sums over a row run in float (as paddle's and PyTorch's CPU kernels). */
#include <math.h>


void layer_norm_forward(const float *x, const float *weight, const float *bias, float epsilon, float *y,
                        float *mean, float *rstd, long rows, long cols) {
    for (long r = 0; r < rows; ++r) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float sum = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (long c = 0; c < cols; ++c) sum += xr[c];
        float mu = sum / (float)cols;
#pragma omp simd reduction(+ : sq)
        for (long c = 0; c < cols; ++c) sq += (xr[c] - mu) * (xr[c] - mu);
        float inv = 1.0f / sqrtf(sq / (float)cols + epsilon);
#pragma omp simd
        for (long c = 0; c < cols; ++c) yr[c] = (xr[c] - mu) * inv * weight[c] + bias[c];
        mean[r] = mu;
        rstd[r] = inv;
    }
}

/* grad_weight and grad_bias are overwritten (not accumulated). */
void layer_norm_backward(const float *x, const float *weight, const float *mean, const float *rstd,
                         const float *grad_y, float *grad_x, float *grad_weight, float *grad_bias,
                         long rows, long cols) {
    for (long c = 0; c < cols; ++c) grad_weight[c] = grad_bias[c] = 0.0f;
    for (long r = 0; r < rows; ++r) {
        const float *xr = x + r * cols, *gr = grad_y + r * cols;
        float *dxr = grad_x + r * cols;
        float mu = mean[r], inv = rstd[r], sum_gw = 0.0f, sum_gw_xhat = 0.0f;
#pragma omp simd reduction(+ : sum_gw, sum_gw_xhat)
        for (long c = 0; c < cols; ++c) {
            float xhat = (xr[c] - mu) * inv, gw = gr[c] * weight[c];
            sum_gw += gw;
            sum_gw_xhat += gw * xhat;
            grad_weight[c] += gr[c] * xhat;
            grad_bias[c] += gr[c];
        }
        float a = sum_gw / (float)cols, b = sum_gw_xhat / (float)cols;
#pragma omp simd
        for (long c = 0; c < cols; ++c) {
            float xhat = (xr[c] - mu) * inv;
            dxr[c] = inv * (gr[c] * weight[c] - a - xhat * b);
        }
    }
}
