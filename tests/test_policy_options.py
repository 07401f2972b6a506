"""Policy config overrides from --policy-opt KEY=VALUE and TOML/JSON files reach lerobot's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from piperctl.errors import PiperctlError
from piperctl.training.policy import make_policy_config, parse_policy_options


def test_policy_opt_values_are_json_with_string_fallback(tmp_path: Path) -> None:
    toml = tmp_path / "act.toml"
    toml.write_text('[policy]\nchunk_size = 30\nvision_backbone = "resnet34"\n')
    opts = parse_policy_options(
        ["n_action_steps=30", "pretrained_backbone_weights=null", "dropout=0.2"], toml
    )
    assert opts == {
        "chunk_size": 30,
        "vision_backbone": "resnet34",
        "n_action_steps": 30,
        "pretrained_backbone_weights": None,
        "dropout": 0.2,
    }
    cfg = make_policy_config("act", "cpu", opts)
    assert (cfg.chunk_size, cfg.n_action_steps, cfg.vision_backbone) == (30, 30, "resnet34")
    assert cfg.pretrained_backbone_weights is None and cfg.dropout == 0.2


def test_json_config_and_tuple_fields(tmp_path: Path) -> None:
    cfg_file = tmp_path / "diffusion.json"
    cfg_file.write_text('{"down_dims": [32, 64], "crop_shape": null}')
    cfg = make_policy_config("diffusion", "cpu", parse_policy_options([], cfg_file))
    assert cfg.down_dims == (32, 64) and cfg.crop_shape is None


@pytest.mark.parametrize(
    "items,needle",
    [(["chunk_size"], "KEY=VALUE"), (["no_such_field=1"], "no option no_such_field")],
)
def test_bad_policy_options_are_named(items: list[str], needle: str) -> None:
    with pytest.raises(PiperctlError, match=needle):
        make_policy_config("act", "cpu", parse_policy_options(items))


def test_invalid_values_and_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(PiperctlError, match="invalid act policy options"):
        make_policy_config("act", "cpu", {"n_action_steps": 200, "chunk_size": 100})
    bad = tmp_path / "bad.toml"
    bad.write_text("chunk_size = [")
    with pytest.raises(PiperctlError, match="not valid TOML"):
        parse_policy_options([], bad)
    with pytest.raises(PiperctlError, match="does not exist"):
        parse_policy_options([], tmp_path / "missing.json")


@pytest.mark.parametrize(
    "item,needle",
    [
        ('n_heads="two"', 'n_heads="two": expected an integer'),
        ("dropout=fast", 'dropout="fast": expected a number'),
        ("use_vae=maybe", 'use_vae="maybe": expected true or false'),
    ],
)
def test_bad_values_are_named_in_the_users_words(item: str, needle: str) -> None:
    with pytest.raises(PiperctlError) as err:
        make_policy_config("act", "cpu", parse_policy_options([item]))
    assert needle in str(err.value) and "<class" not in str(err.value)


def test_diffusion_tuple_field_in_words() -> None:
    with pytest.raises(PiperctlError, match=r"down_dims=\"wide\": expected a list of integers"):
        make_policy_config("diffusion", "cpu", parse_policy_options(["down_dims=wide"]))
    with pytest.raises(PiperctlError, match="expected a list of integers or null") as err:
        make_policy_config("diffusion", "cpu", parse_policy_options(["crop_shape=x"]))
    assert err.value.hint == "e.g. --policy-opt crop_shape=[10,10]"


def test_config_files_must_be_toml_or_json(tmp_path: Path) -> None:
    txt = tmp_path / "x.txt"
    txt.write_text("chunk_size = 3")
    with pytest.raises(PiperctlError, match=r"must be a \.toml or \.json file \(got '\.txt'\)"):
        parse_policy_options([], txt)
