//! The linear probe on frozen features (official `dinov2/eval/linear.py`).
//!
//! - Features are computed once per image and cached: the CLS token of each of the last 4
//!   blocks and the average of the last block's patch tokens, every block's output through the
//!   final LayerNorm (`get_intermediate_layers(x, 4, norm=True)`).
//! - One linear head per setting × learning rate, all trained on the same batches
//!   (`setup_linear_classifiers`): the head's input is the CLS of the last 1 or 4 blocks,
//!   concatenated, with or without the average-pooled patch tokens appended
//!   (`create_linear_input`); weights N(0, 0.01), zero bias; learning rates 1e-5 … 0.1
//!   (13 values), each scaled by batch / 256 (`scale_lr`).
//! - Cross-entropy, SGD with momentum 0.9 and no weight decay, cosine annealing to 0 over the
//!   run (`CosineAnnealingLR(optimizer, max_iter, eta_min=0)`); official length 10 epochs of
//!   1250 iterations of 128 images.
//! - The head with the best top-1 on a held-out part of the training set is chosen (the
//!   official script picks on its validation set); every head's test top-1 is reported.
//! - Beyond the official sweep, `eval linear --grid` adds two settings whose heads see the last
//!   block's patch tokens average-pooled to a 2 × 2 grid (torch's `adaptive_avg_pool2d(·, 2)`
//!   bins), the four cells concatenated, instead of pooled to one: a linear head can then weigh
//!   where in the image a feature is. On the tiny preset at 28 px (a 2 × 2 patch grid) the
//!   cells are the patch tokens themselves.
//! - The official training transform flips each image at random (with a random resized crop,
//!   which cached features cannot follow): when the mirrored images' features are cached too
//!   (`eval linear --flip`), each training sample of each iteration is taken as is or mirrored,
//!   with probability 1/2.
//!
//! The heads of one setting are one `[D, heads · classes]` matrix, so a step is two matrix
//! products on the chosen device; the cross-entropy gradient is written out
//! (`(softmax − one-hot) / batch`), no autodiff is needed for a linear model.

use burn::tensor::{Device, Distribution, Tensor, TensorData, activation};
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::eval::accuracy;
use crate::features::to_host;
use crate::model::DinoVisionTransformer;
use crate::train::data::Dataset;

/// The official learning rates (before scaling by batch / 256).
pub const LEARNING_RATES: [f64; 13] =
    [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1];
/// The official momentum.
pub const MOMENTUM: f64 = 0.9;

/// What a head sees: the CLS tokens of the last `blocks` blocks, then the average-pooled patch
/// tokens of the last block when `avgpool`, then those tokens pooled to a 2 × 2 grid when
/// `grid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Setting {
    pub blocks: usize,
    pub avgpool: bool,
    pub grid: bool,
}

/// The official sweep: last 1 or 4 blocks, with or without average pooling.
pub const SETTINGS: [Setting; 4] = [
    Setting { blocks: 1, avgpool: false, grid: false },
    Setting { blocks: 1, avgpool: true, grid: false },
    Setting { blocks: 4, avgpool: false, grid: false },
    Setting { blocks: 4, avgpool: true, grid: false },
];

/// Added by `--grid` (not official): last 1 or 4 blocks with the 2 × 2 grid of pooled patch
/// tokens (whose mean is the average pooling, so it is not appended again).
pub const GRID_SETTINGS: [Setting; 2] =
    [Setting { blocks: 1, avgpool: false, grid: true }, Setting { blocks: 4, avgpool: false, grid: true }];

/// Cells per side of the pooled grid.
pub const GRID: usize = 2;

/// The rows (or columns) `start..end` of each of the [`GRID`] cells along a side of `len`
/// patches: torch's adaptive average pooling bins, `floor(i·len/2) .. ceil((i+1)·len/2)`
/// (overlapping where `len` is odd, the one patch twice where `len` is 1).
pub fn grid_bins(len: usize) -> [(usize, usize); GRID] {
    std::array::from_fn(|i| (i * len / GRID, ((i + 1) * len).div_ceil(GRID)))
}

/// What [`ProbeFeatures::extract`] caches besides the official features.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cache {
    /// The features of the mirror images (left-right) instead of the images.
    pub mirror: bool,
    /// The 2 × 2 grid of pooled patch tokens (`--grid`).
    pub grid: bool,
}

/// Cached frozen features of `n` images.
#[derive(Clone, Debug)]
pub struct ProbeFeatures {
    pub n: usize,
    pub d: usize,
    /// Blocks whose CLS is kept (the last ones, oldest first).
    pub blocks: usize,
    /// `[n, blocks, d]`.
    pub cls: Vec<f32>,
    /// `[n, d]`: the mean of the last block's patch tokens.
    pub avgpool: Vec<f32>,
    /// `[n, 4, d]`: the means of the last block's patch tokens in each cell of the 2 × 2 grid
    /// (row-major: top left, top right, bottom left, bottom right).
    pub grid: Vec<f32>,
}

impl ProbeFeatures {
    /// From block outputs: `cls[j]` `[n, d]` for the last blocks (oldest first) and the last
    /// block's patch tokens `[n, h, w, d]` (`grid` = `(h, w)`).
    pub fn from_blocks(
        cls: &[Vec<f32>],
        last_patches: &[f32],
        n: usize,
        d: usize,
        (h, w): (usize, usize),
    ) -> Result<Self> {
        let p = h * w;
        if cls.is_empty()
            || cls.iter().any(|c| c.len() != n * d)
            || n == 0
            || last_patches.len() != n * p * d
            || p == 0
        {
            return Err(Error::Shape(format!(
                "probe features: {} CLS blocks and {} patch values do not fit {n} images of width {d} and {h}x{w} patches",
                cls.len(),
                last_patches.len()
            )));
        }
        let blocks = cls.len();
        let mut avgpool = vec![0.0; n * d];
        let mut grid = vec![0.0; n * GRID * GRID * d];
        let mean_into = |out: &mut [f32], image: usize, rows: (usize, usize), cols: (usize, usize)| {
            let count = ((rows.1 - rows.0) * (cols.1 - cols.0)) as f32;
            for y in rows.0..rows.1 {
                for x in cols.0..cols.1 {
                    let t = (image * p + y * w + x) * d;
                    out.iter_mut().zip(&last_patches[t..t + d]).for_each(|(a, v)| *a += v / count);
                }
            }
        };
        for i in 0..n {
            mean_into(&mut avgpool[i * d..(i + 1) * d], i, (0, h), (0, w));
            for (r, rows) in grid_bins(h).into_iter().enumerate() {
                for (c, cols) in grid_bins(w).into_iter().enumerate() {
                    let cell = (i * GRID * GRID + r * GRID + c) * d;
                    mean_into(&mut grid[cell..cell + d], i, rows, cols);
                }
            }
        }
        Ok(Self { n, d, blocks, cls: interleave(cls, n, d), avgpool, grid })
    }

    /// The features of every image of `data`, resized (shorter side) and centre-cropped to
    /// `size` px, in batches of `batch_size`; of its mirror image (left-right) when
    /// `cache.mirror`; the 2 × 2 grid only when `cache.grid` (else `grid` is left empty).
    pub fn extract(
        model: &DinoVisionTransformer,
        data: &Dataset,
        size: usize,
        batch_size: usize,
        cache: Cache,
        device: &Device,
        bar: &ProgressBar,
    ) -> Result<Self> {
        let d = model.config.embed_dim;
        let blocks = SETTINGS.iter().map(|s| s.blocks).max().unwrap_or(1).min(model.config.depth);
        let mut cls = vec![Vec::new(); blocks];
        let (mut avgpool, mut grid) = (Vec::new(), Vec::new());
        super::knn::for_each_batch(data, size, model.config.patch_size, batch_size, device, |images| {
            let n = images.dims()[0];
            let images = if cache.mirror { images.flip([3]) } else { images };
            let outputs = model.forward_last_blocks(images, blocks);
            for (j, f) in outputs.iter().enumerate() {
                cls[j].extend(to_host(f.cls.clone())?);
            }
            let patch = outputs.last().expect("at least one block").patch.clone();
            let [_, h, w, _] = patch.dims();
            avgpool.extend(to_host(patch.clone().mean_dim(1).mean_dim(2).reshape([n, d]))?);
            if cache.grid {
                let mut cells = Vec::with_capacity(GRID * GRID);
                for (y0, y1) in grid_bins(h) {
                    for (x0, x1) in grid_bins(w) {
                        let cell = patch.clone().narrow(1, y0, y1 - y0).narrow(2, x0, x1 - x0);
                        cells.push(cell.mean_dim(1).mean_dim(2).reshape([n, 1, d]));
                    }
                }
                grid.extend(to_host(Tensor::cat(cells, 1))?);
            }
            bar.inc(n as u64);
            Ok(())
        })?;
        let n = data.len();
        if cls.iter().any(|c| c.len() != n * d)
            || avgpool.len() != n * d
            || grid.len() != if cache.grid { n * GRID * GRID * d } else { 0 }
        {
            return Err(Error::Shape(format!("probe features: the features of {n} images came out short")));
        }
        Ok(Self { n, d, blocks, cls: interleave(&cls, n, d), avgpool, grid })
    }

    /// The input of a head (official `create_linear_input`): `[n, dim]` and `dim`. A setting
    /// asking for more blocks than were kept uses all of them.
    pub fn input(&self, setting: Setting) -> (Vec<f32>, usize) {
        let (d, blocks) = (self.d, setting.blocks.min(self.blocks));
        let dim =
            d * blocks + if setting.avgpool { d } else { 0 } + if setting.grid { GRID * GRID * d } else { 0 };
        let mut out = Vec::with_capacity(self.n * dim);
        for i in 0..self.n {
            let start = (i * self.blocks + self.blocks - blocks) * d;
            out.extend_from_slice(&self.cls[start..start + blocks * d]);
            if setting.avgpool {
                out.extend_from_slice(&self.avgpool[i * d..(i + 1) * d]);
            }
            if setting.grid {
                out.extend_from_slice(&self.grid[i * GRID * GRID * d..(i + 1) * GRID * GRID * d]);
            }
        }
        (out, dim)
    }
}

/// Per-block rows `blocks[j]` `[n, d]` as one `[n, blocks, d]` array.
fn interleave(blocks: &[Vec<f32>], n: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * blocks.len() * d);
    for i in 0..n {
        for block in blocks {
            out.extend_from_slice(&block[i * d..(i + 1) * d]);
        }
    }
    out
}

/// Linear heads over one input, each with its own learning rate, trained together by SGD with
/// momentum.
pub struct LinearHeads {
    pub dim: usize,
    pub classes: usize,
    pub lrs: Vec<f64>,
    /// `[dim, heads · classes]`: head h's weight (PyTorch's `[classes, dim]`, transposed) in
    /// columns `h·classes .. (h+1)·classes`.
    pub weight: Tensor<2>,
    /// `[1, heads · classes]`.
    pub bias: Tensor<2>,
    momentum_weight: Tensor<2>,
    momentum_bias: Tensor<2>,
    lr_columns: Tensor<2>,
}

impl LinearHeads {
    /// Heads initialised as the official `LinearClassifier`: weights N(0, 0.01), bias 0.
    pub fn new(dim: usize, classes: usize, lrs: &[f64], device: &Device) -> Self {
        let width = lrs.len() * classes;
        let weight = Tensor::random([dim, width], Distribution::Normal(0.0, 0.01), device);
        Self::from_tensors(weight, Tensor::zeros([1, width], device), classes, lrs)
    }

    /// Heads starting from given weights `[dim, heads · classes]` and bias `[1, heads · classes]`.
    pub fn from_tensors(weight: Tensor<2>, bias: Tensor<2>, classes: usize, lrs: &[f64]) -> Self {
        let [dim, width] = weight.dims();
        let device = weight.device();
        let columns: Vec<f32> = lrs.iter().flat_map(|&lr| std::iter::repeat_n(lr as f32, classes)).collect();
        Self {
            dim,
            classes,
            lrs: lrs.to_vec(),
            momentum_weight: Tensor::zeros([dim, width], &device),
            momentum_bias: Tensor::zeros([1, width], &device),
            lr_columns: Tensor::from_data(TensorData::new(columns, [1, width]), &device),
            weight,
            bias,
        }
    }

    pub fn heads(&self) -> usize {
        self.lrs.len()
    }

    /// The logits of every head, `[n, heads · classes]`.
    pub fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.clone()) + self.bias.clone()
    }

    /// One SGD step on a batch `x` `[b, dim]` with labels `labels`, every head's learning rate
    /// multiplied by `lr_factor` (the schedule). PyTorch's SGD: `buf = m·buf + grad`,
    /// `p -= lr·buf`.
    pub fn step(&mut self, x: Tensor<2>, labels: &[usize], lr_factor: f64) {
        let [b, _] = x.dims();
        let (heads, classes) = (self.heads(), self.classes);
        let device = x.device();
        let mut one_hot = vec![0.0f32; b * classes];
        for (i, &y) in labels.iter().enumerate() {
            one_hot[i * classes + y] = 1.0;
        }
        let one_hot = Tensor::<3>::from_data(TensorData::new(one_hot, [b, 1, classes]), &device);
        let probabilities = activation::softmax(self.logits(x.clone()).reshape([b, heads, classes]), 2);
        let grad = (probabilities - one_hot).div_scalar(b as f64).reshape([b, heads * classes]);
        let grad_weight = x.transpose().matmul(grad.clone());
        let grad_bias = grad.sum_dim(0);
        self.momentum_weight = self.momentum_weight.clone().mul_scalar(MOMENTUM) + grad_weight;
        self.momentum_bias = self.momentum_bias.clone().mul_scalar(MOMENTUM) + grad_bias;
        let lr = self.lr_columns.clone().mul_scalar(lr_factor);
        self.weight = self.weight.clone() - self.momentum_weight.clone() * lr.clone();
        self.bias = self.bias.clone() - self.momentum_bias.clone() * lr;
    }

    /// Every head's predicted class for each row of `x` `[n, dim]` (row-major on the host):
    /// `heads` lists of `n`.
    pub fn predict(&self, x: &[f32], device: &Device) -> Result<Vec<Vec<usize>>> {
        if x.is_empty() || x.len() % self.dim != 0 {
            return Err(Error::Shape(format!("{} feature values for rows of width {}", x.len(), self.dim)));
        }
        let (heads, classes) = (self.heads(), self.classes);
        let mut predicted = vec![Vec::with_capacity(x.len() / self.dim); heads];
        for chunk in x.chunks(4096 * self.dim) {
            let m = chunk.len() / self.dim;
            let t = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [m, self.dim]), device);
            let logits = to_host(self.logits(t))?;
            for row in logits.chunks(heads * classes) {
                for (h, head) in row.chunks(classes).enumerate() {
                    predicted[h].push(
                        head.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i),
                    );
                }
            }
        }
        Ok(predicted)
    }

    /// Top-1 accuracy of every head on `x` `[n, dim]` (row-major on the host).
    pub fn top1(&self, x: &[f32], labels: &[usize], device: &Device) -> Result<Vec<f64>> {
        let n = labels.len();
        if n == 0 || x.len() != n * self.dim {
            return Err(Error::Shape(format!(
                "{} feature values for {n} images of width {}",
                x.len(),
                self.dim
            )));
        }
        Ok(self.predict(x, device)?.iter().map(|p| accuracy(p, labels)).collect())
    }
}

/// The cosine annealing factor of iteration `t` of `total` (`CosineAnnealingLR`, eta_min 0).
pub fn cosine_factor(t: usize, total: usize) -> f64 {
    0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total.max(1) as f64).cos())
}

/// How the probes are trained.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// SGD iterations (official: 10 epochs × 1250).
    pub iterations: usize,
    /// Images per iteration (official: 128).
    pub batch_size: usize,
    /// The learning rates before scaling by batch / 256.
    pub learning_rates: Vec<f64>,
    /// The part of the training images held out to choose the head.
    pub val_fraction: f64,
    /// Also sweep [`GRID_SETTINGS`] (not official).
    pub grid: bool,
    /// Seeds the held-out split, the heads' initialisation and the order of the samples.
    pub seed: u64,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            iterations: 12_500,
            batch_size: 128,
            learning_rates: LEARNING_RATES.to_vec(),
            val_fraction: 0.1,
            grid: false,
            seed: 0,
        }
    }
}

/// One head's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeadResult {
    pub blocks: usize,
    pub avgpool: bool,
    pub grid: bool,
    /// The learning rate before scaling (as in the official sweep's names).
    pub lr: f64,
    pub val_top1: f64,
    pub test_top1: f64,
}

/// Every head's result and the chosen one.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeReport {
    pub heads: Vec<HeadResult>,
    pub chosen: HeadResult,
    /// The chosen head's class for each test image, in order.
    pub test_predictions: Vec<usize>,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
}

/// Rows of `x` (`[n, dim]`) at `indices`.
fn gather(x: &[f32], dim: usize, indices: &[usize]) -> Vec<f32> {
    indices.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect()
}

/// Train every setting's heads on part of `train`, choose on the rest, report on `test`.
/// With `mirrored` (the features of `train`'s images flipped left-right, in the same order),
/// each training sample is drawn as is or mirrored at random; the held-out choice uses the
/// images as they are. `bar` advances by one per iteration of each setting.
pub fn train_probes(
    train: &ProbeFeatures,
    mirrored: Option<&ProbeFeatures>,
    train_labels: &[usize],
    test: &ProbeFeatures,
    test_labels: &[usize],
    options: &ProbeOptions,
    device: &Device,
    bar: &ProgressBar,
) -> Result<ProbeReport> {
    if train.n != train_labels.len() || test.n != test_labels.len() {
        return Err(Error::Shape("probe features and labels disagree in count".into()));
    }
    if train.n < 2 || test.n == 0 {
        return Err(Error::Usage(
            "the linear probe needs at least two training images and one test image".into(),
        ));
    }
    if options.batch_size == 0 || options.iterations == 0 || options.learning_rates.is_empty() {
        return Err(Error::Usage("the linear probe needs a batch, iterations and learning rates".into()));
    }
    if !(0.0..1.0).contains(&options.val_fraction) || options.val_fraction <= 0.0 {
        return Err(Error::Usage(format!(
            "the held-out fraction must be in (0, 1), not {}",
            options.val_fraction
        )));
    }
    if train.d != test.d {
        return Err(Error::Shape(format!("train features are {}-wide, test features {}", train.d, test.d)));
    }
    if let Some(m) = mirrored
        && (m.n, m.d, m.blocks) != (train.n, train.d, train.blocks)
    {
        return Err(Error::Shape(format!(
            "mirrored features: {} images of width {} ({} blocks), train: {} of width {} ({} blocks)",
            m.n, m.d, m.blocks, train.n, train.d, train.blocks
        )));
    }
    let has_grid = |f: &ProbeFeatures| f.grid.len() == f.n * GRID * GRID * f.d;
    if options.grid && !(has_grid(train) && has_grid(test) && mirrored.is_none_or(has_grid)) {
        return Err(Error::Usage("the grid settings need the features cached with their 2x2 grid".into()));
    }
    let classes = train_labels.iter().chain(test_labels).max().map_or(0, |m| m + 1);
    let mut order: Vec<usize> = (0..train.n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(options.seed ^ 0x11_7ea2));
    let n_val = ((train.n as f64 * options.val_fraction).round() as usize).clamp(1, train.n - 1);
    let (val_idx, fit_idx) = order.split_at(n_val);
    let fit_labels: Vec<usize> = fit_idx.iter().map(|&i| train_labels[i]).collect();
    let val_labels: Vec<usize> = val_idx.iter().map(|&i| train_labels[i]).collect();
    let scale = options.batch_size as f64 / 256.0;
    let lrs: Vec<f64> = options.learning_rates.iter().map(|lr| lr * scale).collect();

    let mut settings: Vec<Setting> = Vec::new();
    for s in SETTINGS.into_iter().chain(options.grid.then_some(GRID_SETTINGS).into_iter().flatten()) {
        let effective = Setting { blocks: s.blocks.min(train.blocks), ..s };
        if !settings.contains(&effective) {
            settings.push(effective);
        }
    }
    let mut heads = Vec::new();
    // the first head with the best held-out top-1, and its test predictions
    let mut chosen: Option<(HeadResult, Vec<usize>)> = None;
    for setting in settings {
        let (x, dim) = train.input(setting);
        let fit = gather(&x, dim, fit_idx);
        let fit_mirrored = mirrored.map(|m| gather(&m.input(setting).0, dim, fit_idx));
        let val = gather(&x, dim, val_idx);
        device.seed(options.seed);
        let mut probe = LinearHeads::new(dim, classes, &lrs, device);
        // batches: a fresh permutation of the fitted images per pass (an infinite sampler)
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        // the flips draw from their own stream: the batches are the same with or without them
        let mut flips = ChaCha8Rng::seed_from_u64(options.seed ^ 0xf11b);
        let mut perm: Vec<usize> = Vec::new();
        let mut at = 0;
        for t in 0..options.iterations {
            let batch: Vec<usize> = (0..options.batch_size.min(fit_idx.len()))
                .map(|_| {
                    if at == perm.len() {
                        perm = (0..fit_idx.len()).collect();
                        perm.shuffle(&mut rng);
                        at = 0;
                    }
                    at += 1;
                    perm[at - 1]
                })
                .collect();
            let rows = match &fit_mirrored {
                None => gather(&fit, dim, &batch),
                Some(m) => batch
                    .iter()
                    .flat_map(|&i| {
                        let from = if flips.random_bool(0.5) { m } else { &fit };
                        from[i * dim..(i + 1) * dim].iter().copied()
                    })
                    .collect(),
            };
            let xb = Tensor::<2>::from_data(TensorData::new(rows, [batch.len(), dim]), device);
            let yb: Vec<usize> = batch.iter().map(|&i| fit_labels[i]).collect();
            probe.step(xb, &yb, cosine_factor(t, options.iterations));
            bar.inc(1);
        }
        let val_top1 = probe.top1(&val, &val_labels, device)?;
        let (test_x, _) = test.input(setting);
        let mut test_predicted = probe.predict(&test_x, device)?;
        for (h, lr) in options.learning_rates.iter().enumerate() {
            if !val_top1[h].is_finite() {
                continue;
            }
            let head = HeadResult {
                blocks: setting.blocks,
                avgpool: setting.avgpool,
                grid: setting.grid,
                lr: *lr,
                val_top1: val_top1[h],
                test_top1: accuracy(&test_predicted[h], test_labels),
            };
            if chosen.as_ref().is_none_or(|(best, _): &(HeadResult, _)| head.val_top1 > best.val_top1) {
                chosen = Some((head.clone(), std::mem::take(&mut test_predicted[h])));
            }
            heads.push(head);
        }
    }
    let (chosen, test_predictions) =
        chosen.ok_or_else(|| Error::Training("no linear head could be trained".into()))?;
    Ok(ProbeReport {
        heads,
        chosen,
        test_predictions,
        train_images: fit_idx.len(),
        val_images: n_val,
        test_images: test.n,
    })
}

/// The best head of each setting (by held-out top-1), in sweep order.
pub fn best_per_setting(report: &ProbeReport) -> Vec<HeadResult> {
    let mut out: Vec<HeadResult> = Vec::new();
    for h in &report.heads {
        match out.iter_mut().find(|b| (b.blocks, b.avgpool, b.grid) == (h.blocks, h.avgpool, h.grid)) {
            Some(b) if b.val_top1 >= h.val_top1 => {}
            Some(b) => *b = h.clone(),
            None => out.push(h.clone()),
        }
    }
    out
}
