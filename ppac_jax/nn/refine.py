"""PPAC refinement networks: :class:`PPacNet` and :class:`PacNetAdvancedNormalization`.

Both mirror the original modules (state-dict names ``network_prob.<i>.weight``,
``network_guidance.<i>.weight``, ``layers_joint.<i>.weight`` / ``weight_normalization`` /
``bias``), so the released checkpoints load with :func:`ppac_jax.convert.load_ppacnet`.
Inputs are NHWC; ImageNet normalisation of the image and ``log(max(p, 1e-20))`` of the
confidences are the caller's job.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppac_jax.nn.layers import Buffer, Conv2d, NormalizedPacConv2d, ProbPacConv2d, ReLU

CONV_TYPES = ("p", "c")


def _branch(depths: Sequence[int], kernel_size: int, rngs: nnx.Rngs, param_dtype) -> nnx.List:
    """Convs ``depths[i] -> depths[i+1]`` with ReLUs between (the original's Sequential indices)."""
    layers = []
    for i in range(1, len(depths)):
        layers.append(Conv2d(depths[i - 1], depths[i], kernel_size, padding=kernel_size // 2,
                             rngs=rngs, param_dtype=param_dtype))
        if i < len(depths) - 1:
            layers.append(ReLU())
    return nnx.List(layers)


def _run(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def _check_spec(conv_specification, depth_layers_joint, depth_layers_guidance):
    spec = list(conv_specification)
    bad = [c for c in spec if c not in CONV_TYPES]
    if bad:
        raise ValueError(f"conv_specification entries must be 'p' or 'c', got {bad}")
    if len(depth_layers_joint) != len(spec) + 1:
        raise ValueError(f"depth_layers_joint needs len(conv_specification) + 1 = {len(spec) + 1} "
                         f"entries, got {len(depth_layers_joint)}")
    num_pac = spec.count("p")
    if num_pac == 0:
        raise ValueError("conv_specification needs at least one 'p' layer")
    share, rest = divmod(depth_layers_guidance[-1], num_pac)
    if rest:
        raise ValueError(f"depth_layers_guidance[-1] = {depth_layers_guidance[-1]} must split "
                         f"evenly across the {num_pac} PAC layers")
    return spec, num_pac, share


def gaussian_kernel(kernel_size: int, sigma: float = 1.0) -> np.ndarray:
    """Normalised 2-D Gaussian ``[k, k]`` float32 on offsets ``-(k-1)/2 .. (k-1)/2``."""
    r = np.linspace(-(kernel_size - 1) / 2, (kernel_size - 1) / 2, kernel_size)
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma ** 2)
    return (g / g.sum()).astype(np.float32)


class _RefineBase(nnx.Module):
    def _joint_layers(self, spec, depth_layers_joint, kernel_size_joint, shared_filters, pac_cls,
                      rngs, param_dtype, impl):
        layers = []
        for i, kind in enumerate(spec):
            cin, cout = depth_layers_joint[i], depth_layers_joint[i + 1]
            if kind == "p":
                layers.append(pac_cls(cin, cout, kernel_size_joint, padding=kernel_size_joint // 2,
                                      bias=True, kernel_type="gaussian",
                                      shared_filters=shared_filters, rngs=rngs,
                                      param_dtype=param_dtype, impl=impl))
            else:
                layers.append(Conv2d(cin, cout, kernel_size_joint, padding=kernel_size_joint // 2,
                                     rngs=rngs, param_dtype=param_dtype))
        return nnx.List(layers)

    def _refine(self, estimates, guidance, probabilities=None):
        pac = 0
        for kind, layer in zip(self.conv_specification, self.layers_joint):
            if kind == "p":
                guide = guidance[..., pac * self.guidance_share:(pac + 1) * self.guidance_share]
                if probabilities is None:
                    estimates = layer(estimates, guide)
                else:
                    estimates = layer(estimates, probabilities[..., pac:pac + 1], guide)
                pac += 1
            else:
                estimates = layer(estimates)
        return estimates


class PPacNet(_RefineBase):
    """Probabilistic pixel-adaptive refinement network (``refinement_networks.PPacNet``).

    * probability branch: convs ``depth_layers_prob`` (``kernel_size_preprocessing``, 'same'
      zero padding, ReLU between) then sigmoid -> one confidence channel per ``'p'`` layer;
    * guidance branch: convs ``depth_layers_guidance`` (ReLU between, none after the last),
      channels split evenly across the ``'p'`` layers;
    * joint branch: per ``conv_specification`` entry a :class:`ProbPacConv2d` (``'p'``,
      gaussian kernel, padding ``k // 2``) or a plain conv (``'c'``), no activations.

    Args:
      kernel_size_preprocessing, kernel_size_joint: odd kernel sizes.
      conv_specification: string or sequence of ``'p'`` / ``'c'``.
      shared_filters: PPAC layers with one ``[k, k]`` filter.
      depth_layers_prob: channels of the probability branch, first = confidence maps,
        last = number of ``'p'`` layers.
      depth_layers_guidance: channels of the guidance branch (first = 3 for RGB).
      depth_layers_joint: channels of the estimate through the joint layers.
      fixed_gaussian_weights: joint weights fixed to a normalised Gaussian (sigma 1),
        ``weight_normalization`` its log, bias 0; all frozen (:class:`Buffer`).
      bias_zero_init: joint biases start at 0.
      rngs: default ``nnx.Rngs(0)``. param_dtype: parameter dtype.
      impl: of the PAC layers (see :class:`~ppac_jax.nn.PacConv2d`): ``"auto"`` / ``"loop"``
        the guided engine (``ops.fused_*``), ``"patches"`` the plain-autodiff reference.

    Call: ``net(estimates [B,H,W,Cj], log_probabilities [B,H,W,Cp], images [B,H,W,3])`` ->
    ``[B,H,W,Cj_last]``.
    """

    def __init__(self, kernel_size_preprocessing=5, kernel_size_joint=7, conv_specification="pp",
                 shared_filters=True, depth_layers_prob=(5, 5, 5, 2),
                 depth_layers_guidance=(3, 15, 15, 10), depth_layers_joint=(2, 2, 2),
                 fixed_gaussian_weights=False, bias_zero_init=False, *,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32, impl="auto"):
        spec, num_pac, share = _check_spec(conv_specification, depth_layers_joint,
                                           depth_layers_guidance)
        if depth_layers_prob[-1] != num_pac:
            raise ValueError(f"depth_layers_prob[-1] = {depth_layers_prob[-1]} must equal the "
                             f"number of 'p' layers ({num_pac})")
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.conv_specification = tuple(spec)
        self.guidance_share = share
        self.network_guidance = _branch(depth_layers_guidance, kernel_size_preprocessing, rngs,
                                        param_dtype)
        self.network_prob = _branch(depth_layers_prob, kernel_size_preprocessing, rngs,
                                    param_dtype)
        self.layers_joint = self._joint_layers(spec, depth_layers_joint, kernel_size_joint,
                                               shared_filters, ProbPacConv2d, rngs, param_dtype,
                                               impl)
        _init_joint(self.layers_joint, kernel_size_joint, fixed_gaussian_weights, bias_zero_init)

    def __call__(self, estimates, log_probabilities, images):
        probabilities = jax.nn.sigmoid(_run(self.network_prob, log_probabilities))
        guidance = _run(self.network_guidance, images)
        return self._refine(estimates, guidance, probabilities)


class PacNetAdvancedNormalization(_RefineBase):
    """PAC refinement with the normalised PAC (``refinement_networks.PacNetAdvancedNormalization``).

    :class:`PPacNet` without the probability branch: ``'p'`` layers are
    :class:`NormalizedPacConv2d`. Constructor as the original (no ``depth_layers_prob``).

    Call: ``net(estimates, images)`` or ``net(estimates, log_probabilities, images)`` (the
    confidences are ignored) -> refined estimates.
    """

    def __init__(self, kernel_size_preprocessing=5, kernel_size_joint=7, conv_specification="pp",
                 shared_filters=True, depth_layers_guidance=(3, 15, 15, 10),
                 depth_layers_joint=(2, 2, 2), *, rngs: Optional[nnx.Rngs] = None,
                 param_dtype=jnp.float32, impl="auto"):
        spec, _, share = _check_spec(conv_specification, depth_layers_joint,
                                     depth_layers_guidance)
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.conv_specification = tuple(spec)
        self.guidance_share = share
        self.network_guidance = _branch(depth_layers_guidance, kernel_size_preprocessing, rngs,
                                        param_dtype)
        self.layers_joint = self._joint_layers(spec, depth_layers_joint, kernel_size_joint,
                                               shared_filters, NormalizedPacConv2d, rngs,
                                               param_dtype, impl)

    def __call__(self, estimates, *args):
        if len(args) not in (1, 2):
            raise TypeError("call as net(estimates, images) or net(estimates, log_probabilities, "
                            "images)")
        images = args[-1]
        return self._refine(estimates, _run(self.network_guidance, images))


def _init_joint(layers, kernel_size, fixed_gaussian_weights, bias_zero_init):
    if bias_zero_init:
        for layer in layers:
            layer.bias.set_value(jnp.zeros_like(layer.bias[...]))
    if not fixed_gaussian_weights:
        return
    gauss = gaussian_kernel(kernel_size, 1.0)
    for layer in layers:
        w = layer.weight[...]
        fixed = jnp.broadcast_to(jnp.asarray(gauss, w.dtype)[:, :, None, None], w.shape)
        layer.weight = Buffer(fixed, **_meta(layer.weight))
        if hasattr(layer, "weight_normalization"):
            layer.weight_normalization = Buffer(jnp.log(fixed), **_meta(layer.weight_normalization))
        layer.bias = Buffer(jnp.zeros_like(layer.bias[...]), **_meta(layer.bias))


def _meta(variable):
    meta = variable.get_metadata()
    return {k: meta[k] for k in ("torch_layout", "torch_shape", "torch_name") if k in meta}


__all__ = ["PPacNet", "PacNetAdvancedNormalization", "gaussian_kernel"]
