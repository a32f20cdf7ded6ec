"""ppac_jax.convert: checkpoint reading/writing without torch, name/layout mapping, round trips."""

import collections
import pickle
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import convert
from ppac_jax import nn as pnn
from tests import golden as G

CHECKPOINTS = ["flow_refinement_kitti", "flow_refinement_sintel_clean",
               "flow_refinement_sintel_final", "segmentation_refinement_pascal"]
GOLDEN_OF = {
    "flow_refinement_kitti": "ppacnet_flow_refinement_kitti_crop48x96_f32.npz",
    "flow_refinement_sintel_clean": "ppacnet_flow_refinement_sintel_clean_crop48x96_f32.npz",
    "flow_refinement_sintel_final": "ppacnet_flow_refinement_sintel_final_crop48x96_f32.npz",
    "segmentation_refinement_pascal": "ppacnet_segmentation_refinement_pascal_crop32x40_f32.npz",
}


def _checkpoint(name):
    root = G.shared_dir()
    if root is None:
        pytest.skip(G.SKIP_REASON)
    return root / "checkpoints" / f"{name}.pth"


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_legacy_checkpoint_matches_golden_parameters(name):
    ckpt = convert.read_torch_file(_checkpoint(name))
    assert {"epoch", "state_dict", "optimizer"} <= set(ckpt)
    assert isinstance(ckpt["epoch"], int)
    sd = convert.read_state_dict(ckpt)
    assert all(k.startswith(convert.PPACNET_PREFIX) for k in sd)
    g = G.Golden(GOLDEN_OF[name])
    expected = {k[len("param_"):]: v for k, v in g.arrays.items() if k.startswith("param_")}
    got = {k[len(convert.PPACNET_PREFIX):]: v for k, v in sd.items()}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    # optimizer state comes along as arrays of the parameters' shapes
    shapes = sorted(v.shape for v in got.values())
    moments = [s["exp_avg"].shape for s in ckpt["optimizer"]["state"].values()]
    assert sorted(moments) == shapes


def test_numpy_core_scalar_in_legacy_checkpoint():
    ckpt = convert.read_torch_file(_checkpoint("segmentation_refinement_pascal"))
    assert isinstance(ckpt["best_miou"], np.floating) and 0 < ckpt["best_miou"] < 1


def _legacy_bytes(payload: bytes) -> bytes:
    head = b"".join(pickle.dumps(x, protocol=2) for x in
                    (convert._LEGACY_MAGIC, 1001, {"protocol_version": 1001}))
    return head + payload + pickle.dumps([], protocol=2)


def test_whitelist_refuses_arbitrary_globals(tmp_path):
    evil = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R."   # os.system("true")
    legacy = tmp_path / "evil.pth"
    legacy.write_bytes(_legacy_bytes(evil))
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        convert.read_torch_file(legacy)
    zipped = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", evil)
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        convert.read_torch_file(zipped)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(pickle.dumps(123, protocol=2) * 4)
    with pytest.raises(ValueError, match="magic"):
        convert.read_torch_file(bad)


def test_zip_with_numpy2_scalars_and_arrays(tmp_path):
    obj = {"state_dict": collections.OrderedDict(), "best": np.float64(0.25),
           "hist": np.arange(5, dtype=np.int32)}
    path = tmp_path / "np2.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ckpt/data.pkl", pickle.dumps(obj, protocol=2))
    assert b"numpy._core" in pickle.dumps(obj, protocol=2) or np.__version__.startswith("1.")
    back = convert.read_torch_file(path)
    assert back["best"] == 0.25
    np.testing.assert_array_equal(back["hist"], obj["hist"])


def test_zip_writer_reader_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    sd = collections.OrderedDict([
        ("a.weight", rng.normal(size=(2, 3, 5, 5)).astype(np.float32)),
        ("a.bias", rng.normal(size=(2,))),
        ("scalar", np.array(1.5, np.float32)),
        ("steps", np.arange(4, dtype=np.int64)),
        ("half", rng.normal(size=(3,)).astype(np.float16)),
        ("transposed", np.asfortranarray(rng.normal(size=(3, 4)))),
    ])
    path = tmp_path / "sd.pth"
    convert.save_torch_state_dict(sd, path)
    back = convert.read_state_dict(path)
    assert list(back) == list(sd)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():         # torch.save's layout: 64-byte aligned records
            name_len, extra_len = np.frombuffer(raw[info.header_offset + 26:][:4], "<u2")
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
        assert zf.read("archive/version") == b"3\n"
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        np.testing.assert_array_equal(back[key], value)


def _layers():
    return [
        pnn.PacConv2d(3, 4, 5, padding=2, kernel_type="inv_0.2_0.3_asym",
                      smooth_kernel_type="full_3"),
        pnn.PacConv2d(3, 3, 3, padding=1, kernel_type="inv_0.5_1.0_fixed",
                      smooth_kernel_type="average_5", shared_filters=True, filler="crf_pool",
                      bias=False),
        pnn.PacConvTranspose2d(2, 3, 5, stride=2, padding=2, output_padding=1,
                               smooth_kernel_type="gaussian"),
        pnn.PacPool2d(3, padding=1, kernel_type="inv_0.2_0.2", channel_wise=True, out_channels=3),
        pnn.ProbPacConv2d(2, 3, 3, padding=1),
        pnn.NormalizedPacConv2d(2, 2, 7, padding=3, shared_filters=True),
        pnn.PPacNet(3, 3, "pcp", False, (4, 3, 2), (3, 4, 4), (2, 3, 3, 2)),
    ]


@pytest.mark.parametrize("index", range(7))
def test_export_import_identity(index, tmp_path):
    source = _layers()[index]
    exported = convert.export_torch_weights(source)
    rng = np.random.default_rng(index)
    changed = {k: (rng.normal(size=v.shape)).astype(v.dtype) for k, v in exported.items()}
    target = _layers()[index]
    convert.load_torch_weights(target, changed)
    again = convert.export_torch_weights(target)
    assert set(again) == set(changed)
    for key in changed:
        assert again[key].dtype == changed[key].dtype
        np.testing.assert_array_equal(again[key], changed[key])
    # through a file, with a prefix
    path = tmp_path / "w.pth"
    convert.save_torch_state_dict({"module." + k: v for k, v in changed.items()}, path)
    third = _layers()[index]
    convert.load_torch_weights(third, path, prefix="module.")
    for key, value in convert.export_torch_weights(third).items():
        np.testing.assert_array_equal(value, changed[key])


def test_strict_errors_list_keys_and_dtype_kept():
    layer = pnn.ProbPacConv2d(2, 2, 3, padding=1)
    sd = convert.export_torch_weights(layer)
    extra = dict(sd, **{"extra.weight": np.zeros(3, np.float32)})
    del extra["bias"]
    with pytest.raises(KeyError) as err:
        convert.load_torch_weights(layer, extra)
    assert "extra.weight" in str(err.value) and "bias" in str(err.value)
    convert.load_torch_weights(layer, extra, strict=False)
    with pytest.raises(ValueError, match="weight"):
        convert.load_torch_weights(layer, dict(sd, weight=np.zeros((2, 2, 5, 5), np.float32)))
    f64 = {k: v.astype(np.float64) for k, v in sd.items()}     # (x64 is on in tests)
    convert.load_torch_weights(layer, f64)
    assert layer.weight[...].dtype == jnp.float64


def test_gradient_export_from_state_and_pure_dict():
    layer = pnn.PacConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1,
                                   kernel_type="inv_0.2_0.3")
    x = jnp.ones((1, 3, 4, 2))
    guide = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 8, 2)), jnp.float32)
    grads = nnx.grad(lambda m: jnp.sum(m(x, guide) ** 2))(layer)
    from_state = convert.export_torch_gradients(layer, grads)
    from_dict = convert.export_torch_weights(layer, nnx.to_pure_dict(grads))
    assert set(from_state) == {"weight", "bias", "inv_alpha", "inv_lambda"}
    assert from_state["weight"].shape == (2, 3, 3, 3)          # IOHW
    for key in from_state:
        np.testing.assert_array_equal(from_state[key], from_dict[key])
    np.testing.assert_array_equal(from_state["weight"],
                                  np.transpose(np.asarray(grads["weight"][...]), (2, 3, 0, 1)))


def test_load_ppacnet_prefix_and_dtype():
    sd = convert.read_state_dict(_checkpoint("flow_refinement_kitti"))
    stripped = {k[len(convert.PPACNET_PREFIX):]: v for k, v in sd.items()}
    net = convert.load_ppacnet(stripped)
    assert isinstance(net, pnn.PPacNet)
    assert net.layers_joint[0].weight[...].dtype == jnp.float32
    with pytest.raises(ValueError, match="prefix"):
        convert.load_ppacnet(sd, prefix="other.")
