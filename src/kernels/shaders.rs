//! The WGSL sources in `shaders/` and how their `{{ slot }}` templates are filled. The launch
//! code ([`super::wgsl`]) and the naga validation test both expand them through [`expand`], so
//! the test checks exactly the text the GPU compiles.

use burn::backend::wgpu::SourceTemplate;

pub const ATTENTION_FORWARD: &str = include_str!("../../shaders/attention_forward.wgsl");
pub const ATTENTION_BACKWARD_DELTA: &str = include_str!("../../shaders/attention_backward_delta.wgsl");
pub const ATTENTION_BACKWARD_DQ: &str = include_str!("../../shaders/attention_backward_dq.wgsl");
pub const ATTENTION_BACKWARD: &str = include_str!("../../shaders/attention_backward.wgsl");
pub const SINKHORN: &str = include_str!("../../shaders/sinkhorn.wgsl");
pub const KOLEO: &str = include_str!("../../shaders/koleo.wgsl");
pub const KNN: &str = include_str!("../../shaders/knn.wgsl");

/// Query (or key) rows per attention workgroup, one invocation each.
pub const ATTENTION_ROWS: u32 = 64;
/// Rows per K/V (or Q/dO) tile in workgroup memory: 2 · 16 · 64 · 4 B = 8 KiB.
pub const ATTENTION_TILE: u32 = 16;
/// Invocations per workgroup of the Sinkhorn-Knopp passes and the delta pass.
pub const REDUCE_WG: u32 = 256;
/// Rows and columns of dot products per KoLeo invocation; a workgroup (8 × 8) covers a tile of
/// 8 · KOLEO_MICRO rows against as many columns.
pub const KOLEO_MICRO: usize = 8;
/// Barrier rounds (column tiles of 64 × chunks of 16 of d) one KoLeo workgroup runs at most.
pub const KOLEO_TILE_BUDGET: usize = 64;
/// Query rows and database rows of one k-NN tile: the similarity scratch of a tile is at most
/// 8192 · 2048 f32 = 64 MiB, under the 128 MiB storage binding of software adapters and
/// browsers. Tall tiles: the merge pass runs one invocation per query row, each scanning the
/// tile's database rows in sequence, so more rows and shorter scans keep a GPU busier.
pub const KNN_QUERY_BLOCK: usize = 8192;
pub const KNN_DATABASE_BLOCK: usize = 2048;
/// Sinkhorn-Knopp passes: column scalings, row scalings, output.
pub const SINKHORN_PASSES: [u32; 3] = [0, 1, 2];

/// A kernel to expand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    AttentionForward { f16: bool },
    AttentionBackwardDelta { f16: bool },
    AttentionBackwardDq { f16: bool },
    AttentionBackwardDkDv { f16: bool },
    Sinkhorn { pass: u32 },
    Koleo { pass: u32 },
    Knn { pass: u32 },
}

impl Shader {
    /// Every variant the launch code can ask for.
    pub fn all() -> Vec<Shader> {
        let mut all = Vec::new();
        for f16 in [false, true] {
            all.push(Shader::AttentionForward { f16 });
            all.push(Shader::AttentionBackwardDelta { f16 });
            all.push(Shader::AttentionBackwardDq { f16 });
            all.push(Shader::AttentionBackwardDkDv { f16 });
        }
        all.extend(SINKHORN_PASSES.iter().map(|&pass| Shader::Sinkhorn { pass }));
        all.extend([0, 1].map(|pass| Shader::Koleo { pass }));
        all.extend([0, 1].map(|pass| Shader::Knn { pass }));
        all
    }

    /// The template with its slots registered.
    pub fn template(self) -> SourceTemplate {
        let elem = |f16: bool| if f16 { ("f16", "enable f16;") } else { ("f32", "") };
        match self {
            Shader::AttentionForward { f16 } => {
                let (ty, enable) = elem(f16);
                SourceTemplate::new(ATTENTION_FORWARD)
                    .register("elem", ty)
                    .register("enable", enable)
                    .register("br", ATTENTION_ROWS.to_string())
                    .register("bc", ATTENTION_TILE.to_string())
                    .register("unrolled_registers", forward_registers())
                    .register("unrolled_load_q", forward_load_q())
                    .register("unrolled_scores", forward_scores())
                    .register("unrolled_accumulate", forward_accumulate())
                    .register("unrolled_store", store_rows("o", "acc", "inv", ty))
            }
            Shader::AttentionBackwardDq { f16 } | Shader::AttentionBackwardDkDv { f16 } => {
                let source = match self {
                    Shader::AttentionBackwardDq { .. } => ATTENTION_BACKWARD_DQ,
                    _ => ATTENTION_BACKWARD,
                };
                let (ty, enable) = elem(f16);
                SourceTemplate::new(source)
                    .register("elem", ty)
                    .register("enable", enable)
                    .register("br", ATTENTION_ROWS.to_string())
                    .register("bc", ATTENTION_TILE.to_string())
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
            Shader::Koleo { pass } => SourceTemplate::new(KOLEO)
                .register("pass", pass.to_string())
                .register("micro", KOLEO_MICRO.to_string())
                .register("tile", (8 * KOLEO_MICRO).to_string())
                .register(
                    "gemm_tile",
                    gemm_tile(
                        "if (i0 + row < n) { av = x[(i0 + row) * d + k0 + kk]; }",
                        "if (j0 + row < n) { bv = x[(j0 + row) * d + k0 + kk]; }",
                    ),
                ),
            Shader::Knn { pass } => SourceTemplate::new(KNN)
                .register("pass", pass.to_string())
                .register("micro", KOLEO_MICRO.to_string())
                .register("tile", (8 * KOLEO_MICRO).to_string())
                .register(
                    "gemm_tile",
                    gemm_tile(
                        "if (i0 + row < qn) { av = queries[(q0 + i0 + row) * d + k0 + kk]; }",
                        "if (j0 + row < cn) { bv = database[(c0 + j0 + row) * d + k0 + kk]; }",
                    ),
                ),
        }
    }
}

/// The GEMM tile the KoLeo and k-NN kernels share: over d in chunks of DK, the workgroup stages
/// a T-row block of A and of B (`[kk][row]` in `a_tile` / `b_tile`, zero past the edges), then
/// invocation (tx, ty) adds its M x M block of dot products into `acc[r * M + c]`. The two
/// statements load `av` (row `i0 + row` of A) and `bv` (row `j0 + row` of B) at column
/// `k0 + kk`; they run only where `k0 + kk < d`.
fn gemm_tile(load_a: &str, load_b: &str) -> String {
    format!(
        "for (var k0 = 0u; k0 < d; k0 += DK) {{
        workgroupBarrier(); // the previous chunk has been consumed
        for (var e = lid; e < DK * T; e += 64u) {{
            let row = e / DK;
            let kk = e % DK;
            var av = 0.0;
            var bv = 0.0;
            if (k0 + kk < d) {{
                {load_a}
                {load_b}
            }}
            a_tile[kk * T + row] = av;
            b_tile[kk * T + row] = bv;
        }}
        workgroupBarrier();
        for (var kk = 0u; kk < DK; kk++) {{
            var av: array<f32, M>;
            for (var r = 0u; r < M; r++) {{ av[r] = a_tile[kk * T + ty * M + r]; }}
            for (var c = 0u; c < M; c++) {{
                let bv = b_tile[kk * T + tx * M + c];
                for (var r = 0u; r < M; r++) {{ acc[r * M + c] += av[r] * bv; }}
            }}
        }}
    }}"
    )
}

/// The WGSL text of a kernel variant, every slot filled.
pub fn expand(shader: Shader) -> String {
    shader.template().complete()
}

// Unrolled code for the attention templates. A row of 64 is 16 vec4 registers named
// `{prefix}0` .. `{prefix}15`; key j of a tile is `k_tile[j·16 + c]`.

const D4: usize = 16;

fn k_at(j: usize, c: usize) -> String {
    format!("k_tile[{}u]", j * D4 + c)
}

fn v_at(j: usize, c: usize) -> String {
    format!("v_tile[{}u]", j * D4 + c)
}

fn lines(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join("\n    ")
}

fn forward_registers() -> String {
    lines((0..D4).map(|c| format!("var q{c} = vec4<f32>(0.0);\n    var acc{c} = vec4<f32>(0.0);")))
}

fn forward_load_q() -> String {
    lines((0..D4).map(|c| format!("q{c} = load4_q(at + {}u) * scale;", 4 * c)))
}

/// `q · k_tile[row j]` as a sum of 16 vec4 dots.
fn dot_row(reg: &str, j: usize) -> String {
    (0..D4).map(|c| format!("dot({reg}{c}, {})", k_at(j, c))).collect::<Vec<_>>().join(" + ")
}

fn forward_scores() -> String {
    let tile = ATTENTION_TILE as usize;
    lines((0..tile).map(|j| {
        format!("let s{j} = select(NEG, {}, t + {j}u < n);\n    m_new = max(m_new, s{j});", dot_row("q", j))
    }))
}

fn forward_accumulate() -> String {
    let tile = ATTENTION_TILE as usize;
    let mut out: Vec<String> = (0..tile).map(|j| format!("let p{j} = exp(s{j} - m_new);")).collect();
    out.push(format!(
        "l = l * correction + {};",
        (0..tile).map(|j| format!("p{j}")).collect::<Vec<_>>().join(" + ")
    ));
    for c in 0..D4 {
        let terms = (0..tile).map(|j| format!("p{j} * {}", v_at(j, c))).collect::<Vec<_>>().join(" + ");
        out.push(format!("acc{c} = acc{c} * correction + {terms};"));
    }
    out.join("\n    ")
}

/// Write registers `{reg}0..15` times `factor` to row `at` of `buffer` as `elem`.
fn store_rows(buffer: &str, reg: &str, factor: &str, elem: &str) -> String {
    lines((0..D4).map(|c| {
        let base = 4 * c;
        format!(
            "{{ let r = {reg}{c} * {factor}; {buffer}[at + {base}u] = {elem}(r.x); {buffer}[at + {}u] = {elem}(r.y); \
             {buffer}[at + {}u] = {elem}(r.z); {buffer}[at + {}u] = {elem}(r.w); }}",
            base + 1,
            base + 2,
            base + 3
        )
    }))
}
