//! Images in: decoding and the evaluation transform.

pub mod preprocess;
