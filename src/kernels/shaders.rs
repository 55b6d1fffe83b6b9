//! The WGSL sources in `shaders/` and how their `{{ slot }}` templates are filled. The launch
//! code ([`super::wgsl`]) and the naga validation test both expand them through [`expand`], so
//! the test checks exactly the text the GPU compiles.

use burn::backend::wgpu::SourceTemplate;

pub const ATTENTION_FORWARD: &str = include_str!("../../shaders/attention_forward.wgsl");
pub const ATTENTION_FORWARD_COMBINE: &str = include_str!("../../shaders/attention_forward_combine.wgsl");
pub const ATTENTION_BACKWARD_DELTA: &str = include_str!("../../shaders/attention_backward_delta.wgsl");
pub const ATTENTION_BACKWARD_DQ: &str = include_str!("../../shaders/attention_backward_dq.wgsl");
pub const ATTENTION_BACKWARD: &str = include_str!("../../shaders/attention_backward.wgsl");
pub const SINKHORN: &str = include_str!("../../shaders/sinkhorn.wgsl");
pub const KOLEO: &str = include_str!("../../shaders/koleo.wgsl");
pub const KOLEO_REGISTERS: &str = include_str!("../../shaders/koleo_registers.wgsl");
pub const KNN: &str = include_str!("../../shaders/knn.wgsl");

/// Query (or key) rows per attention workgroup in the GPU shape ([`Rows::GPU`]), one invocation each.
pub const ATTENTION_ROWS: u32 = 64;
/// Rows per K/V (or Q/dO) tile in workgroup memory: 2 · 16 · 64 · 4 B = 8 KiB.
pub const ATTENTION_TILE: u32 = 16;
/// Invocations per workgroup of the Sinkhorn-Knopp passes and the delta pass.
pub const REDUCE_WG: u32 = 256;
/// Rows and columns of one KoLeo tile in the GPU shape (shaders/koleo.wgsl): a workgroup of
/// 16 × 16 invocations, 4 × 4 dot products each.
pub const KOLEO_TILE: usize = 64;
/// KoLeo in a software adapter's shape (shaders/koleo_registers.wgsl): invocations per
/// workgroup, rows per invocation, columns per step.
pub const KOLEO_CPU_INVOCATIONS: usize = 8;
pub const KOLEO_CPU_ROWS: usize = 32;
pub const KOLEO_CPU_COLUMNS: usize = 32;
/// Rows and columns of dot products per k-NN invocation; a workgroup (8 × 8) covers a tile of
/// 8 · KNN_MICRO rows against as many columns.
pub const KNN_MICRO: usize = 8;
/// Query rows and database rows of one k-NN tile: the similarity scratch of a tile is at most
/// 8192 · 2048 f32 = 64 MiB, under the 128 MiB storage binding of software adapters and
/// browsers. Tall tiles: the merge pass runs one invocation per query row, each scanning the
/// tile's database rows in sequence, so more rows and shorter scans keep a GPU busier.
pub const KNN_QUERY_BLOCK: usize = 8192;
pub const KNN_DATABASE_BLOCK: usize = 2048;
/// Sinkhorn-Knopp passes: column scalings, row scalings, output.
pub const SINKHORN_PASSES: [u32; 3] = [0, 1, 2];

/// Which of its two shapes a kernel runs in. `Gpu`: the textbook GPU design (many invocations,
/// a few registers each, tiles shared through workgroup memory). `Cpu`: for a software adapter
/// (lavapipe), which runs 8 invocations in the lanes of one AVX register and performs every
/// memory read inside a loop as 8 scalar reads: few invocations, many rows each, so that each
/// read serves many multiply-adds. The attention kernels and KoLeo have both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelShape {
    Gpu,
    Cpu,
}

/// How an attention forward workgroup spreads its query rows over invocations (see
/// shaders/attention_forward.wgsl): `invocations` of `per_invocation` rows each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rows {
    pub invocations: u32,
    pub per_invocation: u32,
}

impl Rows {
    /// A GPU's shape: 64 invocations of one row, the 16 keys of a tile unrolled.
    pub const GPU: Rows = Rows { invocations: ATTENTION_ROWS, per_invocation: 1 };
    /// A software adapter's shape (lavapipe): 8 invocations (one AVX register of lanes) of 32
    /// rows, one key per step, so each K/V read serves 32 rows. Measured against 8 × 8 and
    /// 8 × 16 (slower) and 8 × 64 (minutes to compile): BENCHMARKS.md, WGSL kernels.
    pub const CPU: Rows = Rows { invocations: 8, per_invocation: 32 };
    /// The backward kernels' software-adapter shape: they keep twice the forward's registers per
    /// row, and at 32 rows lavapipe compiles them for many minutes.
    pub const CPU_BACKWARD: Rows = Rows { invocations: 8, per_invocation: 8 };

    /// The attention forward's rows in a kernel shape.
    pub fn of(shape: KernelShape) -> Rows {
        match shape {
            KernelShape::Gpu => Rows::GPU,
            KernelShape::Cpu => Rows::CPU,
        }
    }

    /// The shape of the backward kernels where the forward runs in `self`.
    pub fn backward(self) -> Rows {
        if self == Rows::CPU { Rows::CPU_BACKWARD } else { self }
    }

    /// Query rows per workgroup.
    pub fn per_workgroup(self) -> u32 {
        self.invocations * self.per_invocation
    }

    fn per_invocation(self) -> usize {
        self.per_invocation as usize
    }

    /// Keys per inner step: the unrolled code stays the same size whatever the rows.
    fn unroll(self) -> usize {
        (ATTENTION_TILE / self.per_invocation).max(1) as usize
    }
}

/// A kernel to expand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    AttentionForward {
        f16: bool,
        rows: Rows,
    },
    AttentionForwardCombine {
        f16: bool,
    },
    AttentionBackwardDelta {
        f16: bool,
    },
    AttentionBackwardDq {
        f16: bool,
        rows: Rows,
    },
    AttentionBackwardDkDv {
        f16: bool,
        rows: Rows,
    },
    Sinkhorn {
        pass: u32,
    },
    /// KoLeo's first pass in `shape`: the dot products and each row's candidate per column
    /// group.
    Koleo {
        shape: KernelShape,
    },
    /// KoLeo's second pass, one kernel for both shapes: each row's candidates reduced.
    KoleoReduce,
    Knn {
        pass: u32,
    },
}

impl Shader {
    /// Every variant the launch code can ask for.
    pub fn all() -> Vec<Shader> {
        let mut all = Vec::new();
        for f16 in [false, true] {
            all.push(Shader::AttentionForwardCombine { f16 });
            all.push(Shader::AttentionBackwardDelta { f16 });
            for rows in [Rows::GPU, Rows::CPU] {
                all.push(Shader::AttentionForward { f16, rows });
                all.push(Shader::AttentionBackwardDq { f16, rows: rows.backward() });
                all.push(Shader::AttentionBackwardDkDv { f16, rows: rows.backward() });
            }
        }
        all.extend(SINKHORN_PASSES.iter().map(|&pass| Shader::Sinkhorn { pass }));
        all.extend([KernelShape::Gpu, KernelShape::Cpu].map(|shape| Shader::Koleo { shape }));
        all.push(Shader::KoleoReduce);
        all.extend([0, 1].map(|pass| Shader::Knn { pass }));
        all
    }

    /// The template with its slots registered.
    pub fn template(self) -> SourceTemplate {
        let elem = |f16: bool| if f16 { ("f16", "enable f16;") } else { ("f32", "") };
        match self {
            Shader::AttentionForward { f16, rows }
            | Shader::AttentionBackwardDq { f16, rows }
            | Shader::AttentionBackwardDkDv { f16, rows } => {
                let (ty, enable) = elem(f16);
                let (source, registers, step, store) = match self {
                    Shader::AttentionForward { .. } => (
                        ATTENTION_FORWARD,
                        forward_registers(rows),
                        forward_step(rows),
                        forward_store(rows, ty),
                    ),
                    Shader::AttentionBackwardDq { .. } => (
                        ATTENTION_BACKWARD_DQ,
                        dq_registers(rows),
                        dq_step(rows),
                        store(rows, &[("dq", "acc", " * scale")], ty),
                    ),
                    _ => (
                        ATTENTION_BACKWARD,
                        dkdv_registers(rows),
                        dkdv_step(rows),
                        store(rows, &[("dk", "dk", " * scale"), ("dv", "dv", "")], ty),
                    ),
                };
                SourceTemplate::new(source)
                    .register("elem", ty)
                    .register("enable", enable)
                    .register("br", rows.invocations.to_string())
                    .register("rows", rows.per_invocation.to_string())
                    .register("bc", ATTENTION_TILE.to_string())
                    .register("unroll", rows.unroll().to_string())
                    .register("unrolled_registers", registers)
                    .register("unrolled_step", step)
                    .register("unrolled_store", store)
                    .register("unrolled_partial_store", forward_partial_store(rows))
            }
            Shader::AttentionForwardCombine { f16 } => {
                let (ty, enable) = elem(f16);
                SourceTemplate::new(ATTENTION_FORWARD_COMBINE)
                    .register("elem", ty)
                    .register("enable", enable)
                    .register("wg", REDUCE_WG.to_string())
            }
            Shader::AttentionBackwardDelta { f16 } => {
                let (ty, enable) = elem(f16);
                SourceTemplate::new(ATTENTION_BACKWARD_DELTA)
                    .register("elem", ty)
                    .register("enable", enable)
                    .register("wg", REDUCE_WG.to_string())
            }
            Shader::Sinkhorn { pass } => SourceTemplate::new(SINKHORN)
                .register("pass", pass.to_string())
                .register("wg", REDUCE_WG.to_string()),
            Shader::Koleo { shape: KernelShape::Cpu } => SourceTemplate::new(KOLEO_REGISTERS)
                .register("invocations", KOLEO_CPU_INVOCATIONS.to_string())
                .register("rows", KOLEO_CPU_ROWS.to_string())
                .register("columns", KOLEO_CPU_COLUMNS.to_string())
                .register("unrolled_rows", koleo_rows())
                .register("unrolled_columns", koleo_columns())
                .register("unrolled_step", koleo_step())
                .register("unrolled_best", koleo_best())
                .register("unrolled_store", koleo_store()),
            Shader::Koleo { shape: KernelShape::Gpu } => SourceTemplate::new(KOLEO).register("pass", "0"),
            Shader::KoleoReduce => SourceTemplate::new(KOLEO).register("pass", "1"),
            Shader::Knn { pass } => SourceTemplate::new(KNN)
                .register("pass", pass.to_string())
                .register("micro", KNN_MICRO.to_string())
                .register("tile", (8 * KNN_MICRO).to_string()),
        }
    }
}

// Unrolled code for KoLeo's software-adapter shape (shaders/koleo_registers.wgsl): rows r <
// KOLEO_CPU_ROWS, columns c < KOLEO_CPU_COLUMNS, registers s{r}_{q} holding columns 4q..4q+3.

const XYZW: [&str; 4] = ["x", "y", "z", "w"];

fn koleo_rows() -> String {
    (0..KOLEO_CPU_ROWS)
        .map(|r| {
            format!(
                "let row{r} = first + {r}u;\n    let ar{r} = min(row{r}, n - 1u) * d4;\n    \
                 var best{r} = NEG;\n    var bj{r} = 0xffffffffu;"
            )
        })
        .collect::<Vec<_>>()
        .join("\n    ")
}

fn koleo_columns() -> String {
    let offsets = (0..KOLEO_CPU_COLUMNS).map(|c| format!("let bc{c} = min(j0 + {c}u, n - 1u) * d4;"));
    let zeros = (0..KOLEO_CPU_ROWS)
        .flat_map(|r| (0..KOLEO_CPU_COLUMNS / 4).map(move |q| format!("var s{r}_{q} = vec4<f32>(0.0);")));
    offsets.chain(zeros).collect::<Vec<_>>().join("\n        ")
}

fn koleo_step() -> String {
    let a = (0..KOLEO_CPU_ROWS).map(|r| format!("let a{r} = x[ar{r} + k];"));
    let b = (0..KOLEO_CPU_COLUMNS).map(|c| format!("let b{c} = x[bc{c} + k];"));
    let fma = (0..KOLEO_CPU_ROWS).flat_map(|r| {
        (0..KOLEO_CPU_COLUMNS / 4).map(move |q| {
            let dots: Vec<String> = (0..4).map(|e| format!("dot(a{r}, b{})", 4 * q + e)).collect();
            format!("s{r}_{q} += vec4<f32>({});", dots.join(", "))
        })
    });
    a.chain(b).chain(fma).collect::<Vec<_>>().join("\n            ")
}

fn koleo_best() -> String {
    (0..KOLEO_CPU_COLUMNS)
        .map(|c| {
            let rows: Vec<String> = (0..KOLEO_CPU_ROWS)
                .map(|r| {
                    let s = format!("s{r}_{}.{}", c / 4, XYZW[c % 4]);
                    format!("if (j != row{r} && {s} > best{r}) {{ best{r} = {s}; bj{r} = j; }}")
                })
                .collect();
            format!("{{\n            let j = j0 + {c}u;\n            if (j < n) {{\n                {}\n            }}\n        }}", rows.join("\n                "))
        })
        .collect::<Vec<_>>()
        .join("\n        ")
}

fn koleo_store() -> String {
    (0..KOLEO_CPU_ROWS)
        .map(|r| {
            format!(
                "if (row{r} < n) {{ part_val[row{r} * groups + group] = best{r}; \
                 part_idx[row{r} * groups + group] = bj{r}; }}"
            )
        })
        .collect::<Vec<_>>()
        .join("\n    ")
}

/// The WGSL text of a kernel variant, every slot filled.
pub fn expand(shader: Shader) -> String {
    shader.template().complete()
}

// Unrolled code for the attention forward template. A row of 64 is 16 vec4 registers named
// `{prefix}0` .. `{prefix}15`; row r of an invocation's R rows has the prefixes `q{r}_`,
// `acc{r}_`; key u of an inner step is `k_tile[(j0 + u)·16 + c]`.

const D4: usize = 16;

/// Vector c of row `step + u` of a workgroup tile (`step`: the inner loop's `j0` over keys, or
/// `i0` over queries in the dK/dV pass).
fn tile_at(tile: &str, step: &str, u: usize, c: usize) -> String {
    format!("{tile}[({step} + {u}u) * D4 + {c}u]")
}

fn lines(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join("\n    ")
}

fn sum(terms: impl Iterator<Item = String>) -> String {
    terms.collect::<Vec<_>>().join(" + ")
}

fn forward_registers(rows: Rows) -> String {
    lines((0..rows.per_invocation()).map(|r| {
        let mut out = vec![format!(
            "let row{r} = first + {r}u * BR;\n    let valid{r} = live && row{r} < n;\n    \
             let at{r} = base + row{r} * D;\n    var m{r} = NEG;\n    var l{r} = 0.0;"
        )];
        out.extend(
            (0..D4).map(|c| format!("var q{r}_{c} = vec4<f32>(0.0);\n    var acc{r}_{c} = vec4<f32>(0.0);")),
        );
        out.push(format!(
            "if (valid{r}) {{\n        {}\n    }}",
            (0..D4)
                .map(|c| format!("q{r}_{c} = load4_q(at{r} + {}u) * scale;", 4 * c))
                .collect::<Vec<_>>()
                .join("\n        ")
        ));
        out.join("\n    ")
    }))
}

/// One inner step of the online softmax: U keys against the invocation's R rows. With one row
/// the K/V reads sit inside the arithmetic (a GPU compiler schedules them); with several, each
/// key's 16 K (then V) vectors are read once into named values that every row uses.
fn forward_step(rows: Rows) -> String {
    let (rr, uu) = (rows.per_invocation(), rows.unroll());
    let mut out: Vec<String> = (0..rr).map(|r| format!("var mn{r} = m{r};")).collect();
    for u in 0..uu {
        let live = format!("t + j0 + {u}u < n");
        if rr == 1 {
            let dot = sum((0..D4).map(|c| format!("dot(q0_{c}, {})", tile_at("k_tile", "j0", u, c))));
            out.push(format!("let s0_{u} = select(NEG, {dot}, {live});\n    mn0 = max(mn0, s0_{u});"));
        } else {
            out.extend((0..rr).map(|r| format!("var s{r}_{u} = NEG;")));
            let mut block: Vec<String> =
                (0..D4).map(|c| format!("let k{c} = {};", tile_at("k_tile", "j0", u, c))).collect();
            for r in 0..rr {
                let dot = sum((0..D4).map(|c| format!("dot(q{r}_{c}, k{c})")));
                block.push(format!(
                    "s{r}_{u} = select(NEG, {dot}, {live});\n        mn{r} = max(mn{r}, s{r}_{u});"
                ));
            }
            out.push(format!("{{\n        {}\n    }}", block.join("\n        ")));
        }
    }
    for r in 0..rr {
        out.push(format!("let corr{r} = exp(m{r} - mn{r});"));
        out.extend((0..uu).map(|u| format!("let p{r}_{u} = exp(s{r}_{u} - mn{r});")));
        out.push(format!("l{r} = l{r} * corr{r} + {};", sum((0..uu).map(|u| format!("p{r}_{u}")))));
    }
    if rr == 1 {
        for c in 0..D4 {
            let terms = sum((0..uu).map(|u| format!("p0_{u} * {}", tile_at("v_tile", "j0", u, c))));
            out.push(format!("acc0_{c} = acc0_{c} * corr0 + {terms};"));
        }
    } else {
        for r in 0..rr {
            out.extend((0..D4).map(|c| format!("acc{r}_{c} = acc{r}_{c} * corr{r};")));
        }
        for u in 0..uu {
            let mut block: Vec<String> =
                (0..D4).map(|c| format!("let v{c} = {};", tile_at("v_tile", "j0", u, c))).collect();
            for r in 0..rr {
                block.extend((0..D4).map(|c| format!("acc{r}_{c} = acc{r}_{c} + p{r}_{u} * v{c};")));
            }
            out.push(format!("{{\n        {}\n    }}", block.join("\n        ")));
        }
    }
    out.extend((0..rr).map(|r| format!("m{r} = mn{r};")));
    out.join("\n    ")
}

/// Per row r: `acc{r}` divided by the row sum to `o` (as `elem`) and the log-sum-exp to `lse`.
fn forward_store(rows: Rows, elem: &str) -> String {
    let lse = lines((0..rows.per_invocation()).map(|r| {
        format!("let inv{r} = 1.0 / l{r};\n    if (valid{r}) {{ lse[bh * n + row{r}] = m{r} + log(l{r}); }}")
    }));
    format!("{lse}\n    {}", store(rows, &[("o", "acc", " * inv{r}")], elem))
}

/// Per row r: `row{r}`, `valid{r}`, `at{r}`, the zeroed registers `{name}{r}_0..15` of `zero`
/// and `loaded` (the latter filled from `at{r}` by `(name, load fn, factor)` where valid), and
/// `extra` (per-row statements with `{r}` for the row).
fn row_registers(rows: Rows, zero: &[&str], loaded: &[(&str, &str, &str)], extra: &str) -> String {
    lines((0..rows.per_invocation()).map(|r| {
        let mut out = vec![format!(
            "let row{r} = first + {r}u * BR;\n    let valid{r} = live && row{r} < n;\n    let at{r} = base + row{r} * D;"
        )];
        for name in zero.iter().chain(loaded.iter().map(|l| &l.0)) {
            out.extend((0..D4).map(|c| format!("var {name}{r}_{c} = vec4<f32>(0.0);")));
        }
        let mut fill: Vec<String> = Vec::new();
        for (name, load, factor) in loaded {
            fill.extend((0..D4).map(|c| format!("{name}{r}_{c} = {load}(at{r} + {}u){factor};", 4 * c)));
        }
        out.push(extra.replace("{r}", &r.to_string()));
        out.push(format!("if (valid{r}) {{\n        {}\n    }}", fill.join("\n        ")));
        out.join("\n    ")
    }))
}

/// A split's share of the forward (see attention_forward.wgsl): per valid row, the running max
/// and sum to `part_ml` and the unnormalised accumulator to `part_acc`, at the split's offset.
fn forward_partial_store(rows: Rows) -> String {
    let ml = lines((0..rows.per_invocation()).map(|r| {
        format!(
            "if (valid{r}) {{ let p = 2u * (split * bh_count * n + bh * n + row{r}); \
             part_ml[p] = m{r}; part_ml[p + 1u] = l{r}; }}"
        )
    }));
    format!("{ml}\n    {}", store_at(rows, &[("part_acc", "acc", "")], "f32", "pbase + at{r}"))
}

/// Per row r, if valid: registers `{reg}{r}_0..15` (times `factor`) to row `at{r}` of `buffer`.
fn store(rows: Rows, outputs: &[(&str, &str, &str)], elem: &str) -> String {
    store_at(rows, outputs, elem, "at{r}")
}

/// As [`store`], the row starting at `at` (with `{r}` for the row).
fn store_at(rows: Rows, outputs: &[(&str, &str, &str)], elem: &str, at: &str) -> String {
    lines((0..rows.per_invocation()).map(|r| {
        let at = at.replace("{r}", &r.to_string());
        let mut out = Vec::new();
        for (buffer, reg, factor) in outputs {
            out.extend((0..D4).map(|c| {
                let b = 4 * c;
                format!(
                    "{{ let x = {reg}{r}_{c}{}; {buffer}[{at} + {b}u] = {elem}(x.x); {buffer}[{at} + {}u] = {elem}(x.y); \
                     {buffer}[{at} + {}u] = {elem}(x.z); {buffer}[{at} + {}u] = {elem}(x.w); }}",
                    factor.replace("{r}", &r.to_string()),
                    b + 1,
                    b + 2,
                    b + 3
                )
            }));
        }
        format!("if (valid{r}) {{\n        {}\n    }}", out.join("\n        "))
    }))
}

/// The 16 vectors of row `step + u` of a workgroup tile, `(tile, step, u)`, as a backward step
/// uses them. One row per invocation: the tile reads themselves, inside the arithmetic (a GPU
/// compiler schedules them). Several rows: named values `{name}0..15`, read once into `block`.
fn tile_operands(
    rows: usize,
    (tile, step, u): (&str, &str, usize),
    name: &str,
    block: &mut Vec<String>,
) -> Vec<String> {
    if rows == 1 {
        return (0..D4).map(|c| tile_at(tile, step, u, c)).collect();
    }
    block.extend((0..D4).map(|c| format!("let {name}{c} = {};", tile_at(tile, step, u, c))));
    (0..D4).map(|c| format!("{name}{c}")).collect()
}

fn dq_registers(rows: Rows) -> String {
    row_registers(
        rows,
        &["acc"],
        &[("q", "load4_q", " * scale"), ("do", "load4_do", "")],
        "var lse{r} = 0.0;\n    var delta{r} = 0.0;\n    \
         if (valid{r}) { lse{r} = stats[2u * (bh * n + row{r})]; delta{r} = stats[2u * (bh * n + row{r}) + 1u]; }",
    )
}

/// dQ, U keys: with one row the K/V reads sit in the arithmetic, with several each key's K and V
/// vectors are read once into named values every row uses (see `forward_step`).
fn dq_step(rows: Rows) -> String {
    let (rr, uu) = (rows.per_invocation(), rows.unroll());
    let mut out = Vec::new();
    for u in 0..uu {
        let mut block: Vec<String> = Vec::new();
        let kt = tile_operands(rr, ("k_tile", "j0", u), "kt", &mut block);
        let vt = tile_operands(rr, ("v_tile", "j0", u), "vt", &mut block);
        for r in 0..rr {
            let s = sum((0..D4).map(|c| format!("dot(q{r}_{c}, {})", kt[c])));
            let dp = sum((0..D4).map(|c| format!("dot(do{r}_{c}, {})", vt[c])));
            block.push(format!(
                "let ds{r}_{u} = select(0.0, exp({s} - lse{r}) * ({dp} - delta{r}), t + j0 + {u}u < n);"
            ));
            block.extend((0..D4).map(|c| format!("acc{r}_{c} = acc{r}_{c} + ds{r}_{u} * {};", kt[c])));
        }
        out.push(format!("{{\n        {}\n    }}", block.join("\n        ")));
    }
    out.join("\n    ")
}

fn dkdv_registers(rows: Rows) -> String {
    row_registers(rows, &["dk", "dv"], &[("k", "load4_k", " * scale"), ("v", "load4_v", "")], "")
}

/// dK and dV, U queries (see `dq_step`).
fn dkdv_step(rows: Rows) -> String {
    let (rr, uu) = (rows.per_invocation(), rows.unroll());
    let mut out = Vec::new();
    for u in 0..uu {
        let mut block =
            vec![format!("let lse_u = lse_tile[i0 + {u}u];\n        let delta_u = delta_tile[i0 + {u}u];")];
        let qt = tile_operands(rr, ("q_tile", "i0", u), "qt", &mut block);
        let gt = tile_operands(rr, ("do_tile", "i0", u), "gt", &mut block);
        for r in 0..rr {
            let s = sum((0..D4).map(|c| format!("dot(k{r}_{c}, {})", qt[c])));
            let dp = sum((0..D4).map(|c| format!("dot(v{r}_{c}, {})", gt[c])));
            block.push(format!("let p{r} = exp({s} - lse_u);\n        let ds{r} = p{r} * ({dp} - delta_u);"));
            block.extend((0..D4).map(|c| format!("dv{r}_{c} = dv{r}_{c} + p{r} * {};", gt[c])));
            block.extend((0..D4).map(|c| format!("dk{r}_{c} = dk{r}_{c} + ds{r} * {};", qt[c])));
        }
        out.push(format!("{{\n        {}\n    }}", block.join("\n        ")));
    }
    out.join("\n    ")
}
