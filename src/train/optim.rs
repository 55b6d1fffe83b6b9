//! AdamW with DINOv2's parameter groups (official `get_params_groups_with_decay`,
//! `apply_optim_scheduler`, `clip_grad_norm_` per student part): each parameter's learning
//! rate is `lr · layer_decay · (0.2 for the patch embedding)` (the last layer of the heads uses
//! the last-layer schedule, zero while frozen), its weight decay `wd · (0 for biases, norms,
//! LayerScale)`. Gradients are clipped to a global norm per part (backbone, DINO head, iBOT
//! head). The update is PyTorch's `AdamW` (decoupled decay `p ← p·(1 − lr·wd)`, bias-corrected
//! moments, eps 1e-8), written out so its state can be saved by name and resumed exactly.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

use super::params::HostTensor;
use super::schedule::{layer_decay, weight_decay_multiplier};
use crate::error::{Error, Result};

/// What a step needs from the schedules.
#[derive(Clone, Copy, Debug)]
pub struct StepRates {
    pub lr: f64,
    pub last_layer_lr: f64,
    pub weight_decay: f64,
    /// Factor on every gradient before clipping: `1 / loss scale` under mixed precision.
    pub grad_scale: f64,
}

/// How parameters are grouped.
#[derive(Clone, Copy, Debug)]
pub struct GroupRules {
    pub layer_decay: f64,
    pub depth: usize,
    pub patch_embed_lr_mult: f64,
    /// Global gradient-norm bound per part (0 = no clipping).
    pub clip_grad: f64,
}

impl GroupRules {
    /// `(lr multiplier, weight-decay multiplier, is the heads' last layer)` of a parameter.
    pub fn of(&self, path: &str) -> (f64, f64, bool) {
        let mut lr = layer_decay(path, self.layer_decay, self.depth);
        if path.contains("patch_embed") {
            lr *= self.patch_embed_lr_mult;
        }
        (lr, weight_decay_multiplier(path), path.contains("last_layer"))
    }
}

/// The part of the student a parameter belongs to (clipping is per part).
fn part(path: &str) -> &str {
    path.split('.').next().unwrap_or("")
}

#[derive(Clone)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// AdamW state: the step count and the moments of every parameter, by name.
#[derive(Clone)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub rules: GroupRules,
    /// Updates made so far, per parameter as PyTorch counts them (a parameter without a
    /// gradient in a step is skipped).
    steps: HashMap<String, u64>,
    moments: HashMap<String, Moments>,
}

/// What one step measured.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    /// Gradient norm of each part before clipping (after `grad_scale`).
    pub grad_norms: BTreeMap<String, f64>,
    /// A gradient was inf or NaN: nothing was updated (the loss scale was too large, or the
    /// step diverged).
    pub skipped: bool,
}

impl AdamW {
    pub fn new(beta1: f64, beta2: f64, rules: GroupRules) -> Self {
        Self { beta1, beta2, eps: 1e-8, rules, steps: HashMap::new(), moments: HashMap::new() }
    }

    /// One update of `model` from `grads` (by parameter, on the parameters' device: one
    /// backward's, or the sum of several devices' gathered by burn's `GradientsAccumulator`).
    /// The heads' last layer is frozen through its lr alone, as in DINOv2: its moments still
    /// move and its gradient counts in the clipping.
    pub fn step<M: Module>(
        &mut self,
        model: M,
        grads: &mut GradientsParams,
        rates: StepRates,
    ) -> (M, StepReport) {
        // pass 1: squared gradient norms per part, one read-back for all parts
        struct Norms<'a> {
            path: Vec<String>,
            grads: &'a GradientsParams,
            sums: BTreeMap<String, Tensor<1>>,
        }
        impl ModuleVisitor for Norms<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let path = self.path.join(".");
                if let Some(g) = self.grads.get::<D>(param.id) {
                    let sq = g.square().sum();
                    let key = part(&path).to_string();
                    let total = match self.sums.remove(&key) {
                        Some(acc) => acc + sq,
                        None => sq,
                    };
                    self.sums.insert(key, total);
                }
            }
        }
        let mut norms = Norms { path: Vec::new(), grads: &*grads, sums: BTreeMap::new() };
        model.visit(&mut norms);
        let names: Vec<String> = norms.sums.keys().cloned().collect();
        let mut report = StepReport::default();
        let mut scales = HashMap::new();
        if !names.is_empty() {
            let all = Tensor::cat(norms.sums.into_values().collect(), 0);
            let values = all.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
            for (name, sq) in names.iter().zip(values) {
                let norm = (sq as f64).sqrt() * rates.grad_scale;
                // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), at most 1
                let scale = if self.rules.clip_grad > 0.0 {
                    (self.rules.clip_grad / (norm + 1e-6)).min(1.0)
                } else {
                    1.0
                };
                report.grad_norms.insert(name.clone(), norm);
                scales.insert(name.clone(), scale * rates.grad_scale);
            }
        }
        if report.grad_norms.values().any(|n| !n.is_finite()) {
            report.skipped = true;
            return (model, report);
        }

        // pass 2: the update
        struct Update<'a> {
            path: Vec<String>,
            opt: &'a mut AdamW,
            grads: &'a mut GradientsParams,
            rates: StepRates,
            scales: &'a HashMap<String, f64>,
        }
        impl ModuleMapper for Update<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let path = self.path.join(".");
                let (id, tensor, mapper) = param.consume();
                let Some(grad) = self.grads.remove::<D>(id) else {
                    return Param::from_mapped_value(id, tensor, mapper);
                };
                let (lr_mult, wd_mult, last_layer) = self.opt.rules.of(&path);
                let lr = if last_layer { self.rates.last_layer_lr } else { self.rates.lr } * lr_mult;
                let wd = self.rates.weight_decay * wd_mult;
                let scale = self.scales.get(part(&path)).copied().unwrap_or(1.0);
                let require_grad = tensor.is_require_grad();
                let strategy = tensor.gradient_checkpointing_strategy();
                let shape = tensor.dims();
                let n = tensor.shape().num_elements();
                let p = if tensor.is_autodiff() { tensor.inner() } else { tensor };
                let g = grad.reshape([n]).mul_scalar(scale);
                let (b1, b2, eps) = (self.opt.beta1, self.opt.beta2, self.opt.eps);
                let moments = self.opt.moments.remove(&path);
                let (m, v) = match moments {
                    Some(Moments { m, v }) => (
                        m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1),
                        v.mul_scalar(b2) + g.square().mul_scalar(1.0 - b2),
                    ),
                    None => (g.clone().mul_scalar(1.0 - b1), g.square().mul_scalar(1.0 - b2)),
                };
                let t = self.opt.steps.get(&path).copied().unwrap_or(0) + 1;
                self.opt.steps.insert(path.clone(), t);
                let bias1 = 1.0 - b1.powi(t as i32);
                let bias2 = 1.0 - b2.powi(t as i32);
                let denom = v.clone().div_scalar(bias2).sqrt().add_scalar(eps);
                let update = (m.clone() / denom).mul_scalar(lr / bias1);
                let p = p.reshape([n]).mul_scalar(1.0 - lr * wd) - update;
                self.opt.moments.insert(path, Moments { m, v });
                let mut p = Tensor::from_inner(p.reshape(shape));
                if let Some(strategy) = strategy {
                    p = p.with_gradient_checkpointing_strategy(strategy);
                }
                if !require_grad {
                    p = p.inner();
                } else {
                    p = p.require_grad();
                }
                Param::from_mapped_value(id, p, mapper)
            }
        }
        let mut update = Update { path: Vec::new(), opt: self, grads, rates, scales: &scales };
        let model = model.map(&mut update);
        (model, report)
    }

    /// The state as named host tensors: `m.<param>`, `v.<param>`, and `t.<param>` (the
    /// parameter's update count, one value).
    pub fn state(&self) -> Result<BTreeMap<String, HostTensor>> {
        let mut out = BTreeMap::new();
        for (name, Moments { m, v }) in &self.moments {
            for (kind, t) in [("m", m), ("v", v)] {
                let data = t
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| Error::Shape(format!("optimizer state {name}: {e:?}")))?;
                out.insert(format!("{kind}.{name}"), HostTensor { shape: vec![data.len()], data });
            }
            let t = self.steps.get(name).copied().unwrap_or(0);
            out.insert(format!("t.{name}"), HostTensor { shape: vec![1], data: vec![t as f32] });
        }
        Ok(out)
    }

    /// Restore [`Self::state`] onto `device`.
    pub fn load_state(&mut self, state: &BTreeMap<String, HostTensor>, device: &burn::tensor::Device) {
        self.moments.clear();
        self.steps.clear();
        let device = device.clone().inner();
        for (key, host) in state {
            let Some(name) = key.strip_prefix("m.") else { continue };
            let (Some(v), Some(t)) = (state.get(&format!("v.{name}")), state.get(&format!("t.{name}")))
            else {
                continue;
            };
            let tensor = |h: &HostTensor| {
                Tensor::<1>::from_data(TensorData::new(h.data.clone(), [h.data.len()]), &device)
            };
            self.moments.insert(name.to_string(), Moments { m: tensor(host), v: tensor(v) });
            self.steps.insert(name.to_string(), t.data[0] as u64);
        }
    }
}

/// PyTorch's dynamic loss scaling (`torch.cuda.amp.GradScaler` defaults, as DINOv2's fp16
/// training uses it): the loss is multiplied by `scale` before backward so small f16
/// gradients do not flush to zero; a step whose gradients overflow is skipped and halves the
/// scale, and `growth_interval` good steps in a row double it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f64,
    /// Good steps since the last change.
    pub good_steps: u64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self { scale: 65536.0, good_steps: 0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

impl LossScaler {
    /// After a step: `overflow` = its gradients were not finite (and it was skipped).
    pub fn update(&mut self, overflow: bool) {
        if overflow {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.good_steps = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LossScaler;

    #[test]
    fn the_loss_scale_halves_on_overflow_and_doubles_after_the_growth_interval() {
        let mut s = LossScaler { growth_interval: 3, ..LossScaler::default() };
        s.update(false);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (65536.0, 2));
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (32768.0, 0), "an overflow halves and restarts the count");
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!((s.scale, s.good_steps), (65536.0, 0), "three good steps double it");
    }
}
