//! CPU twin of `shaders/loss.wgsl` (f64 arithmetic).

/// Row-wise softmax of `[n, k]` logits.
pub fn softmax(logits: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(logits.len(), n * k, "softmax: logits length");
    let mut out = Vec::with_capacity(n * k);
    for row in logits.chunks(k) {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = row.iter().map(|&z| (z as f64 - m).exp()).sum();
        out.extend(row.iter().map(|&z| ((z as f64 - m).exp() / s) as f32));
    }
    out
}

/// Mean cross-entropy of `[n, k]` logits against `labels` with label smoothing `eps`
/// (target = (1-eps)·onehot + eps/k). Returns the loss and the logits' gradient
/// `(softmax - target) / n`. Panics on a label `>= k`.
pub fn cross_entropy(
    logits: &[f32],
    labels: &[u32],
    n: usize,
    k: usize,
    eps: f32,
) -> (f32, Vec<f32>) {
    assert_eq!(logits.len(), n * k, "cross_entropy: logits length");
    assert_eq!(labels.len(), n, "cross_entropy: labels length");
    let eps = eps as f64;
    let mut total = 0f64;
    let mut grad = Vec::with_capacity(n * k);
    for (row, &y) in logits.chunks(k).zip(labels) {
        let y = y as usize;
        assert!(
            y < k,
            "cross_entropy: label {y} out of range for {k} classes"
        );
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = row.iter().map(|&z| (z as f64 - m).exp()).sum();
        let log_s = s.ln();
        for (j, &z) in row.iter().enumerate() {
            let logp = z as f64 - m - log_s;
            let t = eps / k as f64 + if j == y { 1.0 - eps } else { 0.0 };
            total -= t * logp;
            grad.push(((logp.exp() - t) / n as f64) as f32);
        }
    }
    ((total / n as f64) as f32, grad)
}
