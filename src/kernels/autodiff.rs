//! [`KernelOps`] under burn's autodiff: attention gets a hand-written backward (the fused
//! backward kernels on wgpu, the reference formulas on ndarray) that keeps q, k, v, the output
//! and the row log-sum-exp, never the N×N probabilities. Sinkhorn-Knopp and the KoLeo
//! neighbour are not differentiated (teacher targets and indices). GELU gets its exact
//! derivative ([`KernelOps::exact_gelu_backward`]), and is recomputed rather than kept under
//! gradient checkpointing, as burn's own GELU is.

use std::marker::PhantomData;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::retro_forward::RetroForward;
use burn::backend::autodiff::checkpoint::state::BackwardStates;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};

use super::KernelOps;

#[derive(Debug)]
struct AttentionBackward {
    scale: f32,
}

impl<B: KernelOps> Backward<B, 3> for AttentionBackward {
    /// q, k, v, out, lse
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let dout = grads.consume::<B>(&ops.node);
        let (q, k, v, out, lse) = ops.state;
        let (dq, dk, dv) = B::attention_backward(q, k, v, out, lse, dout, self.scale);
        if let Some(node) = node_q {
            grads.register::<B>(node.id, dq);
        }
        if let Some(node) = node_k {
            grads.register::<B>(node.id, dk);
        }
        if let Some(node) = node_v {
            grads.register::<B>(node.id, dv);
        }
    }
}

/// GELU's backward: the exact derivative ([`KernelOps::exact_gelu_backward`]) at the saved input.
#[derive(Debug)]
struct GeluBackward;

impl<B: KernelOps> Backward<B, 1> for GeluBackward {
    /// the input's node, its value kept by the checkpointer (or recomputed by it)
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(ops.state);
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::exact_gelu_backward(x, dy));
        }
    }
}

/// Recomputes a GELU output under gradient checkpointing (as burn's own GELU does).
#[derive(Debug, Clone)]
struct RetroGelu<B: KernelOps> {
    input: NodeId,
    _backend: PhantomData<B>,
}

impl<B: KernelOps> RetroForward for RetroGelu<B> {
    fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
        let x = states.get_state::<FloatTensor<B>>(&self.input);
        states.save(out_node, B::exact_gelu(x));
    }
}

/// A node whose backward does nothing: outputs that carry no gradient.
#[derive(Debug)]
struct NoGradient;

impl<B: KernelOps, const N: usize> Backward<B, N> for NoGradient {
    type State = ();

    fn backward(self, _ops: Ops<(), N>, _grads: &mut Gradients, _checkpointer: &mut Checkpointer) {}
}

impl<B: KernelOps, C: CheckpointStrategy> KernelOps for Autodiff<B, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let step = AttentionBackward { scale };
        match step.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
                let (out, lse) = B::attention_forward(q.clone(), k.clone(), v.clone(), scale);
                prep.finish((q, k, v, out.clone(), lse), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                scale,
            )),
        }
    }

    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, lse) = B::attention_forward(
            q.clone().into_primitive(),
            k.clone().into_primitive(),
            v.clone().into_primitive(),
            scale,
        );
        let out = NoGradient.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateless(out);
        let lse = NoGradient.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateless(lse);
        (out, lse)
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
        let (dq, dk, dv) = B::attention_backward(
            q.clone().into_primitive(),
            k.clone().into_primitive(),
            v.clone().into_primitive(),
            out.into_primitive(),
            lse.into_primitive(),
            dout.into_primitive(),
            scale,
        );
        let wrap = |t| NoGradient.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateless(t);
        (wrap(dq), wrap(dk), wrap(dv))
    }

    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let retro = RetroGelu::<B> { input: x.node().id(), _backend: PhantomData };
        match GeluBackward
            .prepare::<C>([x.node()])
            .memory_bound()
            .retro_forward(retro)
            .parents([&x])
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::exact_gelu(x.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::exact_gelu(x.into_primitive())),
        }
    }

    fn exact_gelu_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [x.node(), dy.node()];
        let out = B::exact_gelu_backward(x.into_primitive(), dy.into_primitive());
        NoGradient.prepare::<C>(nodes).compute_bound().stateless(out)
    }

    fn sinkhorn_knopp(logits: FloatTensor<Self>, temperature: f32, iterations: u32) -> FloatTensor<Self> {
        let node = logits.node();
        let q = B::sinkhorn_knopp(logits.into_primitive(), temperature, iterations);
        NoGradient.prepare::<C>([node]).compute_bound().stateless(q)
    }

    fn koleo_nearest(x: FloatTensor<Self>) -> IntTensor<Self> {
        B::koleo_nearest(x.into_primitive())
    }

    fn knn_update(
        queries: FloatTensor<Self>,
        chunk: FloatTensor<Self>,
        sims: FloatTensor<Self>,
        indices: IntTensor<Self>,
        offset: u32,
        self_offset: u32,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let nodes = [queries.node(), chunk.node(), sims.node()];
        let (sims, indices) = B::knn_update(
            queries.into_primitive(),
            chunk.into_primitive(),
            sims.into_primitive(),
            indices,
            offset,
            self_offset,
        );
        (NoGradient.prepare::<C>(nodes).compute_bound().stateless(sims), indices)
    }
}
