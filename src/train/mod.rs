//! Self-supervised pretraining: the DINOv2 recipe (multi-crop, iBOT masking, DINO and iBOT heads,
//! the losses, the EMA teacher) driven by burn.

pub mod augment;
pub mod config;
pub mod data;
pub mod head;
pub mod loss;
pub mod mask;
pub mod memory;
pub mod optim;
pub mod params;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{RunOptions, RunSummary, SslModel, train};
