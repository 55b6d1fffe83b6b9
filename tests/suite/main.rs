//! The integration tests, one binary (each test binary links all of burn, so one link instead
//! of four saves minutes of a cold CI run).

mod adapter_training;
mod backbone_parity;
mod checkpoint;
mod cli;
mod common;
mod curate;
mod distill;
mod kernels;
mod linear_probe;
mod losses;
mod multi_device;
mod pos_embed;
mod preprocess;
mod training;
