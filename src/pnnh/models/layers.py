"""Blocks shared by every CNN family: the learner, the shortcut, the PNNH coder.

A block is a learner F (conv-norm-act, ..., conv-norm) followed by the block's
activation. The three kinds differ only in what is added to F(x) before it:

    residual:  act(F(x) + S(x))                        S identity or 1x1 conv + BN
    plain:     act(F(x))
    pnnh:      act(F(x) + decode(act(u) - act(-u)))    u = encode(x)

The skip-free kinds (tat, looks_linear, dirac, repvgg) are built with plain
blocks and then changed by their own module (``registry.register_kind``):
other activations, other conv layers, another initialisation.

In a PNNH block the pair [act(u), act(-u)] is made of extra output channels of
F's first conv and carried through F's later layers (see ``pnnh.convert``), so
no tensor skips a layer; act(u) - act(-u) = u for ReLU, GELU and SiLU, so the
code survives the non-linearity whatever its sign. For training, the same
function is computed more cheaply as one 1x1 conv with the composed matrix
decode @ E (the tests check it against the literal plain chain).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PnnhError
from .registry import KINDS, PnnhNet, kind_transform

LayerFn = Callable[..., nn.Module]
MIRROR_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU)  # act(u) - act(-u) = u exactly


class ConvNormAct(nn.Module):
    """conv (no bias) -> norm -> act; ``apply_act=False`` leaves the activation out."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 norm_layer: LayerFn = nn.BatchNorm2d, act_layer: LayerFn = nn.ReLU,
                 apply_act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = norm_layer(out_ch)
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one conv that computes bn(conv(x)) in eval mode: what ``to_plain`` writes.
        Conv layers of other kinds (RepVGG's branches, DiracNet's kernel) override it."""
        scale, shift = bn_affine(self.bn)
        return self.conv.weight * scale[:, None, None, None], shift


class TiedCoder(nn.Module):
    """u = E x (a 1x1 map, strided with the block), decoded by the tied transpose E^T.

    E starts with orthonormal rows (columns when the code is wider), so with a
    code as wide as the block E^T E = I and the block computes what a residual
    block computes. ``learnable=False`` keeps E frozen (a buffer, not counted
    as a parameter), which keeps E^T E = I for the whole of training.
    """

    def __init__(self, channels: int, code_channels: int, learnable: bool, stride: int = 1):
        super().__init__()
        self.stride = stride
        weight = torch.empty(code_channels, channels)
        if not weight.is_meta:
            nn.init.orthogonal_(weight)
        if learnable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)

    @property
    def code_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def is_identity(self) -> bool:
        """E^T E = I for the whole of training: a frozen E with orthonormal columns (a tied coder at least as
        wide as the block; a narrower code is a rank-limited projection, a learned E drifts)."""
        return type(self) is TiedCoder and not isinstance(self.weight, nn.Parameter) \
            and self.weight.shape[0] >= self.weight.shape[1] and self.stride == 1

    def path(self, x: torch.Tensor) -> torch.Tensor:
        """decode(act(u) - act(-u)) with u = E x, as 1x1 convs.

        act(u) - act(-u) = u exactly for ReLU, GELU and SiLU, and decode is linear, so the
        path is D (E x); ``to_plain`` writes out the literal [act(u), act(-u)] channels instead.
        Where D E = E^T E is the identity (``is_identity``) the training graph computes x itself:
        the parity tests against ``to_plain``, which writes E, -E and E^T out, are the proof.
        """
        if self.is_identity:
            return x
        decode, bias = self.decode_affine()
        out = linear_path(x, self.weight, decode, self.stride)
        return out  # a tied decoder E^T has no bias

    def encode_matrix(self) -> torch.Tensor:
        return self.weight

    def decode_affine(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder as (D, d): decode(v) = D v + d."""
        return self.weight.t(), None


class ProjectionCoder(TiedCoder):
    """Where width or resolution change: the orthogonal E, then a learned 1x1 decoder D and BN.

    decode(act(u) - act(-u)) = BN(D E x): with E orthogonal this spans the same
    maps, with the same parameter count, as the residual kind's projection
    shortcut BN(P x), but the code stays as narrow as the block's input.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, code_channels: int, learnable: bool,
                 norm_layer: LayerFn = nn.BatchNorm2d):
        super().__init__(in_ch, code_channels, learnable, stride)
        self.conv = nn.Conv2d(code_channels, out_ch, 1, bias=False)
        self.bn = norm_layer(out_ch)

    def path(self, x: torch.Tensor) -> torch.Tensor:
        # BN(D E x): BN uses batch statistics in training, so it stays outside the linear part
        return self.bn(linear_path(x, self.weight, self.conv.weight[:, :, 0, 0], self.stride))

    def decode_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = bn_affine(self.bn)
        return self.conv.weight[:, :, 0, 0] * scale[:, None], shift


def linear_path(x: torch.Tensor, encode: torch.Tensor, decode: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """decode @ encode applied as a map on channels: a strided 1x1 conv on feature maps (B, C, H, W), a
    linear map on tokens (B, N, C). Composed first (one map) when that is cheaper for this batch, else
    the two maps in turn (a wide code at small batch, e.g. resnet50's last stage).

    Under autocast the path computes in x's own dtype, not the autocast one: a residual net's skip adds
    x unrounded, and a ViT's float32 stream rounded to bf16 at every sub-layer drifts (vit_cifar_24 at
    code_ratio=0.5: logits 6x further from float32 than the residual ViT's; in x's dtype, alike:
    docs/design-notes.md, Vision Transformers)."""
    device = x.device.type  # "meta" (counting MACs) has no autocast
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):  # keep x's own precision
        with torch.autocast(device, enabled=False):
            return linear_path(x, encode.to(x.dtype), decode.to(x.dtype), stride)
    k, c_in = encode.shape
    c_out = decode.shape[0]
    if x.dim() == 3:
        positions = x.shape[0] * x.shape[1]
        if c_out * k * c_in + positions * c_out * c_in <= positions * k * (c_in + c_out):
            return F.linear(x, decode @ encode)
        return F.linear(F.linear(x, encode), decode)
    pixels = x.shape[0] * -(-x.shape[2] // stride) * -(-x.shape[3] // stride)
    if c_out * k * c_in + pixels * c_out * c_in <= pixels * k * (c_in + c_out):
        return F.conv2d(x, (decode @ encode)[:, :, None, None], stride=stride)
    return F.conv2d(F.conv2d(x, encode[:, :, None, None], stride=stride), decode[:, :, None, None])


def bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm, so that bn(x) = scale * x + shift per channel."""
    if not isinstance(bn, nn.BatchNorm2d):
        raise PnnhError(f"cannot fold {type(bn).__name__} into a conv; only BatchNorm2d folds")
    if bn.running_var is None or bn.running_mean is None:
        raise PnnhError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    std = torch.sqrt(bn.running_var + bn.eps)
    weight = bn.weight if bn.weight is not None else torch.ones_like(std)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = weight / std
    return scale, bias - scale * bn.running_mean


class CoderBank:
    """Hands out the coders of one PNNH model, block by block.

    coder: "frozen" (orthogonal E, never trained; the default, which trains as
      the residual kind does) or "learned" (E trained, decoded by the tied E^T).
    coder_share: "stage" (one E for all same-width blocks of a stage) or "block";
      a stage-changing block always has its own coder.
    code_ratio: the code's width as a fraction of the block's (a rank-limited path).
    """

    CODERS = ("frozen", "learned")
    SHARES = ("stage", "block")

    def __init__(self, coder: str = "frozen", coder_share: str = "stage", code_ratio: float = 1.0,
                 norm_layer: LayerFn = nn.BatchNorm2d):
        if coder not in self.CODERS:
            raise PnnhError(f"unknown coder {coder!r}; valid: {', '.join(self.CODERS)}")
        if coder_share not in self.SHARES:
            raise PnnhError(f"unknown coder_share {coder_share!r}; valid: {', '.join(self.SHARES)}")
        if not code_ratio > 0:
            raise PnnhError(f"code_ratio must be > 0, got {code_ratio}")
        self.learnable = coder == "learned"
        self.share = coder_share
        self.code_ratio = code_ratio
        self.norm_layer = norm_layer
        self._stage_coder: TiedCoder | None = None

    def new_stage(self) -> None:
        self._stage_coder = None

    def __call__(self, in_ch: int, out_ch: int, stride: int) -> TiedCoder:
        code_channels = max(1, round(in_ch * self.code_ratio))
        if in_ch != out_ch or stride != 1:
            return ProjectionCoder(in_ch, out_ch, stride, code_channels, self.learnable, self.norm_layer)
        if self.share == "stage" and self._stage_coder is not None:
            return self._stage_coder
        coder = TiedCoder(in_ch, code_channels, self.learnable)
        if self.share == "stage":
            self._stage_coder = coder
        return coder


class Block(nn.Module):
    """One block of any family: a learner of 2 (basic) or 3 (bottleneck) convs and an internal path.

    widths[i] -> widths[i + 1] is conv i, with kernel_sizes[i] and strides[i].
    """

    def __init__(self, widths: list[int], kernel_sizes: list[int], strides: list[int], kind: str,
                 coders: CoderBank | None = None, norm_layer: LayerFn = nn.BatchNorm2d,
                 act_layer: LayerFn = nn.ReLU):
        super().__init__()
        if kind not in KINDS:
            raise PnnhError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        n = len(kernel_sizes)
        self.kind = kind
        self.learner = nn.Sequential(*[
            ConvNormAct(widths[i], widths[i + 1], kernel_sizes[i], strides[i], norm_layer, act_layer,
                        apply_act=i < n - 1)
            for i in range(n)])
        in_ch, out_ch, stride = widths[0], widths[-1], math.prod(strides)
        self.shortcut: nn.Module | None = None
        self.coder: TiedCoder | None = None
        if kind == "residual":
            if in_ch == out_ch and stride == 1:
                self.shortcut = nn.Identity()
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm_layer(out_ch))
        self.act = act_layer()
        if kind == "pnnh":
            if not isinstance(self.act, MIRROR_ACTIVATIONS):
                raise PnnhError(f"a pnnh block needs an activation with act(u) - act(-u) = u "
                                f"(ReLU, GELU, SiLU), got {type(self.act).__name__}")
            self.coder = (coders or CoderBank(norm_layer=norm_layer))(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.learner(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        if self.coder is not None:
            out = out + self.coder.path(x)
        return self.act(out)


class ConvNet(PnnhNet):
    """stem -> blocks -> global pool -> linear: the shape of every CNN here (timm's contract).

    ``blocks`` is a flat sequence of Blocks, single ConvNormActs and pooling
    layers, in forward order; the probe and ``to_plain`` walk it.
    """

    def __init__(self, stem: nn.Sequential, blocks: list[nn.Module], num_features: int, num_classes: int,
                 kind: str, input_size: tuple[int, int, int]):
        super().__init__()
        self.kind = kind
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.num_features = num_features
        self.num_classes = num_classes
        self.default_cfg = {"input_size": input_size, "num_classes": num_classes}
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        transform = kind_transform(kind)
        if transform is not None:  # a skip-free kind: its own layers and initialisation
            transform(self)

    def _init_weights(self) -> None:
        # He-normal (Var = 2 / fan_in), the initialisation the paper's theorems assume.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Learned coder weights keep their orthogonal scale better without decay (docs/design-notes.md)."""
        return {name for name, _ in self.named_parameters() if name.endswith("coder.weight")}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              intermediates_only: bool = False, stop_early: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's contract: (final features, [outputs of the selected layers]).

        The layers are the stem and every block or single conv (pools excepted), in forward order;
        ``indices``: the last n of them (an int) or a list of positions (default: all);
        ``intermediates_only``: return only the list; ``stop_early``: stop after the last selected one."""
        stages = [self.stem] + [m for m in self.blocks]
        taps = [i for i, m in enumerate(stages) if not isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
        x, intermediates = run_taps(stages, x, _select(taps, indices), stop_early)
        return intermediates if intermediates_only else (x, intermediates)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def run_taps(modules: list[nn.Module], x: torch.Tensor, chosen: set[int], stop_early: bool
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``modules`` in turn, keeping the outputs at the ``chosen`` positions (and stopping after the
    last of them if ``stop_early``): the loop behind every family's ``forward_intermediates``."""
    intermediates = []
    last = max(chosen) if stop_early and chosen else len(modules) - 1
    for i, module in enumerate(modules[:last + 1]):
        x = module(x)
        if i in chosen:
            intermediates.append(x)
    return x, intermediates


def _select(taps: list[int], indices: int | list[int] | None) -> set[int]:
    """Positions (in ``taps``' terms) chosen by timm-style ``indices``."""
    if indices is None:
        return set(taps)
    if isinstance(indices, int):
        if not 0 < indices <= len(taps):
            raise PnnhError(f"indices={indices}: choose 1 to {len(taps)} layers")
        return set(taps[-indices:])
    try:
        return {taps[i] for i in indices}
    except IndexError:
        raise PnnhError(f"indices {list(indices)} out of range: the model has {len(taps)} layers") from None


def learner_width(width: int, learner_ratio: float) -> int:
    if not learner_ratio > 0:
        raise PnnhError(f"learner_ratio must be > 0, got {learner_ratio}")
    return max(1, round(width * learner_ratio))


def replace_modules(model: nn.Module, match: Callable[[nn.Module], bool],
                    make: Callable[[nn.Module], nn.Module]) -> int:
    """Swap every submodule for which ``match`` holds by ``make(it)``, in place (a kind's layer swap);
    returns how many were swapped. A module shared by several parents is swapped once, everywhere."""
    made: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                if id(child) not in made:
                    made[id(child)] = make(child)
                setattr(parent, name, made[id(child)])
    return len(made)


def same_geometry(unit: nn.Module, cls: Callable[..., ConvNormAct]) -> ConvNormAct:
    """A ``cls`` layer (a ConvNormAct of another kind) with ``unit``'s widths, kernel, stride, norm and
    activation."""
    assert isinstance(unit, ConvNormAct)
    conv = unit.conv
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
              type(unit.bn), nn.ReLU)
    new.act = unit.act
    return new
