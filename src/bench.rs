//! `dinov2 bench train`: images per second and peak memory of training steps.
//! `dinov2 bench kernels`: the WGSL kernels against their composed references (and burn's
//! built-in attention for the forward), timed on one device in one run: medians of several
//! runs after a warm-up that compiles (and autotunes) every kernel, device memory per op, and
//! the largest difference of the results.

use std::time::Instant;

use burn::tensor::module::attention as builtin_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Int, Tensor};
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::kernels::{self, AttentionImpl};

/// One measured op, as written by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// `attention_forward`, `attention_forward_backward`, `sinkhorn`, `koleo` or
    /// `gelu_forward_backward`.
    pub op: String,
    pub shape: serde_json::Value,
    /// Median milliseconds of the WGSL kernel (through burn, synchronised).
    pub fused_ms: f64,
    /// Median milliseconds of the composed reference on the same device.
    pub reference_ms: f64,
    /// Median milliseconds of burn's built-in op: its attention (attention forward), its GELU
    /// with its tanh-approximation backward (`gelu_forward_backward`); else `None`.
    pub builtin_ms: Option<f64>,
    /// Device memory the op reserved beyond what was reserved before it (inputs excluded),
    /// where the backend reports its pools (wgpu); `None` on ndarray.
    pub fused_peak_bytes: Option<u64>,
    pub reference_peak_bytes: Option<u64>,
    /// Largest |fused − reference| of the outputs (and gradients); for KoLeo, of the
    /// similarity of the chosen neighbours.
    pub max_abs_diff: f32,
    pub runs: usize,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct KernelBenchOptions {
    /// Timed runs per op (the median is reported), after one warm-up run.
    pub runs: usize,
    /// Small shapes only: a smoke test of the command, not a measurement.
    pub quick: bool,
    /// Only these ops (all when empty).
    pub ops: Vec<String>,
}

fn sync(device: &Device) -> Result<()> {
    device.sync().map_err(|e| Error::Device(format!("the device failed during the benchmark: {e}")))
}

/// Median milliseconds of `runs` calls of `f` after one warm-up call, and the last result.
fn time<T>(device: &Device, runs: usize, f: impl Fn() -> T) -> Result<(f64, T)> {
    let mut last = f();
    sync(device)?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        drop(last);
        let start = Instant::now();
        last = f();
        sync(device)?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len() / 2], last))
}

/// Device memory reserved by one call of `f` (its results kept alive until measured).
fn peak<T>(device: &Device, f: impl Fn() -> T) -> Result<Option<u64>> {
    device.memory_cleanup();
    let before = device.memory_pool_usage().map(|u| u.bytes_reserved);
    let result = f();
    sync(device)?;
    let after = device.memory_pool_usage().map(|u| u.bytes_reserved);
    drop(result);
    device.memory_cleanup();
    Ok(before.zip(after).map(|(b, a)| a.saturating_sub(b)))
}

fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    crate::features::to_host(t)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| if (x - y).is_nan() { f32::INFINITY } else { (x - y).abs() })
        .fold(0.0, f32::max)
}

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn attention_forward(device: &Device, shape: [usize; 4], runs: usize) -> Result<Record> {
    let [q, k, v] = [0, 1, 2].map(|_| random(shape, device));
    let fused = || kernels::attention(q.clone(), k.clone(), v.clone(), AttentionImpl::Fused);
    let reference = || kernels::attention_reference(q.clone(), k.clone(), v.clone());
    let builtin =
        || builtin_attention(q.clone(), k.clone(), v.clone(), None, None, AttentionModuleOptions::default());
    let (fused_ms, out_fused) = time(device, runs, fused)?;
    let (reference_ms, out_reference) = time(device, runs, reference)?;
    let (builtin_ms, out_builtin) = time(device, runs, builtin)?;
    let (f, r, b) = (host(out_fused)?, host(out_reference)?, host(out_builtin)?);
    Ok(Record {
        op: "attention_forward".into(),
        shape: json!({"B": shape[0], "H": shape[1], "N": shape[2], "d": shape[3]}),
        fused_ms,
        reference_ms,
        builtin_ms: Some(builtin_ms),
        fused_peak_bytes: peak(device, fused)?,
        reference_peak_bytes: peak(device, reference)?,
        max_abs_diff: max_diff(&f, &r).max(max_diff(&b, &r)),
        runs,
    })
}

fn attention_forward_backward(device: &Device, shape: [usize; 4], runs: usize) -> Result<Record> {
    let ad = device.clone().autodiff();
    let [q, k, v, w] = [0, 1, 2, 3].map(|_| random(shape, &ad));
    let run = |which: AttentionImpl| {
        let (q, k, v) = (q.clone().require_grad(), k.clone().require_grad(), v.clone().require_grad());
        let out = kernels::attention(q.clone(), k.clone(), v.clone(), which);
        let grads = (out * w.clone()).sum().backward();
        [q.grad(&grads), k.grad(&grads), v.grad(&grads)]
    };
    let (fused_ms, g_fused) = time(device, runs, || run(AttentionImpl::Fused))?;
    let (reference_ms, g_reference) = time(device, runs, || run(AttentionImpl::Reference))?;
    let mut diff = 0.0f32;
    for (a, b) in g_fused.into_iter().zip(g_reference) {
        let (a, b) = (a.ok_or_else(|| missing_grad())?, b.ok_or_else(|| missing_grad())?);
        diff = diff.max(max_diff(&host(a)?, &host(b)?));
    }
    Ok(Record {
        op: "attention_forward_backward".into(),
        shape: json!({"B": shape[0], "H": shape[1], "N": shape[2], "d": shape[3]}),
        fused_ms,
        reference_ms,
        builtin_ms: None,
        fused_peak_bytes: peak(device, || run(AttentionImpl::Fused))?,
        reference_peak_bytes: peak(device, || run(AttentionImpl::Reference))?,
        max_abs_diff: diff,
        runs,
    })
}

/// Fused against composed forward+backward at a long sequence: one run each, its device memory
/// and its time (including kernel compilation, which a warm-up would double on a slow adapter).
fn attention_forward_backward_memory(device: &Device, shape: [usize; 4]) -> Result<Record> {
    let ad = device.clone().autodiff();
    let [q, k, v, w] = [0, 1, 2, 3].map(|_| random(shape, &ad));
    let run = |which: AttentionImpl| {
        let (q, k, v) = (q.clone().require_grad(), k.clone().require_grad(), v.clone().require_grad());
        let out = kernels::attention(q.clone(), k.clone(), v.clone(), which);
        let grads = (out * w.clone()).sum().backward();
        [q.grad(&grads), k.grad(&grads), v.grad(&grads)].map(|g| g.ok_or_else(missing_grad))
    };
    let measure = |which: AttentionImpl| -> Result<(f64, Option<u64>, Vec<Vec<f32>>)> {
        device.memory_cleanup();
        let before = device.memory_pool_usage().map(|u| u.bytes_reserved);
        let start = Instant::now();
        let grads = run(which);
        sync(device)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let after = device.memory_pool_usage().map(|u| u.bytes_reserved);
        let grads = grads.into_iter().map(|g| host(g?)).collect::<Result<Vec<_>>>()?;
        device.memory_cleanup();
        Ok((ms, before.zip(after).map(|(b, a)| a.saturating_sub(b)), grads))
    };
    let (fused_ms, fused_peak_bytes, a) = measure(AttentionImpl::Fused)?;
    let (reference_ms, reference_peak_bytes, b) = measure(AttentionImpl::Reference)?;
    let diff = a.iter().zip(&b).map(|(a, b)| max_diff(a, b)).fold(0.0, f32::max);
    Ok(Record {
        op: "attention_forward_backward".into(),
        shape: json!({"B": shape[0], "H": shape[1], "N": shape[2], "d": shape[3]}),
        fused_ms,
        reference_ms,
        builtin_ms: None,
        fused_peak_bytes,
        reference_peak_bytes,
        max_abs_diff: diff,
        runs: 1,
    })
}

fn missing_grad() -> Error {
    Error::Device("autodiff returned no gradient for a benchmarked input".into())
}

fn sinkhorn(device: &Device, b: usize, k: usize, runs: usize) -> Result<Record> {
    let logits = random([b, k], device);
    let fused = || kernels::sinkhorn_knopp(logits.clone(), 0.07, 3);
    let reference = || kernels::sinkhorn_knopp_reference(logits.clone(), 0.07, 3);
    let (fused_ms, a) = time(device, runs, fused)?;
    let (reference_ms, r) = time(device, runs, reference)?;
    Ok(Record {
        op: "sinkhorn".into(),
        shape: json!({"B": b, "K": k, "iterations": 3}),
        fused_ms,
        reference_ms,
        builtin_ms: None,
        fused_peak_bytes: peak(device, fused)?,
        reference_peak_bytes: peak(device, reference)?,
        max_abs_diff: max_diff(&host(a)?, &host(r)?),
        runs,
    })
}

fn koleo(device: &Device, n: usize, d: usize, runs: usize) -> Result<Record> {
    let x = random([n, d], device);
    let x = x.clone() / x.square().sum_dim(1).sqrt();
    let fused = || kernels::koleo_nearest(x.clone());
    let reference = || kernels::koleo_nearest_reference(x.clone());
    let (fused_ms, a) = time(device, runs, fused)?;
    let (reference_ms, r) = time(device, runs, reference)?;
    // similarity of each chosen neighbour
    let similarity = |idx: Tensor<1, Int>| (x.clone() * x.clone().select(0, idx)).sum_dim(1);
    let diff = max_diff(&host(similarity(a))?, &host(similarity(r))?);
    Ok(Record {
        op: "koleo".into(),
        shape: json!({"n": n, "d": d}),
        fused_ms,
        reference_ms,
        builtin_ms: None,
        fused_peak_bytes: peak(device, fused)?,
        reference_peak_bytes: peak(device, reference)?,
        max_abs_diff: diff,
        runs,
    })
}

/// GELU forward + backward at an FFN hidden shape `[B, N, hidden]`: [`kernels::gelu`] (one
/// pass each way on the CPU) against the composed exact reference and burn's own GELU (whose
/// backward is the tanh approximation's derivative); the difference is against the exact
/// reference.
fn gelu(device: &Device, shape: [usize; 3], runs: usize) -> Result<Record> {
    let ad = device.clone().autodiff();
    let [x, w] = [0, 1].map(|_| random(shape, &ad));
    let run = |f: fn(Tensor<3>) -> Tensor<3>| {
        let x = x.clone().require_grad();
        let out = f(x.clone());
        let grads = (out.clone() * w.clone()).sum().backward();
        [Some(out.inner()), x.grad(&grads)]
    };
    let builtin: fn(Tensor<3>) -> Tensor<3> = burn::tensor::activation::gelu;
    let (fused_ms, fused) = time(device, runs, || run(kernels::gelu))?;
    let (reference_ms, reference) = time(device, runs, || run(kernels::gelu_reference))?;
    let (builtin_ms, _) = time(device, runs, || run(builtin))?;
    let mut diff = 0.0f32;
    for (a, b) in fused.into_iter().zip(reference) {
        let (a, b) = (a.ok_or_else(missing_grad)?, b.ok_or_else(missing_grad)?);
        diff = diff.max(max_diff(&host(a)?, &host(b)?));
    }
    Ok(Record {
        op: "gelu_forward_backward".into(),
        shape: json!({"B": shape[0], "N": shape[1], "hidden": shape[2]}),
        fused_ms,
        reference_ms,
        builtin_ms: Some(builtin_ms),
        fused_peak_bytes: peak(device, || run(kernels::gelu))?,
        reference_peak_bytes: peak(device, || run(kernels::gelu_reference))?,
        max_abs_diff: diff,
        runs,
    })
}

/// Run every measurement of the issue on `device`, reporting each record as it completes.
pub fn bench_kernels(
    device: &Device,
    options: &KernelBenchOptions,
    mut report: impl FnMut(&Record),
) -> Result<Vec<Record>> {
    if options.runs == 0 {
        return Err(Error::Usage("--runs must be at least 1".into()));
    }
    let runs = options.runs;
    const OPS: [&str; 5] =
        ["attention_forward", "attention_forward_backward", "sinkhorn", "koleo", "gelu_forward_backward"];
    if let Some(bad) = options.ops.iter().find(|op| !OPS.contains(&op.as_str())) {
        return Err(Error::Usage(format!("unknown op `{bad}`: expected one of {}", OPS.join(", "))));
    }
    let wanted = |op: &str| options.ops.is_empty() || options.ops.iter().any(|o| o == op);
    let mut records = Vec::new();
    let mut push = |r: Record| {
        report(&r);
        records.push(r);
    };
    let (small, large, memory) = if options.quick {
        ([1, 3, 65, 64], [1, 3, 512, 64], [1, 3, 512, 64])
    } else {
        ([8, 6, 257, 64], [2, 6, 1370, 64], [1, 6, 4096, 64])
    };
    if wanted("attention_forward") {
        for shape in [small, large] {
            push(attention_forward(device, shape, runs)?);
        }
    }
    if wanted("attention_forward_backward") {
        for shape in [small, large] {
            push(attention_forward_backward(device, shape, runs)?);
        }
        // the memory target: one run of each (its time includes compiling the kernels)
        push(attention_forward_backward_memory(device, memory)?);
    }
    let (b, k, n, d) = if options.quick { (8, 1024, 128, 64) } else { (512, 65536, 1024, 384) };
    if wanted("sinkhorn") {
        push(sinkhorn(device, b, k, runs)?);
    }
    if wanted("koleo") {
        push(koleo(device, n, d, runs)?);
    }
    if wanted("gelu_forward_backward") {
        // the FFN hidden of a step of the patch-7 tiny preset before 2026-12-01 (64 images × 8
        // crops' tokens, 512 wide) and of ViT-S/14 at 224 px (8 × 257 tokens, 1536 wide)
        let shapes: &[[usize; 3]] =
            if options.quick { &[[2, 17, 96]] } else { &[[64, 64, 512], [8, 257, 1536]] };
        for &shape in shapes {
            push(gelu(device, shape, runs)?);
        }
    }
    Ok(records)
}

fn megabytes(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / (1 << 20) as f64))
}

/// A table row for a record: timings, speed-ups, memory and the check.
pub fn table_row(r: &Record) -> String {
    let shape = r
        .shape
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let builtin = r.builtin_ms.map_or("-".into(), |b| format!("{b:.2}"));
    let vs_builtin = r.builtin_ms.map_or("-".into(), |b| format!("{:.2}x", b / r.fused_ms));
    let memory = match (r.fused_peak_bytes, r.reference_peak_bytes) {
        (Some(f), Some(p)) if f > 0 && p > 0 => format!("{:.1}x", p as f64 / f as f64),
        _ => "-".into(),
    };
    format!(
        "| {} | {} | {:.2} | {:.2} | {} | {:.2}x | {} | {} | {} | {} | {:.1e} |",
        r.op,
        shape,
        r.fused_ms,
        r.reference_ms,
        builtin,
        r.reference_ms / r.fused_ms,
        vs_builtin,
        megabytes(r.fused_peak_bytes),
        megabytes(r.reference_peak_bytes),
        memory,
        r.max_abs_diff
    )
}

pub const TABLE_HEADER: &str = "| op | shape | fused ms | reference ms | built-in ms | vs reference | vs built-in | fused MiB | reference MiB | memory ratio | max diff |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// What `bench train` measured on one device.
#[derive(Clone, Debug, Serialize)]
pub struct TrainBench {
    pub images_per_second: f64,
    pub ms_per_step: f64,
    /// Peak memory of the training state and steps.
    pub peak_bytes: Option<u64>,
    /// How the memory was measured.
    pub memory_kind: &'static str,
}

/// Where memory is counted before a measured piece of work: the device pool's reservation on
/// wgpu, the process's peak memory on the CPU ([`MemoryMark::growth`]).
struct MemoryMark {
    pool: Option<u64>,
    rss: Option<u64>,
    /// On the CPU: resident + swapped memory, sampled while the work runs.
    sampler: Option<PeakSampler>,
}

impl MemoryMark {
    fn now(device: &Device) -> Self {
        device.memory_cleanup();
        let pool = device.memory_pool_usage().map(|u| u.bytes_reserved);
        let sampler = if pool.is_none() { PeakSampler::start() } else { None };
        Self { pool, rss: process_peak_rss(), sampler }
    }

    /// What the work took since: on wgpu the pools' reservation beyond the mark (they only grow
    /// between clean-ups, so this is their peak), on the CPU the growth of the process's peak
    /// memory (so measure in a fresh process): the kernel's peak resident size, or the resident
    /// plus swapped size sampled every 10 ms where that is larger (a step that only fits with
    /// swap).
    fn growth(self, device: &Device) -> (Option<u64>, &'static str) {
        match (self.pool, device.memory_pool_usage().map(|u| u.bytes_reserved)) {
            (Some(b), Some(a)) => (Some(a.saturating_sub(b)), "device pool reserved"),
            _ => {
                let resident = process_peak_rss().zip(self.rss).map(|(a, b)| a.saturating_sub(b));
                let sampled = self.sampler.and_then(PeakSampler::stop);
                match (resident, sampled) {
                    (Some(r), Some(s)) if s > r => (Some(s), "process peak resident + swapped growth"),
                    _ => (resident, "process peak RSS growth"),
                }
            }
        }
    }
}

/// Resident plus swapped memory of this process (`VmRSS` + `VmSwap`), Linux only.
fn process_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kib("VmRSS:")? + kib("VmSwap:").unwrap_or(0)) * 1024)
}

/// The largest growth of [`process_memory`] over its value at the start, sampled every 10 ms
/// on a thread of its own: the kernel keeps a peak of the resident size (`VmHWM`) but none of
/// resident + swapped.
struct PeakSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
    base: u64,
}

impl PeakSampler {
    fn start() -> Option<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let base = process_memory()?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = base;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(process_memory().unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak.max(process_memory().unwrap_or(0))
        });
        Some(Self { stop, thread, base })
    }

    fn stop(self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().ok().map(|peak| peak.saturating_sub(self.base))
    }
}

/// Peak resident memory of this process (`VmHWM`), Linux only.
pub(crate) fn process_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// Time `steps` training steps (after one warm-up step that compiles the kernels) of recipe
/// `c` on `device`, batches made from `data` as in training (their making is timed too).
/// Memory: on wgpu the device pool's reservation beyond what it held before (the pools only
/// grow between clean-ups, so after the steps it is their peak); on the CPU the growth of the
/// process's peak resident memory (so run the CPU backend first in one process).
pub fn bench_train(
    c: &crate::train::TrainConfig,
    data: &crate::train::data::Dataset,
    device: &Device,
    steps: usize,
) -> Result<TrainBench> {
    use crate::train::trainer::{TrainState, make_batch};
    let mark = MemoryMark::now(device);
    let mut state = TrainState::new(c, device)?;
    let indices: Vec<usize> = (0..c.batch_size).map(|i| i % data.len()).collect();
    let batch = make_batch(c, data, &indices, 0)?;
    state.step(c, &batch, 0)?;
    sync(device)?;
    let start = Instant::now();
    for step in 1..=steps {
        let batch = make_batch(c, data, &indices, step)?;
        state.step(c, &batch, step)?;
    }
    sync(device)?;
    let seconds = start.elapsed().as_secs_f64();
    let (peak_bytes, memory_kind) = mark.growth(device);
    Ok(TrainBench {
        images_per_second: (steps * c.batch_size) as f64 / seconds,
        ms_per_step: seconds * 1e3 / steps as f64,
        peak_bytes,
        memory_kind,
    })
}

/// What one measured training step of `bench memory` used.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct StepMemory {
    pub preset: String,
    pub batch_size: usize,
    pub global_size: usize,
    pub local_size: usize,
    /// Peak memory of building the training state and running two steps.
    pub peak_bytes: Option<u64>,
    pub memory_kind: String,
    pub step_seconds: f64,
}

/// The recipe `bench memory` measures: preset `preset` with its crops at `global`/`local` px.
pub fn memory_recipe(
    preset: &str,
    batch: usize,
    global: usize,
    local: usize,
) -> Result<crate::train::TrainConfig> {
    let mut c = crate::train::TrainConfig::preset(preset)?;
    c.batch_size = batch;
    c.crops.global_size = global;
    c.crops.local_size = local;
    c.precision = crate::train::config::Precision::F32;
    c.validate().map_err(crate::error::Error::Config)?;
    Ok(c)
}

/// Two full training steps (state built, batches made, forward, backward, AdamW, EMA) of `c`
/// on `device`: the peak memory they took ([`MemoryMark::growth`]: run it in a fresh process on
/// the CPU) and the seconds per step (compilation included on wgpu).
pub fn measure_step(
    c: &crate::train::TrainConfig,
    data: &crate::train::data::Dataset,
    device: &Device,
    checkpointing: bool,
) -> Result<(Option<u64>, &'static str, f64)> {
    use crate::train::trainer::{TrainState, make_batch};
    let mark = MemoryMark::now(device);
    let start = Instant::now();
    let mut state = TrainState::new_with(c, device, checkpointing)?;
    let indices: Vec<usize> = (0..c.batch_size).map(|i| i % data.len()).collect();
    // the first step creates AdamW's moments and parts the teacher from the student (they
    // share their tensors until then); the second is a step as every later one
    for step in 0..2 {
        let batch = make_batch(c, data, &indices, step)?;
        state.step(c, &batch, step)?;
    }
    sync(device)?;
    let seconds = start.elapsed().as_secs_f64() / 2.0;
    let (peak, kind) = mark.growth(device);
    Ok((peak, kind, seconds))
}

/// Memory this machine has available now: RAM (`MemAvailable`) and free swap (`SwapFree`),
/// in bytes, Linux only.
pub fn available_memory() -> Option<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        info.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kib("MemAvailable:")? * 1024, kib("SwapFree:").unwrap_or(0) * 1024))
}
