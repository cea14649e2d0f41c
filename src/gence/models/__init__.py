"""Networks by name, adapting to the input's channels and size (1x8x8, 1x28x28, 3x32x32, feature vectors).

    from gence import models
    net = models.build("resnet20", in_channels=3, num_classes=10, image_size=32)
    models.available()        # {"mlp": "...", "resnet": "...", ...}: name -> one-line description

Every convolutional network ends in global average pooling, so the classifier does not depend on the
input size; strides are chosen so that 8x8 inputs still run (see each module's docstring). Every network
takes ``head="linear"`` (default) or ``head="cosine"``: a classifier whose logits are cosines between the
features and the class weights (:class:`CosineLinear`, the layer LDAM's authors pair with ``s = 30``).

Adding a network: a class (or function) taking ``in_channels``, ``num_classes``, ``image_size`` and its
own parameters by keyword, registered with one line,
``register("name", "one-line description", fixed={"depth": 20})(Network)``, where ``fixed`` (optional)
pins constructor arguments for that name. Its keyword parameters are what :func:`build` accepts.

A user's network needs no registration: a model name ``"package.module:function"`` (a function or an
``nn.Module`` class, importable from ``sys.path``) is called with ``num_classes``, ``in_channels``,
``image_size`` (only when its signature names it: an (H, W) tuple, or None for feature vectors) and the
model's params; ``"timm:NAME"`` is
``timm.create_model(NAME, num_classes=..., in_chans=..., **params)`` (timm is an optional extra,
``pip install timm``; pass e.g. ``img_size`` or ``pretrained`` as params). See :func:`is_reference`.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping

from torch import nn

from gence.models._common import HEADS, CosineLinear, as_hw, set_head, set_reference_head
from gence.models.preact_resnet import PreActResNet
from gence.models.resnet import ResNet
from gence.models.small import MLP, SmallCNN
from gence.models.wide_resnet import WideResNet
from gence.registry import Registry, check_keywords, keyword_names

__all__ = ["build", "available", "check_params", "register", "REGISTRY", "INPUT_ARGUMENTS", "is_reference",
           "ResNet", "WideResNet", "PreActResNet", "SmallCNN", "MLP", "CosineLinear", "HEADS"]

REGISTRY = Registry("model")
register = REGISTRY.register

# What build passes to every builder; the rest of a builder's keywords are the model's parameters.
INPUT_ARGUMENTS = ("in_channels", "num_classes", "image_size")

register("resnet", "CIFAR ResNet (He et al. 2016): depth=6n+2 (20), shortcut='A' zero-pad | 'B' projection, "
         "width (16)")(ResNet)
for _depth, _size in ((8, "0.075M"), (20, "0.27M"), (32, "0.46M"), (56, "0.85M")):
    register(f"resnet{_depth}", f"CIFAR ResNet-{_depth}, {_size} parameters on CIFAR-10", fixed={"depth": _depth})(ResNet)
register("wrn", "Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016): depth=6n+4 (28), width=k (10), "
         "dropout (0)")(WideResNet)
for _depth, _width, _size in ((16, 2, "0.69M"), (16, 4, "2.7M"), (28, 10, "36.5M")):
    register(f"wrn{_depth}_{_width}", f"WRN-{_depth}-{_width}, {_size} parameters on CIFAR-10",
             fixed={"depth": _depth, "width": _width})(WideResNet)
register("preact_resnet18", "PreAct ResNet-18 (He et al. 2016, identity mappings), 11.2M parameters")(PreActResNet)
register("small_cnn", "three conv-BN-ReLU layers and a linear head, ~24k parameters, for fast runs")(SmallCNN)
register("mlp", "MLP on flattened inputs or feature vectors: hidden=(256, 256); () is logistic regression")(MLP)


def available() -> dict[str, str]:
    """Names accepted by :func:`build`, each with a one-line description."""
    return REGISTRY.available()


TIMM_PREFIX = "timm:"


def is_reference(name: object) -> bool:
    """Whether ``name`` names a model outside the registry: ``"timm:NAME"`` or ``"package.module:function"``
    (anything with a ``:``; registered names have none)."""
    return isinstance(name, str) and ":" in name


def _timm(name: str):
    try:
        import timm  # optional dependency: only "timm:NAME" models need it
    except ImportError as exc:
        raise ImportError(f"model {name!r} needs timm, an optional dependency: pip install timm "
                          f"(from a clone, the extra: pip install -e '.[timm]')") from exc
    return timm


def _reference_builder(name: str) -> Callable[..., Any]:
    """The callable a reference names; ValueError naming the model when it cannot be found."""
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        if not arch:
            raise ValueError(f"model {name!r}: expected 'timm:NAME' with a timm model name, e.g. 'timm:resnet18'")
        timm = _timm(name)
        # timm.list_models() would reject a name timm knows only by a pretrained tag; create_model checks it.
        return lambda num_classes, in_channels, **params: timm.create_model(
            arch, num_classes=num_classes, in_chans=in_channels, **params)
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model {name!r}: expected 'package.module:function' (or 'timm:NAME')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model {name!r}: cannot import module {module_name!r} ({exc}); expected a module "
                         f"importable from sys.path (PYTHONPATH)") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model {name!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model {name!r}: {attr!r} is a {type(target).__name__}, expected a callable "
                         f"(a function or an nn.Module class)")
    return target


def _reference_keywords(name: str, builder: Callable) -> tuple[str, ...] | None:
    """The params a reference takes (None: any), after checking it takes num_classes and in_channels."""
    if name.startswith(TIMM_PREFIX):
        return None  # timm.create_model passes any keyword on to the architecture
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [a for a in ("num_classes", "in_channels") if a not in params and not takes_any]
    if missing:
        raise ValueError(f"model {name!r}: the callable takes no {', '.join(missing)}; expected a callable "
                         f"taking num_classes and in_channels by keyword (and optionally image_size)")
    return keyword_names(builder, skip=INPUT_ARGUMENTS)


def _fixed(name: str) -> Mapping[str, Any]:
    return REGISTRY.get(name).info.get("fixed", {})


def check_params(name: str, head: str = "linear", **params) -> None:
    """Check a model's name, head and parameter names without building it; ValueError naming the model,
    the parameter and what is valid. Values are checked by the network's constructor in :func:`build`
    (some, such as the image size, only make sense with the dataset's shape).

    A reference (:func:`is_reference`) is imported (ValueError if it cannot be; ImportError naming the
    extra for ``timm:`` without timm) and its params checked against its signature (any, for timm)."""
    if is_reference(name):
        if head not in HEADS:
            raise ValueError(f"model {name!r}: head={head!r}; expected one of {HEADS}")
        check_keywords(f"model {name!r}", params, _reference_keywords(name, _reference_builder(name)))
        return
    entry = REGISTRY.get(name)
    if head not in HEADS:
        raise ValueError(f"model {name!r}: head={head!r}; expected one of {HEADS}")
    fixed = _fixed(name)
    pinned = [f"{k}={v!r}" for k, v in params.items() if k in fixed]
    if pinned:
        raise ValueError(f"model {name!r}: {', '.join(pinned)} cannot be set, the name fixes "
                         f"{', '.join(f'{k}={v!r}' for k, v in fixed.items())}")
    valid = keyword_names(entry.builder, skip=(*INPUT_ARGUMENTS, *fixed))
    check_keywords(f"model {name!r}", params, valid)


def build(name: str, in_channels: int, num_classes: int, image_size=32, head: str = "linear", **params) -> nn.Module:
    """Build the network ``name`` for inputs of shape (in_channels, *image_size) and ``num_classes`` outputs.

    ``image_size`` is an int (square), an (H, W) pair, or None / () for feature vectors (``mlp`` only).
    ``head``: ``"linear"`` (an ``nn.Linear`` classifier) or ``"cosine"`` (:class:`CosineLinear`).
    ``params`` go to the network's constructor (e.g. ``depth``, ``width``, ``shortcut``, ``hidden``).
    Raises ValueError naming the model for an unknown name, head or parameter (checked before anything
    is built, see :func:`check_params`) and for a value the constructor rejects.

    ``name`` may also be ``"package.module:function"`` or ``"timm:NAME"`` (see the module docstring);
    ``head="cosine"`` then replaces the classifier the model exposes: ``get_classifier()`` (timm models,
    and any model defining it) when that is an ``nn.Linear``, else the model's last ``nn.Linear`` with
    ``num_classes`` outputs; ValueError when there is neither.
    """
    check_params(name, head, **params)
    if is_reference(name):
        return _build_reference(name, in_channels, num_classes, image_size, head, params)
    builder = REGISTRY.get(name).builder
    try:
        model = builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                        **_fixed(name), **params)
    except ValueError as exc:
        raise ValueError(f"model {name!r}: {exc}") from exc
    except TypeError as exc:  # a value of the wrong type, e.g. depth="20"
        given = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ValueError(f"model {name!r} ({given}): {exc}") from exc
    return set_head(model, head)


def _build_reference(name: str, in_channels: int, num_classes: int, image_size, head: str,
                     params: Mapping[str, Any]) -> nn.Module:
    builder = _reference_builder(name)
    inputs = {"num_classes": num_classes, "in_channels": in_channels}
    if not name.startswith(TIMM_PREFIX) and "image_size" in inspect.signature(builder).parameters:
        hw = as_hw(image_size)
        inputs["image_size"] = hw if hw else None  # always (H, W), or None for feature vectors
    try:
        model = builder(**inputs, **params)
    except (ValueError, TypeError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ValueError(f"model {name!r} ({given}): {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned a {type(model).__name__}, expected a torch.nn.Module")
    return set_reference_head(model, head, num_classes, name)
