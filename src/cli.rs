//! The `dinov2` command line: argument parsing and the commands, each a thin layer over the
//! library. Errors come back as [`Error`]; `src/bin/dinov2.rs` prints them on one line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;

use crate::backend::{self, BackendKind};
use crate::checkpoint::{LoadOptions, read_backbone};
use crate::config::{PRESET_NAMES, PosInterpolation, VitConfig};
use crate::data::preprocess::Resize;
use crate::error::{Error, Result};
use crate::eval::{matching, pca};
use crate::features::{EmbedOptions, FeatureSet, embed_files};
use crate::model::DinoVisionTransformer;
use crate::train::data::Dataset;

#[derive(Parser, Debug)]
#[command(
    name = "dinov2",
    version,
    about = "DINOv2 on wgpu: features, PCA and patch matching from local weights"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write CLS, patch and register features of images to a safetensors file.
    Embed(EmbedArgs),
    /// Picture the first three principal components of the patch features beside each image.
    Pca(PcaArgs),
    /// Draw mutual-nearest-neighbour patch matches between two images.
    Match(MatchArgs),
    /// The adapters wgpu sees, the one chosen, its limits and features.
    Info(InfoArgs),
    /// Print a preset's architecture as JSON (a starting point for --config).
    Presets {
        /// A preset name; all presets when omitted.
        name: Option<String>,
    },
    /// Self-supervised pretraining with the DINOv2 recipe (DINO + iBOT + KoLeo, EMA teacher).
    Train(TrainArgs),
    /// Distillation: a student trained with the same losses against a frozen pretrained
    /// teacher's targets; the student's EMA is the model released.
    Distill(DistillArgs),
    /// Frozen-feature evaluation.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Data curation (embeddings, self- and relative deduplication, retrieval).
    #[command(subcommand)]
    Curate(crate::curate::cli::CurateCommand),
}

impl Cli {
    /// Whether this command may train with a device per CPU core: `train` or `distill` without
    /// `--devices` (the CPU default when the backend is ndarray) or with `--devices cpu:N`,
    /// N > 1. Each device already runs on its own core, so the matrix products must not spread
    /// over the cores as well (see `main`).
    pub fn trains_on_cpu_shards(&self) -> bool {
        let run = match &self.command {
            Command::Train(args) => &args.run,
            Command::Distill(args) => &args.run,
            _ => return false,
        };
        match &run.devices {
            None => run.backend != "wgpu",
            Some(spec) => {
                spec.strip_prefix("cpu:").and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n > 1)
            }
        }
    }
}

/// The bundled sample photographs (scikit-image), the default training data.
pub const BUNDLED_IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/images");

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Recipe preset: tiny (small images, short runs) or an official architecture (vits14 ...).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// A complete recipe as JSON (see --print-config), instead of --preset.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The frozen teacher: a run folder or training checkpoint of this project (its EMA
    /// teacher, heads included), or any backbone --weights accepts (official .pth, HuggingFace
    /// folder, exported safetensors; its heads are then initialised from the seed and frozen).
    #[arg(long)]
    pub teacher: PathBuf,
    /// The student's recipe preset (stochastic depth off, as in the paper's distillation; the
    /// teacher temperature at its final value from the first step).
    #[arg(long, default_value = "tiny")]
    pub student_preset: String,
    /// The student's complete recipe as JSON, instead of --student-preset.
    #[arg(long, conflicts_with = "student_preset")]
    pub config: Option<PathBuf>,
    /// Run the teacher once per training image (as is and mirrored, as a scale-1 global crop
    /// sees it) at the start, and pair each student global crop with those outputs instead
    /// of running the teacher's backbone on every crop (on Fashion-MNIST with a teacher twice
    /// the student's width, a step then costs 1.26 training steps instead of about 1.6). An
    /// approximation that suits global crops covering most of the image; the cache is held in
    /// memory (the time it takes counts in --max-minutes).
    #[arg(long)]
    pub teacher_cache: bool,
    /// Start the student's heads as copies of the teacher's (a teacher run of this project as
    /// wide as the student, with the same head widths), so that the student learns to hit
    /// prototypes that already mean something; the backbone still starts from the seed.
    #[arg(long)]
    pub init_heads_from_teacher: bool,
    /// Start the student's backbone as the teacher's, DistilBERT's way: its blocks taken
    /// evenly from a teacher at least as deep (first and last included), everything else
    /// copied; needs the student's width, heads, feed-forward, patch and registers. Not in the
    /// paper (its students are narrower than their teacher).
    #[arg(long)]
    pub init_backbone_from_teacher: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What `train` and `distill` share: data, run folder, length, resume, device.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Images: a folder (searched recursively; PNG, JPEG), fashion-mnist-train or
    /// fashion-mnist-test. Default: the bundled sample photographs.
    #[arg(long)]
    pub data: Option<String>,
    /// Run folder: config.json, metrics.jsonl, checkpoint.safetensors, teacher_backbone.safetensors
    /// (default: runs/tiny for train, runs/distill for distill).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stop after this many minutes (a checkpoint is written).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Size a new run's schedule to this many minutes: a few steps are timed (then undone)
    /// and total_steps is set to what fits, with epoch_length (warm-ups, the last layer's
    /// freeze) and a highres phase scaled with it; the minutes also cap the run as
    /// --max-minutes does. The fitted recipe is in the run's config.json.
    #[arg(long, conflicts_with_all = ["max_minutes", "steps", "total_steps", "resume", "print_config"])]
    pub fit_minutes: Option<f64>,
    /// Stop after this many steps in this invocation (the schedule keeps its configured length).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Continue from the run folder's checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start a new run in a folder that already holds one (its checkpoint is replaced).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Override the recipe's images per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override the recipe's schedule length in steps. Warm-ups and the last layer's freeze stay
    /// as long as the recipe's epoch_length makes them: to shorten them too, set epoch_length in
    /// a --config (a warning says when one takes more than half the run).
    #[arg(long)]
    pub total_steps: Option<usize>,
    /// Steps between checkpoints.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Print the recipe as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Keep the EMA backbone of every checkpoint in RUN_DIR/snapshots/ (learning curves).
    #[arg(long)]
    pub keep_snapshots: bool,
    /// Compute backend: auto (wgpu on a hardware GPU, else ndarray), wgpu or ndarray.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Split every step's batch over several devices (burn's multi-device strategy: gradients
    /// summed on the first): wgpu adapter indices as `dinov2 info` lists them (`0,1,2,3`; an
    /// index twice opens two handles on one adapter) or `cpu:N`. Replaces --backend. Default:
    /// the one device of --backend, or on the CPU backend `cpu:N` with N the cores available
    /// (each device runs on its own thread).
    #[arg(long, conflicts_with = "backend")]
    pub devices: Option<String>,
    /// Burn's gradient checkpointing: memory-bound operations recompute their outputs in the
    /// backward pass instead of keeping them (less memory, more compute, the same results).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// k-NN classification on frozen CLS features (official protocol: cosine, T = 0.07,
    /// k = 10/20/100/200, weighted vote).
    Knn(KnnArgs),
    /// Linear probes on frozen features (official sweep: CLS of the last 1 or 4 blocks, with or
    /// without average-pooled patch tokens, 13 learning rates; SGD, momentum 0.9, cosine),
    /// the head chosen on a held-out part of --train.
    Linear(LinearArgs),
}

/// The model and the labelled sets an `eval` command uses.
#[derive(Args, Debug)]
pub struct EvalSetArgs {
    /// Weights: a training run folder or its checkpoint (the teacher is evaluated), or any
    /// backbone `--weights` accepts. Without it: --arch at initialisation (seed 0).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Architecture without --weights.
    #[arg(long, default_value = "tiny")]
    pub arch: String,
    /// Training set (the k-NN memory): fashion-mnist-train, fashion-mnist-test or a folder with one sub-folder per class.
    #[arg(long)]
    pub train: String,
    /// Test set (the k-NN queries), as --train.
    #[arg(long)]
    pub test: String,
    /// Square input size; default: the run's global crop size, 224 for other weights.
    #[arg(long)]
    pub size: Option<usize>,
    /// Use only the first N images of --train (a quick estimate).
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Use only the first N images of --test.
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Also write each test image's name, label and predicted class (per k, or the chosen
    /// linear head) to this JSON file, for paired comparisons
    /// (`scripts/paired_predictions.py`).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
}

impl EvalSetArgs {
    /// Fails early where an output file could not be written.
    fn check_outputs(&self, json: Option<&PathBuf>) -> Result<()> {
        json.into_iter().chain(&self.predictions).try_for_each(|p| check_output_dir(p))
    }

    /// `--predictions`: the test images, their labels and each named column of predictions.
    fn write_predictions(
        &self,
        test: &Dataset,
        labels: &[usize],
        columns: &[(String, &[usize])],
        protocol: &str,
    ) -> Result<()> {
        let Some(path) = &self.predictions else { return Ok(()) };
        let images: Vec<String> = (0..test.len()).map(|i| test.item_name(i)).collect();
        let predictions: serde_json::Map<String, serde_json::Value> =
            columns.iter().map(|(name, p)| (name.clone(), serde_json::json!(p))).collect();
        let value = serde_json::json!({
            "protocol": protocol,
            "weights": self.weights,
            "test": self.test,
            "images": images,
            "labels": labels,
            "predictions": predictions,
        });
        crate::io::write_atomic(path, serde_json::to_string(&value).expect("json").as_bytes())
    }

    /// The training and test sets (limited as asked) and their labels.
    fn open(&self) -> Result<(Dataset, Dataset, Vec<usize>, Vec<usize>)> {
        let mut train = Dataset::open(&self.train)?;
        let mut test = Dataset::open(&self.test)?;
        if let Some(n) = self.limit_train {
            train.truncate(n);
        }
        if let Some(n) = self.limit_test {
            test.truncate(n);
        }
        let train_labels = train.require_labels()?.to_vec();
        let test_labels = test.require_labels()?.to_vec();
        Ok((train, test, train_labels, test_labels))
    }
}

#[derive(Args, Debug)]
pub struct LinearArgs {
    #[command(flatten)]
    pub sets: EvalSetArgs,
    /// SGD iterations (official: 12500, 10 epochs of 1250).
    #[arg(long, default_value_t = 12_500)]
    pub iterations: usize,
    /// Images per SGD iteration (official: 128); learning rates are scaled by it / 256.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// The part of --train held out to choose the head.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// The learning rates swept, comma-separated, before scaling by --batch-size / 256
    /// (official: 1e-5,2e-5,5e-5,1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,1e-2,2e-2,5e-2,0.1).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub learning_rates: Option<Vec<f64>>,
    /// Cache the mirrored training images' features too and draw each sample as is or mirrored
    /// at random (the official training transform's random flip). Off by default: on
    /// Fashion-MNIST, whose shoes all face one way, it costs 0.4 points (BENCHMARKS.md).
    #[arg(long)]
    pub flip: bool,
    /// Also sweep heads on the CLS of the last 1 or 4 blocks + the last block's patch tokens
    /// average-pooled to a 2x2 grid, the four cells side by side (beyond the official sweep,
    /// which pools them to one); the head is still chosen on the held-out images.
    #[arg(long)]
    pub grid: bool,
    /// Seed of the held-out split, the heads' initialisation and the order of the samples: other
    /// seeds show how much the probe's top-1 moves with them alone (the features stay the same).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write every head's and the chosen head's top-1 to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Images per forward pass while caching features.
    #[arg(long, default_value_t = 256)]
    pub feature_batch_size: usize,
    /// Compute backend: auto, wgpu or ndarray.
    #[arg(long, default_value = "auto")]
    pub backend: String,
}

#[derive(Args, Debug)]
pub struct KnnArgs {
    #[command(flatten)]
    pub sets: EvalSetArgs,
    /// k-NN on the normalised pixels instead of features (the raw-pixel baseline).
    #[arg(long)]
    pub raw_pixels: bool,
    /// Also write `{"top1": {"10": .., "20": .., "100": .., "200": ..}}` to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Compute backend: auto, wgpu or ndarray.
    #[arg(long, default_value = "auto")]
    pub backend: String,
}

/// Which model and where it runs.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Weights: an official DINOv2 .pth, a HuggingFace folder (config.json + model.safetensors),
    /// or a safetensors file written by this project. Without it, a randomly initialised
    /// --arch model (for trying the pipeline; its features mean nothing).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Architecture preset (tiny, vits14, vitb14, vitl14, vitg14, each also _reg4); by default
    /// inferred from the checkpoint.
    #[arg(long)]
    pub arch: Option<String>,
    /// Architecture as a JSON file (see `dinov2 presets`), instead of --arch. With --weights,
    /// its `interpolation` is not used (the checkpoint's kind decides; see --interpolation).
    #[arg(long, conflicts_with = "arch")]
    pub config: Option<PathBuf>,
    /// Position-embedding interpolation: offset, size or size-antialias. By default the
    /// checkpoint's own (official: offset, official _reg: size-antialias, HuggingFace: size,
    /// HuggingFace with registers: size-antialias).
    #[arg(long)]
    pub interpolation: Option<String>,
    /// Compute backend: auto (wgpu on a hardware GPU, else ndarray), wgpu (forces wgpu, Mesa's
    /// lavapipe where there is no GPU) or ndarray (CPU).
    #[arg(long, default_value = "auto")]
    pub backend: String,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image sizing: `eval` (shorter side 256, centre crop 224; the default), N (shorter side
    /// N, centre-crop to multiples of the patch size) or `native` (keep the pixels).
    #[arg(long, default_value = "eval")]
    pub size: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Output safetensors file: `cls` [N,D], `patch` [N,h,w,D], `reg` [N,R,D].
    #[arg(long, short)]
    pub output: PathBuf,
    /// Input images (PNG or JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PcaArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image sizing, as for `embed`.
    #[arg(long, default_value = "eval")]
    pub size: String,
    /// Black out the background: threshold the first principal component, then fit the
    /// colours on foreground patches only (the paper's figure).
    #[arg(long)]
    pub foreground_mask: bool,
    /// Output PNG.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Input images; fitted jointly so that matching parts share colours.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image sizing, as for `embed`.
    #[arg(long, default_value = "eval")]
    pub size: String,
    /// Number of matches drawn (strongest first).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Output PNG.
    #[arg(long, short)]
    pub output: PathBuf,
    /// First image.
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Backend to describe: auto, wgpu or ndarray.
    #[arg(long, default_value = "auto")]
    pub backend: String,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Images per second of feature extraction on each backend, with the ratio to the first.
    Embed(BenchEmbedArgs),
    /// Training throughput (images/s) and peak memory of a recipe on each backend.
    Train(BenchTrainArgs),
    /// Self-deduplication of synthetic embeddings with planted copies: time and peak memory of
    /// the tiled exact search against the plain one, recall of the planted pairs.
    Curate(BenchCurateArgs),
    /// Peak memory of one full training step per preset (224 px crops by default), each in a
    /// fresh process, next to the memory plan's prediction (docs/SCALE.md).
    Memory(BenchMemoryArgs),
    /// The WGSL kernels against their composed references and burn's built-in attention:
    /// median times, device memory, differences; a Markdown table and optionally JSON.
    Kernels(BenchKernelsArgs),
}

#[derive(Args, Debug)]
pub struct BenchCurateArgs {
    /// Embeddings (10% of them in planted clusters of 2-5 near-copies).
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    #[arg(long, default_value_t = 64)]
    pub k: usize,
    #[arg(long, default_value_t = 0.6)]
    pub threshold: f32,
    /// Rows the plain exact search is timed on (its time is scaled to all rows).
    #[arg(long, default_value_t = 500)]
    pub baseline_queries: usize,
    /// Where the tiled search runs: auto (the WGSL kernel on a hardware GPU, else the CPU),
    /// wgpu or ndarray (the CPU). The plain baseline always runs on the CPU.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Also write the measurements as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchMemoryArgs {
    /// Recipe presets, comma-separated (tiny, vits14, vitb14, vitl14, vitg14, ...).
    #[arg(long, default_value = "tiny,vits14,vitb14", value_delimiter = ',')]
    pub presets: Vec<String>,
    /// Images per step.
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Global crop size in pixels.
    #[arg(long, default_value_t = 224)]
    pub global_size: usize,
    /// Local crop size in pixels (98: the presets' multiple of 14 nearest the official 96).
    #[arg(long, default_value_t = 98)]
    pub local_size: usize,
    /// Backend: auto, ndarray (peak resident memory) or wgpu (device pool).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Override the presets' depth (a shallower model of the same width: a check of the
    /// per-block plan where the whole model does not fit).
    #[arg(long)]
    pub depth: Option<usize>,
    /// With burn's gradient checkpointing (the plan does not model it).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Only print the plan (no step is run).
    #[arg(long)]
    pub plan_only: bool,
    /// Run a step even where the plan says it needs more memory than is available.
    #[arg(long)]
    pub force: bool,
    /// Also write the records as a JSON list to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Measure this one preset in this process and print its record as JSON (used by the
    /// parent, one fresh process per preset).
    #[arg(long, hide = true)]
    pub child: bool,
}

#[derive(Args, Debug)]
pub struct BenchKernelsArgs {
    /// Backend: wgpu (the kernels' home) or ndarray (where the kernels are the references).
    #[arg(long, default_value = "wgpu")]
    pub backend: String,
    /// Timed runs per op after one warm-up; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Small shapes only (a smoke test of the command, not a measurement).
    #[arg(long)]
    pub quick: bool,
    /// Also write the records as a JSON list to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Only these ops, comma-separated: attention_forward, attention_forward_backward,
    /// sinkhorn, koleo, gelu_forward_backward.
    #[arg(long, value_delimiter = ',')]
    pub ops: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Recipe preset.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Images per step (default: the recipe's).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Timed steps per backend, after one warm-up step.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Backends, comma-separated; the first is the baseline of the ratios.
    #[arg(long, default_value = "ndarray,wgpu")]
    pub backends: String,
    /// Images: a folder, fashion-mnist-train, ... (default: the bundled photographs).
    #[arg(long)]
    pub data: Option<String>,
}

#[derive(Args, Debug)]
pub struct BenchEmbedArgs {
    /// Preset to time (random weights).
    #[arg(long, default_value = "vits14")]
    pub arch: String,
    /// Square input size in pixels.
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Timed batches per backend (after one warm-up batch).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Backends, comma-separated; the first is the baseline of the ratios.
    #[arg(long, default_value = "ndarray,wgpu")]
    pub backends: String,
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Embed(args) => embed(args),
        Command::Pca(args) => pca_command(args),
        Command::Match(args) => match_command(args),
        Command::Info(args) => info(args),
        Command::Presets { name } => presets(name),
        Command::Train(args) => train_command(args),
        Command::Distill(args) => distill_command(args),
        Command::Eval(EvalCommand::Knn(args)) => knn_command(args),
        Command::Eval(EvalCommand::Linear(args)) => linear_command(args),
        Command::Bench(BenchCommand::Embed(args)) => bench_embed(args),
        Command::Bench(BenchCommand::Kernels(args)) => bench_kernels(args),
        Command::Bench(BenchCommand::Train(args)) => bench_train(args),
        Command::Bench(BenchCommand::Memory(args)) => bench_memory(args),
        Command::Bench(BenchCommand::Curate(args)) => bench_curate(args),
        Command::Curate(command) => crate::curate::cli::run(command),
    }
}

fn warn(message: impl AsRef<str>) {
    eprintln!("warning: {}", message.as_ref());
}

/// Open the device and load (or initialise) the model the arguments describe.
pub fn load_model(args: &ModelArgs) -> Result<(DinoVisionTransformer, Device)> {
    let requested = BackendKind::parse(&args.backend)?;
    let kind = backend::resolve(requested);
    if requested == BackendKind::Auto && kind == BackendKind::Ndarray {
        eprintln!(
            "note: no hardware GPU adapter; running on ndarray (CPU). --backend wgpu forces the software adapter"
        );
    }
    let options = LoadOptions {
        arch: args.arch.clone(),
        config: args.config.as_deref().map(VitConfig::from_json_file).transpose()?,
        interpolation: args.interpolation.as_deref().map(PosInterpolation::parse).transpose()?,
    };
    // Validate the checkpoint before touching a device: a bad file fails fast.
    let weights = args
        .weights
        .as_deref()
        .map(|path| read_backbone(&crate::train::trainer::backbone_path(path)?, &options))
        .transpose()?;
    let device = backend::device(kind)?;
    let model = match weights {
        Some(w) => DinoVisionTransformer::from_weights(&w, &device)?,
        None => {
            let mut config = match (&options.config, &options.arch) {
                (Some(c), _) => c.clone(),
                (None, Some(name)) => VitConfig::preset(name)?,
                (None, None) => VitConfig::tiny(),
            };
            if let Some(interp) = options.interpolation {
                config.interpolation = interp;
            }
            warn("no --weights given: using a randomly initialised model; its features mean nothing");
            device.seed(0);
            DinoVisionTransformer::new(&config, &device)
        }
    };
    Ok((model, device))
}

fn progress_bar(len: usize, what: &str) -> ProgressBar {
    // A handful of images need no bar.
    if len <= 4 {
        return ProgressBar::hidden();
    }
    crate::progress::bar(len as u64, "{msg} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}", what, false)
}

/// `bar`, or a hidden one when `quiet`.
fn quiet_or(quiet: bool, bar: ProgressBar) -> ProgressBar {
    if quiet { ProgressBar::hidden() } else { bar }
}

fn check_output_dir(path: &Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::Usage(format!(
            "{}: output folder {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}

fn run_embedding(
    model: &DinoVisionTransformer,
    device: &Device,
    images: &[PathBuf],
    size: &str,
    batch_size: usize,
    keep_images: bool,
) -> Result<(FeatureSet, Vec<image::RgbImage>)> {
    if batch_size == 0 {
        return Err(Error::Usage("--batch-size must be at least 1".into()));
    }
    let options = EmbedOptions { resize: Resize::parse(size)?, batch_size };
    let bar = progress_bar(images.len(), "embedding");
    let mut shown = Vec::new();
    let features = embed_files(
        model,
        images,
        options,
        device,
        |path, prepared| {
            if let Some((w, h)) = prepared.cropped_from {
                bar.suspend(|| {
                    warn(format!(
                        "{}: {w}x{h} is not a multiple of the patch size; centre-cropped to {}x{}",
                        path.display(),
                        prepared.width(),
                        prepared.height()
                    ))
                });
            }
            if keep_images {
                shown.push(prepared.rgb.clone());
            }
        },
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    Ok((features, shown))
}

fn embed(args: EmbedArgs) -> Result<()> {
    check_output_dir(&args.output)?;
    let (model, device) = load_model(&args.model)?;
    let (features, _) = run_embedding(&model, &device, &args.images, &args.size, args.batch_size, false)?;
    features.write(&args.output)?;
    eprintln!(
        "wrote {}: cls [{}, {}], patch [{}, {}, {}, {}]{}",
        args.output.display(),
        features.n,
        features.d,
        features.n,
        features.h,
        features.w,
        features.d,
        if features.r > 0 {
            format!(", reg [{}, {}, {}]", features.n, features.r, features.d)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn save_png(image: &image::RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::image(path, format!("cannot encode PNG: {e}")))?;
    crate::io::write_atomic(path, &bytes)
}

fn pca_command(args: PcaArgs) -> Result<()> {
    check_output_dir(&args.output)?;
    let (model, device) = load_model(&args.model)?;
    let (features, shown) = run_embedding(&model, &device, &args.images, &args.size, 8, true)?;
    let patches: Vec<&[f32]> = (0..features.n).map(|i| features.patches_of(i)).collect();
    let maps = pca::pca_maps(&patches, features.h, features.w, features.d, args.foreground_mask);
    save_png(&pca::side_by_side(&shown, &maps.maps), &args.output)?;
    eprintln!(
        "wrote {} ({} images, {}x{} patches each)",
        args.output.display(),
        features.n,
        features.h,
        features.w
    );
    Ok(())
}

fn match_command(args: MatchArgs) -> Result<()> {
    check_output_dir(&args.output)?;
    let (model, device) = load_model(&args.model)?;
    let embed_one =
        |path: &PathBuf| run_embedding(&model, &device, std::slice::from_ref(path), &args.size, 1, true);
    let (fa, sa) = embed_one(&args.a)?;
    let (fb, sb) = embed_one(&args.b)?;
    let matches = matching::mutual_nearest_neighbours(&fa.patch, &fb.patch, fa.d, args.top_k);
    let picture = matching::draw_matches(&sa[0], &sb[0], &matches, model.config.patch_size, fa.w, fb.w);
    save_png(&picture, &args.output)?;
    let mean = matches.iter().map(|m| m.similarity).sum::<f32>() / matches.len().max(1) as f32;
    eprintln!(
        "wrote {}: {} mutual nearest neighbours drawn, mean cosine similarity {mean:.3}",
        args.output.display(),
        matches.len()
    );
    Ok(())
}

fn info(args: InfoArgs) -> Result<()> {
    let requested = BackendKind::parse(&args.backend)?;
    let kind = backend::resolve(requested);
    println!("backend: {} (requested {})", kind.name(), requested.name());
    let adapters = backend::adapters();
    if adapters.is_empty() {
        println!("wgpu adapters: none");
    }
    for (i, a) in adapters.iter().enumerate() {
        println!("wgpu adapter {i}: {} ({}, {}, driver {})", a.name, a.backend, a.device_type, a.driver);
        println!(
            "  features: shader-f16 {}, subgroups {}",
            if a.shader_f16 { "yes" } else { "no" },
            if a.subgroups { "yes" } else { "no" }
        );
        println!(
            "  limits: max storage binding {} MiB, max buffer {} MiB, workgroup storage {} KiB, {} invocations per workgroup",
            a.max_storage_binding >> 20,
            a.max_buffer >> 20,
            a.max_workgroup_storage >> 10,
            a.max_invocations_per_workgroup
        );
    }
    match kind {
        BackendKind::Ndarray | BackendKind::Auto => println!(
            "in use: ndarray (CPU, {} threads)",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        ),
        BackendKind::Wgpu => {
            let device = backend::device(kind)?;
            let name = backend::device_name(&device).unwrap_or_else(|| "unknown".into());
            println!("in use: wgpu on {name}");
        }
    }
    Ok(())
}

fn open_device(name: &str) -> Result<Device> {
    let requested = BackendKind::parse(name)?;
    let kind = backend::resolve(requested);
    if requested == BackendKind::Auto && kind == BackendKind::Ndarray {
        eprintln!(
            "note: no hardware GPU adapter; running on ndarray (CPU). --backend wgpu forces the software adapter"
        );
    }
    backend::device(kind)
}

fn train_command(args: TrainArgs) -> Result<()> {
    use crate::train::TrainConfig;
    let config = match &args.config {
        Some(path) => TrainConfig::from_json_file(path)?,
        None => TrainConfig::preset(&args.preset)?,
    };
    let label = if args.config.is_some() { "--config".to_string() } else { args.preset.clone() };
    run_recipe(config, &label, args.config.is_some(), &args.run, "runs/tiny")
}

fn distill_command(args: DistillArgs) -> Result<()> {
    use crate::train::TrainConfig;
    use crate::train::config::Distillation;
    let saved =
        args.run.out.as_deref().unwrap_or(Path::new("runs/distill")).join(crate::train::trainer::CONFIG);
    let mut config = match &args.config {
        Some(path) => TrainConfig::from_json_file(path)?,
        // resuming without --config: the run's own recipe (run_recipe loads it again), so that
        // the teacher is checked against the student it was paired with, not today's preset
        None if args.run.resume && saved.exists() => TrainConfig::from_json_file(&saved)?,
        None => {
            let mut c = TrainConfig::preset(&args.student_preset)?;
            c.drop_path_rate = 0.0;
            // the teacher is trained: its temperature needs no warm-up (the warm-up keeps an
            // untrained teacher's targets soft)
            c.warmup_teacher_temp = c.teacher_temp;
            c
        }
    };
    let init_heads =
        args.init_heads_from_teacher || config.distillation.as_ref().is_some_and(|d| d.init_heads);
    // the student predicts the teacher's prototypes: its heads take the teacher run's K
    if let Some(teacher) = crate::train::trainer::run_config(&args.teacher) {
        config.dino_head.n_prototypes = teacher.dino_head.n_prototypes;
        config.ibot_separate_head = teacher.ibot_separate_head;
        config.ibot_head.n_prototypes = if teacher.ibot_separate_head {
            teacher.ibot_head.n_prototypes
        } else {
            teacher.dino_head.n_prototypes
        };
        if init_heads {
            crate::train::trainer::check_teacher_heads(&args.teacher, &teacher, &config)?;
        }
    } else if !args.teacher.exists() {
        return Err(Error::Usage(format!("{}: no such teacher", args.teacher.display())));
    } else if init_heads {
        return Err(Error::Usage(format!(
            "{}: --init-heads-from-teacher needs a teacher run of this project (a backbone alone has no trained heads)",
            args.teacher.display()
        )));
    }
    let teacher_cache = args.teacher_cache || config.distillation.as_ref().is_some_and(|d| d.teacher_cache);
    let init_backbone =
        args.init_backbone_from_teacher || config.distillation.as_ref().is_some_and(|d| d.init_backbone);
    config.distillation =
        Some(Distillation { teacher: args.teacher.clone(), teacher_cache, init_heads, init_backbone });
    crate::train::trainer::check_teacher(&args.teacher, &config)?;
    let label = if args.config.is_some() { "--config".to_string() } else { args.student_preset.clone() };
    run_recipe(
        config,
        &format!("{label} from {}", args.teacher.display()),
        args.config.is_some(),
        &args.run,
        "runs/distill",
    )
}

/// Train `config` (with the command line's overrides) as `args` says.
fn run_recipe(
    mut config: crate::train::TrainConfig,
    label: &str,
    explicit_config: bool,
    args: &RunArgs,
    default_out: &str,
) -> Result<()> {
    use crate::train::{RunOptions, TrainConfig};
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(default_out));
    if let Some(minutes) = args.fit_minutes {
        crate::train::trainer::check_fit_minutes(minutes)?;
    }
    if let Some(b) = args.batch_size {
        config.batch_size = b;
    }
    if let Some(t) = args.total_steps {
        config.total_steps = t;
    }
    if let Some(c) = args.checkpoint_every {
        config.checkpoint_every = c;
    }
    config.validate().map_err(Error::Config)?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&config).expect("config serialises"));
        return Ok(());
    }
    if args.resume {
        // the run's own recipe, unless the user gave one explicitly
        let saved = out.join(crate::train::trainer::CONFIG);
        if !explicit_config && saved.exists() {
            let cache = |c: &TrainConfig| c.distillation.as_ref().is_some_and(|d| d.teacher_cache);
            let requested = cache(&config);
            config = TrainConfig::from_json_file(&saved)?;
            if requested && !cache(&config) {
                return Err(Error::Usage(format!(
                    "{}: the run was started without --teacher-cache; resume it without the flag",
                    saved.display()
                )));
            }
        }
    }
    let data_spec = args.data.clone().unwrap_or_else(|| BUNDLED_IMAGES.to_string());
    let data = crate::train::data::Dataset::open(&data_spec)?;
    let devices = match &args.devices {
        Some(spec) => backend::devices(spec)?,
        None => {
            let device = open_device(&args.backend)?;
            // on the CPU backend a device per core: ndarray runs each operation on one thread,
            // the shards run on a thread each (the same steps, within rounding)
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let shards = cores.min(config.batch_size);
            if backend::resolve(BackendKind::parse(&args.backend)?) == BackendKind::Ndarray && shards > 1 {
                backend::devices(&format!("cpu:{shards}"))?
            } else {
                vec![device]
            }
        }
    };
    let device = devices[0].clone();
    if devices.len() > 1 {
        if config.batch_size < devices.len() {
            return Err(Error::Usage(format!(
                "--devices: {} devices but {} images per step; every device needs at least one",
                devices.len(),
                config.batch_size
            )));
        }
        eprintln!(
            "{} devices, a thread each{}, {} images per step each",
            devices.len(),
            if args.devices.is_none() { " (one per CPU core; --devices cpu:1 for one)" } else { "" },
            config.batch_size.div_ceil(devices.len())
        );
    }
    if args.fit_minutes.is_none() {
        config.schedule_warnings().iter().for_each(warn);
    }
    let length = match args.fit_minutes {
        Some(m) => format!("a schedule fitted to {m} min"),
        None => format!("{} steps", config.total_steps),
    };
    eprintln!(
        "{} {label} ({:.1}M backbone parameters) on {} ({} images), {length} of {} images, into {}",
        if config.distillation.is_some() { "distilling" } else { "training" },
        config.arch.num_params() as f64 / 1e6,
        data.name(),
        data.len(),
        config.batch_size,
        out.display()
    );
    let options = RunOptions {
        out: out.clone(),
        max_steps: args.steps,
        max_minutes: args.max_minutes,
        fit_minutes: args.fit_minutes,
        resume: args.resume,
        overwrite: args.overwrite,
        progress: !args.quiet,
        keep_snapshots: args.keep_snapshots,
        devices: if devices.len() > 1 { devices } else { Vec::new() },
        gradient_checkpointing: args.gradient_checkpointing,
    };
    let summary = crate::train::train(&config, &data, &device, &options)?;
    eprintln!(
        "{} steps, {:.1} images/s{}; checkpoint {}, {} backbone {}",
        summary.steps_done,
        summary.images_per_second,
        summary.last_loss.map(|l| format!(", last loss {:.4}", l.total)).unwrap_or_default(),
        summary.checkpoint.display(),
        if config.distillation.is_some() { "the student's EMA" } else { "teacher" },
        out.join(crate::train::trainer::TEACHER_BACKBONE).display()
    );
    Ok(())
}

fn knn_command(args: KnnArgs) -> Result<()> {
    use crate::eval::knn;
    args.sets.check_outputs(args.json.as_ref())?;
    if args.batch_size == 0 {
        return Err(Error::Usage("--batch-size must be at least 1".into()));
    }
    let (train, test, train_labels, test_labels) = args.sets.open()?;
    let (train_features, test_features, d, device) = if args.raw_pixels {
        let device = open_device(&args.backend)?;
        let size = args.sets.size.unwrap_or(28);
        let a = knn::pixel_features(&train, size)?;
        let b = knn::pixel_features(&test, size)?;
        (a, b, 3 * size * size, device)
    } else {
        let (model, device, size) = eval_model(&args.sets, &args.backend)?;
        let bar = quiet_or(args.sets.quiet, progress_bar(train.len() + test.len(), "features"));
        let a = knn::cls_features(&model, &train, size, args.batch_size, &device, &bar)?;
        let b = knn::cls_features(&model, &test, size, args.batch_size, &device, &bar)?;
        bar.finish_and_clear();
        (a, b, model.config.embed_dim, device)
    };
    let predicted = knn::knn_predictions(
        &train_features,
        &train_labels,
        &test_features,
        test_labels.len(),
        d,
        &knn::KS,
        knn::TEMPERATURE,
        &device,
    )?;
    let results: Vec<(usize, f64)> =
        knn::KS.iter().zip(&predicted).map(|(&k, p)| (k, crate::eval::accuracy(p, &test_labels))).collect();
    let columns: Vec<(String, &[usize])> =
        knn::KS.iter().zip(&predicted).map(|(k, p)| (format!("k={k}"), p.as_slice())).collect();
    args.sets.write_predictions(&test, &test_labels, &columns, "knn")?;
    let mut top1 = serde_json::Map::new();
    for (k, acc) in &results {
        println!("k={k:<4} top-1 {:.2}%", 100.0 * acc);
        top1.insert(k.to_string(), serde_json::json!(acc));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "top1": top1 })).expect("json");
        crate::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// The model an `eval` command evaluates (`--weights`: a run, a checkpoint, any backbone; or
/// `--arch` at initialisation), its device and its input size.
fn eval_model(sets: &EvalSetArgs, backend: &str) -> Result<(DinoVisionTransformer, Device, usize)> {
    let model_args = ModelArgs {
        weights: sets.weights.clone(),
        arch: sets.weights.is_none().then(|| sets.arch.clone()),
        config: None,
        interpolation: None,
        backend: backend.to_string(),
    };
    let (model, device) = load_model(&model_args)?;
    let run_size = sets.weights.as_deref().and_then(crate::train::trainer::run_crop_size);
    Ok((model, device, sets.size.or(run_size).unwrap_or(224)))
}

fn linear_command(args: LinearArgs) -> Result<()> {
    use crate::eval::linear::{ProbeFeatures, ProbeOptions, best_per_setting, train_probes};
    args.sets.check_outputs(args.json.as_ref())?;
    if args.batch_size == 0 || args.feature_batch_size == 0 || args.iterations == 0 {
        return Err(Error::Usage(
            "--batch-size, --feature-batch-size and --iterations must be at least 1".into(),
        ));
    }
    if !(args.val_fraction > 0.0 && args.val_fraction < 1.0) {
        return Err(Error::Usage(format!(
            "--val-fraction must be between 0 and 1, not {}",
            args.val_fraction
        )));
    }
    let learning_rates =
        args.learning_rates.clone().unwrap_or_else(|| crate::eval::linear::LEARNING_RATES.to_vec());
    if let Some(lr) = learning_rates.iter().find(|lr| !(lr.is_finite() && **lr > 0.0)) {
        return Err(Error::Usage(format!("--learning-rates must be positive numbers, not {lr}")));
    }
    let (train, test, train_labels, test_labels) = args.sets.open()?;
    let (model, device, size) = eval_model(&args.sets, &args.backend)?;
    let started = Instant::now();
    let flip = args.flip;
    let bar =
        quiet_or(args.sets.quiet, progress_bar(train.len() * (1 + flip as usize) + test.len(), "features"));
    let extract = |data, mirror| {
        let cache = crate::eval::linear::Cache { mirror, grid: args.grid };
        ProbeFeatures::extract(&model, data, size, args.feature_batch_size, cache, &device, &bar)
    };
    let train_features = extract(&train, false)?;
    let mirrored = if flip { Some(extract(&train, true)?) } else { None };
    let test_features = extract(&test, false)?;
    bar.finish_and_clear();
    eprintln!(
        "features of {}{} + {} images cached in {:.0} s (CLS of the last {} blocks + pooled patches, {} wide)",
        train.len(),
        if flip { " (and their mirror images)" } else { "" },
        test.len(),
        started.elapsed().as_secs_f64(),
        train_features.blocks,
        train_features.d
    );
    let options = ProbeOptions {
        iterations: args.iterations,
        batch_size: args.batch_size,
        val_fraction: args.val_fraction,
        learning_rates: learning_rates.clone(),
        grid: args.grid,
        seed: args.seed,
    };
    let settings = (crate::eval::linear::SETTINGS.len()
        + if args.grid { crate::eval::linear::GRID_SETTINGS.len() } else { 0 }) as u64;
    let bar = crate::progress::bar(
        settings * args.iterations as u64,
        "{msg} [{bar:30}] {pos}/{len} iterations, eta {eta}",
        "linear heads",
        args.sets.quiet,
    );
    let report = train_probes(
        &train_features,
        mirrored.as_ref(),
        &train_labels,
        &test_features,
        &test_labels,
        &options,
        &device,
        &bar,
    )?;
    bar.finish_and_clear();
    println!(
        "linear probe: {} heads trained on {} images, chosen on {} held out, tested on {}",
        report.heads.len(),
        report.train_images,
        report.val_images,
        report.test_images
    );
    let patches = |h: &crate::eval::linear::HeadResult| match (h.avgpool, h.grid) {
        (true, _) => "avgpool",
        (false, true) => "2x2 grid",
        (false, false) => "no",
    };
    println!("{:<8} {:<9} {:>9} {:>9} {:>9}", "blocks", "patches", "best lr", "held-out", "test");
    let best = best_per_setting(&report);
    for h in &best {
        println!(
            "{:<8} {:<9} {:>9.0e} {:>8.2}% {:>8.2}%",
            h.blocks,
            patches(h),
            h.lr,
            100.0 * h.val_top1,
            100.0 * h.test_top1
        );
    }
    let c = &report.chosen;
    println!(
        "chosen: last {} block(s){}, lr {:.0e}: top-1 {:.2}%",
        c.blocks,
        match patches(c) {
            "no" => String::new(),
            p => format!(" + {p}"),
        },
        c.lr,
        100.0 * c.test_top1
    );
    let (lowest, highest) =
        learning_rates.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &lr| (lo.min(lr), hi.max(lr)));
    if learning_rates.len() > 1 && (c.lr == lowest || c.lr == highest) {
        eprintln!(
            "note: the chosen learning rate {:.0e} is the {} of the sweep; a wider --learning-rates may do better",
            c.lr,
            if c.lr == highest { "largest" } else { "smallest" }
        );
    }
    args.sets.write_predictions(
        &test,
        &test_labels,
        &[("linear".to_string(), report.test_predictions.as_slice())],
        "linear",
    )?;
    if let Some(path) = &args.json {
        let value = serde_json::json!({
            "top1": c.test_top1,
            "chosen": c,
            "best_per_setting": best,
            "heads": report.heads,
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "learning_rates": learning_rates,
            "flip": flip,
            "grid": args.grid,
            "seed": args.seed,
            "train_images": report.train_images,
            "val_images": report.val_images,
            "test_images": report.test_images,
        });
        let text = serde_json::to_string_pretty(&value).expect("json");
        crate::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

fn presets(name: Option<String>) -> Result<()> {
    let names: Vec<String> = match name {
        Some(n) => vec![n],
        None => PRESET_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    for n in names {
        let config = VitConfig::preset(&n)?;
        let json = serde_json::to_string_pretty(&config).expect("config serialises");
        println!("// {n}: {:.1}M parameters\n{json}", config.num_params() as f64 / 1e6);
    }
    Ok(())
}

fn bench_kernels(args: BenchKernelsArgs) -> Result<()> {
    let kind = BackendKind::parse(&args.backend)?;
    if let Some(path) = &args.json {
        check_output_dir(path)?;
    }
    let device = backend::device(kind)?;
    let options = crate::bench::KernelBenchOptions { runs: args.runs, quick: args.quick, ops: args.ops };
    println!(
        "kernel benchmark on {} ({}): median of {} runs after a warm-up{}",
        backend::resolve(kind).name(),
        backend::device_name(&device).unwrap_or_else(|| "CPU".into()),
        args.runs,
        if args.quick { " (quick shapes)" } else { "" }
    );
    println!("{}", crate::bench::TABLE_HEADER);
    let records =
        crate::bench::bench_kernels(&device, &options, |r| println!("{}", crate::bench::table_row(r)))?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&records)
            .map_err(|e| Error::Usage(format!("cannot encode JSON: {e}")))?;
        crate::io::write_atomic(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn bench_train(args: BenchTrainArgs) -> Result<()> {
    use crate::train::config::Precision;
    let mut config = crate::train::TrainConfig::preset(&args.preset)?;
    if let Some(b) = args.batch_size {
        config.batch_size = b;
    }
    config.validate().map_err(Error::Config)?;
    if args.steps == 0 {
        return Err(Error::Usage("--steps must be at least 1".into()));
    }
    let data = crate::train::data::Dataset::open(args.data.as_deref().unwrap_or(BUNDLED_IMAGES))?;
    let kinds = args.backends.split(',').map(BackendKind::parse).collect::<Result<Vec<_>>>()?;
    println!(
        "training benchmark: {} recipe ({:.1}M backbone params), batch {}, {}+{} crops of {}/{} px, {} timed steps after 1 warm-up",
        args.preset,
        config.arch.num_params() as f64 / 1e6,
        config.batch_size,
        config.crops.n_global,
        config.crops.n_local,
        config.crops.global_size,
        config.crops.local_size,
        args.steps
    );
    // f32 everywhere, and mixed precision too where the device offers f16
    let mut baseline: Option<(f64, String)> = None;
    for kind in kinds {
        let device = backend::device(kind)?;
        let mut precisions = vec![Precision::F32];
        if crate::train::trainer::resolve_precision(Precision::Mixed, &device).is_ok() {
            precisions.push(Precision::Mixed);
        }
        for precision in precisions {
            config.precision = precision;
            let label =
                format!("{} {}", kind.name(), if precision == Precision::Mixed { "mixed" } else { "f32" });
            let result = crate::bench::bench_train(&config, &data, &device, args.steps)?;
            let (base, base_name) = baseline.get_or_insert((result.images_per_second, label.clone())).clone();
            println!(
                "{:14} {:8.2} images/s ({:.2}x the {} baseline), {:6.0} ms/step, peak memory {} ({})",
                label,
                result.images_per_second,
                result.images_per_second / base,
                base_name,
                result.ms_per_step,
                result
                    .peak_bytes
                    .map_or("n/a".to_string(), |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64)),
                result.memory_kind
            );
        }
    }
    Ok(())
}

fn bench_memory(args: BenchMemoryArgs) -> Result<()> {
    use crate::bench::{StepMemory, available_memory, measure_step, memory_recipe};
    use crate::train::memory::plan;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    if args.batch_size == 0 {
        return Err(Error::Usage("--batch-size must be at least 1".into()));
    }
    let recipes = args
        .presets
        .iter()
        .map(|p| {
            let mut c = memory_recipe(p, args.batch_size, args.global_size, args.local_size)?;
            if let Some(depth) = args.depth {
                c.arch.depth = depth;
            }
            Ok((p.clone(), c))
        })
        .collect::<Result<Vec<_>>>()?;
    if args.child {
        let [(preset, c)] = &recipes[..] else {
            return Err(Error::Usage("--child measures exactly one preset".into()));
        };
        let data = Dataset::open(BUNDLED_IMAGES)?;
        let device = open_device(&args.backend)?;
        let (peak_bytes, kind, seconds) = measure_step(c, &data, &device, args.gradient_checkpointing)?;
        let record = StepMemory {
            preset: preset.clone(),
            batch_size: c.batch_size,
            global_size: c.crops.global_size,
            local_size: c.crops.local_size,
            peak_bytes,
            memory_kind: kind.to_string(),
            step_seconds: seconds,
        };
        println!("{}", serde_json::to_string(&record).expect("record serialises"));
        return Ok(());
    }
    if let Some(path) = &args.json {
        check_output_dir(path)?;
    }
    // the plan counts the CPU attention's N × N moment on ndarray only
    let cpu = backend::resolve(BackendKind::parse(&args.backend)?) == BackendKind::Ndarray;
    println!(
        "two training steps per preset{}: batch {}, 2 global crops of {} px + the recipe's local crops of {} px, f32; {}",
        args.depth.map(|d| format!(" (depth {d})")).unwrap_or_default(),
        args.batch_size,
        args.global_size,
        args.local_size,
        if args.plan_only { "plan only" } else { "each step in a fresh process" }
    );
    println!(
        "| preset | params (M) | tokens/image | plan fixed MiB | plan per image MiB | plan MiB | measured MiB | measured / plan | step s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut records = Vec::new();
    for (preset, c) in &recipes {
        let p = plan(c);
        let predicted = p.step(c.batch_size, cpu);
        let measured = if args.plan_only {
            None
        } else {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            if let Some((ram, swap)) = available_memory().filter(|&(r, s)| r + s < predicted && !args.force) {
                return Err(Error::Usage(format!(
                    "{preset}: the plan needs {:.1} GiB for a step of {} images, this machine has {:.1} GiB available ({:.1} GiB RAM, {:.1} GiB swap; --force to try anyway)",
                    gib(predicted),
                    c.batch_size,
                    gib(ram + swap),
                    gib(ram),
                    gib(swap)
                )));
            }
            if let Some((ram, _)) = available_memory().filter(|&(r, _)| r < predicted) {
                eprintln!(
                    "{preset}: the plan needs {:.1} GiB, more than the {:.1} GiB of RAM available: the step will use swap and its time will show it",
                    gib(predicted),
                    gib(ram)
                );
            }
            let exe = std::env::current_exe()
                .map_err(|e| Error::Device(format!("cannot find this program: {e}")))?;
            let output = std::process::Command::new(exe)
                .args(["bench", "memory", "--child", "--presets", preset, "--backend", &args.backend])
                .args(["--batch-size", &c.batch_size.to_string()])
                .args([
                    "--global-size",
                    &args.global_size.to_string(),
                    "--local-size",
                    &args.local_size.to_string(),
                ])
                .args(args.depth.map(|d| vec!["--depth".to_string(), d.to_string()]).unwrap_or_default())
                .args(args.gradient_checkpointing.then_some("--gradient-checkpointing"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| Error::Device(format!("cannot run the measuring process: {e}")))?;
            if !output.status.success() {
                return Err(Error::Device(format!(
                    "{preset}: the measuring process failed ({})",
                    output.status
                )));
            }
            let record: StepMemory = serde_json::from_slice(&output.stdout)
                .map_err(|e| Error::Device(format!("{preset}: unreadable measurement: {e}")))?;
            Some(record)
        };
        let peak = measured.as_ref().and_then(|m| m.peak_bytes);
        println!(
            "| {preset} | {:.1} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            p.student_params as f64 / 1e6,
            p.tokens_per_image,
            mib(p.fixed()),
            mib(p.per_image(cpu)),
            mib(predicted),
            peak.map_or("-".to_string(), |b| format!("{:.0}", mib(b))),
            peak.map_or("-".to_string(), |b| format!("{:.2}", b as f64 / predicted as f64)),
            measured.as_ref().map_or("-".to_string(), |m| format!("{:.1}", m.step_seconds)),
        );
        records.push(serde_json::json!({
            "preset": preset,
            "batch_size": c.batch_size,
            "global_size": c.crops.global_size,
            "local_size": c.crops.local_size,
            "plan": p,
            "plan_bytes": predicted,
            "measured": measured,
        }));
    }
    if args.plan_only {
        println!("\nlargest batch per GPU by the plan (wgpu, f32; 0: not even one step fits):");
        println!("| preset | 24 GB | 48 GB | 80 GB |\n|---|---|---|---|");
        for (preset, c) in &recipes {
            let p = plan(c);
            let fits = [24u64, 48, 80].map(|gb| p.max_batch(gb * 1_000_000_000).to_string());
            println!("| {preset} | {} |", fits.join(" | "));
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&records).expect("records serialise");
        crate::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

fn bench_curate(args: BenchCurateArgs) -> Result<()> {
    if args.n < 2 || args.dim == 0 || args.k == 0 {
        return Err(Error::Usage("--n must be at least 2, --dim and --k at least 1".into()));
    }
    if let Some(path) = &args.json {
        check_output_dir(path)?;
    }
    let on = crate::curate::knn::Search::for_backend(BackendKind::parse(&args.backend)?)?;
    let bar = crate::progress::bar(
        args.n as u64,
        "{msg} [{bar:30}] {pos}/{len} rows, eta {eta}",
        "neighbours",
        false,
    );
    let r = crate::curate::bench::bench_curate(
        args.n,
        args.dim,
        args.k,
        args.threshold,
        args.baseline_queries,
        &on,
        |n| bar.inc(n as u64),
    );
    bar.finish_and_clear();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "self-dedup of {} x {} embeddings ({} in planted clusters), k = {}, cosine > {}",
        r.n, r.dim, r.planted_rows, r.k, r.threshold
    );
    println!(
        "tiled exact search ({}) {:.2} s, union-find {:.3} s; plain exact search {:.1} s (timed on {} rows, scaled): {:.1}x",
        r.search,
        r.search_seconds,
        r.union_find_seconds,
        r.baseline_seconds_estimated,
        r.baseline_queries,
        r.speedup
    );
    println!(
        "peak memory growth during the search {} (the embeddings: {:.0} MiB); recall of planted pairs {:.4}, precision {:.4}, kept {}",
        r.search_peak_bytes.map_or("n/a".to_string(), |b| format!("{:.0} MiB", mib(b))),
        mib(r.embeddings_bytes),
        r.recall,
        r.precision,
        r.kept
    );
    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&r).map_err(|e| Error::Usage(format!("cannot encode JSON: {e}")))?;
        crate::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

fn bench_embed(args: BenchEmbedArgs) -> Result<()> {
    if args.iters == 0 || args.batch_size == 0 {
        return Err(Error::Usage("--iters and --batch-size must be at least 1".into()));
    }
    let config = VitConfig::preset(&args.arch)?;
    let kinds = args.backends.split(',').map(BackendKind::parse).collect::<Result<Vec<_>>>()?;
    let mut baseline: Option<(f64, &str)> = None;
    println!(
        "embed benchmark: {} ({:.1}M params), {}x{} px, batch {}, {} timed batches after 1 warm-up",
        args.arch,
        config.num_params() as f64 / 1e6,
        args.size,
        args.size,
        args.batch_size,
        args.iters
    );
    for kind in kinds {
        let device = backend::device(kind)?;
        device.seed(0);
        let model = DinoVisionTransformer::new(&config, &device);
        model.check_input(args.size, args.size)?;
        let images = Tensor::<4>::random(
            [args.batch_size, 3, args.size, args.size],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let run_once = || -> Result<()> {
            let f = model.forward_features(images.clone());
            crate::features::to_host(f.cls)?;
            Ok(())
        };
        run_once()?;
        let start = Instant::now();
        for _ in 0..args.iters {
            run_once()?;
        }
        let seconds = start.elapsed().as_secs_f64();
        let rate = (args.iters * args.batch_size) as f64 / seconds;
        let (base, base_name) = *baseline.get_or_insert((rate, kind.name()));
        println!("{:8} {:8.2} images/s  ({:.2}x the {} baseline)", kind.name(), rate, rate / base, base_name);
    }
    Ok(())
}
