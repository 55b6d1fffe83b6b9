//! Shared test helpers: fixture paths, reading expected tensors, comparing with tolerances.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backbone")
}

/// The wgpu device; the software adapter (lavapipe) is part of the test setup (`.ci/run`),
/// so its absence is a failure, not a skip.
pub fn wgpu_device() -> Device {
    minimal_autotuning();
    dinov2_wgpu::backend::device(dinov2_wgpu::backend::BackendKind::Wgpu)
        .unwrap_or_else(|e| panic!("wgpu device needed for this test: {e}"))
}

/// Handle `copy` of wgpu adapter 0, a burn device of its own on the default device's wgpu
/// device (copy 0 is the default device). burn runs each device's work, kernel compilation
/// included, on one thread: tests on different handles compile side by side instead of taking
/// turns (measured cold on lavapipe, the two `adapter_training` tests: 285 s and 303 s each
/// alone, 315 s and 367 s side by side on two handles; the whole suite 13 min 26 s with both
/// on the default device, 11 min 16 s on their own handles).
pub fn wgpu_handle(copy: usize) -> Device {
    let main = wgpu_device();
    let spec = vec!["0"; copy + 1].join(",");
    let handles = dinov2_wgpu::backend::devices(&spec).unwrap_or_else(|e| panic!("wgpu handle {copy}: {e}"));
    assert!(handles[0] == main, "adapter 0 is the default device");
    handles[copy].clone()
}

/// Tests keep autotuning to its minimum: each new shape would otherwise time many kernel
/// candidates on the slow software adapter. At the minimal level cubecl still times every
/// candidate on lavapipe (none reaches the 60% of peak that ends the search early), so each
/// is timed once, not 3 to 10 times (the two-handles test with lavapipe's shader cache warm:
/// 108 s -> 92 s; from a cold cache the suite showed no difference, 659 s against 643 s).
/// cubecl's other `CUBECL_*` variables still apply (`CUBECL_DEBUG_LOG=stderr`,
/// `CUBECL_DEBUG_OPTION=profile`: compilations, kernel times).
fn minimal_autotuning() {
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, autotune::AutotuneLevel};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut config = CubeClRuntimeConfig::default().override_from_env();
        config.autotune.level = AutotuneLevel::Minimal;
        config.autotune.bench.min_samples = 1;
        config.autotune.bench.max_samples = 1;
        // false where cubecl already read its configuration: then autotuning stays as it was
        let _ = CubeClRuntimeConfig::try_set(config);
    });
}

pub fn ndarray_device() -> Device {
    dinov2_wgpu::backend::device(dinov2_wgpu::backend::BackendKind::Ndarray).unwrap()
}

/// Read one f32 tensor from a safetensors file.
pub fn read_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (view.shape().to_vec(), data)
}

/// Names of the tensors in a safetensors file.
pub fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
}

/// A tensor's values, read back to the host as f32.
pub fn host<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Assert `actual` matches `expected` within `tol` (max abs), printing the error either way.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], tol: f32) {
    let err = max_abs_diff(actual, expected);
    let scale = expected.iter().map(|x| x.abs()).fold(0.0, f32::max);
    eprintln!("{what}: max abs error {err:.3e} (values up to {scale:.2})");
    assert!(err <= tol, "{what}: max abs error {err:.3e} > {tol:.0e}");
}

/// A fresh, empty scratch folder for one test, removed when the guard drops. Numbered per
/// process: two tests running at once with the same name (`setup(4)` of two multi-device
/// tests) must not remove each other's files.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dinov2-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Read one u8 tensor from a safetensors file.
pub fn read_u8(path: &Path, name: &str) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
    assert_eq!(view.dtype(), safetensors::Dtype::U8);
    (view.shape().to_vec(), view.data().to_vec())
}

/// Run the `dinov2` binary.
pub fn dinov2(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dinov2")).args(args).output().expect("run dinov2")
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
