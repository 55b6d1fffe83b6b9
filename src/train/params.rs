//! Walking a model's float parameters by name (`backbone.blocks.0.attn.qkv.weight`): reading
//! them to the host, writing them back, and mapping two models in step (the EMA teacher).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};

/// The dotted names of the modules entered so far.
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn join(&self) -> String {
        self.0.join(".")
    }
}

/// A parameter on the host: shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Every float parameter of `module`, by name, copied to the host.
pub fn named_params<M: Module>(module: &M) -> Result<BTreeMap<String, HostTensor>> {
    struct Collect {
        path: PathStack,
        out: BTreeMap<String, HostTensor>,
        error: Option<String>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let tensor = param.val();
            let shape = tensor.dims().to_vec();
            match tensor.into_data().convert::<f32>().try_into_vec::<f32>() {
                Ok(data) => {
                    self.out.insert(self.path.join(), HostTensor { shape, data });
                }
                Err(e) => self.error = Some(format!("{}: {e:?}", self.path.join())),
            }
        }
    }
    let mut visitor = Collect { path: PathStack::default(), out: BTreeMap::new(), error: None };
    module.visit(&mut visitor);
    match visitor.error {
        Some(e) => Err(Error::Shape(format!("cannot read parameter {e}"))),
        None => Ok(visitor.out),
    }
}

/// `module` with every float parameter replaced by `values[prefix + name]`, on the parameter's
/// own device (autodiff stays autodiff). Missing names or other shapes are errors naming them.
pub fn load_named_params<M: Module>(
    module: M,
    values: &BTreeMap<String, HostTensor>,
    prefix: &str,
) -> Result<M> {
    struct Load<'a> {
        path: PathStack,
        values: &'a BTreeMap<String, HostTensor>,
        prefix: &'a str,
        error: Option<String>,
    }
    impl ModuleMapper for Load<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let name = format!("{}{}", self.prefix, self.path.join());
            let (id, tensor, mapper) = param.consume();
            let shape = tensor.dims();
            let Some(host) = self.values.get(&name) else {
                self.error.get_or_insert(format!("tensor `{name}` is missing"));
                return Param::from_mapped_value(id, tensor, mapper);
            };
            if host.shape != shape {
                self.error.get_or_insert(format!(
                    "tensor `{name}` has shape {:?}, the model {shape:?}",
                    host.shape
                ));
                return Param::from_mapped_value(id, tensor, mapper);
            }
            let grad = tensor.is_require_grad();
            let mut new = Tensor::<D>::from_data(TensorData::new(host.data.clone(), shape), &tensor.device());
            if grad {
                new = new.require_grad();
            }
            Param::from_mapped_value(id, new, mapper)
        }
    }
    let mut mapper = Load { path: PathStack::default(), values, prefix, error: None };
    let module = module.map(&mut mapper);
    match mapper.error {
        Some(e) => Err(Error::Shape(e)),
        None => Ok(module),
    }
}

/// The float parameters of `module` in visiting order, flattened, without autodiff.
pub fn flat_params<M: Module>(module: &M) -> Vec<Tensor<1>> {
    struct Flat(Vec<Tensor<1>>);
    impl ModuleVisitor for Flat {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let t = if t.is_autodiff() { t.inner() } else { t };
            let n = t.shape().num_elements();
            self.0.push(t.reshape([n]));
        }
    }
    let mut visitor = Flat(Vec::new());
    module.visit(&mut visitor);
    visitor.0
}

/// The EMA update of the teacher (official `update_teacher`):
/// `teacher ← m · teacher + (1 − m) · student`, parameter by parameter in visiting order (the
/// two models have the same structure).
pub fn ema_update<M: Module>(teacher: M, student: &M, momentum: f64) -> M {
    struct Ema {
        student: std::vec::IntoIter<Tensor<1>>,
        momentum: f64,
    }
    impl ModuleMapper for Ema {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let s = self.student.next().expect("teacher and student have the same parameters");
            let updated = tensor.clone().mul_scalar(self.momentum)
                + s.reshape(tensor.dims()).mul_scalar(1.0 - self.momentum);
            Param::from_mapped_value(id, updated, mapper)
        }
    }
    let mut mapper = Ema { student: flat_params(student).into_iter(), momentum };
    teacher.map(&mut mapper)
}
