//! Frozen-feature evaluation and demos: PCA of patch features, patch matching.

pub mod draw;
#[cfg(feature = "native")]
pub mod knn;
pub mod matching;
pub mod pca;
