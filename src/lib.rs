//! dinov2-wgpu: a portable DINOv2 engine on burn's wgpu backend.
//!
//! - [`config`]: the ViT presets (`tiny`, `vits14` ... `vitg14`, `_reg4`).
//! - [`model`]: the backbone; [`checkpoint`]: official `.pth` and HuggingFace weights.
//! - [`data`]: image decoding and the evaluation transform; [`features`]: batched embedding.
//! - [`eval`]: PCA of patch features, patch matching; [`backend`]: devices and adapters.
//! - [`curate`]: data curation: exact k-NN, union-find.
//!
//! Without the default `native` feature (the browser build, `web/`) the crate is the model,
//! its WGSL kernels, the checkpoint reader (safetensors) and the feature demos on wgpu only:
//! no CPU backend, autodiff, training, curation, CLI or benchmarks.

pub mod backend;
#[cfg(feature = "native")]
pub mod bench;
pub mod checkpoint;
#[cfg(feature = "native")]
pub mod cli;
pub mod config;
#[cfg(feature = "native")]
pub mod curate;
pub mod data;
pub mod error;
pub mod eval;
pub mod features;
pub mod io;
pub mod kernels;
pub mod model;
#[cfg(feature = "native")]
pub mod progress;
#[cfg(feature = "native")]
pub mod train;

pub use error::{Error, Result};
