//! Frozen-feature evaluation and demos: PCA of patch features, patch matching.

pub mod draw;
pub mod knn;
pub mod matching;
pub mod pca;
