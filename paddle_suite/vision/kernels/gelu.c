/* Exact (erf) GELU forward and backward for contiguous float32 arrays, vectorised through glibc's
 * libmvec: the SIMD variants of erff/expf are declared here because glibc's headers declare them
 * only under -ffast-math, which this file does not use (NaN/inf keep IEEE semantics). */
#pragma omp declare simd notinbranch
float erff(float);
#pragma omp declare simd notinbranch
float expf(float);

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

void gelu_forward(const float *x, float *y, long n) {
#pragma omp simd
    for (long i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * INV_SQRT2));
}

/* d/dx [x Phi(x)] = Phi(x) + x phi(x) */
void gelu_backward(const float *x, const float *grad_y, float *grad_x, long n) {
#pragma omp simd
    for (long i = 0; i < n; ++i) {
        float cdf = 0.5f * (1.0f + erff(x[i] * INV_SQRT2));
        float pdf = INV_SQRT_2PI * expf(-0.5f * x[i] * x[i]);
        grad_x[i] = grad_y[i] * (cdf + x[i] * pdf);
    }
}
