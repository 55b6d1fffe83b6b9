//! [`KernelOps`] on burn's ndarray backend: the `*_reference` functions of plain tensor ops.

use burn::backend::NdArray;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::Tensor;

use super::KernelOps;

fn wrap<const D: usize>(t: FloatTensor<NdArray>) -> Tensor<D> {
    Tensor::from_primitive::<NdArray>(t)
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

    fn koleo_nearest(x: FloatTensor<Self>) -> IntTensor<Self> {
        super::koleo_nearest_reference(wrap(x))
            .try_into_primitive::<NdArray>()
            .expect("an ndarray tensor stays on ndarray")
    }
}
