"""PPacNet / PacNetAdvancedNormalization: released checkpoints against the golden files."""


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import convert
from ppac_jax import nn as pnn
from tests import golden as G

INPUTS = ("in_estimates", "in_log_probabilities", "in_images")
ANALYTIC_ZERO = "network_guidance.4.bias"    # gradient is rounding noise (golden README)



def _run_case(name):
    g = G.Golden(name)
    dtype = np.float64 if name.endswith("_f64.npz") else np.float32
    # "patches": the small golden inputs compile fastest with it
    net = convert.load_ppacnet(G.shared_dir() / "checkpoints" / g.meta["checkpoint"], dtype=dtype,
                               impl="patches")
    assert isinstance(net, pnn.PPacNet)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    inputs = tuple(jnp.asarray(G.nchw(g[k])) for k in INPUTS)
    # optimised: the 21-channel segmentation network's float64 run is slow at level 0
    run = G.module_vjp_runner(graphdef, optimized=True)
    out, gparams, ginputs = run(params, rest, inputs, jnp.asarray(G.nchw(g["cot_output"])))
    return g, net, np.asarray(out), convert.export_torch_gradients(net, gparams), ginputs


def _close(actual, expected, rtol, name, scale_atol=0.0):
    atol = scale_atol * float(np.abs(expected).max())
    G.assert_close(np.asarray(actual), expected, rtol=rtol, atol=atol, name=name)


@pytest.mark.parametrize("name", G.params_or_skip("ppacnet_*_f64.npz"))
def test_ppacnet_golden_f64(name):
    g, net, out, grads, ginputs = _run_case(name)
    # the checkpoint's weights are the file's parameters
    for key, value in convert.export_torch_weights(net).items():
        np.testing.assert_array_equal(value, g[f"param_{key}"])
    _close(G.to_nchw(out), g["out_output"], 1e-7, f"{name}: out", 1e-12)
    for key, grad in zip(INPUTS, ginputs):
        _close(G.to_nchw(np.asarray(grad)), g[f"grad_{key}"], 1e-7, f"{name}: grad_{key}", 1e-12)
    expected = {k[len("grad_param_"):]: g[k] for k in g.arrays if k.startswith("grad_param_")}
    assert set(grads) == set(expected)
    for key, value in expected.items():
        if key.endswith(ANALYTIC_ZERO):
            np.testing.assert_allclose(grads[key], value, rtol=0, atol=1e-9, err_msg=key)
        else:
            _close(grads[key], value, 1e-7, f"{name}: grad_param_{key}", 1e-12)


@pytest.mark.parametrize("name", G.params_or_skip("ppacnet_*_f32.npz"))
def test_ppacnet_golden_f32(name):
    g, net, out, grads, ginputs = _run_case(name)
    _close(G.to_nchw(out), g["out_output"], 1e-5, f"{name}: out", 1e-5)
    # f32 gradients: ReLU kinks make isolated entries differ up to ~4e-3 of max|.| (README §4)
    for key, grad in zip(INPUTS, ginputs):
        _close(G.to_nchw(np.asarray(grad)), g[f"grad_{key}"], 0, f"{name}: grad_{key}", 5e-3)
    for key, value in g.arrays.items():
        if key.startswith("grad_param_") and not key.endswith(ANALYTIC_ZERO):
            _close(grads[key[len("grad_param_"):]], value, 0, f"{name}: {key}", 5e-3)


def test_ppacnet_defaults_and_shapes():
    net = pnn.PPacNet()
    sd = convert.export_torch_weights(net)
    assert sd["layers_joint.0.weight"].shape == (1, 1, 7, 7)
    assert sd["network_prob.4.weight"].shape == (2, 5, 5, 5)
    assert sd["network_guidance.4.weight"].shape == (10, 15, 5, 5)
    assert convert.infer_ppacnet_config(sd) == dict(
        kernel_size_preprocessing=5, kernel_size_joint=7, conv_specification="pp",
        shared_filters=True, depth_layers_guidance=(3, 15, 15, 10),
        depth_layers_joint=(2, 2, 2), depth_layers_prob=(5, 5, 5, 2))


def test_mixed_spec_nonshared_roundtrip_and_call():
    kwargs = dict(kernel_size_preprocessing=3, kernel_size_joint=3, conv_specification="pcp",
                  shared_filters=False, depth_layers_prob=(4, 3, 2),
                  depth_layers_guidance=(3, 6, 4), depth_layers_joint=(2, 3, 3, 2))
    net = pnn.PPacNet(**kwargs)
    sd = convert.export_torch_weights(net)
    assert sd["layers_joint.1.weight"].shape == (3, 3, 3, 3)
    assert "layers_joint.1.weight_normalization" not in sd
    config = convert.infer_ppacnet_config(sd)
    assert config == {**kwargs, "conv_specification": "pcp"}
    other = pnn.PPacNet(**kwargs, rngs=nnx.Rngs(5))
    convert.load_torch_weights(other, {"module.refinement_net." + k: v for k, v in sd.items()},
                               prefix="module.refinement_net.")
    rng = np.random.default_rng(0)
    est = jnp.asarray(rng.normal(size=(1, 6, 7, 2)), jnp.float32)
    logp = jnp.asarray(np.log(rng.uniform(0.1, 1, size=(1, 6, 7, 4))), jnp.float32)
    img = jnp.asarray(rng.normal(size=(1, 6, 7, 3)), jnp.float32)
    run = nnx.jit(lambda n, *a: n(*a))
    np.testing.assert_array_equal(run(net, est, logp, img), run(other, est, logp, img))


def test_advanced_normalization_call_forms():
    net = pnn.PacNetAdvancedNormalization(3, 3, "pp", True, (3, 4, 4), (2, 2, 2))
    sd = convert.export_torch_weights(net)
    assert not any(k.startswith("network_prob") for k in sd)
    rng = np.random.default_rng(1)
    est = jnp.asarray(rng.normal(size=(1, 5, 6, 2)), jnp.float32)
    img = jnp.asarray(rng.normal(size=(1, 5, 6, 3)), jnp.float32)
    f = nnx.jit(lambda n, e, i: n(e, i))
    y = f(net, est, img)
    assert y.shape == (1, 5, 6, 2)
    np.testing.assert_array_equal(nnx.jit(lambda n, e, i: n(e, None, i))(net, est, img), y)
    again = convert.load_ppacnet(sd)
    assert isinstance(again, pnn.PacNetAdvancedNormalization)


def test_fixed_gaussian_weights_are_frozen():
    net = pnn.PPacNet(fixed_gaussian_weights=True)
    w = net.layers_joint[0].weight[...]
    np.testing.assert_allclose(np.asarray(w).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(net.layers_joint[0].weight_normalization[...], jnp.log(w), rtol=1e-6)
    np.testing.assert_array_equal(net.layers_joint[1].bias[...], 0)
    params = dict(nnx.to_flat_state(nnx.state(net, nnx.Param)))
    assert not any(p[0] == "layers_joint" for p in params)
    assert "layers_joint.0.weight" in convert.export_torch_weights(net)
    zero = pnn.PPacNet(bias_zero_init=True)
    np.testing.assert_array_equal(zero.layers_joint[0].bias[...], 0)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="depth_layers_prob"):
        pnn.PPacNet(depth_layers_prob=(5, 5, 3))
    with pytest.raises(ValueError, match="evenly"):
        pnn.PPacNet(depth_layers_guidance=(3, 15, 9))
    with pytest.raises(ValueError, match="conv_specification"):
        pnn.PPacNet(conv_specification="px")
