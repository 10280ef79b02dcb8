"""What the measurements are held against: the roofline's points, the host's ceilings, the anchor's verdict."""
import dataclasses

import pandas as pd
import pytest

from mvlib import ceilings, precisions

H200 = "NVIDIA H200"
COLUMNS = ["label", "backend", "device", "precision", "batch", "throughput_ips", "variant", "img_size"]


def rows(*specs) -> pd.DataFrame:
    """A benchmark table of (label, backend, precision, batch, throughput, variant) rows at 256 px."""
    return pd.DataFrame([{"label": label, "backend": backend, "device": "cuda", "precision": precision, "batch": batch,
                          "throughput_ips": float(ips), "variant": variant, "img_size": 256}
                         for label, backend, precision, batch, ips, variant in specs], columns=COLUMNS)


def compiled(ips: float, variant: str = "mobilevit_s", batch: int = 32) -> pd.DataFrame:
    """The anchor's kind of row: torch.compile FP16 + CUDA graphs, with a PyTorch eager row beside it."""
    return rows(("PyTorch eager FP32", "pytorch-eager", "fp32", batch, 3200, variant),
                ("torch.compile FP16 + CUDA graphs", "torch.compile+cudagraphs", "fp16", batch, ips, variant))


def test_roofline_points():
    cost = pd.DataFrame([{"flops_per_image": 1e9, "params": 1_000_000, "input_elems": 1000, "output_elems": 0}])
    df = rows(("TensorRT FP16", "tensorrt", "fp16", 8, 14000, "mobilevit_s"),
              ("PyTorch CPU FP32", "pytorch", "fp32", 1, 20, "mobilevit_s"))
    pts = ceilings.roofline_points(df, cost).set_index(["label", "batch"])
    fp16 = pts.loc[("TensorRT FP16", 8)]
    assert fp16.flops_per_s == pytest.approx(14000 * 1e9)
    assert fp16.intensity == pytest.approx(8e9 / (2e6 + 8 * 1000 * 2))  # fp16 weights and I/O: 2 bytes
    assert pts.loc[("PyTorch CPU FP32", 1)].intensity == pytest.approx(1e9 / (4e6 + 1000 * 4))


def test_roofline_weight_bytes_come_from_the_precision_table(unknown_precision):
    cost = pd.DataFrame([{"flops_per_image": 1e9, "params": 1_000_000, "input_elems": 1000, "output_elems": 0}])
    fp8 = rows(("FP8 (Linear) + FP16", "torch.compile+cudagraphs", "fp8", 1, 9000, "mobilevit_s"))
    assert ceilings.roofline_points(fp8, cost).intensity.iloc[0] == pytest.approx(1e9 / (1e6 + 1000 * 4))  # 1 byte
    with pytest.raises(ValueError, match=f"unknown precision '{unknown_precision}'"):  # never a silent 4 bytes
        ceilings.roofline_points(rows(("?", "x", unknown_precision, 1, 10, "mobilevit_s")), cost)


def test_roofline_io_bytes_come_from_the_precision_table(monkeypatch):
    """An input or output element costs the bytes of the precision's numpy_dtype, not a 4-byte default."""
    cost = pd.DataFrame([{"flops_per_image": 1e9, "params": 1_000_000, "input_elems": 1000, "output_elems": 0}])
    int8 = rows(("TensorRT INT8", "tensorrt", "int8", 1, 9000, "mobilevit_s"))
    assert ceilings.roofline_points(int8, cost).intensity.iloc[0] == pytest.approx(1e9 / (1e6 + 1000 * 4))
    monkeypatch.setitem(precisions.TABLE, "int8", dataclasses.replace(precisions.get("int8"), numpy_dtype="float16"))
    assert ceilings.roofline_points(int8, cost).intensity.iloc[0] == pytest.approx(1e9 / (1e6 + 1000 * 2))


def test_anchor_within_and_outside_the_tolerance():
    a = ceilings.anchor_check(compiled(11800), H200)
    assert a["verdict"] == "within" and a["ratio"] == pytest.approx(11800 / 11790) and a["throughput_ips"] == 11800
    edge = 11790 * (1 - ceilings.H200_COMPILE.tolerance)
    assert ceilings.anchor_check(compiled(edge * 1.001), H200)["verdict"] == "within"
    low = ceilings.anchor_check(compiled(edge * 0.999), H200)
    assert low["verdict"] == "outside" and "%" in low["reason"]
    assert ceilings.anchor_check(compiled(20000), H200)["verdict"] == "outside"  # faster counts too


@pytest.mark.parametrize("table, gpu, words", [
    (compiled(11800), "NVIDIA A10", ["A10"]),                                  # another GPU
    (compiled(11800), None, ["none"]),                                         # no GPU at all
    (compiled(11800, variant="mobilevit_xxs"), H200, ["mobilevit_xxs"]),       # another model
    (compiled(11800, batch=8), H200, ["batch 32"]),                            # no row at the anchor's batch
    (rows(("PyTorch CPU FP32", "pytorch", "fp32", 32, 20, "mobilevit_s")), None, ["none", "batch 32"]),
])
def test_anchor_not_comparable_says_why(table, gpu, words):
    a = ceilings.anchor_check(table, gpu)
    assert a["verdict"] == "not comparable"
    for word in words:
        assert word in a["reason"]


def test_anchor_result_is_one_table_row_and_json():
    import json
    a = ceilings.anchor_check(rows(), None)  # an empty benchmark table: no row, no GPU, still a verdict
    assert a["verdict"] == "not comparable" and a["throughput_ips"] is None
    assert len(pd.DataFrame([a])) == 1 and json.loads(json.dumps(a)) == a


def test_cpu_ceilings_are_positive_rates():
    table = ceilings.cpu_ceilings(copy_mib=1, matmul_n=64, reps=2).set_index("ceiling")
    assert table.loc["copy", "unit"] == "GB/s" and table.loc["matmul_fp32", "unit"] == "TFLOP/s"
    assert (table["value"] > 0).all()
