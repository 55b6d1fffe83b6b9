//! [`KernelOps`] on burn's ndarray backend: the `*_reference` functions of plain tensor ops.

use burn::backend::NdArray;
use burn::backend::ndarray::NdArrayTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::Tensor;

use super::KernelOps;

fn wrap<const D: usize>(t: FloatTensor<NdArray>) -> Tensor<D> {
    Tensor::from_primitive::<NdArray>(t)
}

/// `e^u` for `u ≤ 0` in f32 arithmetic only (no libm call, so loops of it vectorise): `u`
/// split as `n ln 2 + f`, `|f| ≤ ln 2 / 2`, `e^f` by its Taylor polynomial of degree 6
/// (relative error below 3e-8), `2^n` written into the exponent bits; 0 for `u < −87`.
#[inline(always)]
fn exp_nonpositive(u: f32) -> f32 {
    // adding 1.5 · 2^23 rounds to an integer, which then sits in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let u = u.max(-87.0);
    let t = u * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let f = u - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    let exponent = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32) + 127;
    p * f32::from_bits((exponent as u32) << 23)
}

/// `(Φ(x), φ(x))`, the standard normal distribution and density, in f32: erf by Abramowitz &
/// Stegun 7.1.26 (absolute error ≤ 1.5e-7), whose `e^(−x²/2)` is also the density's.
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152, 1.061_405_4];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let gauss = exp_nonpositive(-z * z);
    let erf = (1.0 - poly * gauss).copysign(x);
    (0.5 * (1.0 + erf), (0.5 * super::SQRT_2_OVER_PI) as f32 * gauss)
}

/// GELU `x Φ(x)`.
#[inline(always)]
fn gelu_value(x: f32) -> f32 {
    x * normal_cdf_pdf(x).0
}

/// `dy · (Φ(x) + x φ(x))`.
#[inline(always)]
fn gelu_gradient(x: f32, dy: f32) -> f32 {
    let (cdf, pdf) = normal_cdf_pdf(x);
    dy * (cdf + x * pdf)
}

/// `f` over every element of an f32 tensor, in one pass over a contiguous copy (the CPU GELU
/// is called on f32 only).
fn map_f32(x: FloatTensor<NdArray>, f: impl Fn(f32) -> f32) -> FloatTensor<NdArray> {
    match x {
        NdArrayTensor::F32(x) => {
            let mut out = x.view().to_owned();
            match out.as_slice_memory_order_mut() {
                Some(values) => values.iter_mut().for_each(|v| *v = f(*v)),
                None => out.mapv_inplace(f),
            }
            NdArrayTensor::from(out.into_shared())
        }
        _ => panic!("the CPU GELU takes f32 tensors"),
    }
}

/// `f(a, b)` over the elements of two f32 tensors of one shape, in one pass; the result
/// overwrites a copy of `b`.
fn map2_f32(
    a: FloatTensor<NdArray>,
    b: FloatTensor<NdArray>,
    f: impl Fn(f32, f32) -> f32,
) -> FloatTensor<NdArray> {
    match (a, b) {
        (NdArrayTensor::F32(a), NdArrayTensor::F32(b)) => {
            assert_eq!(a.shape(), b.shape(), "the CPU GELU backward takes x and dy of one shape");
            let a = a.view();
            // borrowed where already row-major (the usual case); the output is a copy of b
            let a = a.as_standard_layout();
            let mut out = b.view().as_standard_layout().into_owned();
            match (a.as_slice(), out.as_slice_mut()) {
                (Some(a), Some(values)) => values.iter_mut().zip(a).for_each(|(o, &a)| *o = f(a, *o)),
                _ => unreachable!("standard-layout arrays have slices"),
            }
            NdArrayTensor::from(out.into_shared())
        }
        _ => panic!("the CPU GELU takes f32 tensors"),
    }
}

fn unwrap<const D: usize>(t: Tensor<D>) -> FloatTensor<NdArray> {
    t.try_into_primitive::<NdArray>().expect("an ndarray tensor stays on ndarray")
}

impl KernelOps for NdArray {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        // inference needs no log-sum-exp
        unwrap(super::attention_reference_scaled(wrap(q), wrap(k), wrap(v), scale))
    }

    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (o, lse) = super::attention_forward_reference(wrap(q), wrap(k), wrap(v), scale);
        (unwrap(o), unwrap(lse))
    }

    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dq, dk, dv) = super::attention_backward_reference(
            wrap(q),
            wrap(k),
            wrap(v),
            wrap(out),
            wrap(lse),
            wrap(dout),
            scale,
        );
        (unwrap(dq), unwrap(dk), unwrap(dv))
    }

    fn sinkhorn_knopp(logits: FloatTensor<Self>, temperature: f32, iterations: u32) -> FloatTensor<Self> {
        unwrap(super::sinkhorn_knopp_reference(wrap(logits), temperature, iterations))
    }

    fn knn_update(
        queries: FloatTensor<Self>,
        chunk: FloatTensor<Self>,
        sims: FloatTensor<Self>,
        indices: IntTensor<Self>,
        offset: u32,
        self_offset: u32,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let (sims, indices) = super::knn_update_reference(
            wrap(queries),
            wrap(chunk),
            wrap(sims),
            Tensor::from_primitive::<NdArray>(indices),
            offset,
            self_offset,
        );
        (unwrap(sims), indices.try_into_primitive::<NdArray>().expect("an ndarray tensor stays on ndarray"))
    }

    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        map_f32(x, gelu_value)
    }

    fn exact_gelu_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        map2_f32(x, dy, gelu_gradient)
    }

    fn koleo_nearest(x: FloatTensor<Self>) -> IntTensor<Self> {
        super::koleo_nearest_reference(wrap(x))
            .try_into_primitive::<NdArray>()
            .expect("an ndarray tensor stays on ndarray")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpositive_matches_std_exp() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let u = -(i as f32) * 1e-3; // 0 down to -200
            let (got, want) = (exp_nonpositive(u), u.exp());
            if want > 1e-37 {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!(got <= 1e-37, "e^{u}: {got}");
            }
        }
        assert!(worst < 4e-7, "largest relative error {worst}");
    }

    #[test]
    fn normal_density_matches_its_formula() {
        for i in -800..=800 {
            let x = i as f32 * 0.01;
            let want = (-(x as f64).powi(2) / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let got = normal_cdf_pdf(x).1 as f64;
            assert!((got - want).abs() < 1e-7, "φ({x}) = {got}, want {want}");
        }
    }
}
