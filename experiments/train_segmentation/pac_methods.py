"""PAC methods of ``train_segmentation`` (issue 15): ``method=paccrf`` and ``method=hotswap``.

``--set method=paccrf``: a backbone segmenter plus a PAC-CRF head (:class:`ppac_jax.nn.ModelWithCrf`,
pairwise kernels from ``model.crf``, pacnet's model-name grammar), trained in the paper's stages
(pacnet README): first the head alone with the backbone frozen (``model.head_fraction`` of the
steps, Adam at ``model.head_lr``, x0.1 at the stage's middle: the original's 1e-3 for 40 epochs,
stepped at 20), then everything jointly (``model.joint_lr``, x0.1 at the stage's middle). With
``--set backbone=fcn8s`` (FCN-8s of ``--set width=W``, trained from scratch here) a first stage
(``model.backbone_fraction``) trains the backbone through the CRF at its initialisation.

``--set method=hotswap``: the backbone with PAC hot-swapped into its later convolutions
(:func:`ppac_jax.nn.hot_swap`, weights kept; the baseline's ``layers.2-4`` guided by its first
layer's features, FCN-8s: ``FCN8sPac``), fine-tuned end to end at ``model.hotswap_lr``.

``--set method=hotswap_paccrf``: both, the hot-swapped baseline as the CRF's backbone (stages as
``paccrf``).

The backbone ``baseline`` is the built-in segmenter that produced the input logits (its trained
weights); ``fcn8s`` reads pacnet's input convention (BGR, mean-subtracted, 0-255).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from experiments.train_segmentation import registry
from ppac_jax import nn
from ppac_jax.nn.segment import top_left_crop

PACNET_MEAN_RGB = (122.675, 116.669, 104.008)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def pacnet_image(image):
    """``[B, H, W, 3]`` RGB in [0, 1] -> pacnet's ``DeepLabInputs``: BGR, 0-255 minus the mean."""
    return (image * 255.0 - jnp.asarray(PACNET_MEAN_RGB, image.dtype))[..., ::-1]


def _rgb01(x):
    return (x[..., ::-1] + jnp.asarray(PACNET_MEAN_RGB, x.dtype)) / 255.0


def _imagenet(image):
    return (image - jnp.asarray(_IMAGENET_MEAN, image.dtype)) / jnp.asarray(_IMAGENET_STD,
                                                                            image.dtype)


class ImageNetBackbone(nnx.Module):
    """A network on ImageNet-normalised RGB (``net(images) -> [B, H, W, C]``) as a pacnet
    backbone: ``backbone(x, out_crop=None)`` with ``x`` in pacnet's convention."""

    def __init__(self, net, num_classes: int):
        self.net = net
        self.num_classes = int(num_classes)

    def __call__(self, x, out_crop=None):
        return top_left_crop(self.net(_imagenet(_rgb01(x))), out_crop)


# ----------------------------------------------------------------------------- backbones


def _baseline_segmenter(info):
    net = (info or {}).get("segmenter")
    if net is None:
        raise ValueError("backbone=baseline needs the built-in baseline segmenter (dataset="
                         "synthetic); with other data use --set backbone=fcn8s")
    return nnx.clone(net)


def _check_backbone(config):
    if config.backbone not in ("baseline", "fcn8s"):
        raise ValueError(f"config field backbone: expected 'baseline' or 'fcn8s', got "
                         f"{config.backbone!r}")
    if not config.width > 0:
        raise ValueError(f"config field width: expected a positive FCN-8s width multiplier, got "
                         f"{config.width!r}")


def build_paccrf(config, num_classes, *, info=None):
    """Backbone + PAC-CRF head (``config.model.crf`` in pacnet's grammar, e.g. ``crfi5p4d5161``)."""
    _check_backbone(config)
    if config.backbone == "baseline":
        backbone = ImageNetBackbone(_baseline_segmenter(info), num_classes)
        backbone_name = "fcn8s"          # only validated by the grammar; replaced by `backbone`
    else:
        backbone = nn.FCN8s(num_classes, width=config.width, init="he",
                            rngs=nnx.Rngs(config.model.model_seed))
        backbone.eval()                  # no dropout: the loop differentiates with raw jax.grad
        backbone_name = "fcn8s"
    return nn.create_model(f"{backbone_name}_{config.model.crf}", num_classes, backbone=backbone,
                           rngs=nnx.Rngs(config.model.model_seed))


def paccrf_forward(model, batch):
    """log_Q of the CRF on the backbone's logits; edge features from pacnet's image input."""
    return model(pacnet_image(batch["image"]))


def _piecewise(points):
    """``[(first_step, lr), ...]`` -> a step-indexed optax schedule (constant between points)."""
    starts = jnp.asarray([p[0] for p in points])
    values = jnp.asarray([p[1] for p in points], jnp.float32)

    def schedule(count):
        return values[jnp.maximum(jnp.sum(count >= starts) - 1, 0)]
    return schedule


def paccrf_stages(config):
    """``(backbone_end, head_end, total)`` steps: [0, backbone_end) trains the FCN-8s backbone
    (``backbone=fcn8s`` only), [backbone_end, head_end) the CRF head with the backbone frozen,
    [head_end, total) everything jointly."""
    total = int(config.train.steps)
    m = config.model
    b_end = int(round(total * m.backbone_fraction)) if config.backbone == "fcn8s" else 0
    h_end = b_end + int(round((total - b_end) * m.head_fraction))
    return b_end, h_end, total


def paccrf_optimizer(config, params):
    """Adam (pacnet's default optimiser, weight decay 0) with per-stage learning rates:
    head ``head_lr`` (x0.1 at the stage's middle, pacnet: 1e-3, stepped at epoch 20 of 40), then
    backbone and head ``joint_lr`` (x0.1 after two thirds: pacnet steps at 20 of 30); the backbone
    is frozen (rate 0) while the head trains alone."""
    m = config.model
    b_end, h_end, total = paccrf_stages(config)
    joint = [(h_end, m.joint_lr), (h_end + 2 * (total - h_end) // 3, 0.1 * m.joint_lr)]
    head = [(0, 0.0), (b_end, m.head_lr), (b_end + (h_end - b_end) // 2, 0.1 * m.head_lr)] + joint
    backbone = [(0, m.head_lr if b_end else 0.0), (b_end, 0.0)] + joint

    def label(path, _):
        return "backbone" if str(getattr(path[0], "key", path[0])) == "backbone" else "head"
    labels = jax.tree_util.tree_map_with_path(label, params)
    return optax.multi_transform({"head": optax.adam(_piecewise(head)),
                                  "backbone": optax.adam(_piecewise(backbone))}, labels)


# ----------------------------------------------------------------------------- hot-swapping


def build_hotswap(config, num_classes, *, info=None):
    """The backbone with PAC hot-swapped into ``model.hotswap_layers`` (baseline) or FCN8sPac."""
    _check_backbone(config)
    m = config.model
    if config.backbone == "fcn8s":
        net = nn.FCN8sPac(num_classes, width=config.width, init="he",
                          rngs=nnx.Rngs(m.model_seed))
        net.eval()
        return net
    return nn.hot_swap(_baseline_segmenter(info), list(m.hotswap_layers),
                       guide_from=m.guide_from, guide_scale=m.guide_scale, inplace=True)


def hotswap_forward(model, batch):
    if isinstance(model, nn.FCN8s):
        return model(pacnet_image(batch["image"]))
    return model(_imagenet(batch["image"]))


def hotswap_optimizer(config, params):
    """Adam at ``model.hotswap_lr`` for every parameter, x0.1 after two thirds of the steps."""
    total = int(config.train.steps)
    lr = config.model.hotswap_lr
    return optax.adam(_piecewise([(0, lr), (2 * total // 3, 0.1 * lr)]))


def build_hotswap_paccrf(config, num_classes, *, info=None):
    """Both: the hot-swapped baseline (``build_hotswap``) as the backbone of the PAC-CRF head."""
    if config.backbone != "baseline":
        raise ValueError("method=hotswap_paccrf builds on backbone=baseline")
    net = build_hotswap(config, num_classes, info=info)
    return nn.create_model(f"fcn8s_{config.model.crf}", num_classes,
                           backbone=ImageNetBackbone(net, num_classes),
                           rngs=nnx.Rngs(config.model.model_seed))


registry.register_method("paccrf", registry.Method(
    build=build_paccrf, forward=paccrf_forward, make_optimizer=paccrf_optimizer,
    uses_data_info=True))
registry.register_method("hotswap", registry.Method(
    build=build_hotswap, forward=hotswap_forward, make_optimizer=hotswap_optimizer,
    uses_data_info=True))
registry.register_method("hotswap_paccrf", registry.Method(
    build=build_hotswap_paccrf, forward=paccrf_forward, make_optimizer=paccrf_optimizer,
    uses_data_info=True))
