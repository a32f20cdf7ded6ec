"""nn.hot_swap: PAC layers swapped into any NNX model (FCN8sPac and an unrelated small CNN)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import convert, nn


class SmallCNN(nnx.Module):
    """Not an FCN: nnx.Conv and nn.Conv2d in a list, a strided conv, a nested block."""

    def __init__(self, rngs):
        self.stem = nnx.Conv(3, 8, (3, 3), padding="SAME", param_dtype=jnp.float64, rngs=rngs)
        self.act = nn.ReLU()
        self.body = nnx.List([nn.Conv2d(8, 8, 3, padding=1, param_dtype=jnp.float64, rngs=rngs),
                              nn.Conv2d(8, 8, 5, padding=4, dilation=2,
                                        param_dtype=jnp.float64, rngs=rngs)])
        self.down = nnx.Conv(8, 6, (3, 3), strides=2, padding=1, param_dtype=jnp.float64,
                             rngs=rngs)
        self.head = nn.Conv2d(6, 4, 1, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        h = self.act(self.stem(x))
        for conv in self.body:
            h = jax.nn.relu(conv(h))
        return self.head(jax.nn.relu(self.down(h)))


SWAP = ["stem", "body.0", "body.1", "down"]


@pytest.fixture(scope="module")
def cnn():
    return SmallCNN(nnx.Rngs(3))


def _x(shape=(2, 12, 14, 3), seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


@nnx.jit
def _apply(model, x):
    return model(x)


@nnx.jit
def _apply_guided(model, x, guide):
    nn.set_guide(model, guide)
    return model(x)


def _params(model):
    return {".".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_constant_guide_equals_original_model(cnn):
    swapped = nn.hot_swap(cnn, SWAP)
    assert all(isinstance(swapped.body[i], nn.HotSwappedPacConv2d) for i in (0, 1))
    assert isinstance(swapped.stem, nn.PacConv2d) and isinstance(swapped.down, nn.PacConv2d)
    x = _x()
    ref = np.asarray(_apply(cnn, x))
    # constant guide (any value), Gaussian kernel: K = 1 at every tap
    for value in (0.0, 3.5):
        out = np.asarray(_apply_guided(swapped, x, jnp.full((2, 12, 14, 2), value)))
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    # a varying guide does change the output: the swapped layers really run as PAC
    moved = np.asarray(_apply_guided(swapped, x, _x((2, 12, 14, 2), seed=1)))
    assert np.abs(moved - ref).max() > 1e-3 * np.abs(ref).max()


def test_parameters_keep_their_values_and_original_is_untouched(cnn):
    before = _params(cnn)
    swapped = nn.hot_swap(cnn, SWAP)
    after = _params(swapped)
    assert after.keys() - before.keys() == {"stem.weight", "down.weight"}   # nnx.Conv kernels
    for name in ("body.0.weight", "body.0.bias", "body.1.weight", "head.weight"):
        np.testing.assert_array_equal(after[name], before[name])
    np.testing.assert_array_equal(after["stem.weight"], before["stem.kernel"])
    np.testing.assert_array_equal(after["down.bias"], before["down.bias"])
    assert isinstance(cnn.body[0], nn.Conv2d) and type(cnn.stem) is nnx.Conv
    np.testing.assert_array_equal(_params(cnn)["body.0.weight"], before["body.0.weight"])


def test_no_selected_convs_is_unchanged(cnn):
    same = nn.hot_swap(cnn, [])
    assert type(same.body[0]) is nn.Conv2d
    x = _x()
    np.testing.assert_array_equal(np.asarray(_apply(same, x)), np.asarray(_apply(cnn, x)))
    a, b = _params(same), _params(cnn)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_bad_selection_names_the_layer(cnn):
    with pytest.raises(ValueError, match="'body.7'"):
        nn.hot_swap(cnn, ["body.0", "body.7"])
    with pytest.raises(ValueError, match="'act'.*not a convolution"):
        nn.hot_swap(cnn, ["act"])
    with pytest.raises(ValueError, match="guide_from='nope'"):
        nn.hot_swap(cnn, ["body.0"], guide_from="nope")
    with pytest.raises(ValueError, match="no guide"):
        nn.hot_swap(cnn, ["body.0"])(_x())
    with pytest.raises(ValueError, match="guide_scale must be a finite number, got 'a'"):
        nn.hot_swap(cnn, ["body.0"], guide_scale="a")
    with pytest.raises(ValueError, match="guide_scale"):
        nn.hot_swap(cnn, ["body.0"], guide_scale=float("nan"))


def test_guide_from_a_later_layer_says_so(cnn):
    """``head`` runs after ``body.0``: the error names guide_from and the order, and the
    guide of a guide_from model cannot be set by hand."""
    late = nn.hot_swap(cnn, ["body.0"], guide_from="head")
    with pytest.raises(ValueError, match="guide_from='head' has not run before it"):
        late(_x())
    with pytest.raises(ValueError, match="guide_from"):
        nn.set_guide(late, _x((2, 12, 14, 2)))


def test_sequential_paths_as_in_the_readme():
    """README: a child of an ``nnx.Sequential`` is ``"<name>.layers.<i>"``; ``"body.2"`` gets
    an error that points at it."""
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.body = nnx.Sequential(
                nnx.Conv(3, 4, (3, 3), padding=1, param_dtype=jnp.float64, rngs=rngs),
                jax.nn.relu,
                nnx.Conv(4, 4, (3, 3), padding=1, param_dtype=jnp.float64, rngs=rngs))

        def __call__(self, x):
            return self.body(x)

    model = Net(nnx.Rngs(0))
    with pytest.raises(ValueError, match="no layer 'body.2' \\(close: 'body.layers.2'"):
        nn.hot_swap(model, ["body.2"])
    swapped = nn.hot_swap(model, ["body.layers.2"])
    assert isinstance(swapped.body.layers[2], nn.HotSwappedPacConv2d)


def test_guide_from_an_inner_layer(cnn):
    """The guide is the output of ``act``; guide_scale 0 makes it constant (= the original)."""
    x = _x()
    ref = np.asarray(_apply(cnn, x))
    zero = nn.hot_swap(cnn, ["body.0", "body.1", "down"], guide_from="act", guide_scale=0.0)
    np.testing.assert_allclose(np.asarray(_apply(zero, x)), ref, rtol=0,
                               atol=1e-12 * np.abs(ref).max())
    live = nn.hot_swap(cnn, ["body.0", "body.1", "down"], guide_from="act", guide_scale=0.5)
    out = np.asarray(_apply(live, x))
    assert np.abs(out - ref).max() > 1e-3 * np.abs(ref).max()


def test_reproduces_fcn8spac():
    """hot_swap(FCN8sAltPad(upsample="bilinear")) at conv3_3/4_3/5_3 from relu2_2 x 1e-4 is
    FCN8sPac: same state-dict names, same outputs for the same weights."""
    kw = dict(width=1 / 16, init="he", param_dtype=jnp.float64)
    swapped = nn.hot_swap(nn.FCN8sAltPad(3, upsample="bilinear", **kw),
                          ["conv3_3", "conv4_3", "conv5_3"], guide_from="relu2_2",
                          guide_scale=1e-4)
    pac = nn.FCN8sPac(3, **kw)
    sd = convert.export_torch_weights(swapped)
    assert set(sd) == set(convert.torch_variables(pac))
    # make the guide matter: large relu2_2 activations (the 1e-4 scale expects VGG's)
    sd = {k: v * (40.0 if k.startswith("conv2_2") else 1.0) for k, v in sd.items()}
    convert.load_torch_weights(swapped, sd)
    convert.load_torch_weights(pac, sd)
    swapped.eval()
    pac.eval()
    x = _x((1, 32, 32, 3), seed=4) * 60
    a, b = np.asarray(_apply(swapped, x)), np.asarray(_apply(pac, x))
    np.testing.assert_array_equal(a, b)
    plain = nn.FCN8sAltPad(3, upsample="bilinear", **kw)
    convert.load_torch_weights(plain, sd)
    plain.eval()
    assert np.abs(np.asarray(_apply(plain, x)) - a).max() > 0   # the PAC layers do adapt


def test_guide_set_inside_jit_does_not_leak_into_eager_calls(cnn):
    """issue 15: a guide set inside a jitted call lasts for that trace only: it is not written
    to the model's state, an eager call without a new guide gets one clear ValueError (not
    JAX's leaked-tracer error); a concrete guide set outside works in eager and jitted calls."""
    model = nn.hot_swap(cnn, ["body.0"])
    x, guide = _x(), _x((2, 12, 14, 2), seed=1)
    jitted = np.asarray(_apply_guided(model, x, guide))
    assert jax.tree_util.tree_leaves(nnx.state(model, nn.Guide)) == []
    with pytest.raises(ValueError, match="guide must be set before the call"):
        model(x)
    nn.set_guide(model, guide)                               # concrete: usable under jit
    np.testing.assert_allclose(np.asarray(_apply(model, x)), jitted, rtol=1e-12, atol=1e-12)


def test_guide_set_in_an_outer_trace_is_readable_in_an_inner_one(cnn):
    """A tracer of a live trace is not stale: set inside jit, read under a nested jax.vjp."""
    model = nn.hot_swap(cnn, ["body.0"])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x, guide = _x(), _x((2, 12, 14, 2), seed=1)

    @jax.jit
    def grad_x(params, rest, x, guide):
        m = nnx.merge(graphdef, params, rest)
        nn.set_guide(m, guide * 2.0)
        y, pullback = jax.vjp(lambda x: m(x), x)
        return y, pullback(jnp.ones_like(y))[0]

    y, g = grad_x(params, rest, x, guide)
    nn.set_guide(model, guide * 2.0)
    np.testing.assert_allclose(np.asarray(y), np.asarray(model(x)), rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0


# ------------------------------------------------ the guide is state (issue: a frozen guide)


class OneConv(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), padding=1, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


@jax.jit
def _merged_apply(graphdef, params, rest, x):
    return nnx.merge(graphdef, params, rest)(x)


def _one_conv():
    net = nn.hot_swap(OneConv(nnx.Rngs(0)), ["conv"])
    x, g1, g2 = _x((2, 8, 8, 3), seed=5), _x((2, 8, 8, 2), seed=6), _x((2, 8, 8, 2), seed=7)
    return net, x, g1, g2


def _expected(net, x, guide):
    """The swapped layer with the guide passed explicitly (eager): no shared guide involved."""
    return np.asarray(net.conv(x, guide))


def test_a_guide_set_outside_jit_is_an_input_of_the_compiled_function():
    net, x, g1, g2 = _one_conv()
    e1, e2 = _expected(net, x, g1), _expected(net, x, g2)
    assert np.abs(e1 - e2).max() > 1e-2                      # the two guides do differ
    for guide, expected in ((g1, e1), (g2, e2), (g1, e1)):
        nn.set_guide(net, guide)
        np.testing.assert_allclose(np.asarray(_apply(net, x)), expected, rtol=1e-12, atol=1e-12)
        graphdef, params, rest = nnx.split(net, nnx.Param, ...)
        np.testing.assert_allclose(np.asarray(_merged_apply(graphdef, params, rest, x)),
                                   expected, rtol=1e-12, atol=1e-12)
    # shapes are checked for every guide: a new shape is traced again
    nn.set_guide(net, _x((3, 8, 8, 2)))
    with pytest.raises(ValueError, match="guide batch 3 != input batch 2"):
        _apply(net, x)


def test_the_guide_variable_is_rest_state_without_leaves_until_set():
    """Neither a parameter nor a BatchNorm statistic (the Trainer's split): in the rest, which
    the Trainer keeps constant and does not checkpoint; None (no leaves) until set."""
    net, _, g1, _ = _one_conv()
    _, params, _, rest = nnx.split(net, nnx.Param, nn.BatchStat, ...)
    assert not any(isinstance(v, nn.Guide) for _, v in nnx.to_flat_state(params))
    assert [type(v) for _, v in nnx.to_flat_state(rest)] == [nn.Guide]
    assert jax.tree_util.tree_leaves(rest) == []
    nn.set_guide(net, g1)
    rest = nnx.split(net, nnx.Param, nn.BatchStat, ...)[3]
    assert [leaf.shape for leaf in jax.tree_util.tree_leaves(rest)] == [g1.shape]


def test_copies_have_their_own_guide():
    net, x, g1, g2 = _one_conv()
    nn.set_guide(net, g1)
    kept = nnx.clone(net)                    # a copy keeps the guide it had
    c, d = nnx.clone(net), copy.deepcopy(net)
    nn.set_guide(c, g2)
    nn.set_guide(d, g2)
    nn.set_guide(net, g2)
    nn.set_guide(c, g1)
    e1, e2 = _expected(net, x, g1), _expected(net, x, g2)
    np.testing.assert_allclose(np.asarray(c(x)), e1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(d(x)), e2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(kept(x)), e1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(net(x)), e2, rtol=1e-12, atol=1e-12)


def test_a_guide_set_inside_vjp_vmap_scan_lasts_for_that_trace():
    """set_guide inside jax.vjp / jax.vmap / lax.scan on a model made outside them: used there,
    and the guide set outside is back afterwards."""
    net, x, g1, g2 = _one_conv()
    e1, e2 = _expected(net, x, g1), _expected(net, x, g2)
    nn.set_guide(net, g1)

    def guided(g, x):
        nn.set_guide(net, g)
        return net(x)

    y, pullback = jax.vjp(guided, g2, x)
    np.testing.assert_allclose(np.asarray(y), e2, rtol=1e-12, atol=1e-12)
    assert float(jnp.abs(pullback(jnp.ones_like(y))[0]).max()) > 0
    y = jax.vmap(lambda g, x: guided(g[None], x[None])[0])(g2, x)
    np.testing.assert_allclose(np.asarray(y), e2, rtol=1e-12, atol=1e-12)
    _, y = jax.lax.scan(lambda c, gx: (c, guided(gx[0][None], gx[1][None])[0]), 0, (g2, x))
    np.testing.assert_allclose(np.asarray(y), e2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(net(x)), e1, rtol=1e-12, atol=1e-12)
