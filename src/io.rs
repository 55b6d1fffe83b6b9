//! Output files written whole or not at all: a temporary file beside the target, renamed over
//! it once complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Write `bytes` to `path` atomically: a temporary file beside it, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        if fault_injected(path) {
            // a crash in the middle of the write, for the tests of atomicity
            file.write_all(&bytes[..bytes.len() / 2])?;
            file.sync_all()?;
            std::process::abort();
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// `DINOV2_FAULT_ABORT_WRITING=<file name>`: abort the process halfway through writing that
/// file (tests use it to show a crash never leaves a half-written output).
fn fault_injected(path: &Path) -> bool {
    std::env::var_os("DINOV2_FAULT_ABORT_WRITING")
        .is_some_and(|name| path.file_name().is_some_and(|n| n == name.as_os_str()))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Serialise f32 tensors (name, shape, data) to safetensors bytes, with metadata.
pub fn safetensors_bytes(
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(data),
            )
            .map_err(|e| Error::Shape(format!("tensor {name}: {e}")))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata)
        .map_err(|e| Error::Shape(format!("cannot serialise safetensors: {e}")))
}
