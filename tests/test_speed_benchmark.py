"""benchmarks/strategies.py in its tiny mode: JSON keys, ratios, targets, the Markdown section."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("strategies")


def test_config_names(bench: ModuleType) -> None:
    assert bench.parse_config("lora-256-ckpt") == {
        "name": "lora-256-ckpt", "strategy": "lora", "rank": 256, "cached": False,
        "checkpointing": True, "compile": False,
    }  # fmt: skip
    assert bench.parse_config("frozen-cached")["cached"] is True
    assert bench.parse_config("full-ckpt")["checkpointing"] is True
    for bad in ("lora", "lora-x", "full-cached", "adapter-8"):
        with pytest.raises(SystemExit):
            bench.parse_config(bad)


def test_tiny_benchmark_end_to_end(bench: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    marks = ("<!-- benchmarks/predict.py: begin -->", "<!-- benchmarks/predict.py: end -->")
    other = f"{marks[0]}\n## Whole-scene prediction\nkeep me\n{marks[1]}"
    doc.write_text(f"# Performance\n\n{other}\n")
    out = tmp_path / "strategies.json"
    bench.main(["--tiny", "--in-process", "--json", str(out), "--markdown", str(doc)])

    result = json.loads(out.read_text())
    suite = result["suites"]["tiny"]
    assert set(suite["configs"]) == {"frozen", "frozen-cached", "lora-8", "lora-256", "full", "full-ckpt"}
    for name, row in suite["configs"].items():
        assert "error" not in row, (name, row.get("error"))
        for key in ("peak_rss_bytes", "seconds_per_step", "flops_per_step", "achieved_flops_per_s", "mfu",
                    "matmul_flops_per_s", "trainable_params"):  # fmt: skip
            assert row[key] > 0, (name, key)
    rows = suite["configs"]
    # FLOPs: the cached step skips the encoder; LoRA adds adapter work; full adds weight gradients.
    assert rows["frozen-cached"]["flops_per_step"] < rows["frozen"]["flops_per_step"]
    assert (
        rows["frozen"]["flops_per_step"]
        < rows["lora-8"]["flops_per_step"]
        < rows["lora-256"]["flops_per_step"]
    )
    assert (
        rows["full"]["flops_per_step"] == rows["full-ckpt"]["flops_per_step"]
    )  # recompute is not model work
    assert (
        rows["lora-8"]["trainable_params"]
        < rows["lora-256"]["trainable_params"]
        < rows["full"]["trainable_params"]
    )
    assert rows["frozen-cached"]["cache_build"]["chips"] == suite["epoch_chips"]

    ratios = suite["ratios"]
    assert set(ratios["lora_over_frozen_memory"]) == {"lora-8", "lora-256"}
    for key in ("full_ckpt_over_full_memory", "cached_over_uncached_epoch_time", "cached_epoch_speedup"):
        assert ratios[key] > 0, key
    assert ratios["cached_epoch_speedup"] > 1.0, "decoder-only epochs must beat encoder + decoder epochs"
    assert list(result["targets"]) == ["tiny"]
    assert [t["bound"] for t in result["targets"]["tiny"]] == [8.0, 1.15, 10.0, 0.5]
    assert all(isinstance(t["met"], bool) for t in result["targets"]["tiny"])
    peak = result["machine"]["matmul_peak_gflops"] * 1e9
    assert all(r["mfu"] == pytest.approx(r["achieved_flops_per_s"] / peak) for r in rows.values())

    text = doc.read_text()
    assert other in text, "another benchmark's section must survive"
    assert "## Training strategies: speed and memory" in text and "| lora-256 |" in text
    del result["suites"]["tiny"]["configs"]["lora-256"]  # a re-run replaces the section, once
    bench.update_markdown(doc, bench.markdown(result))
    text = doc.read_text()
    assert text.count("## Training strategies: speed and memory") == 1 and "| lora-256 |" not in text
    assert other in text


def test_one_configuration_in_its_own_process(bench: ModuleType) -> None:
    """The default path: a child interpreter measures one configuration and reports its own RSS."""
    job = {"suite": bench.SUITES["tiny"], "spec": bench.parse_config("lora-8"), "kind": "step",
           "steps": 1, "warmup": 0, "threads": 1}  # fmt: skip
    res = bench._run_child(job, nice=0, timeout=120)
    assert "error" not in res, res.get("error")
    assert res["own_process"] and res["peak_rss_bytes"] > res["rss_after_build_bytes"] * 0.5
    assert len(res["step_seconds"]) == 1 and res["torch_threads"] == 1
