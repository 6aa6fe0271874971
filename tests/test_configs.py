"""The config tree: presets are deltas (no key equal to what it overrides)."""

from __future__ import annotations

import shutil
from copy import deepcopy
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


def _node(tree: dict, dotted: str) -> tuple[bool, object]:
    """Whether ``tree`` holds a node at ``dotted``, and that node (unresolved)."""
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return False, None
        tree = tree[key]
    return True, tree


def _with_node(tree: dict, dotted: str, found: bool, value) -> dict:
    """A copy of ``tree`` whose node at ``dotted`` is ``value``, or absent when not ``found``."""
    copy = deepcopy(tree)
    *parents, last = dotted.split(".")
    parent = copy
    for key in parents:
        parent = parent[key]
    if found:
        parent[last] = value
    else:
        del parent[last]
    return copy


@pytest.mark.parametrize("preset", PRESETS)
def test_no_preset_key_repeats_what_it_overrides(preset, tmp_path):
    """Drop each key a preset sets, one at a time: the composed value must change (else the key
    only restates train.yaml, a config group or the preset's base)."""
    source = (CONFIGS / "experiment" / f"{preset}.yaml").read_text()
    body = OmegaConf.to_container(OmegaConf.create(source))
    full = _compose(CONFIGS, preset)
    # what the preset's keys override: the same preset with its defaults (and name) alone
    root = tmp_path / "configs"
    shutil.copytree(CONFIGS, root)
    bare = {k: v for k, v in body.items() if k in ("defaults", "name")}
    (root / "experiment" / f"{preset}.yaml").write_text("# @package _global_\n" + OmegaConf.to_yaml(bare))
    base = OmegaConf.to_container(_compose(root, preset), resolve=False)
    composed = OmegaConf.to_container(full, resolve=False)
    redundant = []
    for leaf in _leaves({k: v for k, v in body.items() if k not in ("defaults", "name")}):
        # the config composed without this one key: its node as the base has it, the rest as composed
        without = OmegaConf.create(_with_node(composed, leaf, *_node(base, leaf)))
        if OmegaConf.select(without, leaf) == OmegaConf.select(full, leaf):
            redundant.append(f"{leaf}: {OmegaConf.select(full, leaf)}")
    assert not redundant, f"experiment/{preset}.yaml restates {redundant}"
