"""train_segmentation's PAC methods: paccrf stages (frozen backbone, then joint) and hotswap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.train_segmentation import pac_methods, registry
from experiments.train_segmentation.configs import smoke
from ppac_jax import nn
from ppac_jax.data.segmentation_baseline import TinySegmenter


def _config(**kw):
    config = smoke.get_config()
    config.train.steps = 8
    config.model.crf = "crfi1p4d3121"     # one mean-field step: quick to compile
    for k, v in kw.items():
        config[k] = v
    return config


def _batch(seed=0, n=2, size=32):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.uniform(size=(n, size, size, 3)), jnp.float32),
            "labels": jnp.asarray(rng.integers(0, 6, (n, size, size)), jnp.int32)}


def _info():
    return {"segmenter": TinySegmenter(6, 8, rngs=nnx.Rngs(1))}


def test_methods_are_registered():
    assert {"paccrf", "hotswap", "ppac"} <= set(registry.METHODS)


def _train_steps(config, model, steps):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    method = registry.get_method(config.method)
    tx = method.make_optimizer(config, params)
    state = tx.init(params)
    batch = _batch()

    @jax.jit
    def step(params, state):
        def loss(p):
            logits = method.forward(nnx.merge(graphdef, p, rest), batch)
            logp = jax.nn.log_softmax(logits, -1)
            return -jnp.mean(jnp.take_along_axis(logp, batch["labels"][..., None], -1))
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    history = [params]
    for _ in range(steps):
        params, state = step(params, state)
        history.append(params)
    return history


def _changed(a, b, top):
    return any(np.abs(np.asarray(x) - np.asarray(y)).max() > 0
               for x, y in zip(jax.tree.leaves(a[top]), jax.tree.leaves(b[top])))


def test_paccrf_freezes_the_backbone_in_the_head_stage():
    config = _config(method="paccrf")
    model = pac_methods.build_paccrf(config, 6, info=_info())
    assert isinstance(model, nn.ModelWithCrf)
    b_end, h_end, total = pac_methods.paccrf_stages(config)
    assert (b_end, h_end, total) == (0, 4, 8)
    hist = _train_steps(config, model, 6)
    assert not _changed(hist[0], hist[h_end], "backbone")   # head only
    assert _changed(hist[0], hist[h_end], "crf")
    assert _changed(hist[h_end], hist[6], "backbone")       # joint
    logits = pac_methods.paccrf_forward(model, _batch())
    assert logits.shape == (2, 32, 32, 6)


def test_hotswap_starts_from_the_baseline():
    info = _info()
    config = _config(method="hotswap")
    config.model.guide_scale = 0.0       # constant guide: exactly the baseline network
    model = pac_methods.build_hotswap(config, 6, info=info)
    assert isinstance(model.layers[2], nn.HotSwappedPacConv2d)
    batch = _batch()
    base = info["segmenter"](pac_methods._imagenet(batch["image"]))
    np.testing.assert_allclose(np.asarray(pac_methods.hotswap_forward(model, batch)),
                               np.asarray(base), rtol=1e-5, atol=1e-5)


def test_bad_backbone_is_one_clear_error():
    with pytest.raises(ValueError, match="backbone"):
        pac_methods.build_paccrf(_config(method="paccrf", backbone="vgg"), 6, info=_info())
    with pytest.raises(ValueError, match="baseline segmenter"):
        pac_methods.build_hotswap(_config(method="hotswap"), 6, info={})
