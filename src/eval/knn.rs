//! The k-NN probe on frozen features (official `dinov2/eval/knn.py`): L2-normalised CLS
//! features, cosine similarity of each test feature to every training feature, the k most
//! similar vote for their class with weight `exp(similarity / T)` (T = 0.07), the class with
//! the largest total wins. Top-1 accuracy for each k.

use burn::tensor::{Device, Tensor, TensorData};
use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::data::preprocess::{Resize, prepare};
use crate::error::{Error, Result};
use crate::features::to_host;
use crate::model::DinoVisionTransformer;
use crate::train::data::Dataset;

/// The official k values and temperature.
pub const KS: [usize; 4] = [10, 20, 100, 200];
pub const TEMPERATURE: f32 = 0.07;

/// CLS features `[n, d]` of every image of `data`, each resized (shorter side) and centre
/// cropped to `size` px.
pub fn cls_features(
    model: &DinoVisionTransformer,
    data: &Dataset,
    size: usize,
    batch_size: usize,
    device: &Device,
    bar: &ProgressBar,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(data.len() * model.config.embed_dim);
    for_each_batch(data, size, model.config.patch_size, batch_size, device, |images| {
        let n = images.dims()[0];
        out.extend(to_host(model.forward_features(images).cls)?);
        bar.inc(n as u64);
        Ok(())
    })?;
    Ok(out)
}

/// Every image of `data` in order, resized (shorter side) and centre cropped to `size` px,
/// normalised, as batches `[b, 3, size, size]` of at most `batch_size` on `device`.
pub fn for_each_batch(
    data: &Dataset,
    size: usize,
    patch: usize,
    batch_size: usize,
    device: &Device,
    mut f: impl FnMut(Tensor<4>) -> Result<()>,
) -> Result<()> {
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let prepared: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|&i| {
                let name = std::path::PathBuf::from(format!("{}[{i}]", data.name()));
                Ok(prepare(&name, data.image(i)?, Resize::Square(size), patch)?.pixels)
            })
            .collect::<Result<_>>()?;
        let pixels: Vec<f32> = prepared.concat();
        f(Tensor::<4>::from_data(TensorData::new(pixels, [chunk.len(), 3, size, size]), device))?;
    }
    Ok(())
}

/// Raw pixels as features (the baseline): each image resized to `size`, normalised.
pub fn pixel_features(data: &Dataset, size: usize) -> Result<Vec<f32>> {
    (0..data.len())
        .into_par_iter()
        .map(|i| {
            let name = std::path::PathBuf::from(format!("{}[{i}]", data.name()));
            Ok(prepare(&name, data.image(i)?, Resize::Square(size), 1)?.pixels)
        })
        .collect::<Result<Vec<_>>>()
        .map(|v| v.concat())
}

/// Top-1 accuracy for each of `ks` (official weighted vote; see [`knn_predictions`]).
#[allow(clippy::too_many_arguments)]
pub fn knn_top1(
    train: &[f32],
    train_labels: &[usize],
    test: &[f32],
    test_labels: &[usize],
    d: usize,
    ks: &[usize],
    temperature: f32,
    device: &Device,
) -> Result<Vec<(usize, f64)>> {
    let predicted =
        knn_predictions(train, train_labels, test, test_labels.len(), d, ks, temperature, device)?;
    Ok(ks.iter().zip(&predicted).map(|(&k, p)| (k, crate::eval::accuracy(p, test_labels))).collect())
}

/// Each test row's class for each of `ks` (official weighted vote: the k most similar training
/// rows by cosine, each voting exp(similarity / temperature) for its label): `ks.len()` lists
/// of `n_test`. Features are `[n, d]` row-major; they are L2-normalised here. The similarity is
/// computed on `device` in chunks of test rows.
#[allow(clippy::too_many_arguments)]
pub fn knn_predictions(
    train: &[f32],
    train_labels: &[usize],
    test: &[f32],
    n_test: usize,
    d: usize,
    ks: &[usize],
    temperature: f32,
    device: &Device,
) -> Result<Vec<Vec<usize>>> {
    let n_train = train_labels.len();
    if train.len() != n_train * d || test.len() != n_test * d {
        return Err(Error::Shape(format!(
            "features and labels disagree: {} train values for {n_train} x {d}, {} test values for {n_test} x {d}",
            train.len(),
            test.len()
        )));
    }
    if n_train == 0 || n_test == 0 {
        return Err(Error::Usage("k-NN needs at least one training and one test image".into()));
    }
    let classes = train_labels.iter().max().map_or(0, |m| m + 1);
    let k_max = ks.iter().copied().max().unwrap_or(1).min(n_train);
    let normalise = |x: &[f32]| -> Vec<f32> {
        x.chunks(d)
            .flat_map(|row| {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter().map(move |v| v / norm)
            })
            .collect()
    };
    let train_t = Tensor::<2>::from_data(TensorData::new(normalise(train), [n_train, d]), device).transpose();
    let test = normalise(test);
    let mut predictions = vec![Vec::with_capacity(n_test); ks.len()];
    // chunks of test rows keep the similarity block near 32 M values
    let rows = ((1usize << 25) / n_train).clamp(1, 1024);
    for chunk in test.chunks(rows * d) {
        let n = chunk.len() / d;
        let q = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [n, d]), device);
        let all = to_host(q.matmul(train_t.clone()))?;
        // the k most similar per row, most similar first (a partial selection on the host:
        // far cheaper than sorting every row)
        let top: Vec<Vec<(f32, usize)>> = all
            .par_chunks(n_train)
            .map(|row| {
                let mut order: Vec<(f32, usize)> = row.iter().copied().zip(0..).collect();
                let by_similarity =
                    |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
                if k_max < order.len() {
                    order.select_nth_unstable_by(k_max - 1, by_similarity);
                    order.truncate(k_max);
                }
                order.sort_by(by_similarity);
                order
            })
            .collect();
        let sims: Vec<f32> = top.iter().flatten().map(|p| p.0).collect();
        let idx: Vec<usize> = top.iter().flatten().map(|p| p.1).collect();
        for r in 0..n {
            for (slot, &k) in ks.iter().enumerate() {
                let k = k.min(k_max);
                let mut votes = vec![0.0f64; classes];
                for j in 0..k {
                    let neighbour = idx[r * k_max + j];
                    votes[train_labels[neighbour]] += ((sims[r * k_max + j] / temperature) as f64).exp();
                }
                let predicted =
                    votes.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
                predictions[slot].push(predicted);
            }
        }
    }
    Ok(predictions)
}
