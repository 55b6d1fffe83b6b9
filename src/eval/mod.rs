//! Frozen-feature evaluation (k-NN, linear probe) and demos: PCA of patch features, patch matching.

pub mod draw;
#[cfg(feature = "native")]
pub mod knn;
#[cfg(feature = "native")]
pub mod linear;
pub mod matching;
pub mod pca;

/// The share of `predicted` equal to `labels` (top-1 of a k-NN or a linear head).
pub fn accuracy(predicted: &[usize], labels: &[usize]) -> f64 {
    let right = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    right as f64 / labels.len().max(1) as f64
}
