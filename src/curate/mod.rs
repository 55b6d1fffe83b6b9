//! Data curation (DINOv2 paper, section 3): images are embedded, each image's k = 64 nearest
//! neighbours by cosine similarity are found, pairs above a similarity threshold are joined and
//! the connected components (union-find) are the near-duplicate groups, one image kept per
//! group; relative deduplication drops images close to evaluation sets, retrieval picks pool
//! images close to curated queries. [`knn`] (the exact search, on the CPU or as the WGSL
//! kernel `shaders/knn.wgsl`) and [`union_find`] are the building blocks, [`embeddings`] the
//! on-disk sets, [`embed`] the resumable embedding job, [`dedup`]
//! and [`retrieve`] the decisions, [`cli`] the `dinov2 curate` commands.

pub mod bench;
pub mod cli;
pub mod dedup;
pub mod embed;
pub mod embeddings;
pub mod knn;
pub mod retrieve;
pub mod union_find;
