//! Training and evaluation images: an image folder (recursive; for evaluation one sub-folder
//! per class) or Debian's `dataset-fashion-mnist` files (`fashion-mnist-train`,
//! `fashion-mnist-test`: 28 × 28 grey images, given to the model as RGB).

use std::io::Read;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{Error, Result};

/// Where Debian's `dataset-fashion-mnist` package puts its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A set of images, optionally labelled.
pub enum Dataset {
    /// Decoded grey images, `side × side` bytes each.
    Grey { pixels: Vec<u8>, side: usize, labels: Vec<usize>, name: String },
    /// Image files, decoded on demand.
    Files { files: Vec<PathBuf>, labels: Option<Vec<usize>>, classes: Vec<String>, name: String },
}

impl Dataset {
    /// `fashion-mnist-train`, `fashion-mnist-test`, or a folder of images.
    pub fn open(spec: &str) -> Result<Self> {
        match spec {
            "fashion-mnist-train" => fashion_mnist("train", spec),
            "fashion-mnist-test" => fashion_mnist("t10k", spec),
            _ => folder(Path::new(spec)),
        }
    }

    /// Keep only the first `n` images (quick evaluations on a subset).
    pub fn truncate(&mut self, n: usize) {
        match self {
            Self::Grey { pixels, side, labels, .. } => {
                labels.truncate(n);
                pixels.truncate(labels.len() * *side * *side);
            }
            Self::Files { files, labels, .. } => {
                files.truncate(n);
                if let Some(l) = labels {
                    l.truncate(n);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Grey { labels, .. } => labels.len(),
            Self::Files { files, .. } => files.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Grey { name, .. } | Self::Files { name, .. } => name,
        }
    }

    /// What item `i` is called in reports: its file, or `name[i]` for a packed dataset.
    pub fn item_name(&self, i: usize) -> String {
        match self {
            Self::Grey { name, .. } => format!("{name}[{i}]"),
            Self::Files { files, .. } => files[i].display().to_string(),
        }
    }

    /// Image `i` as RGB.
    pub fn image(&self, i: usize) -> Result<RgbImage> {
        match self {
            Self::Grey { pixels, side, .. } => {
                let grey = &pixels[i * side * side..(i + 1) * side * side];
                let rgb = grey.iter().flat_map(|&g| [g, g, g]).collect();
                Ok(RgbImage::from_raw(*side as u32, *side as u32, rgb).expect("buffer sized for the image"))
            }
            Self::Files { files, .. } => crate::data::preprocess::load_rgb(&files[i]),
        }
    }

    /// Class labels, where the set has them (Fashion-MNIST; a folder with class sub-folders).
    pub fn labels(&self) -> Option<&[usize]> {
        match self {
            Self::Grey { labels, .. } => Some(labels),
            Self::Files { labels, .. } => labels.as_deref(),
        }
    }

    /// Labels or a clear error for commands that need them.
    pub fn require_labels(&self) -> Result<&[usize]> {
        self.labels().ok_or_else(|| {
            Error::Usage(format!(
                "{}: no class labels: give fashion-mnist-train/-test or a folder with one sub-folder per class",
                self.name()
            ))
        })
    }
}

fn fashion_mnist(split: &str, spec: &str) -> Result<Dataset> {
    let dir = std::env::var_os("DINOV2_FASHION_MNIST_DIR")
        .map_or_else(|| PathBuf::from(FASHION_MNIST_DIR), PathBuf::from);
    let images = dir.join(format!("{split}-images-idx3-ubyte.gz"));
    let labels = dir.join(format!("{split}-labels-idx1-ubyte.gz"));
    if !images.exists() {
        return Err(Error::Usage(format!(
            "{spec}: {} not found: install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist)",
            images.display()
        )));
    }
    let image_bytes = gunzip(&images)?;
    let label_bytes = gunzip(&labels)?;
    let (dims, pixels) = idx(&images, &image_bytes, 0x0803, 3)?;
    let (label_dims, label_data) = idx(&labels, &label_bytes, 0x0801, 1)?;
    if dims[1] != dims[2] || label_dims[0] != dims[0] {
        return Err(Error::image(&images, format!("unexpected shapes {dims:?} and {label_dims:?}")));
    }
    Ok(Dataset::Grey {
        pixels: pixels.to_vec(),
        side: dims[1],
        labels: label_data.iter().map(|&l| l as usize).collect(),
        name: spec.to_string(),
    })
}

fn gunzip(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file).read_to_end(&mut out).map_err(|e| Error::io(path, e))?;
    Ok(out)
}

/// Parse an IDX file (big-endian magic, then one u32 per axis, then u8 values).
fn idx<'a>(path: &Path, bytes: &'a [u8], magic: u32, axes: usize) -> Result<(Vec<usize>, &'a [u8])> {
    let word = |i: usize| -> Option<u32> {
        bytes.get(4 * i..4 * i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if word(0) != Some(magic) {
        return Err(Error::image(path, "not an IDX file of unsigned bytes"));
    }
    let dims: Vec<usize> = (1..=axes)
        .map(|i| word(i).map(|w| w as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::image(path, "truncated header"))?;
    let start = 4 * (axes + 1);
    let len: usize = dims.iter().product();
    let data = bytes.get(start..start + len).ok_or_else(|| Error::image(path, "truncated data"))?;
    Ok((dims, data))
}

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

fn folder(dir: &Path) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "{}: not a folder of images (or fashion-mnist-train / fashion-mnist-test)",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(Error::Usage(format!("{}: no images ({}) found", dir.display(), EXTENSIONS.join(", "))));
    }
    // labelled when every image sits in a direct sub-folder
    let class_of = |f: &Path| -> Option<String> {
        let rel = f.strip_prefix(dir).ok()?;
        let mut parts = rel.components();
        let class = parts.next()?.as_os_str().to_string_lossy().into_owned();
        (parts.count() == 1).then_some(class)
    };
    let classes_per_file: Option<Vec<String>> = files.iter().map(|f| class_of(f)).collect();
    let (labels, classes) = match classes_per_file {
        Some(per_file) => {
            let mut classes = per_file.clone();
            classes.sort();
            classes.dedup();
            let labels = per_file.iter().map(|c| classes.binary_search(c).expect("class listed")).collect();
            (Some(labels), classes)
        }
        None => (None, Vec::new()),
    };
    Ok(Dataset::Files { files, labels, classes, name: dir.display().to_string() })
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}
