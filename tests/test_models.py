"""LOLViT models against the paper's tables and timm's model-test conventions."""
import math

import pytest
import timm
import torch

import lolvit
from lolvit.models import LOLViT
from lolvit.tasks.summary import PAPER_ROWS, PAPER_TOTALS, backbone_rows, count_params

MODELS = ["lolvit_s", "lolvit_x"]
# the design note's construction; the paper's LOLViT rows are matched within 2 %
OURS = {
    "lolvit_s": [464, 2448, 6872, 6696, 17208, 160721, 30288, 295381, 60528, 476473],
    "lolvit_x": [928, 3440, 8160, 10976, 30288, 274985, 60528, 471289, 109728, 897193],
}


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_vs_tables(name):
    model = timm.create_model(name)
    rows = backbone_rows(model, name, (64, 64))
    assert [r.params for r in rows] == OURS[name]
    for r, paper in zip(rows, PAPER_ROWS[name]):
        if r.name == "LOLViTBlock":
            assert abs(r.params - paper) / paper <= 0.02, r
        else:
            assert r.params == paper, r  # stem and all GhostNet rows exact
    total = sum(r.params for r in rows)
    assert abs(total - PAPER_TOTALS[name]) / PAPER_TOTALS[name] <= 0.005


def test_registered_with_timm():
    assert {"lolvit_s", "lolvit_x"} <= set(timm.list_models("lolvit*"))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [(64, 64), (97, 131), (224, 224), (640, 384), (33, 50)])
def test_forward_any_size(name, size):
    model = timm.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *size))
        out = model.forward_head(feats)
    assert feats.shape == (1, model.num_features, math.ceil(size[0] / 32), math.ceil(size[1] / 32))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_every_parameter_gets_gradient(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(torch.randn(2, 3, 128, 96))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert out.shape == (2, 42) and not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg_conventions(name):
    model = timm.create_model(name).eval()
    cfg = model.default_cfg
    assert cfg["input_size"] == (3, 224, 224) and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert model.num_classes == 1000 and model.num_features > 0 and model.head_hidden_size > 0
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape[-2:] == cfg["pool_size"] and feats.shape[1] == model.num_features
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape
        model.reset_classifier(0, "")
        assert model(x).shape[-2:] == cfg["pool_size"]
        model = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert model(x).dim() == 4
        model.reset_classifier(5, "avg")
        assert model(x).shape == (1, 5)


@pytest.mark.parametrize("name", MODELS)
def test_torchscript(name):
    model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    channels = model.feature_info.channels()
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    expected = list(timm.create_model(name).config.channels[1:])
    assert channels == expected
    outs = model(torch.randn(1, 3, 97, 131))
    assert [o.shape[1] for o in outs] == channels
    for o, r in zip(outs, model.feature_info.reduction()):
        assert o.shape[-2:] == (math.ceil(97 / r), math.ceil(131 / r))
    sub = timm.create_model(name, features_only=True, out_indices=(2, 3, 4))
    assert sub.feature_info.channels() == channels[2:]
    assert len(sub(torch.randn(1, 3, 64, 64))) == 3


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == 5
        for o, info in zip(inter, model.feature_info):
            assert o.shape[1] == info["num_chs"] and o.shape[-1] == math.ceil(96 / info["reduction"])
        torch.testing.assert_close(final, model.forward_features(x))
        only = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        torch.testing.assert_close(only[1], inter[3])
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)
    getter = timm.create_model(name, features_only=True, feature_cls="getter").eval()
    assert len(getter(x)) == 5
    pruned = timm.create_model(name).eval()
    assert pruned.prune_intermediate_layers(indices=[2]) == [2]
    assert len(pruned.stages) == 3


@pytest.mark.parametrize("name", MODELS)
def test_fuse_equivalence(name):
    model = timm.create_model(name, num_classes=10)
    model.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(3):
            model(torch.randn(4, 3, 96, 96))
    model.eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        ref = model(x)
        fused = lolvit.fuse(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert (fused(x) - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_finite(dtype):
    model = timm.create_model("lolvit_x", num_classes=10).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = model(torch.randn(2, 3, 128, 128) * 50)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depths=(2, 4, 3), cache=True), dict(depths=(2, 2, 2), cache=False), dict(attention="mhsa"),
        dict(attention="agent"), dict(attention="ssa"), dict(attention="fwa_softmax"),
        dict(activation="relu6"), dict(heads=(2, 4, 6)), dict(folds=(2, 4, 8), patches=(2, 2, 1)),
        dict(fusion="mobilevit"), dict(in_chans=1, num_classes=3),
    ],
)
def test_config_knobs(kwargs):
    model = timm.create_model("lolvit_s", **kwargs)
    in_chans = kwargs.get("in_chans", 3)
    out = model(torch.randn(2, in_chans, 96, 80))
    assert out.shape == (2, kwargs.get("num_classes", 1000))
    for key, value in kwargs.items():
        if key not in ("in_chans", "num_classes"):
            assert getattr(model.config, key) == value


def test_cache_keeps_parameter_count():
    a = timm.create_model("lolvit_x", depths=(2, 4, 3), cache=True)
    b = timm.create_model("lolvit_x", depths=(2, 4, 3), cache=False)
    assert count_params(a) == count_params(b)


def test_fusion_ablation_saves_parameters():
    ff = count_params(timm.create_model("lolvit_x", num_classes=0))
    mv = count_params(timm.create_model("lolvit_x", num_classes=0, fusion="mobilevit"))
    assert mv - ff == sum(13 * c * c - 80 * c for c in (96, 128, 192))


def test_bad_inputs():
    model = timm.create_model("lolvit_s").eval()
    with pytest.raises(ValueError, match="4D"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="in_chans=3 got 1 channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="smaller than the minimum"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match="unknown attention"):
        timm.create_model("lolvit_s", attention="performer")
    with pytest.raises(ValueError, match="unknown DReLu activation"):
        timm.create_model("lolvit_s", activation="gelu")
    with pytest.raises(ValueError, match="must divide"):
        timm.create_model("lolvit_s", heads=(4, 7, 4))
    with pytest.raises(ValueError, match="one value per LOLViT block"):
        timm.create_model("lolvit_s", depths=(1, 1))


def test_is_lolvit_instance():
    assert isinstance(timm.create_model("lolvit_s"), LOLViT)


def test_unknown_kwargs_raise_typeerror():
    with pytest.raises(TypeError, match="atention"):
        timm.create_model("lolvit_s", atention="mhsa")


def test_output_stride_only_32():
    assert timm.create_model("lolvit_s", output_stride=32).feature_info[-1]["reduction"] == 32
    with pytest.raises(ValueError, match="output_stride=16"):
        timm.create_model("lolvit_s", output_stride=16)


def test_drop_path_rate_is_linear_stochastic_depth():
    from timm.layers import DropPath

    model = timm.create_model("lolvit_s", drop_path_rate=0.3, depths=(2, 1, 1))
    rates = [m.drop_path.drop_prob if isinstance(m.drop_path, DropPath) else 0.0
             for m in model.modules() if hasattr(m, "drop_path")]
    assert len(rates) == 6 + 4  # 6 GhostNet blocks + 4 transformer layers, in forward order
    assert rates == pytest.approx([0.3 * i / 9 for i in range(10)])
    assert not any(isinstance(m, DropPath) for m in timm.create_model("lolvit_s").modules())
    model.train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # paths are dropped at random in training
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_dp_init_is_a_model_keyword():
    model = timm.create_model("lolvit_s", dp_init=0.3)
    dps = [m.dp.item() for m in model.modules() if hasattr(m, "dp")]
    assert len(dps) == 3 and dps == pytest.approx([0.3] * 3) and model.config.dp_init == 0.3
    legacy = timm.create_model("lolvit_s", attn_kwargs={"dp_init": 0.2})  # older configs
    assert legacy.config.dp_init == pytest.approx(0.2) and legacy.config.attn_kwargs == {}
    assert timm.create_model("lolvit_s").config.dp_init == 0.5
    with pytest.raises(ValueError, match="dp_init given twice"):
        timm.create_model("lolvit_s", dp_init=0.3, attn_kwargs={"dp_init": 0.2})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dp_init=-1e-6), "dp_init"), (dict(dp_init=0.0), "dp_init"), (dict(dp_init=-0.5), "dp_init"),
        (dict(mlp_ratio=0), "mlp_ratio"), (dict(mlp_ratio=-1.0), "mlp_ratio"), (dict(mlp_ratio=0.001), "mlp_ratio"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model("lolvit_s", **kwargs)


@pytest.mark.parametrize("attention", ["fwa", "mhsa", "agent", "ssa", "fwa_softmax"])
def test_empty_batch_returns_empty(attention):
    model = timm.create_model("lolvit_s", attention=attention, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.zeros(0, 3, 64, 96)).shape == (0, 5)
        assert model.forward_features(torch.zeros(0, 3, 64, 96)).shape == (0, 128, 2, 3)
        assert [t.shape[0] for t in model.forward_intermediates(torch.zeros(0, 3, 64, 64))[1]] == [0] * 5


def test_meta_device_and_dtype_factory_kwargs():
    model = timm.create_model("lolvit_s", device="meta", dtype=torch.float64)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    model.eval().reset_classifier(3)
    assert model.classifier.weight.device.type == "meta" and model.classifier.weight.dtype == torch.float64
    assert not model.classifier.training
    out = model(torch.zeros(1, 3, 64, 64, device="meta", dtype=torch.float64))
    assert out.shape == (1, 3)


@pytest.mark.parametrize("name", MODELS)
def test_fx_feature_extraction(name):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 96, 64)
    extractor = create_feature_extractor(model, {"stages.2": "p3", "stages.4": "p5"})
    fx_timm = timm.create_model(name, features_only=True, feature_cls="fx", out_indices=(2, 4)).eval()
    fx_timm.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("conv_head", "classifier"))}, strict=False)
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=[2, 4], intermediates_only=True)
        out = extractor(x)
        torch.testing.assert_close(out["p3"], ref[0])
        torch.testing.assert_close(out["p5"], ref[1])
        assert [t.shape for t in fx_timm(x)] == [r.shape for r in ref]
    with pytest.raises(ValueError, match="smaller than the minimum"):
        extractor(torch.randn(1, 3, 16, 64))  # the traced graph keeps the input check


@pytest.mark.parametrize(
    "kwargs,field,value",
    [
        (dict(drelu_divisor="queries"), "drelu_divisor", "queries"),
        (dict(patch_mode="tokens", patches=(2, 2, 1)), "patch_mode", "tokens"),
        (dict(attention="agent", agents=(49, 16, 4)), "agents", (49, 16, 4)),
    ],
)
def test_fidelity_options_via_model_kwargs(kwargs, field, value, tmp_path):
    """The paper readings are create_model / --model-kwargs keywords and survive a checkpoint."""
    import json

    from lolvit.tasks.classify.cli import _json_mapping
    from lolvit.tasks.classify.train import build_model

    model = build_model("lolvit_s", 10, **_json_mapping(json.dumps(kwargs)))
    assert getattr(model.config, field) == value
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 70, 90)).shape == (1, 10)
    lolvit.save_checkpoint(model, tmp_path / "m")
    assert getattr(lolvit.load_checkpoint(tmp_path / "m").config, field) == value


def test_fidelity_defaults_and_errors():
    model = timm.create_model("lolvit_s", attention="agent")
    assert (model.config.drelu_divisor, model.config.patch_mode, model.config.agents) == ("keys", "window", (48, 12, 3))
    assert [m.agents for m in model.modules() if hasattr(m, "agents")] == [48, 12, 3]  # Table 2
    assert [m.drelu_divisor for m in timm.create_model("lolvit_s", drelu_divisor="queries").modules()
            if hasattr(m, "drelu_divisor")] == ["queries"] * 3
    legacy = timm.create_model("lolvit_s", attention="agent", attn_kwargs={"agents": 9})
    assert legacy.config.agents == (9, 9, 9)
    for kwargs, match in [(dict(drelu_divisor="n"), "drelu_divisor"), (dict(patch_mode="pixels"), "patch_mode"),
                          (dict(agents=0), "agents"), (dict(agents=(4, 4)), "agents")]:
        with pytest.raises(ValueError, match=match):
            timm.create_model("lolvit_s", **kwargs)


def test_integer_and_mismatched_float_inputs_name_the_dtype():
    """Issue 12 #16: uint8 images and fp16 inputs to fp32 weights get a TypeError naming the dtypes."""
    model = timm.create_model("lolvit_s", num_classes=3, depths=1).eval()
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(TypeError, match="floating-point .normalised. input, got torch.uint8"):
        model((x * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="weights are torch.float32 but the input is torch.float16"):
        model(x.half())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).shape == (1, 3)
