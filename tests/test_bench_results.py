"""bench/common.py's results file: rows appended as measured, columns united, stamps first."""

import csv
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).parents[1] / "bench" / "common.py")
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)


def test_rows_append_and_new_columns_rewrite_the_file_with_their_union(tmp_path):
    results = common.Results("speed", folder=tmp_path)
    results.append({"batch": 1, "ms_per_step": 9.7123456})
    results.append({"batch": 32, "ms_per_step": 220.2})
    results.append({"batch": 32, "ms_per_step": 299.6, "variant": "bf16-compiled", "peaks": [700.0, 745.5]})
    with open(tmp_path / "speed.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames == ["date", "device", "torch", "command", "batch", "ms_per_step", "variant", "peaks"]
    assert [r["batch"] for r in rows] == ["1", "32", "32"]
    assert rows[0]["ms_per_step"] == "9.71235" and rows[0]["variant"] == ""
    assert rows[2]["variant"] == "bf16-compiled" and rows[2]["peaks"] == "700 745.5"
    assert all(r["device"] == common.device_name() and r["command"].startswith("python ") for r in rows)
    assert not (tmp_path / "speed.csv.tmp").exists()


def test_forward_flops_counts_the_ithq_transformer():
    # 36 layers x 1408 wide, 1024 tokens, 77 text tokens of 512, 4096 codes: about 3.1 TFLOP a sequence
    flops = common.forward_flops("ithq", 1)
    n, d = 1024, 1408
    layer = 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 2 * n * d * d + 4 * 77 * 512 * d + 4 * n * 77 * d \
        + 2 * n * d * d + 4 * n * d * 4 * d
    assert flops == 36 * layer + 2 * n * d * 4096
    assert common.forward_flops("ithq", 3) == 3 * flops


def _bench_script(name: str):
    import sys

    bench = Path(__file__).parents[1] / "bench"
    sys.path.insert(0, str(bench))  # the scripts import common as a sibling
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.pop(0)


def test_floors_distance_is_near_zero_for_one_distribution_and_the_squared_shift_for_a_moved_one():
    import torch

    floors = _bench_script("fid_floors")
    draw = torch.Generator().manual_seed(0)
    features, other = (torch.randn(500, 8, generator=draw, dtype=torch.float64) for _ in range(2))
    assert abs(floors.distance(features, features, kid_subset_size=100)["fid"]) < 1e-6
    same = floors.distance(features, other, kid_subset_size=1000)  # capped at the 500 features
    assert same["fid"] < 0.25 and same["kid_subset_size"] == 500
    # equal covariances: FID is the squared distance of the means (here 0.5^2 in each of 8 dims)
    moved = floors.distance(features, features + 0.5, kid_subset_size=100)
    assert abs(moved["fid"] - 8 * 0.25) < 1e-6
    assert moved["kid"] > 100 * abs(same["kid"]) and moved["kid"] > 3 * moved["kid_std"] > 0
    assert moved["kid_subset_size"] == 100


def test_profile_families_split_what_a_compiled_sampling_step_runs():
    """Kernel names from a profile of the bf16-compiled batch-32 step: each lands in its own row."""
    families = _bench_script("profile_step").family
    assert families("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN") == "matmul"
    assert families("_fused_linear_kernel") == "matmul"
    assert families("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7") == "attention"
    assert families("triton_per_fused_add_index_mul_native_layer_norm_split_unsqueeze_view_17") == \
        "residual + layer norm + modulation"
    assert families("triton_poi_fused_mul_sigmoid_view_5") == "MLP activation"
    assert families("_truncate_kernel") == "step math"
    assert families("triton_red_fused_add_argmax_bitwise_not_cat_clamp_min_eq_expand_index_log_logaddexp") == \
        "step math"
    assert families("triton_poi_fused__scaled_dot_product_cudnn_attention_permute_3") == "triton fused"
    assert families("Memset (Device)") == "copy / fill"
