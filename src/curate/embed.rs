//! `curate embed`: L2-normalised CLS embeddings of every image of a folder (recursive) or a
//! dataset, written shard by shard (see [`super::embeddings`]). A run that stops — Ctrl-C,
//! `kill -9`, a full disk — is continued by running the same command again: finished shards
//! are kept as they are, the rest is computed. Images that cannot be decoded are recorded with
//! the reason (per shard, and in `unreadable.csv` at the end), not fatal.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use super::embeddings::{
    FORMAT, MANIFEST, Manifest, Shard, normalise_rows, read_manifest, read_shard, shard_paths, write_shard,
};
use crate::data::preprocess::{Resize, prepare};
use crate::error::{Error, Result};
use crate::features::to_host;
use crate::model::DinoVisionTransformer;
use crate::train::data::Dataset;

/// The report of unreadable images, written at the end of a run.
pub const UNREADABLE: &str = "unreadable.csv";

/// How to embed.
pub struct EmbedJob<'a> {
    pub model: &'a DinoVisionTransformer,
    pub device: &'a Device,
    pub data: &'a Dataset,
    pub resize: Resize,
    /// The `--size` text and the weights' name, recorded in the manifest.
    pub size: String,
    pub weights: String,
    pub batch_size: usize,
    pub shard_size: usize,
    /// Average each image's embedding with its left-right mirror's (then renormalise).
    pub flip_average: bool,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct EmbedSummary {
    pub shards_total: usize,
    /// Shards found complete and kept.
    pub shards_kept: usize,
    pub embedded: usize,
    pub unreadable: usize,
}

/// Embed `job.data` into `out`, continuing a previous run of the same job there. `progress` is
/// told how many items each finished chunk covered (kept shards included).
pub fn embed_folder(job: &EmbedJob, out: &Path, mut progress: impl FnMut(usize)) -> Result<EmbedSummary> {
    if job.batch_size == 0 || job.shard_size == 0 {
        return Err(Error::Usage("--batch-size and --shard-size must be at least 1".into()));
    }
    let manifest = Manifest {
        format: FORMAT.to_string(),
        dim: job.model.config.embed_dim,
        shard_size: job.shard_size,
        n_items: job.data.len(),
        source: job.data.name().to_string(),
        weights: job.weights.clone(),
        size: job.size.clone(),
        flip_average: job.flip_average,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if out.join(MANIFEST).exists() {
        let existing = read_manifest(out)?;
        if existing != manifest {
            return Err(Error::Usage(format!(
                "{} holds embeddings of another job ({} items of {} with {}, shards of {}); \
                 give another --output or remove it",
                out.display(),
                existing.n_items,
                existing.source,
                existing.weights,
                existing.shard_size
            )));
        }
    } else {
        let json = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Usage(e.to_string()))?;
        crate::io::write_atomic(&out.join(MANIFEST), json.as_bytes())?;
    }

    let mut summary = EmbedSummary { shards_total: manifest.n_shards(), ..Default::default() };
    let mut unreadable = Vec::new();
    for i in 0..manifest.n_shards() {
        let start = i * job.shard_size;
        let end = (start + job.shard_size).min(job.data.len());
        let (tensor_path, _) = shard_paths(out, i);
        let shard = if tensor_path.exists() {
            // complete (written last, atomically); checked as it is read
            let shard = read_shard(out, i, &manifest)?;
            summary.shards_kept += 1;
            progress(end - start);
            shard
        } else {
            let shard = embed_range(job, start, end, &mut progress)?;
            write_shard(out, i, manifest.dim, &shard)?;
            shard
        };
        summary.embedded += shard.paths.len();
        summary.unreadable += shard.unreadable.len();
        unreadable.extend(shard.unreadable);
    }
    let mut report = String::from("path,reason\n");
    for (path, reason) in &unreadable {
        report.push_str(&format!("{},{}\n", csv_field(path), csv_field(reason)));
    }
    crate::io::write_atomic(&out.join(UNREADABLE), report.as_bytes())?;
    Ok(summary)
}

/// Embed items `start..end`: decode in parallel, run the model in batches, normalise.
fn embed_range(job: &EmbedJob, start: usize, end: usize, progress: &mut impl FnMut(usize)) -> Result<Shard> {
    let patch = job.model.config.patch_size;
    let dim = job.model.config.embed_dim;
    let mut shard = Shard { data: Vec::new(), paths: Vec::new(), unreadable: Vec::new() };
    let indices: Vec<usize> = (start..end).collect();
    for chunk in indices.chunks(job.batch_size) {
        // (item, its pixels or why not, its height and width)
        type Prepared = (usize, Result<Vec<f32>>, (usize, usize));
        let prepared: Vec<Prepared> = chunk
            .par_iter()
            .map(|&i| {
                let name = job.data.item_name(i);
                match job.data.image(i).and_then(|img| prepare(Path::new(&name), img, job.resize, patch)) {
                    Ok(p) => {
                        let size = (p.height(), p.width());
                        (i, Ok(p.pixels), size)
                    }
                    Err(e) => (i, Err(e), (0, 0)),
                }
            })
            .collect();
        let mut pixels = Vec::new();
        let mut size = None;
        let mut n = 0;
        for (i, result, hw) in prepared {
            match result {
                Ok(p) => {
                    match size {
                        None => size = Some(hw),
                        Some(s) if s != hw => {
                            return Err(Error::Shape(format!(
                                "{}: {}x{} after sizing, other images {}x{}: use a fixed --size (eval or N)",
                                job.data.item_name(i),
                                hw.0,
                                hw.1,
                                s.0,
                                s.1
                            )));
                        }
                        _ => {}
                    }
                    pixels.extend(p);
                    shard.paths.push(job.data.item_name(i));
                    n += 1;
                }
                Err(e) => shard.unreadable.push((job.data.item_name(i), one_line(&e.to_string()))),
            }
        }
        if let Some((h, w)) = size {
            job.model.check_input(h, w)?;
            let images = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, h, w]), job.device);
            let mirrored = job.flip_average.then(|| images.clone().flip([3]));
            let mut cls = to_host(job.model.forward_features(images).cls)?;
            normalise_rows(&mut cls, dim);
            if let Some(mirrored) = mirrored {
                let mut other = to_host(job.model.forward_features(mirrored).cls)?;
                normalise_rows(&mut other, dim);
                cls.iter_mut().zip(other).for_each(|(a, b)| *a += b);
                normalise_rows(&mut cls, dim);
            }
            shard.data.extend(cls);
        }
        progress(chunk.len());
    }
    Ok(shard)
}

fn one_line(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join(" ")
}

/// A CSV field, quoted where it holds a comma, a quote or a line break (RFC 4180).
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
