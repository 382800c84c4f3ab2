"""Input that used to end in a traceback (issue: no traceback from any command line) now ends in one
`error:` line naming what is wrong, exit 2, before any work, and nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pnnh.checkpoint import save_weights
from pnnh.hub import create_model, model_config

from conftest import assert_one_line_error, pnnh_main

CASES = [
    (["train", "--device", "mps"], ["--device 'mps' cannot be used", "usable: auto, cpu"]),
    (["train", "--device", "cuda:99"], ["--device 'cuda:99' cannot be used"]),
    (["theory", "--sigma", "nan"], ["--sigma must be a finite number, got nan"]),
    (["theory", "--mu", "inf"], ["--mu must be a finite number, got inf"]),
    (["theory", "--width", "99999999999999999999"], ["--width must be from 2 to 65,536"]),
    (["bench", "--input-size", "0"], ["--input-size must be from 8 to 4,096, got 0"]),
    (["train", "--nproc", "0"], ["--nproc must be from 1 to 1,024"]),
    (["compare", "--seeds", "abc"], ["--seeds 'abc' is neither a count"]),
    (["train", "--model-kwargs", "num_classes=3"], ["model option num_classes is set from the data"]),
    (["train", "--kind", "pnnh", "--model-kwargs", "code_ratio=abc"],
     ["model option code_ratio must be a finite number (default 1.0), got 'abc'"]),
    (["train", "--model-kwargs", "learner_ratio=inf"], ["model option learner_ratio must be a finite number"]),
    (["train", "--model-kwargs", "depth=3"], ["unknown model option 'depth' for resnet20; its options: widths, "
                                              "learner_ratio, coder, coder_share, code_ratio"]),
    (["train", "--model", "resnet21"], ["unknown model 'resnet21'"]),
    (["compare", "--entries", "resnet20:residual,resnet20:residual"], ["entry resnet20:residual is given twice"]),
    (["compare", "--model", "resnet20", "--kinds", "pnnh,pnnh"], ["entry resnet20:pnnh is given twice"]),
    (["bench", "--entries", "resnet20:pnnh:in_chans=1"], ["model option in_chans is set from the data"]),
    (["probe", "--model", "resnet20", "--kind", "pnnh", "--model-kwargs", "coder=3"],
     ["model option coder must be a string"]),
]


@pytest.mark.parametrize("argv,fragments", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_refused_in_one_line_before_any_work(tmp_path: Path, argv: list[str], fragments: list[str]) -> None:
    out = tmp_path / "out"
    writes = argv[0] in ("train", "compare", "theory", "probe")
    result = pnnh_main(*argv, *(["--output", out] if writes else []))
    assert_one_line_error(result, *fragments)
    assert not out.exists()  # nothing written by a refused command


def test_a_checkpoint_meets_data_it_does_not_fit(tmp_path: Path) -> None:
    """A 3-channel CIFAR model on 1-channel Fashion-MNIST: refused before evaluation, both sides named."""
    model = create_model("resnet20", num_classes=10, in_chans=3)
    weights = tmp_path / "cifar.safetensors"
    save_weights(weights, model.state_dict(),
                 {"model_config": model_config("resnet20", "residual", {}, 10, (3, 32, 32),
                                               classes=[f"c{i}" for i in range(10)])})
    result = pnnh_main("eval", "--checkpoint", weights, "--data", "fashion-mnist", "--test-subset", 64)
    assert_one_line_error(result, "takes 3-channel images", "fashion-mnist has 1-channel images")


def test_an_empty_class_folder_in_the_training_split_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    from pnnh.data import load_dataset
    from pnnh.errors import PnnhError

    data, cache = tmp_path / "data", tmp_path / "cache"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (data / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(data / split / cls / "x.png")
    (data / "train" / "empty").mkdir()
    with pytest.raises(PnnhError, match=r"empty holds no images, so its class would have none"):
        load_dataset("imagefolder", data, "train", cache_dir=cache)
    (data / "train" / "empty").rmdir()
    assert load_dataset("imagefolder", data, "train", cache_dir=cache).classes == ["a", "b"]
    assert torch.is_tensor(load_dataset("imagefolder", data, "test", cache_dir=cache).images)


@pytest.mark.parametrize("text,fragment", [
    ("repeats: abc\n", "--repeats must be an integer, got 'abc' (in "),
    ("json: maybe\n", "--json must be true or false, got 'maybe'"),
    ("amp: fp8\n", "--amp must be one of none, bf16, got 'fp8'"),
    ("batch_size: 0\n", "--batch-size must be from 1 to 65,536, got 0"),
])
def test_a_config_file_value_is_checked_as_the_command_line_is(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(text)
    assert_one_line_error(pnnh_main("bench", "--config", config), fragment)
