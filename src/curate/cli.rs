//! `dinov2 curate embed | dedup | relative | retrieve`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use indicatif::ProgressBar;

use super::dedup::{
    RELATIVE_THRESHOLD, SELF_K, SELF_THRESHOLD, relative_dedup, relative_dedup_folder, self_dedup,
    self_dedup_folder,
};
use super::embed::{EmbedJob, UNREADABLE, embed_folder};
use super::embeddings::Embeddings;
use super::knn::Search;
use super::retrieve::{Pool, Selection, retrieve};
use crate::backend::BackendKind;
use crate::cli::ModelArgs;
use crate::data::preprocess::Resize;
use crate::error::{Error, Result};
use crate::train::data::Dataset;

#[derive(Subcommand, Debug)]
pub enum CurateCommand {
    /// L2-normalised CLS embeddings of every image under a folder, in resumable shards.
    Embed(CurateEmbedArgs),
    /// Self-deduplication: k nearest neighbours, pairs above the threshold, connected
    /// components (union-find), one image kept per component.
    Dedup(DedupArgs),
    /// Drop every image similar to any image of an evaluation set.
    Relative(RelativeArgs),
    /// Pool images close to a query set: nearest per query, or sampled from the queries' clusters.
    Retrieve(RetrieveArgs),
}

#[derive(Args, Debug)]
pub struct CurateEmbedArgs {
    /// Images: a folder (searched recursively; PNG, JPEG), fashion-mnist-train or fashion-mnist-test.
    pub data: String,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder: manifest.json, shard-NNNNN.safetensors + .files.txt, unreadable.csv.
    /// Running the same command again finishes an interrupted run.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Image sizing: `eval` (shorter side 256, centre crop 224) or N (shorter side N, centre crop N x N).
    #[arg(long, default_value = "eval")]
    pub size: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Images per shard (the unit of resumption).
    #[arg(long, default_value_t = 4096)]
    pub shard_size: usize,
    /// Average each image's embedding with its left-right mirror image's: mirrored copies then
    /// embed (almost) identically, as copy detection wants. Twice the compute.
    #[arg(long)]
    pub flip_average: bool,
}

/// Where the nearest-neighbour search runs.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Search backend: auto (the WGSL kernel on a hardware GPU, else the CPU), wgpu (the kernel
    /// on any adapter, software ones included) or ndarray (the CPU search). Both are exact.
    #[arg(long, default_value = "auto")]
    pub backend: String,
}

impl SearchArgs {
    fn open(&self) -> Result<Search> {
        Search::for_backend(BackendKind::parse(&self.backend)?)
    }
}

#[derive(Args, Debug)]
pub struct DedupArgs {
    /// Embeddings: a folder written by `curate embed`, or a safetensors file with `embeddings` [N, D].
    pub embeddings: PathBuf,
    /// Neighbours per image (paper: 64).
    #[arg(long, default_value_t = SELF_K)]
    pub k: usize,
    /// Cosine similarity above which two images are copies (paper: 0.6).
    #[arg(long, default_value_t = SELF_THRESHOLD)]
    pub threshold: f32,
    /// For a folder of shards: rows held at once as queries (whole shards; the other shards
    /// stream past them), bounding memory for sets larger than it.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_rows: usize,
    /// Decisions: index,path,kept,representative.
    #[arg(long, short)]
    pub output: PathBuf,
    #[command(flatten)]
    pub search: SearchArgs,
}

#[derive(Args, Debug)]
pub struct RelativeArgs {
    /// Embeddings of the images to filter (folder or safetensors file).
    pub embeddings: PathBuf,
    /// Embeddings of the evaluation set(s) (folder or safetensors file).
    #[arg(long)]
    pub against: PathBuf,
    /// Cosine similarity above which an image is dropped (paper: 0.45).
    #[arg(long, default_value_t = RELATIVE_THRESHOLD)]
    pub threshold: f32,
    /// Decisions: index,path,kept,representative.
    #[arg(long, short)]
    pub output: PathBuf,
    #[command(flatten)]
    pub search: SearchArgs,
}

#[derive(Args, Debug)]
pub struct RetrieveArgs {
    /// Embeddings of the uncurated pool.
    #[arg(long)]
    pub pool: PathBuf,
    /// Embeddings of the curated queries.
    #[arg(long)]
    pub queries: PathBuf,
    /// How to select: auto (per-query for query sets of at least --large-queries images,
    /// per-cluster below), per-query or per-cluster.
    #[arg(long, default_value = "auto")]
    pub mode: String,
    /// Query sets at least this large select per query in auto mode.
    #[arg(long, default_value_t = 100_000)]
    pub large_queries: usize,
    /// k-means clusters of the pool (per-cluster mode).
    #[arg(long, default_value_t = 1000)]
    pub clusters: usize,
    /// Lloyd iterations at most.
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// k-means trains on at most this many pool rows per cluster, drawn evenly (faiss's
    /// default); every pool row is then assigned to its nearest centroid.
    #[arg(long, default_value_t = super::retrieve::MAX_POINTS_PER_CENTROID)]
    pub max_points_per_centroid: usize,
    /// Nearest pool images kept per query (paper: 4).
    #[arg(long, default_value_t = 4)]
    pub per_query: usize,
    /// Pool images sampled from each query's cluster (paper: 10000).
    #[arg(long, default_value_t = 10_000)]
    pub per_cluster: usize,
    /// Seed of the k-means++ seeding and the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Decisions on the pool: index,path,kept (= selected),representative.
    #[arg(long, short)]
    pub output: PathBuf,
    #[command(flatten)]
    pub search: SearchArgs,
}

/// Run a `curate` command.
pub fn run(command: CurateCommand) -> Result<()> {
    match command {
        CurateCommand::Embed(args) => embed(args),
        CurateCommand::Dedup(args) => dedup(args),
        CurateCommand::Relative(args) => relative(args),
        CurateCommand::Retrieve(args) => retrieve_command(args),
    }
}

fn bar(len: usize, unit: &str, what: &str) -> ProgressBar {
    crate::progress::bar(
        len as u64,
        &format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{per_sec}}, eta {{eta}}"),
        what,
        false,
    )
}

fn check_output(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            Err(Error::Usage(format!("{}: the output's folder does not exist", path.display())))
        }
        _ => Ok(()),
    }
}

fn read(path: &Path) -> Result<Embeddings> {
    Embeddings::read(path)
}

/// Two embedding sets that are compared with each other: of the same width.
fn read_pair(a: &Path, b: &Path) -> Result<(Embeddings, Embeddings)> {
    let (x, y) = (read(a)?, read(b)?);
    if x.dim != y.dim {
        return Err(width_mismatch(a, x.dim, b, y.dim));
    }
    Ok((x, y))
}

fn width_mismatch(a: &Path, a_dim: usize, b: &Path, b_dim: usize) -> Error {
    Error::Usage(format!(
        "{} has {a_dim}-d embeddings, {} has {b_dim}-d: embed both with the same model",
        a.display(),
        b.display()
    ))
}

fn embed(args: CurateEmbedArgs) -> Result<()> {
    let resize = match Resize::parse(&args.size)? {
        Resize::Shorter(n) => Resize::Square(n),
        Resize::Native => {
            return Err(Error::Usage(
                "--size native would give images of different sizes: use eval or a number of pixels".into(),
            ));
        }
        other => other,
    };
    let data = Dataset::open(&args.data)?;
    let (model, device) = crate::cli::load_model(&args.model)?;
    let weights = args.model.weights.as_ref().map_or_else(
        || format!("random {}", args.model.arch.as_deref().unwrap_or("init")),
        |w| w.display().to_string(),
    );
    let job = EmbedJob {
        model: &model,
        device: &device,
        data: &data,
        resize,
        size: args.size.clone(),
        weights,
        batch_size: args.batch_size,
        shard_size: args.shard_size,
        flip_average: args.flip_average,
    };
    let progress = bar(data.len(), "images", "embedding");
    let summary = embed_folder(&job, &args.output, |n| progress.inc(n as u64))?;
    progress.finish_and_clear();
    eprintln!(
        "wrote {}: {} embeddings of {} in {} shards ({} kept from an earlier run), {} unreadable (listed in {})",
        args.output.display(),
        summary.embedded,
        model.config.embed_dim,
        summary.shards_total,
        summary.shards_kept,
        summary.unreadable,
        args.output.join(UNREADABLE).display()
    );
    Ok(())
}

fn dedup(args: DedupArgs) -> Result<()> {
    check_output(&args.output)?;
    if args.k == 0 {
        return Err(Error::Usage("--k must be at least 1".into()));
    }
    if args.max_rows == 0 {
        return Err(Error::Usage("--max-rows must be at least 1".into()));
    }
    let on = args.search.open()?;
    let (decisions, paths) = if args.embeddings.is_dir() {
        // a folder of shards: streamed, query blocks of at most --max-rows rows
        let n = super::embeddings::read_manifest(&args.embeddings)?.n_items;
        let progress = bar(n, "rows", "neighbours");
        let (decisions, paths) =
            self_dedup_folder(&args.embeddings, args.k, args.threshold, args.max_rows, &on, |n| {
                progress.inc(n as u64)
            })?;
        progress.finish_and_clear();
        (decisions, Some(paths))
    } else {
        let items = read(&args.embeddings)?;
        let progress = bar(items.len(), "rows", "neighbours");
        let decisions = self_dedup(&items, args.k, args.threshold, &on, |n| progress.inc(n as u64));
        progress.finish_and_clear();
        (decisions, items.paths)
    };
    decisions.write_csv(&args.output, paths.as_deref())?;
    let n = decisions.kept.len();
    eprintln!(
        "wrote {}: kept {} of {} ({} removed as copies; k = {}, cosine > {}; search on {})",
        args.output.display(),
        decisions.n_kept(),
        n,
        n - decisions.n_kept(),
        args.k,
        args.threshold,
        on.describe()
    );
    Ok(())
}

fn relative(args: RelativeArgs) -> Result<()> {
    check_output(&args.output)?;
    let on = args.search.open()?;
    let (decisions, paths, against) = if args.embeddings.is_dir() {
        // a folder of shards: one shard at a time against the whole evaluation set
        let manifest = super::embeddings::read_manifest(&args.embeddings)?;
        let against = read(&args.against)?;
        if manifest.dim != against.dim {
            return Err(width_mismatch(&args.embeddings, manifest.dim, &args.against, against.dim));
        }
        let n = manifest.n_items;
        let progress = bar(n, "rows", "filtering");
        let (decisions, paths) =
            relative_dedup_folder(&args.embeddings, &against, args.threshold, &on, |n| {
                progress.inc(n as u64)
            })?;
        progress.finish_and_clear();
        (decisions, Some(paths), against)
    } else {
        let (items, against) = read_pair(&args.embeddings, &args.against)?;
        let progress = bar(against.len(), "rows", "evaluation set");
        let (decisions, _) =
            relative_dedup(&items, &against, args.threshold, &on, |n| progress.inc(n as u64));
        progress.finish_and_clear();
        (decisions, items.paths, against)
    };
    decisions.write_csv(&args.output, paths.as_deref())?;
    let n = decisions.kept.len();
    eprintln!(
        "wrote {}: kept {} of {} ({} dropped as similar to the {} evaluation images, cosine > {}; search on {})",
        args.output.display(),
        decisions.n_kept(),
        n,
        n - decisions.n_kept(),
        against.len(),
        args.threshold,
        on.describe()
    );
    Ok(())
}

fn retrieve_command(args: RetrieveArgs) -> Result<()> {
    check_output(&args.output)?;
    // a folder of pool shards streams; a single file is read whole
    let whole = if args.pool.is_dir() { None } else { Some(read(&args.pool)?) };
    let pool = match &whole {
        Some(items) => Pool::Memory(items.matrix()),
        None => Pool::folder(&args.pool)?,
    };
    let queries = read(&args.queries)?;
    if pool.dim() != queries.dim {
        return Err(width_mismatch(&args.pool, pool.dim(), &args.queries, queries.dim));
    }
    let per_query = match args.mode.as_str() {
        "auto" => queries.len() >= args.large_queries,
        "per-query" => true,
        "per-cluster" => false,
        other => {
            return Err(Error::Usage(format!("--mode {other}: expected auto, per-query or per-cluster")));
        }
    };
    let selection = if per_query {
        Selection::PerQuery(args.per_query.max(1))
    } else {
        Selection::PerCluster {
            clusters: args.clusters.max(1),
            per_cluster: args.per_cluster,
            iterations: args.iterations,
            max_points_per_centroid: args.max_points_per_centroid,
        }
    };
    let on = args.search.open()?;
    let progress = if per_query {
        bar(pool.len(), "rows", "nearest")
    } else {
        bar(args.iterations, "iterations", "k-means")
    };
    let (decisions, paths) =
        retrieve(&pool, queries.matrix(), selection, args.seed, &on, |n| progress.inc(n as u64))?;
    progress.finish_and_clear();
    let paths = paths.or_else(|| whole.as_ref().and_then(|items| items.paths.clone()));
    decisions.write_csv(&args.output, paths.as_deref())?;
    eprintln!(
        "wrote {}: selected {} of {} pool images for {} queries ({selection:?}; search on {})",
        args.output.display(),
        decisions.n_kept(),
        pool.len(),
        queries.len(),
        on.describe()
    );
    Ok(())
}
