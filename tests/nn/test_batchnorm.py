"""nn.BatchNorm2d against NumPy versions of PyTorch's formulas, its state dict, and the BN options
of PacJointUpsample (issue 13)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from ppac_jax import convert, nn

C = 3


def _torch_bn(x, state, *, training, momentum=0.1, eps=1e-5, track=True):
    """``(y, new_state)``: torch.nn.functional.batch_norm and BatchNorm2d's stat update, NHWC."""
    state = dict(state)
    w, b = state.get("weight", 1.0), state.get("bias", 0.0)
    if training or not track:
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
        if track and training:
            n = x.size // x.shape[-1]
            state["num_batches_tracked"] = state["num_batches_tracked"] + 1
            f = momentum if momentum is not None else 1.0 / state["num_batches_tracked"]
            state["running_mean"] = (1 - f) * state["running_mean"] + f * mean
            state["running_var"] = (1 - f) * state["running_var"] + f * var * n / (n - 1)
    else:
        mean, var = state["running_mean"], state["running_var"]
    return (x - mean) / np.sqrt(var + eps) * w + b, state


def _random_state(rng):
    return {"weight": rng.uniform(0.5, 2.0, C), "bias": rng.normal(size=C),
            "running_mean": rng.normal(size=C), "running_var": rng.uniform(0.5, 2.0, C),
            "num_batches_tracked": np.asarray(7, np.int64)}


@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_pytorch_formulas_train_then_eval(momentum):
    rng = np.random.default_rng(0)
    bn = nn.BatchNorm2d(C, momentum=momentum, param_dtype=jnp.float64)
    state = _random_state(rng)
    convert.load_torch_weights(bn, state)
    assert not bn.use_running_average                   # training mode, as a fresh torch module
    for _ in range(2):
        x = rng.normal(2.0, 3.0, (2, 4, 5, C))
        y = bn(jnp.asarray(x))
        ref, state = _torch_bn(x, state, training=True, momentum=momentum)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-12, atol=1e-12)
        got = convert.export_torch_weights(bn)
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(got[name], state[name], rtol=1e-12)
        assert int(got["num_batches_tracked"]) == int(state["num_batches_tracked"])
    assert int(state["num_batches_tracked"]) == 9
    bn.eval()
    x = rng.normal(size=(1, 3, 3, C))
    ref, _ = _torch_bn(x, state, training=False)
    np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x))), ref, rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked[...]) == 9        # eval does not count
    bn.train()
    assert not bn.use_running_average


def test_defaults_options_and_errors():
    bn = nn.BatchNorm2d(C)
    names = convert.export_torch_weights(bn)
    assert sorted(names) == ["bias", "num_batches_tracked", "running_mean", "running_var",
                             "weight"]
    np.testing.assert_array_equal(names["weight"], 1)
    np.testing.assert_array_equal(names["bias"], 0)
    np.testing.assert_array_equal(names["running_mean"], 0)
    np.testing.assert_array_equal(names["running_var"], 1)
    assert names["num_batches_tracked"] == 0 and names["num_batches_tracked"].dtype.kind == "i"
    assert isinstance(bn.weight, nnx.Param) and isinstance(bn.running_var, nn.Buffer)
    assert not isinstance(bn.running_var, nnx.Param)

    bare = nn.BatchNorm2d(C, affine=False, track_running_stats=False)
    assert convert.export_torch_weights(bare) == {}
    x = np.random.default_rng(1).normal(size=(2, 3, 3, C))
    bare.eval()                                        # no running stats: batch statistics
    ref, _ = _torch_bn(x, {}, training=False, track=False)
    np.testing.assert_allclose(np.asarray(bare(jnp.asarray(x))), ref, rtol=1e-12, atol=1e-12)

    with pytest.raises(ValueError, match="x must be"):
        bn(jnp.zeros((2, 3, 3, C + 1)))
    with pytest.raises(ValueError, match="more than one value"):
        bn(jnp.zeros((1, 1, 1, C)))
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm2d(C, momentum=2.0)
    with pytest.raises(ValueError, match="num_features"):
        nn.BatchNorm2d(0)


def test_state_dict_round_trip_and_gradients():
    rng = np.random.default_rng(2)
    bn = nn.BatchNorm2d(C, param_dtype=jnp.float64)
    state = _random_state(rng)
    convert.load_torch_weights(bn, state)
    out = convert.export_torch_weights(bn)
    assert sorted(out) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(out[k], state[k])
        assert out[k].shape == np.shape(state[k])
    # gradients through the batch statistics (float64 finite differences)
    x = jnp.asarray(rng.normal(size=(2, 3, 2, C)))
    graphdef, params, rest = nnx.split(bn, nnx.Param, ...)

    def f(p, x):
        return nnx.merge(graphdef, p, rest, copy=True)(x)

    check_grads(f, (params, x), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------- PacJointUpsample + BN

SMALL = dict(n_t_layers=2, n_g_layers=1, n_f_layers=1, n_t_filters=3, n_g_filters=(),
             n_f_filters=3, k_ch=2, f_sz_1=3, f_sz_2=3)
FACTOR = 2


def _expected_names(t_bn, g_bn, u_bn, f_bn):
    """The original's state-dict names (models.PacJointUpsample, SPEC_wave2 1.2), 3/3/2 layers."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = []
    for branch, layers, on in (("branch_t", 3, t_bn), ("branch_g", 3, g_bn),
                               ("branch_f", 2, f_bn)):
        for l in range(1, layers + 1):
            names += [f"{branch}.conv{l}.weight", f"{branch}.conv{l}.bias"]
            names += [f"{branch}.bn{l}.{v}" for v in bn] if on else []
    for i in range(2):                                   # log2(4) stages
        names += [f"up_convts.{i}.weight", f"up_convts.{i}.bias"]
        names += [f"up_bns.{i}.{v}" for v in bn] if u_bn else []
    return collections.Counter(names)


def _model(bn, seed=0):
    return nn.PacJointUpsample(FACTOR, 1, 3, **SMALL, t_bn=bn, g_bn=bn, u_bn=bn, f_bn=bn,
                               rngs=nnx.Rngs(seed), param_dtype=jnp.float64)


def _inputs(seed=0, channels=2):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(2, 3, 3, channels))),
            jnp.asarray(rng.uniform(size=(2, 3 * FACTOR, 3 * FACTOR, 3))))


@pytest.mark.parametrize("flags", [(True,) * 4, (True, False, True, False), (False,) * 4])
def test_state_dict_names_are_the_originals(flags):
    t_bn, g_bn, u_bn, f_bn = flags
    m = nn.PacJointUpsample(4, t_bn=t_bn, g_bn=g_bn, u_bn=u_bn, f_bn=f_bn)
    names = convert.export_torch_weights(m)
    per_variable = collections.Counter(
        node.get_metadata().get("torch_name") or ".".join(map(str, path))
        for path, node in nnx.iter_graph(m)
        if isinstance(node, nnx.Variable) and "torch_layout" in node.get_metadata())
    assert per_variable == _expected_names(*flags)
    assert set(names) == set(per_variable)
    widths = {"branch_t.bn1.weight": 32, "branch_g.bn3.running_var": 16 * 2,
              "up_bns.1.bias": 32, "branch_f.bn2.running_mean": 1}
    for name, c in widths.items():
        if name in names:
            assert names[name].shape == (c,)
    params = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(m, nnx.Param)))
    bn_channels = 3 * 32 + 3 * 32 + 2 * 32 + 32 + 1      # t, g (16 x 2), up, f (last: 1)
    if all(flags):
        assert params == 183_489 + 2 * bn_channels      # SPEC_wave2 1.2 count + BN affine
    elif not any(flags):
        assert params == 183_489


_BN_MODEL = None


def _bn_model():
    global _BN_MODEL
    if _BN_MODEL is None:
        _BN_MODEL = _model(True)
    return _BN_MODEL


@jax.jit
def _forward_and_vjp(graphdef, params, rest, target, guide):
    def f(p, t, g):
        m = nnx.merge(graphdef, p, rest)
        return m(t, g), nnx.state(m, nn.BatchStat)

    y, pullback, stats = jax.vjp(f, params, target, guide, has_aux=True)
    return y, stats, pullback(jnp.ones_like(y))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pac_joint_upsample_with_bn_jit_vjp(mode):
    model = nnx.clone(_bn_model())
    if mode == "eval":
        model.eval()
    target, guide = _inputs()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    y, stats, (g_params, g_target, g_guide) = _forward_and_vjp(graphdef, params, rest, target,
                                                              guide)
    assert y.shape == (2, 3 * FACTOR, 3 * FACTOR, 2)
    for leaf in jax.tree_util.tree_leaves((y, g_params, g_target, g_guide)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert float(jnp.abs(g_params["branch_t"]["bn1"]["weight"][...]).sum()) > 0
    counts = {int(v[...]) for p, v in nnx.to_flat_state(stats) if p[-1] == "num_batches_tracked"}
    means = np.concatenate([np.asarray(v[...]) for p, v in nnx.to_flat_state(stats)
                            if p[-1] == "running_mean"])
    if mode == "train":
        assert counts == {1} and np.abs(means).max() > 0
        # branch_t.bn1 saw conv1 of the channel-folded target: PyTorch's update from (0, 1)
        h = np.asarray(model.branch_t.conv1(jnp.moveaxis(target, -1, 1).reshape(4, 3, 3, 1)))
        n = h.size // h.shape[-1]
        bn1 = stats["branch_t"]["bn1"]
        np.testing.assert_allclose(np.asarray(bn1["running_mean"][...]), 0.1 * h.mean((0, 1, 2)),
                                   rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(np.asarray(bn1["running_var"][...]),
                                   0.9 + 0.1 * h.var((0, 1, 2)) * n / (n - 1), rtol=1e-10)
    else:
        assert counts == {0} and np.abs(means).max() == 0


def test_eval_bn_equals_folded_network():
    """Eval-mode BN after a conv / PAC stage is an affine map per channel: the BN network equals
    the network without BN whose conv weights and biases absorb it (same initial weights)."""
    rng = np.random.default_rng(3)
    with_bn = nnx.clone(_bn_model())
    state = convert.export_torch_weights(with_bn)
    for name in state:
        prefix, leaf = name.rsplit(".", 1)
        if ".bn" in name or name.startswith("up_bns"):
            c = state[name].shape
            state[name] = {"weight": rng.uniform(0.5, 2, c), "bias": rng.normal(size=c),
                           "running_mean": rng.normal(size=c),
                           "running_var": rng.uniform(0.5, 2, c),
                           "num_batches_tracked": state[name]}[leaf]
    convert.load_torch_weights(with_bn, state)
    with_bn.eval()
    plain = _model(False)
    folded = convert.export_torch_weights(plain)
    for name in folded:
        prefix, leaf = name.rsplit(".", 1)
        bn = (prefix.replace("conv", "bn") if prefix.startswith("branch")
              else prefix.replace("up_convts", "up_bns"))
        np.testing.assert_array_equal(folded[name], state[name])  # same initial weights
        scale = state[bn + ".weight"] / np.sqrt(state[bn + ".running_var"] + 1e-5)
        if leaf == "bias":
            folded[name] = (folded[name] - state[bn + ".running_mean"]) * scale \
                + state[bn + ".bias"]
        elif prefix.startswith("up_convts"):              # IOHW: output channels on axis 1
            folded[name] = folded[name] * scale[None, :, None, None]
        else:                                             # OIHW
            folded[name] = folded[name] * scale[:, None, None, None]
    convert.load_torch_weights(plain, folded)
    target, guide = _inputs(1, channels=1)
    run = nnx.jit(lambda m, t, g: m(t, g))
    y_bn, y_plain = run(with_bn, target, guide), run(plain, target, guide)
    assert float(jnp.abs(y_bn - run(_model(False), target, guide)).max()) > 1e-3  # BN matters
    np.testing.assert_allclose(np.asarray(y_bn), np.asarray(y_plain), rtol=1e-9, atol=1e-11)
