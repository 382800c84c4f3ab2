"""The skip-free kinds (tat, looks_linear, dirac, repvgg): what each paper says its net is, checked."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import pnnh
from pnnh.convert import PLAIN_MODULE_TYPES, chain_from_spec, chain_spec, relative_error
from pnnh.models import SKIP_FREE_KINDS, model_info
from pnnh.models.dirac import DiracConvNormAct
from pnnh.models.repvgg import RepConvNormAct
from pnnh.models.tat import TReLU, trelu_parameters
from pnnh.profile import count_params

from conftest import assert_one_line_error, randomise_batchnorm, run_cli

CIFAR = [n for n in pnnh.list_models() if model_info(n)["family"] == "resnet_cifar"]


@pytest.mark.parametrize("name", CIFAR)
def test_every_cifar_resnet_builds_every_skip_free_kind(name: str) -> None:
    with torch.device("meta"):
        plain = count_params(pnnh.create_model(name, kind="plain"))
        counts = {kind: count_params(pnnh.create_model(name, kind=kind)) for kind in SKIP_FREE_KINDS}
        dirac = [m for m in pnnh.create_model(name, kind="dirac").modules() if isinstance(m, DiracConvNormAct)]
    assert counts["tat"] == counts["looks_linear"] == plain  # the plain net, other activations or weights
    assert plain < counts["repvgg"] < 1.2 * plain  # 1x1 and identity-BN branches while training
    assert len(dirac) == int(name[6:]) - 2  # every conv but the stem's
    assert counts["dirac"] == plain + 2 * sum(m.conv.out_channels for m in dirac)  # a and b per output channel


def _perturbed(name: str, kind: str, seed: int = 0) -> nn.Module:
    """A float32 model of ``kind`` with BatchNorm statistics and every kind-specific scale away from
    their initial values, in eval mode: a conversion checked on it is a real check."""
    torch.manual_seed(seed)
    model = pnnh.create_model(name, kind=kind)
    randomise_batchnorm(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DiracConvNormAct):
                m.dirac_scale.copy_(torch.rand(m.dirac_scale.shape, generator=g) + 0.5)
                m.weight_scale.copy_(torch.rand(m.weight_scale.shape, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("kind", SKIP_FREE_KINDS)
@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_plain_form_matches_at_an_unseen_input_size(name: str, kind: str) -> None:
    model = _perturbed(name, kind)
    chain = pnnh.to_plain(model)
    assert all(isinstance(m, PLAIN_MODULE_TYPES) for m in chain)
    convs = [m for m in chain if isinstance(m, nn.Conv2d)]
    assert len(convs) == (int(name[6:]) - 1)  # one conv per conv layer: branches fused, nothing added
    x = torch.randn(3, 3, 40, 40)  # models are built for 32x32
    with torch.no_grad():
        err = relative_error(chain(x), model(x))
    assert err < 1e-5, f"{name} {kind}: plain form off by {err:.2e}"
    rebuilt = chain_from_spec(chain_spec(chain))  # what an export stores, rebuilt without pickle
    rebuilt.load_state_dict(chain.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), chain(x))


def test_repvgg_trains_with_branches_and_fuses_them() -> None:
    model = pnnh.create_model("resnet20", kind="repvgg")
    layers = [m for m in model.modules() if isinstance(m, RepConvNormAct)]
    assert len(layers) == 19  # stem and 18 learner convs
    with_identity = [m for m in layers if m.branch_id is not None]
    assert len(with_identity) == 19 - 1 - 2  # not the stem (3 -> 16), not the two strided convs
    assert all(m.conv_1x1 is not None for m in layers)
    model = _perturbed("resnet20", "repvgg")
    layer = [m for m in model.modules() if isinstance(m, RepConvNormAct)][1]
    x = torch.randn(2, 16, 9, 9)
    weight, bias = layer.fused()
    with torch.no_grad():
        fused = torch.nn.functional.conv2d(x, weight, bias, padding=1).relu()
        assert relative_error(fused, layer(x)) < 1e-6
        layer.branch_id.weight.zero_(), layer.branch_id.bias.zero_()  # without the identity the output changes
        assert relative_error(fused, layer(x)) > 1e-2


def _leaky_relu_cmap(c: float, slope: float) -> float:
    """The C map of a q-preserving leaky ReLU (the TAT paper's closed form), written here independently of dks."""
    return c + (1 - slope) ** 2 / (math.pi * (1 + slope ** 2)) * (math.sqrt(1 - c * c) - c * math.acos(c))


@pytest.mark.parametrize("name,depth", [("resnet20", 19), ("resnet56", 55), ("resnet110", 109)])
def test_tat_holds_the_networks_c_map_at_eta(name: str, depth: int) -> None:
    model = pnnh.create_model(name, kind="tat")
    acts = [m for m in model.modules() if isinstance(m, TReLU)]
    assert len(acts) == depth and not any(isinstance(m, nn.ReLU) for m in model.modules())
    slope, scale = trelu_parameters(depth)
    assert acts[0].negative_slope == slope and 0 < slope < 1
    assert scale == pytest.approx(math.sqrt(2 / (1 + slope ** 2)), rel=1e-6)  # q map: E[f(x)^2] = 1
    c = 0.0
    for _ in range(depth):
        c = _leaky_relu_cmap(c, slope)
    assert c == pytest.approx(0.9, abs=1e-4)  # eta: the whole chain's C(0)
    assert trelu_parameters(2 * depth)[0] > slope  # deeper nets get more linear activations


def test_tat_convs_start_delta_orthogonal() -> None:
    model = pnnh.create_model("resnet20", kind="tat")
    for conv in [m for m in model.modules() if isinstance(m, nn.Conv2d)]:
        w = conv.weight.detach()
        centre = w[:, :, 1, 1]
        assert w.abs().sum() == pytest.approx(centre.abs().sum())  # nothing off the centre tap
        gram = centre.t() @ centre if centre.shape[0] >= centre.shape[1] else centre @ centre.t()
        assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)


def test_looks_linear_net_is_linear_at_initialisation_and_plain_is_not() -> None:
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    errors = {}
    for kind in ("looks_linear", "plain"):
        torch.manual_seed(0)
        model = pnnh.create_model("resnet56", kind=kind).eval()  # BN at its initial statistics: affine 0, 1
        with torch.no_grad():
            errors[kind] = relative_error(model(x1 + 2 * x2), model(x1) + 2 * model(x2))
    assert errors["looks_linear"] < 1e-4, errors
    assert errors["plain"] > 0.1, errors  # the control: ReLUs do bend a plain net


def test_dirac_kernel_is_the_identity_plus_a_normalised_kernel() -> None:
    layer = DiracConvNormAct(8, 8, 3, 1).eval()
    z = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        nn.init.zeros_(layer.weight_scale)  # only the Dirac part: conv(z, a I) = a z
        layer.dirac_scale.fill_(1.5)
        assert torch.allclose(torch.nn.functional.conv2d(z, layer.kernel(), padding=1), 1.5 * z, atol=1e-6)
        nn.init.zeros_(layer.dirac_scale)  # only the other part: b W / ||W||, each output filter of norm b
        layer.weight_scale.fill_(0.1)
        assert torch.allclose(layer.kernel().flatten(1).norm(dim=1), torch.full((8,), 0.1), atol=1e-6)
    wider = DiracConvNormAct(16, 32, 3, 2)  # a stage change: the identity on the first 16 channels only
    assert wider.delta[:16, :, 1, 1].equal(torch.eye(16)) and wider.delta[16:].abs().sum() == 0
    model = pnnh.create_model("resnet20", kind="dirac")
    assert type(model.stem[0]) is not DiracConvNormAct  # the stem reads the image: an ordinary conv
    assert {n for n, p in model.named_parameters() if p.ndim <= 1} >= {
        n for n, _ in model.named_parameters() if n.endswith(("dirac_scale", "weight_scale"))}  # no decay


def test_skip_free_kinds_are_refused_where_they_are_not_built() -> None:
    with pytest.raises(pnnh.PnnhError, match="kind 'repvgg' is not built for vit_cifar_6.*residual, plain, pnnh"):
        pnnh.create_model("vit_cifar_6", kind="repvgg")
    with pytest.raises(pnnh.PnnhError, match="kind 'tat' is not built for resnet18.*resnet20"):
        pnnh.create_model("resnet18", kind="tat")
    with pytest.raises(pnnh.PnnhError, match="code_ratio applies to kind pnnh only, not dirac"):
        pnnh.create_model("resnet20", kind="dirac", code_ratio=0.5)
    with pytest.raises(pnnh.PnnhError, match="widths must be even"):
        pnnh.create_model("resnet20", kind="looks_linear", learner_ratio=0.7)
    result = run_cli("train", "--model", "vit_cifar_6", "--kind", "tat", "--data", "fashion-mnist", "--epochs", "1")
    assert_one_line_error(result, "kind 'tat' is not built for vit_cifar_6")
    result = run_cli("bench", "--entries", "resnet20:residual:code_ratio=0.5")
    assert_one_line_error(result, "code_ratio applies to kind pnnh only")
