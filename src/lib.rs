//! dinov2-wgpu: a portable DINOv2 engine on burn's wgpu backend.
//!
//! - [`config`]: the ViT presets (`tiny`, `vits14` ... `vitg14`, `_reg4`).
//! - [`model`]: the backbone; [`checkpoint`]: official `.pth` and HuggingFace weights.
//! - [`data`]: image decoding and the evaluation transform; [`features`]: batched embedding.
//! - [`eval`]: PCA of patch features, patch matching; [`backend`]: devices and adapters.
//! - [`curate`]: data curation: exact k-NN, union-find.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod curate;
pub mod data;
pub mod error;
pub mod eval;
pub mod features;
pub mod io;
pub mod kernels;
pub mod model;
pub mod train;

pub use error::{Error, Result};
