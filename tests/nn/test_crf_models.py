"""ModelWithCrf / ModelWithConvCrf / create_model against pacnet (``crfmodel_*`` golden files),
the model-name grammar (``fcn8s_model_grammar.npz``), freezing and the loose-CRF state dict."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import convert, nn
from ppac_jax.nn.segment import top_left_crop
from tests import golden as G
from tests.golden_recipe import run_summary, state_dict


class TinyBackbone(nnx.Module):
    """SPEC_wave2 2.7: ``conv3x3(x * 0.02)``, then the top-left crop."""

    def __init__(self, num_classes, *, param_dtype=jnp.float32):
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1, param_dtype=param_dtype)

    def __call__(self, x, out_crop=None):
        return top_left_crop(self.conv(x * 0.02), out_crop)


def _close(actual, expected, rel, name):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1e-30)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} * max|ref| {scale:.3g}"


@pytest.mark.parametrize("name", G.params_or_skip("crfmodel_*.npz"))
def test_crfmodel_golden(name):
    g = G.Golden(name)
    f64 = name.endswith("_f64.npz")
    dtype = np.float64 if f64 else np.float32
    model = nn.create_model(g.meta["model_name"], g.meta["num_classes"],
                            backbone=TinyBackbone(g.meta["num_classes"]))
    convert.load_torch_weights(model, state_dict(g, dtype))   # strict, by original names
    frozen = set(g.meta.get("frozen_params", []))
    trainable = {n for n, v in convert.torch_variables(model).items()
                 if isinstance(v, nnx.Param)}
    assert trainable == set(g.meta["param_names"]) - frozen
    x = jnp.asarray(G.nchw(g["in_image"]))
    cot = jnp.asarray(G.nchw(g["cot_output"]))
    out, d_x, grads, norms = run_summary(model, x, cot, {})
    assert out.dtype == dtype
    if not f64:
        out_tol, grad_tol = 1e-5, 1e-3
    elif "convcrf" in name:
        out_tol, grad_tol = 1e-6, 1e-5     # float32 position features (golden README 9.3)
    else:
        out_tol, grad_tol = 1e-12, 1e-12
    _close(G.to_nchw(np.asarray(out)), g["out_output"], out_tol, "output")
    _close(G.to_nchw(np.asarray(d_x)), g["grad_in_image"], grad_tol, "grad_in_image")
    assert set(grads) == trainable
    for pname in trainable:
        _close(grads[pname], g[f"grad_param_{pname}"], grad_tol, pname)
        ref = g.meta["grad_norms"][pname]
        assert abs(float(norms[pname]) - ref) <= grad_tol * max(ref, 1e-30) + 1e-300, pname
    for none in g.meta["grads_none"]:
        assert float(norms[none[len("param_"):]]) == 0.0


# ---------------------------------------------------------------------------------------------
# grammar

def _grammar():
    if not G.golden_files("fcn8s_model_grammar.npz"):
        return [pytest.param(None, marks=pytest.mark.skip(reason=G.SKIP_REASON))]
    return sorted(G.Golden("fcn8s_model_grammar.npz").meta["models"].items())


def _messenger_info(crf, i):
    term = crf.terms[i]
    messenger = crf.messengers[i].weight
    return dict(kernel_size=term.kernel_size, dilation=term.dilation, padding=term.padding,
                blur=term.blur, shared_filters=term.shared_filters,
                filler="crf_pool" if isinstance(messenger, nn.Buffer) else "crf_perturbed",
                compat_1x1=crf.compat[i] is not None,
                learnable_pairwise_weight=crf.learn_pairwise_weight[i],
                pairwise_weight_init=crf.pairwise_weight_init[i])


@pytest.mark.parametrize("entry", _grammar(), ids=lambda e: e[0] if e else "skip")
def test_model_grammar(entry):
    name, rec = entry
    backbone = TinyBackbone(5)
    if "error" in rec or "9d" in name:
        # 9d: the original accepts it as an anti-Potts term; ppac-jax refuses it (issue 15)
        with pytest.raises(ValueError) as info:
            nn.create_model(name, 5, backbone=backbone)
        assert "\n" not in str(info.value)
        return
    if rec.get("kind") == "backbone only":
        assert nn.create_model(name, 5, backbone=backbone) is backbone
        built = nn.create_model(name, 5, width=1 / 32)
        assert type(built) is {"fcn8s": nn.FCN8s, "fcn8saltpad": nn.FCN8sAltPad,
                               "fcn8spac": nn.FCN8sPac}[name]
        return
    model = nn.create_model(name, 5, backbone=backbone)
    assert type(model).__name__ == rec["wrapper"]
    assert model.backbone is backbone
    has_param = any(isinstance(v, nnx.Param) for _, v in nnx.iter_graph(backbone))
    assert has_param == (not rec["backbone_frozen"])
    crf = model.crf
    assert type(crf).__name__ == rec["crf_class"]
    assert crf.num_steps == rec["num_steps"]
    step = crf.steps[0] if isinstance(crf, nn.PacCRFLoose) else crf
    assert step.unary_weight_init == rec["unary_weight_init"]
    assert len(step.terms) == len(rec["pairwise_repr"])
    for i, ref in enumerate(rec["pairwise_kernels"]):
        got = _messenger_info(step, i)
        assert got == {k: ref[k] for k in got}, (i, got, ref)
    if rec["wrapper"] == "ModelWithCrf":
        assert list(model.pairwise) == rec["pairwise_repr"]
        assert [list(np.asarray(s[...])) for s in model.feat_scales] == rec["feat_scales_init"]
        shapes = {n: list(np.shape(v)) for n, v in convert.export_torch_weights(model).items()
                  if not n.startswith("backbone.") and not n.startswith("crf.messengers.1")
                  or n in rec["param_shapes"]}
        params = {n: s for n, s in shapes.items() if n in rec["param_shapes"]}
        assert params == rec["param_shapes"]


@pytest.mark.parametrize("bad", ["", "fcn9s", "fcn8s_crfi5p4d5", "fcn8s_crfi5pp4d5161",
                                 "fcn8s_crfx", "fcn8s_crfi5p4d5641_x", "fcn8s_crfixp4d5161",
                                 "fcn8s_crfi5p7d5161", "fcn8sfrozen", "fcn8s_crfi5p4d4161"])
def test_bad_names_one_clear_error(bad):
    with pytest.raises(ValueError) as info:
        nn.create_model(bad, 5, backbone=TinyBackbone(5))
    assert "\n" not in str(info.value)


def test_backbone_class_count_mismatch():
    with pytest.raises(ValueError, match="num_classes"):
        nn.create_model("fcn8s_crf", 4, backbone=TinyBackbone(5))


def test_frozen_backbone_has_no_params_and_still_loads():
    backbone = TinyBackbone(3)
    w = np.asarray(backbone.conv.weight[...])
    model = nn.create_model("fcn8sfrozen_crfi2p4d3111", 3, backbone=backbone)
    assert isinstance(model.backbone.conv.weight, nn.Buffer)
    np.testing.assert_array_equal(np.asarray(model.backbone.conv.weight[...]), w)
    sd = convert.export_torch_weights(model)
    assert "backbone.conv.weight" in sd
    convert.load_torch_weights(model, sd)
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 8, 8, 3))))))(model)
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(grads)}
    assert not any(n.startswith("backbone") for n in names) and names


def test_loose_state_dict_copies_tied_crf_into_every_step():
    tied = nn.create_model("fcn8s_crfi3p4d3121", 3, backbone=TinyBackbone(3))
    loose = nn.create_model("fcn8s_crfi3lp4d3121", 3, backbone=TinyBackbone(3))
    sd = nn.loose_state_dict(convert.export_torch_weights(tied), 3)
    convert.load_torch_weights(loose, sd)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 9, 11, 3)) * 50)
    np.testing.assert_allclose(np.asarray(loose(x)), np.asarray(tied(x)), rtol=1e-5, atol=1e-5)


def test_out_crop_crops_image_and_unary():
    model = nn.create_model("fcn8s_crfi2p4d3121", 3, backbone=TinyBackbone(3))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 10, 12, 3)) * 50)
    y = model(x, out_crop=(7, 9))
    assert y.shape == (1, 7, 9, 3)
    unary = model.backbone(x)[:, :7, :9]       # the backbone sees the whole image
    expected = model.crf(unary, model.edge_features(x[:, :7, :9]))
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="out_crop"):
        model(x, out_crop=(11, 3))


def test_crf_model_trains_end_to_end():
    """One SGD step on the full model lowers the loss (gradients reach backbone and CRF)."""
    model = nn.create_model("fcn8s_crfi2p4d3121", 3, backbone=TinyBackbone(3))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(1, 12, 12, 3)) * 50, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, (1, 12, 12)))

    def loss(m):
        logp = jax.nn.log_softmax(m(x), -1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1))

    before, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    flat = {".".join(map(str, p)): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
            for p, v in nnx.to_flat_state(grads)}
    assert np.abs(flat["backbone.conv.weight"]).max() > 0
    assert np.abs(flat["crf.messengers.0.weight"]).max() > 0
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads))
    assert float(nnx.jit(loss)(model)) < float(before)
