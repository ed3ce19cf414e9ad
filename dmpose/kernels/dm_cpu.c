/* Fused CPU kernels for the DM loss and the demander cross-entropy (dmpose.kernels.cpu compiles and loads this).
 *
 * One problem per (image, joint): an H x W heatmap (float32, row-major; pixel (i, j) centred at x = j, y = i)
 * against 4 demander slots at integer pixel positions (x, y) with masses m (a zero mass is a dead slot).
 * Everything is computed in double, one problem at a time, so a problem's kernel (4 x H*W doubles) stays in
 * the cache; the arithmetic is the torch twin's (dmpose.sinkhorn): the same Sinkhorn iteration on the
 * demander scalings, the same stopping rule and iteration count, the exact gradient by implicit
 * differentiation with the same grounded-Laplacian elimination. Kernel and cost rows are copied from one table
 * of exp(-c / eps) and c (c = d^power) over integer offsets (demanders sit on pixel centres): no exp per pixel and demander.
 * The pixel loops are written for the compiler's vectoriser (`omp simd` reductions, -fopenmp-simd); with
 * DM_MVEC defined, exp/log/log1p are declared `omp declare simd` so that glibc's libmvec serves them vectorised.
 * The caller guarantees max distance / eps <= 600 (no underflow in double) and integer demander positions.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef DM_MVEC
#pragma omp declare simd notinbranch
extern double exp(double);
#pragma omp declare simd notinbranch
extern double log(double);
#pragma omp declare simd notinbranch
extern double log1p(double);
#endif

#define M 4

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)), branch-free */
#pragma omp declare simd notinbranch
static inline double softplus(double x) { return (x > 0.0 ? x : 0.0) + log1p(exp(-fabs(x))); }

/* Solve A w = rhs for a 4x4 graph Laplacian A = diag(G 1) - G, grounded at the live slot of largest coupling
 * (w = 0 there); each pivot a sum of non-negative terms (GTH), a zero pivot gives w = 0 (as
 * dmpose.sinkhorn.solve_grounded_laplacian). */
static void solve_laplacian(const double G[M][M], const int live[M], const double rhs[M], double w[M]) {
    double K[M][M], U[M][M], ground[M], x[M], piv[M];
    int active[M];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++) K[i][j] = (i != j && live[i] && live[j]) ? 0.5 * (G[i][j] + G[j][i]) : 0.0;
    int ref = 0;
    double best = -2.0;
    for (int i = 0; i < M; i++) {
        double s = live[i] ? 0.0 : -1.0;
        if (live[i])
            for (int j = 0; j < M; j++) s += K[i][j];
        if (s > best) { best = s; ref = i; }
    }
    for (int i = 0; i < M; i++) {
        ground[i] = K[i][ref];
        active[i] = live[i] && i != ref;
        x[i] = active[i] ? rhs[i] : 0.0;
    }
    for (int i = 0; i < M; i++) { K[i][ref] = 0.0; K[ref][i] = 0.0; }
    for (int k = 0; k < M; k++) {
        double row[M], f[M], gk = ground[k], xk = x[k], p = 0.0;
        for (int j = 0; j < M; j++) { row[j] = K[k][j]; p += row[j]; }
        p += gk;
        int ok = active[k] && p > 0.0;
        for (int j = 0; j < M; j++) f[j] = ok ? row[j] / p : 0.0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < M; j++) K[i][j] += f[i] * row[j];
        for (int j = 0; j < M; j++) { K[k][j] = 0.0; K[j][k] = 0.0; K[j][j] = 0.0; }
        for (int i = 0; i < M; i++) { ground[i] += f[i] * gk; x[i] += f[i] * xk; }
        for (int j = 0; j < M; j++) U[k][j] = row[j];
        piv[k] = ok ? p : 0.0;
    }
    for (int k = 0; k < M; k++) w[k] = 0.0;
    for (int k = M - 1; k >= 0; k--) {
        double num = x[k];
        for (int j = 0; j < M; j++) num += U[k][j] * w[j];
        w[k] = piv[k] > 0.0 ? num / piv[k] : 0.0;
    }
}

/* DM loss of n problems.
 * hm: float32 raw heatmaps of H*W pixels; problem q reads map rows[q] (rows NULL: map q) and writes its
 * gradient, times gw[q] (gw NULL: 1), to the same row of grad. dxy: (n, 4, 2) int32 demander (x, y).
 * mass: (n, 4) double, sum 1.
 * supplier: 0 relu (softmax(H) where no pixel is positive), 1 softplus(beta H) / beta.
 * grad_mode: 0 none, 1 exact, 2 envelope. tol: stop once sum |col - m| < tol (0: run max_iters).
 * work: 12 * H*W doubles of scratch. TH, TW: larger than any |y|, |x| offset between a pixel and a demander;
 * power: the cost is c = distance^power (1: the distance itself).
 * table, dtable: TH * (2 TW - 1) doubles each, filled here with exp(-c / eps) and c at offset (dy, dx), dy >= 0,
 * stored at dy * (2 TW - 1) + dx + TW - 1 (mirrored in x, so a kernel row is one contiguous copy).
 * Outputs: cost (n,), grad (n, H*W) float32 (not written for grad_mode 0), err (n,), iters (n,). */
void dm_loss_f32(int64_t n, int64_t H, int64_t W, const float *hm, const int64_t *rows, const int32_t *dxy,
                 const double *mass, int supplier, double beta, double eps, double power, int64_t max_iters, double tol,
                 int grad_mode, const double *gw, double *cost, float *grad, double *err, int32_t *iters,
                 double *work, int64_t TH, int64_t TW, double *table, double *dtable) {
    const int64_t N = H * W, TS = 2 * TW - 1;
    for (int64_t dy = 0; dy < TH; dy++)
        for (int64_t dx = -(TW - 1); dx < TW; dx++) {
            double d = sqrt((double)(dx * dx + dy * dy));
            if (power != 1.0) d = pow(d, power); /* the cost d^power (pow(0, p) = 0 for p > 0) */
            dtable[dy * TS + dx + TW - 1] = d;
            table[dy * TS + dx + TW - 1] = exp(-d / eps);
        }
    double *restrict a = work, *restrict phi = work + N, *restrict s = work + 2 * N;
    double *restrict Kt = work + 3 * N, *restrict Ct = work + 3 * N + M * N, *restrict sg = work + 11 * N;
    const double ib = 1.0 / beta;
    for (int64_t q = 0; q < n; q++) {
        const int64_t row = rows ? rows[q] : q;
        const float *restrict h = hm + row * N;
        const double *b = mass + q * M;
        int live[M];
        for (int j = 0; j < M; j++) live[j] = b[j] > 0.0;
        /* suppliers */
        double total = 0.0;
        if (supplier == 1) {
#pragma omp simd reduction(+ : total)
            for (int64_t p = 0; p < N; p++) {
                double x = beta * (double)h[p], t = exp(-fabs(x)), it = 1.0 / (1.0 + t);
                phi[p] = ((x > 0.0 ? x : 0.0) + log1p(t)) * ib; /* softplus(x) / beta */
                sg[p] = x >= 0.0 ? it : t * it;                  /* sigmoid(x) = d phi / d H */
                total += phi[p];
            }
        } else {
#pragma omp simd reduction(+ : total)
            for (int64_t p = 0; p < N; p++) {
                phi[p] = h[p] > 0.0f ? (double)h[p] : 0.0;
                total += phi[p];
            }
        }
        const int dead = !(total > 0.0);
        if (dead) { /* softmax of the map (the raw H for relu), as the torch path */
            double mx = -INFINITY, z = 0.0;
            const int sp = supplier == 1;
            for (int64_t p = 0; p < N; p++) a[p] = sp ? phi[p] : (double)h[p];
            for (int64_t p = 0; p < N; p++) mx = a[p] > mx ? a[p] : mx;
#pragma omp simd reduction(+ : z)
            for (int64_t p = 0; p < N; p++) { a[p] = exp(a[p] - mx); z += a[p]; }
            for (int64_t p = 0; p < N; p++) a[p] /= z;
        } else {
            const double it = 1.0 / total;
#pragma omp simd
            for (int64_t p = 0; p < N; p++) a[p] = phi[p] * it;
        }
        /* kernel and cost rows, copied from the tables */
        for (int j = 0; j < M; j++) {
            int64_t xj = dxy[(q * M + j) * 2], yj = dxy[(q * M + j) * 2 + 1];
            for (int64_t i = 0; i < H; i++) {
                int64_t off = llabs(i - yj) * TS + TW - 1 - xj;
                memcpy(Kt + j * N + i * W, table + off, W * sizeof(double));
                memcpy(Ct + j * N + i * W, dtable + off, W * sizeof(double));
            }
        }
        const double *restrict k0 = Kt, *restrict k1 = Kt + N, *restrict k2 = Kt + 2 * N, *restrict k3 = Kt + 3 * N;
        /* Sinkhorn on u (the demanders' scalings, max 1), as dmpose.sinkhorn._sinkhorn_shifted */
        double u[M], v[M], col[M], e = 0.0;
        for (int j = 0; j < M; j++) u[j] = live[j] ? b[j] : 0.0;
        int32_t it = 0;
        for (int64_t k = 0;; k++) {
            double v0 = 0.0, v1 = 0.0, v2 = 0.0, v3 = 0.0;
            const double u0 = u[0], u1 = u[1], u2 = u[2], u3 = u[3];
#pragma omp simd reduction(+ : v0, v1, v2, v3)
            for (int64_t p = 0; p < N; p++) {
                double r = a[p] / (u0 * k0[p] + u1 * k1[p] + u2 * k2[p] + u3 * k3[p]);
                v0 += r * k0[p];
                v1 += r * k1[p];
                v2 += r * k2[p];
                v3 += r * k3[p];
            }
            v[0] = v0; v[1] = v1; v[2] = v2; v[3] = v3;
            e = 0.0;
            for (int j = 0; j < M; j++) { col[j] = u[j] * v[j]; e += fabs(col[j] - b[j]); }
            if (k == max_iters || (tol > 0.0 && e < tol)) break;
            double mx = 0.0;
            for (int j = 0; j < M; j++) {
                u[j] = live[j] ? b[j] / fmax(v[j], 2.2250738585072014e-308) : 0.0;
                mx = fmax(mx, u[j]);
            }
            for (int j = 0; j < M; j++) u[j] /= mx;
            it++;
        }
        err[q] = e;
        iters[q] = it;
        /* the plan's rows pi_jp = u_j K_jp / s_p (in place of the kernel), each pixel's mean cost cbar_p (into s),
         * s_p itself (into phi, free once a is formed), the cost <a, cbar> */
        double *restrict p0 = Kt, *restrict p1 = Kt + N, *restrict p2 = Kt + 2 * N, *restrict p3 = Kt + 3 * N;
        const double *restrict c0 = Ct, *restrict c1 = Ct + N, *restrict c2 = Ct + 2 * N, *restrict c3 = Ct + 3 * N;
        double c = 0.0;
        {
            const double u0 = u[0], u1 = u[1], u2 = u[2], u3 = u[3];
#pragma omp simd reduction(+ : c)
            for (int64_t p = 0; p < N; p++) {
                double q0 = u0 * p0[p], q1 = u1 * p1[p], q2 = u2 * p2[p], q3 = u3 * p3[p];
                double sp = q0 + q1 + q2 + q3, is = 1.0 / sp;
                q0 *= is; q1 *= is; q2 *= is; q3 *= is;
                p0[p] = q0; p1[p] = q1; p2[p] = q2; p3[p] = q3;
                double cb = c0[p] * q0 + c1[p] * q1 + c2[p] * q2 + c3[p] * q3;
                phi[p] = sp;
                s[p] = cb;
                c += a[p] * cb;
            }
        }
        cost[q] = c;
        if (grad_mode == 0) continue;
        float *restrict g = grad + row * N;
        double *restrict gam = s; /* gamma overwrites cbar */
        if (grad_mode == 1) {
            double h0 = 0, h1 = 0, h2 = 0, h3 = 0, g01 = 0, g02 = 0, g03 = 0, g12 = 0, g13 = 0, g23 = 0;
#pragma omp simd reduction(+ : h0, h1, h2, h3, g01, g02, g03, g12, g13, g23)
            for (int64_t p = 0; p < N; p++) {
                double ap = a[p], cb = s[p];
                double a0 = ap * p0[p], a1 = ap * p1[p], a2 = ap * p2[p], a3 = ap * p3[p];
                h0 += a0 * (c0[p] - cb);
                h1 += a1 * (c1[p] - cb);
                h2 += a2 * (c2[p] - cb);
                h3 += a3 * (c3[p] - cb);
                g01 += a0 * p1[p]; g02 += a0 * p2[p]; g03 += a0 * p3[p];
                g12 += a1 * p2[p]; g13 += a1 * p3[p]; g23 += a2 * p3[p];
            }
            const double G[M][M] = {{0, g01, g02, g03}, {g01, 0, g12, g13}, {g02, g12, 0, g23}, {g03, g13, g23, 0}};
            const double hv[M] = {h0, h1, h2, h3};
            double w[M];
            solve_laplacian(G, live, hv, w);
            const double w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
#pragma omp simd
            for (int64_t p = 0; p < N; p++) gam[p] = s[p] - (w0 * p0[p] + w1 * p1[p] + w2 * p2[p] + w3 * p3[p]);
        } else { /* envelope: f_p = -eps log s_p (up to a constant, which the centring removes) */
#pragma omp simd
            for (int64_t p = 0; p < N; p++) gam[p] = -eps * log(phi[p]);
        }
        double mean = 0.0;
#pragma omp simd reduction(+ : mean)
        for (int64_t p = 0; p < N; p++) mean += a[p] * gam[p];
        const double wq = gw ? gw[q] : 1.0, sc = dead ? wq : wq / total;
        if (supplier == 1 && dead) {
#pragma omp simd
            for (int64_t p = 0; p < N; p++) g[p] = (float)(a[p] * (gam[p] - mean) * sg[p] * sc);
        } else if (dead) {
#pragma omp simd
            for (int64_t p = 0; p < N; p++) g[p] = (float)(a[p] * (gam[p] - mean) * sc);
        } else if (supplier == 1) {
#pragma omp simd
            for (int64_t p = 0; p < N; p++) g[p] = (float)((gam[p] - mean) * sg[p] * sc);
        } else {
#pragma omp simd
            for (int64_t p = 0; p < N; p++) g[p] = h[p] > 0.0f ? (float)((gam[p] - mean) * sc) : 0.0f;
        }
    }
}

/* log softplus(x) and sigmoid(x) / softplus(x) = d log softplus / dx, for any finite x (scalar, robust) */
static double log_softplus(double x) { return x < -30.0 ? x - 0.5 * exp(x) : log(softplus(x)); }
static double dlog_softplus(double x) { return x < -30.0 ? 1.0 - 0.5 * exp(x) : 1.0 / ((1.0 + exp(-x)) * softplus(x)); }

/* Demander cross-entropy -sum_j m_j log S(y_j), S = softplus(beta H) / sum softplus(beta H), of n maps.
 * hm: float32 maps of N pixels, map q at row rows[q] (rows NULL: q); pix: (n, 4) int64 pixel indices;
 * m: (n, 4) double (renormalised over the pixels inside); wt: (n,) double weights. value: (n,) double (times
 * wt); grad: d value / d hm written to row rows[q] of grad (float32), or grad NULL. work: N doubles.
 * Per pixel one exp and one log1p: with z = sum_p softplus(x_p), d value / d x_p = sigmoid(x_p) sum_j m_j / z -
 * sum_{j: y_j = p} m_j sigmoid / softplus (x_p), the demander pixels' terms computed robustly (no log 0). */
void demander_ce_f32(int64_t n, int64_t N, const float *hm, const int64_t *rows, const int64_t *pix,
                     const double *m, const double *wt, double beta, double *value, float *grad, double *work) {
    double *restrict sg = work;
    for (int64_t q = 0; q < n; q++) {
        const int64_t row = rows ? rows[q] : q;
        const float *restrict h = hm + row * N;
        const int64_t *pj = pix + q * M;
        const double *mj = m + q * M;
        double z = 0.0;
#pragma omp simd reduction(+ : z)
        for (int64_t p = 0; p < N; p++) {
            double x = beta * (double)h[p], t = exp(-fabs(x)), it = 1.0 / (1.0 + t);
            z += (x > 0.0 ? x : 0.0) + log1p(t);
            sg[p] = x >= 0.0 ? it : t * it;
        }
        double msum = 0.0;
        for (int j = 0; j < M; j++) msum += mj[j];
        double lz, c1 = 0.0;
        if (z > 0.0) {
            lz = log(z);
            c1 = msum / z;
        } else { /* every softplus underflowed (all x < -745): log-sum-exp of the robust logs */
            double mx = -INFINITY;
            for (int64_t p = 0; p < N; p++) { double l = log_softplus(beta * (double)h[p]); mx = l > mx ? l : mx; }
            double zz = 0.0;
            for (int64_t p = 0; p < N; p++) zz += exp(log_softplus(beta * (double)h[p]) - mx);
            lz = mx + log(zz);
        }
        double v = 0.0;
        for (int j = 0; j < M; j++) v -= mj[j] * (log_softplus(beta * (double)h[pj[j]]) - lz);
        value[q] = v * wt[q];
        if (!grad) continue;
        const double scale = beta * wt[q];
        if (z > 0.0) {
#pragma omp simd
            for (int64_t p = 0; p < N; p++) sg[p] *= c1; /* S_p sum m * dlog_p = sigmoid_p sum m / z */
        } else {
            for (int64_t p = 0; p < N; p++) {
                double x = beta * (double)h[p];
                sg[p] = exp(log_softplus(x) - lz) * msum * dlog_softplus(x);
            }
        }
        for (int j = 0; j < M; j++) sg[pj[j]] -= mj[j] * dlog_softplus(beta * (double)h[pj[j]]);
        float *restrict g = grad + row * N;
#pragma omp simd
        for (int64_t p = 0; p < N; p++) g[p] = (float)(sg[p] * scale);
    }
}
