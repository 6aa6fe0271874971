"""The config tree: presets are deltas (no key equal to what it overrides)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p.relative_to(CONFIGS / "experiment").with_suffix("").as_posix()
                 for p in (CONFIGS / "experiment").rglob("*.yaml"))


def _leaves(node, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix]
    return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}.{key}" if prefix else key)]


def _compose(root: Path, experiment: str):
    with initialize_config_dir(config_dir=str(root), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}"])


def _without(body: dict, dotted: str) -> dict:
    """A copy of ``body`` without the leaf at ``dotted`` (and without parents it leaves empty)."""
    copy = OmegaConf.to_container(OmegaConf.create(body))
    keys = dotted.split(".")
    trail = [copy]
    for key in keys[:-1]:
        trail.append(trail[-1][key])
    del trail[-1][keys[-1]]
    for parent, key in zip(reversed(trail[:-1]), reversed(keys[:-1])):
        if parent[key] == {}:
            del parent[key]
    return copy


@pytest.mark.parametrize("preset", PRESETS)
def test_no_preset_key_repeats_what_it_overrides(preset, tmp_path):
    """Drop each key a preset sets, one at a time: the composed value must change (else the key
    only restates train.yaml, a config group or the preset's base)."""
    source = (CONFIGS / "experiment" / f"{preset}.yaml").read_text()
    body = OmegaConf.to_container(OmegaConf.create(source))
    full = _compose(CONFIGS, preset)
    root = tmp_path / "configs"
    shutil.copytree(CONFIGS, root)
    header = "# @package _global_\n"
    redundant = []
    for leaf in _leaves({k: v for k, v in body.items() if k not in ("defaults", "name")}):
        reduced = _without(body, leaf)
        (root / "experiment" / f"{preset}.yaml").write_text(header + OmegaConf.to_yaml(OmegaConf.create(reduced)))
        if OmegaConf.select(_compose(root, preset), leaf) == OmegaConf.select(full, leaf):
            redundant.append(f"{leaf}: {OmegaConf.select(full, leaf)}")
    assert not redundant, f"experiment/{preset}.yaml restates {redundant}"
