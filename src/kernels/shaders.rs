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

/// Query (or key) rows per attention workgroup, one invocation each.
pub const ATTENTION_ROWS: u32 = 64;
/// Rows per K/V (or Q/dO) tile in workgroup memory: 2 · 16 · 64 · 4 B = 8 KiB.
pub const ATTENTION_TILE: u32 = 16;
/// Invocations per workgroup of the Sinkhorn-Knopp passes and the delta pass.
pub const REDUCE_WG: u32 = 256;
/// Barrier rounds (column tiles of 64 × chunks of 16 of d) one KoLeo workgroup runs at most.
pub const KOLEO_TILE_BUDGET: usize = 64;
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
        all
    }

    /// The template with its slots registered.
    pub fn template(self) -> SourceTemplate {
        let elem = |f16: bool| if f16 { ("f16", "enable f16;") } else { ("f32", "") };
        match self {
            Shader::AttentionForward { f16 }
            | Shader::AttentionBackwardDq { f16 }
            | Shader::AttentionBackwardDkDv { f16 } => {
                let source = match self {
                    Shader::AttentionForward { .. } => ATTENTION_FORWARD,
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
            Shader::Koleo { pass } => SourceTemplate::new(KOLEO).register("pass", pass.to_string()),
        }
    }
}

/// The WGSL text of a kernel variant, every slot filled.
pub fn expand(shader: Shader) -> String {
    shader.template().complete()
}
