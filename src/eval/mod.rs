//! Frozen-feature evaluation (k-NN, linear probe) and demos: PCA of patch features, patch matching.

pub mod draw;
#[cfg(feature = "native")]
pub mod knn;
#[cfg(feature = "native")]
pub mod linear;
pub mod matching;
pub mod pca;
