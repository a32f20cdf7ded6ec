"""Batch normalisation mirroring ``torch.nn.BatchNorm2d`` (NHWC, torch state-dict names).

Training mode (the default, as a freshly built PyTorch module) normalises with the batch
statistics and updates the running statistics; ``model.eval()`` (Flax NNX's switch, which sets
``use_running_average=True`` on every sub-module that has it, as it sets ``deterministic`` on
dropout) normalises with the running statistics; ``model.train()`` switches back.

The running statistics are :class:`BatchStat` variables, a subclass of
:class:`ppac_jax.nn.Buffer`: not trainable, part of the state dict, and written during a
training-mode call. Under ``jax.jit`` with ``nnx.split`` / ``nnx.merge`` the new values live in
the merged module: take them out with ``nnx.state(model, BatchStat)`` (the generic trainer
:class:`ppac_jax.train.Trainer` does, and carries them from step to step).
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from flax import errors, nnx
from jax import lax

from ppac_jax.nn.layers import Buffer, _check_channels

__all__ = ["BatchNorm2d", "BatchStat"]


class BatchStat(Buffer):
    """A buffer that a training-mode call updates (running mean / variance, batch count)."""


class BatchNorm2d(nnx.Module):
    """``torch.nn.BatchNorm2d`` (Ioffe & Szegedy 2015) on NHWC arrays.

    Per channel ``c``: ``y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c`` with

    * training mode (``use_running_average=False``, the default) or
      ``track_running_stats=False``: the batch's mean and *biased* variance over ``B, H, W``;
      with ``track_running_stats`` the call also sets ``num_batches_tracked += 1`` and
      ``running = (1 - m) running + m batch`` with the *unbiased* batch variance
      (``m = momentum``, or ``1 / num_batches_tracked`` when ``momentum=None``: the cumulative
      average); the running statistics receive no gradient;
    * evaluation mode (``model.eval()``): ``running_mean`` / ``running_var``.

    Args:
      num_features: channels ``C``.
      eps: added to the variance.
      momentum: running-average factor, or ``None`` for the cumulative average.
      affine: learnable ``weight`` (init 1) and ``bias`` (init 0), ``nnx.Param`` ``[C]``.
      track_running_stats: keep ``running_mean`` (init 0), ``running_var`` (init 1) ``[C]``
        and ``num_batches_tracked`` (int scalar, init 0) as :class:`BatchStat` buffers.
      rngs: unused (deterministic initialisation), accepted as by the other layers.
      param_dtype: dtype of ``weight``, ``bias`` and the running statistics.

    Call: ``layer(x [B, H, W, C])`` -> ``[B, H, W, C]`` in ``x``'s dtype promoted with the
    parameters' (float64 weights make it compute in float64).

    Raises:
      ValueError: bad constructor arguments; ``x`` not ``[B, H, W, C]``; training mode with one
        value per channel (``B H W = 1``, PyTorch's error too: the unbiased variance is
        undefined).
    """

    def __init__(self, num_features, eps=1e-5, momentum: Optional[float] = 0.1, affine=True,
                 track_running_stats=True, *, rngs: Optional[nnx.Rngs] = None,
                 param_dtype=jnp.float32):
        self.num_features = _check_channels(num_features, "num_features")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.use_running_average = False
        c = self.num_features
        if self.affine:
            self.weight = nnx.Param(jnp.ones((c,), param_dtype), torch_layout="same")
            self.bias = nnx.Param(jnp.zeros((c,), param_dtype), torch_layout="same")
        else:
            self.weight = self.bias = None
        if self.track_running_stats:
            self.running_mean = BatchStat(jnp.zeros((c,), param_dtype), torch_layout="same")
            self.running_var = BatchStat(jnp.ones((c,), param_dtype), torch_layout="same")
            self.num_batches_tracked = BatchStat(jnp.zeros((), int), torch_layout="same")
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def __call__(self, x):
        if getattr(x, "ndim", None) != 4 or x.shape[-1] != self.num_features:
            raise ValueError(f"x must be [B, H, W, {self.num_features}], got shape "
                             f"{getattr(x, 'shape', None)}")
        params = [v[...] for v in (self.weight, self.bias, self.running_mean, self.running_var)
                  if v is not None]
        dtype = jnp.result_type(x, *params)
        x = x.astype(dtype)
        if self.use_running_average and self.track_running_stats:
            mean = self.running_mean[...].astype(dtype)
            var = self.running_var[...].astype(dtype)
        else:
            n = x.shape[0] * x.shape[1] * x.shape[2]
            if n < 2:
                raise ValueError(f"BatchNorm2d in training mode needs more than one value per "
                                 f"channel, got x of shape {x.shape} (use model.eval())")
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
            if self.track_running_stats:
                self._update_running(lax.stop_gradient(mean), lax.stop_gradient(var), n)
        y = (x - mean) * lax.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight[...].astype(dtype) + self.bias[...].astype(dtype)
        return y

    def _update_running(self, mean, var, n):
        count = self.num_batches_tracked[...] + 1
        self._store("num_batches_tracked", count)
        stat_dtype = self.running_mean[...].dtype
        if self.momentum is None:
            factor = 1.0 / count.astype(stat_dtype)
        else:
            factor = jnp.asarray(self.momentum, stat_dtype)
        unbiased = var * (n / (n - 1))
        for name, batch in (("running_mean", mean), ("running_var", unbiased)):
            old = getattr(self, name)[...]
            self._store(name, (1 - factor) * old + factor * batch.astype(stat_dtype))

    def _store(self, name, value):
        """Write a statistic; a variable that belongs to an outer JAX trace (a module merged
        inside ``jax.vjp`` from a state captured outside it) is replaced by a new one of this
        trace, so the update is visible through ``nnx.state(model, BatchStat)`` and the
        outer variable never receives a tracer."""
        var = getattr(self, name)
        try:
            var.set_value(value)
        except errors.TraceContextError:
            setattr(self, name, type(var)(value, **var.get_metadata()))
