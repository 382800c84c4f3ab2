"""The model zoo, tested over the whole registry: shapes, gradients, counts, and the plain-chain proof."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import pnnh
from pnnh.convert import PLAIN_MODULE_TYPES, block_to_plain
from pnnh.models import SKIP_FREE_KINDS, Block, ProjectionCoder, TiedCoder, model_info
from pnnh.profile import count_params

from conftest import assert_one_line_error, randomise_batchnorm, run_cli

# The skip-free kinds (tat, looks_linear, dirac, repvgg) train and convert at two depths here; every
# model of their family is built (on the meta device) in test_every_model_builds_every_kind_it_lists.
SKIP_FREE_DEPTHS = ("resnet20", "resnet56")
ALL = [(name, kind) for name in pnnh.list_models() for kind in model_info(name)["kinds"]
       if kind not in SKIP_FREE_KINDS or name in SKIP_FREE_DEPTHS]
# each family states which kinds have a plain form and what a small test instance and input are
PLAIN_FORM = [(name, kind) for name, kind in ALL if kind in model_info(name)["plain_form"]]
BOTTLENECK = {"resnet50", "resnet101", "resnet152"}

# He et al. 2016 (CIFAR, table 6) and torchvision's counts for the residual kind.
HE_CIFAR_PARAMS = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet44": 0.66e6, "resnet56": 0.85e6,
                   "resnet110": 1.7e6, "resnet1202": 19.4e6}
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}


@pytest.mark.parametrize("name,kind", ALL)
def test_forward_backward(name: str, kind: str) -> None:
    torch.manual_seed(0)
    info = model_info(name)
    # A 1202-layer plain net's gradient grows ~1e87-fold from head to stem at initialisation (the
    # degradation the paper studies): past float32's range, so that one runs in float64.
    dtype = torch.float64 if (name, kind) == ("resnet1202", "plain") else torch.float32
    model = pnnh.create_model(name, kind=kind, num_classes=7, **info["test_kwargs"]).to(dtype)
    x = torch.randn(2, *info["test_input"], dtype=dtype)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "vgg11"])
@pytest.mark.parametrize("in_chans,size", [(1, 28), (3, 32), (3, 224)])
def test_input_sizes_and_channels(name: str, in_chans: int, size: int) -> None:
    model = pnnh.create_model(name, kind="pnnh", in_chans=in_chans, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, in_chans, size, size))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(HE_CIFAR_PARAMS))
def test_cifar_resnet_params_match_he_et_al(name: str) -> None:
    n = count_params(pnnh.create_model(name, kind="residual"))
    assert abs(n / HE_CIFAR_PARAMS[name] - 1) < 0.03, f"{name}: {n} parameters vs {HE_CIFAR_PARAMS[name]}"


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_resnet_params_match_torchvision(name: str) -> None:
    assert count_params(pnnh.create_model(name, kind="residual")) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "vgg16"])
def test_pnnh_default_has_the_residual_parameter_count(name: str) -> None:
    residual = count_params(pnnh.create_model(name, kind="residual"))
    assert count_params(pnnh.create_model(name, kind="pnnh")) == residual


def _assert_plain_chain(chain: nn.Module) -> None:
    assert isinstance(chain, nn.Sequential)
    bad = [type(m).__name__ for m in chain if not isinstance(m, PLAIN_MODULE_TYPES)]
    assert not bad, f"non-plain modules in the chain: {bad}"
    for m in chain:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert m.bias is not None


def _check_parity(model: nn.Module, chain: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = model(x), chain(x)
    err = (expected - got).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= 1e-5 * max(1.0, scale), f"max |difference| {err:.3g} at output scale {scale:.3g}"


@pytest.mark.parametrize("name,kind", PLAIN_FORM)
def test_to_plain_parity(name: str, kind: str) -> None:
    torch.manual_seed(0)
    info = model_info(name)
    # A bottleneck PNNH net's plain form carries a 2C-wide code through each 3x3 conv (~0.8G
    # parameters for resnet50); its full chain is checked with a narrow code here, and the full-width
    # blocks one by one in test_to_plain_parity_full_width_bottleneck_blocks.
    kwargs = {"code_ratio": 1 / 16} if kind == "pnnh" and name in BOTTLENECK else {}
    model = pnnh.create_model(name, kind=kind, num_classes=10, **info["test_kwargs"], **kwargs).double()
    # The training graph takes x itself where E^T E = I; E was drawn orthogonal in float32, so redraw it in
    # float64, or the chain (which writes E out) differs by float32 rounding per layer (1e-5 over vit_base).
    for m in model.modules():
        if isinstance(m, TiedCoder) and m.is_identity:
            nn.init.orthogonal_(m.weight)
    randomise_batchnorm(model)
    model.eval()
    chain = pnnh.to_plain(model)
    _assert_plain_chain(chain)
    _check_parity(model, chain, torch.randn(2, *info["test_input"], dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(BOTTLENECK))
def test_to_plain_parity_full_width_bottleneck_blocks(name: str) -> None:
    model = pnnh.create_model(name, kind="pnnh").eval()
    randomise_batchnorm(model)
    blocks = list(model.blocks)
    stage_starts = [i for i, b in enumerate(blocks) if isinstance(b.coder, ProjectionCoder)]
    assert len(stage_starts) == 4
    checked = set(stage_starts) | {i + 1 for i in stage_starts}  # a stage-changing and a tied block each
    x = torch.randn(1, 64, 8, 8)
    for i, block in enumerate(blocks):
        if i in checked:
            chain = block_to_plain(block)
            _assert_plain_chain(chain)
            _check_parity(block, chain, x)
        with torch.no_grad():
            x = block(x)


@pytest.mark.parametrize("coder,share,code_ratio", [("learned", "block", 1.0), ("learned", "stage", 0.5),
                                                    ("frozen", "block", 0.25)])
def test_to_plain_parity_coder_options(coder: str, share: str, code_ratio: float) -> None:
    model = pnnh.create_model("resnet20", kind="pnnh", coder=coder, coder_share=share, code_ratio=code_ratio,
                              learner_ratio=0.5).double()
    randomise_batchnorm(model)
    with torch.no_grad():  # move a learned E away from orthogonal, so the decoder must really be E^T
        for m in model.modules():
            if isinstance(m, TiedCoder) and isinstance(m.weight, nn.Parameter):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
    model.eval()
    chain = pnnh.to_plain(model)
    _assert_plain_chain(chain)
    _check_parity(model, chain, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_plain_model_has_no_skip_and_residual_is_refused() -> None:
    plain = pnnh.create_model("resnet20", kind="plain").eval()
    chain = pnnh.to_plain(plain)
    # a plain resnet20 is 19 conv+ReLU layers and a linear head, nothing else
    assert sum(isinstance(m, nn.Conv2d) for m in chain) == 19
    assert all(b.shortcut is None and b.coder is None for b in plain.blocks)
    with pytest.raises(pnnh.PnnhError, match="residual model has skip connections"):
        pnnh.to_plain(pnnh.create_model("resnet20", kind="residual").eval())
    with pytest.raises(pnnh.PnnhError, match="model.eval"):
        pnnh.to_plain(pnnh.create_model("resnet20", kind="pnnh"))


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet50", "vgg13"])
def test_pnnh_computes_the_residual_function(name: str) -> None:
    """With the frozen orthogonal coder, a PNNH net given a residual net's weights computes that net."""
    torch.manual_seed(0)
    residual = pnnh.create_model(name, kind="residual").double()
    randomise_batchnorm(residual)
    model = pnnh.create_model(name, kind="pnnh").double()
    for m in model.modules():  # redraw E in float64, so that E^T E = I to float64 precision
        if isinstance(m, TiedCoder):
            nn.init.orthogonal_(m.weight)
    state = model.state_dict()
    for key, value in residual.state_dict().items():
        if ".shortcut." not in key:
            state[key] = value
    for i, (rb, pb) in enumerate(zip(residual.blocks, model.blocks)):
        if isinstance(rb, Block) and not isinstance(rb.shortcut, nn.Identity):
            proj_w = rb.shortcut[0].weight[:, :, 0, 0]
            encode = pb.coder.encode_matrix()
            state[f"blocks.{i}.coder.conv.weight"] = (proj_w @ encode.t())[:, :, None, None]  # D E = P
            for k, v in rb.shortcut[1].state_dict().items():
                state[f"blocks.{i}.coder.bn.{k}"] = v
    model.load_state_dict(state)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)  # large enough that batch statistics are not degenerate
    for mode in (True, False):  # batch statistics and running statistics
        residual.train(mode), model.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(model(x), residual(x), rtol=1e-8, atol=1e-8)


def test_kind_options_change_what_they_say() -> None:
    full = count_params(pnnh.create_model("resnet56", kind="residual"))
    half = count_params(pnnh.create_model("resnet56", kind="pnnh", learner_ratio=0.5))
    assert 0.45 < half / full < 0.55
    staged = pnnh.create_model("resnet20", kind="pnnh", coder="learned", coder_share="stage")
    per_block = pnnh.create_model("resnet20", kind="pnnh", coder="learned", coder_share="block")
    assert staged.blocks[1].coder is staged.blocks[2].coder
    assert per_block.blocks[1].coder is not per_block.blocks[2].coder
    # resnet20 has 3, 2, 2 same-width blocks per stage: sharing saves 2, 1, 1 copies of E
    assert count_params(per_block) - count_params(staged) == 2 * 16 * 16 + 32 * 32 + 64 * 64
    assert "blocks.0.coder.weight" in staged.no_weight_decay()
    narrow = pnnh.create_model("resnet20", kind="pnnh", code_ratio=0.5)
    assert narrow.blocks[1].coder.code_channels == 8


def test_timm_contract() -> None:
    model = pnnh.create_model("resnet20", kind="pnnh", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 8, 8)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 10 and inter[0].shape == (2, 16, 32, 32) and inter[-1].shape == (2, 64, 8, 8)
    torch.testing.assert_close(final, feats)
    torch.testing.assert_close(model.forward_head(final), model(x))
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(last_two) == 2 and torch.equal(last_two[1], inter[-1]) and torch.equal(last_two[0], inter[-2])
    early = model.forward_intermediates(x, indices=[0, 3], stop_early=True)
    assert torch.equal(early[1][1], inter[3]) and early[0].shape == inter[3].shape
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3 and model.get_classifier().out_features == 3


def test_unknown_names_give_one_line_errors() -> None:
    with pytest.raises(pnnh.PnnhError, match="unknown model 'resnet21'.*resnet20.*vgg19"):
        pnnh.create_model("resnet21")
    with pytest.raises(pnnh.PnnhError, match="unknown kind 'skip'.*residual, plain, pnnh"):
        pnnh.create_model("resnet20", kind="skip")
    with pytest.raises(pnnh.PnnhError, match="coder_share"):
        pnnh.create_model("resnet20", kind="pnnh", coder_share="everywhere")
    with pytest.raises(pnnh.PnnhError, match="bad option"):
        pnnh.create_model("resnet20", widht=3)
    assert pnnh.list_models("vgg*") == ["vgg11", "vgg13", "vgg16", "vgg19"]


def test_cli_models_json() -> None:
    result = run_cli("models", "resnet5*", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == ["resnet50", "resnet56"]
    assert rows[0]["params"]["residual"] == 25_557_032
    assert abs(rows[0]["macs"]["residual"] / 4.09e9 - 1) < 0.01  # torchvision's 4.09 GMACs


def test_cli_bad_pattern_is_one_line() -> None:
    assert_one_line_error(run_cli("models", "nosuchnet*"), "no model matches the pattern")


@pytest.mark.parametrize("options,identity", [({}, True), ({"coder_share": "block"}, True),
                                              ({"coder": "learned"}, False), ({"code_ratio": 0.5}, False),
                                              ({"code_ratio": 2.0}, True), ({"code_ratio": 0.9}, False)])
def test_identity_path_exactly_where_the_coder_is_the_identity(options: dict, identity: bool) -> None:
    """The training graph computes x itself only for a frozen E with orthonormal columns (E^T E = I);
    every other coder keeps its map. to_plain, which writes E, -E and E^T out, must agree either way."""
    model = pnnh.create_model("resnet20", kind="pnnh", **options).double()
    tied = [b.coder for b in model.blocks if type(b.coder) is TiedCoder]
    projections = [b.coder for b in model.blocks if isinstance(b.coder, ProjectionCoder)]
    assert tied and projections and not any(c.is_identity for c in projections)
    assert all(c.is_identity == identity for c in tied)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    coder = tied[0]
    assert (coder.path(x) is x) == identity
    e = coder.encode_matrix()
    if identity:  # the shortcut is valid because E^T E is the identity (to the float32 rounding of E's init)
        torch.testing.assert_close(e.t() @ e, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(coder.path(x), torch.einsum("oc,bchw->bohw", e.t() @ e, x))
    randomise_batchnorm(model)
    model.eval()
    _check_parity(model, pnnh.to_plain(model), torch.randn(2, 3, 32, 32, dtype=torch.float64))


VIT_PARAMS = {"vit_tiny": 5_717_416, "vit_small": 22_050_664, "vit_base": 86_567_656}  # timm's counts, 1000 classes


@pytest.mark.parametrize("name", sorted(VIT_PARAMS))
def test_vit_params_match_timm(name: str) -> None:
    with torch.device("meta"):
        for kind in model_info(name)["kinds"]:  # the default pnnh coder is frozen: no extra parameters
            assert count_params(pnnh.create_model(name, kind=kind)) == VIT_PARAMS[name]


def test_vit_kinds_differ_only_in_what_crosses_a_sub_layer() -> None:
    torch.manual_seed(0)
    residual = pnnh.create_model("vit_cifar_6", kind="residual")
    pnnh_vit = pnnh.create_model("vit_cifar_6", kind="pnnh")
    plain = pnnh.create_model("vit_cifar_6", kind="plain")
    state = {k: v for k, v in residual.state_dict().items()}
    pnnh_vit.load_state_dict({**pnnh_vit.state_dict(), **state})
    plain.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # frozen orthogonal E: the pnnh ViT computes the residual ViT's function
        torch.testing.assert_close(pnnh_vit(x), residual(x), rtol=1e-4, atol=1e-5)
        assert (plain(x) - residual(x)).abs().max() > 1e-2
    learned = pnnh.create_model("vit_cifar_6", kind="pnnh", coder="learned", coder_share="block")
    assert count_params(learned) == count_params(residual) + 12 * 192 * 192  # one E per sub-layer
    assert {"pos_embed", "cls_token", "blocks.0.coder1.weight"} <= learned.no_weight_decay()


def test_vit_plain_chain_holds_only_the_stated_modules() -> None:
    from pnnh.convert import ClassToken, CodeAttention, SliceLayerNorm, TokenEmbed

    model = pnnh.create_model("vit_cifar_6", kind="pnnh", code_ratio=0.5).eval()
    chain = pnnh.to_plain(model)
    types = [type(m) for m in chain]
    assert types[0] is TokenEmbed and types[-2:] == [ClassToken, nn.Linear]
    # per block: [encode, slice-norm, qkv, attention with identity code heads, proj] and
    # [encode, slice-norm, fc1, GELU on mirrored pairs, fc2]
    assert types[1:6] == [nn.Linear, SliceLayerNorm, nn.Linear, CodeAttention, nn.Linear]
    assert types[6:11] == [nn.Linear, SliceLayerNorm, nn.Linear, nn.GELU, nn.Linear]
    assert chain[3].out_features == 3 * 192 + 96 and chain[8].out_features == 768 + 2 * 96


def test_vit_intermediates_in_order() -> None:
    model = pnnh.create_model("vit_cifar_6", kind="pnnh").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == 6 and all(t.shape == (2, 65, 192) for t in inter)
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(inter[2], model.blocks[:3](model.embed(x)))
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    with pytest.raises(pnnh.PnnhError, match="takes 32x32 images"):
        model(torch.randn(1, 3, 28, 28))


def test_attention_bf16_on_cpu_is_the_same_product() -> None:
    """`attend` writes the product out for bf16 on a CPU (the fused kernel's bf16 backward is slow there):
    the same values and gradients as the fused float32 kernel, to bf16 rounding; float32 is the fused kernel."""
    from pnnh.models.vit import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 16, generator=g, requires_grad=True) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(attend(q, k, v), ref)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    out = attend(*low)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    for got, want in zip(torch.autograd.grad(out.float().square().sum(), low), ref_grads):
        torch.testing.assert_close(got.float(), want, atol=6e-2, rtol=6e-2)


def test_the_code_path_keeps_its_inputs_precision_under_autocast() -> None:
    """A skip adds x unrounded; the internal path, a linear map of x, must not round a float32 stream to
    bf16 either (at every sub-layer that moved vit_cifar_24's logits at code_ratio=0.5 6x further from
    float32 than the residual ViT's). A bf16 stream (the CNNs' under autocast) stays bf16."""
    from pnnh.models.layers import linear_path

    g = torch.Generator().manual_seed(0)
    encode = torch.linalg.qr(torch.randn(16, 8, generator=g))[0].t()  # 8 orthonormal rows: a half-width code
    tokens, maps = torch.randn(2, 5, 16, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    for x in (tokens, maps):
        want = linear_path(x, encode, encode.t())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, low = linear_path(x, encode, encode.t()), linear_path(x.bfloat16(), encode, encode.t())
        assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-6)
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), want, atol=5e-2, rtol=5e-2)
