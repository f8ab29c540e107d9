"""Bench code paths on tiny sizes: measurements, reports (JSON/markdown/PNG) and the CLI."""
import json

import pytest
import torch

from lolvit.bench import attention, fawa, models, run_bench, scaling
from lolvit.bench.report import markdown_table
from lolvit.bench.timing import peak_memory_cpu, time_interleaved
from lolvit.cli import main


def _check_report(paths, name):
    assert {p.name for p in paths.values()} == {f"{name}.json", f"{name}.md", f"{name}.png"}
    data = json.loads(paths["json"].read_text())
    assert data["bench"] == name and data["rows"]
    assert data["machine"]["threads"] == 1 and data["machine"]["versions"]["torch"] == torch.__version__
    assert paths["md"].read_text().count("\n|") >= 3
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_peak_memory_is_measured():
    def alloc():
        a = torch.ones(1000, 1000)  # 4 MB, freed before b
        del a
        b = torch.ones(500, 1000)  # 2 MB, returned
        return b + 1  # another 2 MB

    peak = peak_memory_cpu(alloc)
    assert 4_000_000 <= peak <= 4_300_000


def test_time_interleaved_samples():
    s = time_interleaved({"a": lambda: torch.ones(10).sum(), "b": lambda: None}, warmup=1, repeats=4,
                         min_sample_s=0.001)
    assert set(s) == {"a", "b"} and all(len(v) == 4 and min(v) > 0 for v in s.values())
    with pytest.raises(ValueError):
        time_interleaved({}, 1, 1)


def test_markdown_table_missing_values():
    md = markdown_table([dict(a=1.23456, b=None)], [("A", "a", ".2f"), ("B", "b", "")])
    assert md.splitlines()[-1] == "| 1.23 | - |"


def test_attention_bench(tmp_path):
    p = attention.run(shape=(1, 16, 4, 6), repeats_layers=(1, 2), heads=2, threads=1, warmup=1, repeats=2,
                      budget_s=None)
    rows = p["rows"]
    assert len(rows) == 2 * 2 * len(attention.MECHANISMS)
    assert all(r["median_ms"] > 0 and r["peak_mb"] > 0 and len(r["samples_ms"]) == 2 for r in rows)
    assert all(r["time_vs_mhsa"] == 1.0 for r in rows if r["mechanism"] == "mhsa")
    _check_report(attention.report(p, str(tmp_path))["paths"], "attention")
    with pytest.raises(ValueError, match="unknown mechanism"):
        attention.run(shape=(1, 16, 4, 4), mechanisms=["nope"], threads=1)


def test_attention_stack_cache_matches_manual():
    torch.manual_seed(0)
    stack = attention.AttentionStack("fwa", 16, 2, 2, "layer", cache=True).eval()
    x = torch.randn(1, 12, 16)
    y0, keys = stack.mods[0](x, 3, 4)
    y1, _ = stack.mods[1](y0, 3, 4, keys)
    assert torch.allclose(stack(x, 3, 4), y1)


def test_fawa_routes_agree():
    x = torch.randn(2, 5 * 7, 8)
    for fold in (1, 2, 4):
        a, b = fawa.fawa_route(x, 5, 7, 1, fold), fawa.pooling_route(x, 5, 7, 1, fold)
        assert a.shape == b.shape and torch.allclose(a, 5 * b, atol=1e-5)


def test_fawa_bench(tmp_path):
    p = fawa.run(sizes=(32, 64), threads=1, warmup=1, repeats=2, budget_s=None)
    totals = [r for r in p["rows"] if r["layer"] == "total"]
    assert [r["size"] for r in totals] == [32, 64] and all(r["speedup"] > 0 for r in totals)
    assert len(p["rows"]) == 2 * 4
    _check_report(fawa.report(p, str(tmp_path))["paths"], "fawa")


def test_models_bench(tmp_path):
    p = models.run(models=("lolvit_s", "mobilevit_xs+fwa"), backends=("eager", "channels_last", "fused", "fused_cl"), sizes=(32,),
                   batches=(1,), threads=1, warmup=1, repeats=2, budget_s=None)
    keys = {(r["model"], r["backend"]) for r in p["rows"]}
    assert keys == {("lolvit_s", b) for b in ("eager", "channels_last", "fused", "fused_cl")} | {("mobilevit_xs+fwa", "eager"), ("mobilevit_xs+fwa", "channels_last")}
    assert all(r["gflops"] > 0 and r["params"] > 0 and r["fps"] > 0 for r in p["rows"])
    assert all(r["vs_ref"] is None for r in p["rows"])  # mobilevit_xs itself not measured
    _check_report(models.report(p, str(tmp_path))["paths"], "models")
    with pytest.raises(ValueError, match="unknown backend"):
        models.run(models=("lolvit_s",), backends=("tensorrt",), threads=1)


@pytest.mark.slow
def test_models_bench_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    p = models.run(models=("lolvit_s", "mobilevit_xs"), backends=("fused", "onnxruntime"), sizes=(64,),
                   batches=(2,), threads=1, warmup=1, repeats=2, budget_s=None)
    keys = {(r["model"], r["backend"]) for r in p["rows"]}
    assert ("lolvit_s", "onnxruntime") in keys and ("mobilevit_xs", "onnxruntime") in keys
    assert all(r["vs_ref"] is None for r in p["rows"])


def test_scaling_bench(tmp_path):
    p = scaling.run(sizes=(32, 48, 64), mechanisms=("fwa", "mhsa"), models=("lolvit_s",), threads=1,
                    warmup=1, repeats=2, budget_s=None)
    assert len(p["rows"]) == 3 * 3
    fits = {f["name"]: f for f in p["fits"]}
    assert set(fits) == {"fwa", "mhsa", "lolvit_s"} and all(f["exponent"] is not None for f in fits.values())
    _check_report(scaling.report(p, str(tmp_path))["paths"], "scaling")


def test_fit_exponent():
    assert scaling.fit_exponent([10, 100, 1000], [3, 300, 30000]) == pytest.approx(2.0)
    assert scaling.fit_exponent([10, 10], [1, 2]) is None


def test_run_bench_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown bench"):
        run_bench("nope")
    with pytest.raises(ValueError, match="threads"):
        run_bench("fawa", threads=0)


def test_cli_bench(tmp_path, capsys):
    out = tmp_path / "fawa"
    code = main(["bench", "fawa", "--quick", "--threads", "1", "--sizes", "32", "--repeats", "2", "--out", str(out)])
    assert code == 0
    assert "pooling / FAWA" in capsys.readouterr().out
    data = json.loads((out / "fawa.json").read_text())
    assert data["quick"] and data["machine"]["threads"] == 1 and (out / "fawa.png").exists()
    code = main(["bench", "attention", "--quick", "--threads", "1", "--shape", "1", "8", "4", "4", "--layers", "1",
                 "--mechanisms", "fwa", "mhsa", "--repeats", "2", "--out", str(tmp_path / "att")])
    assert code == 0 and (tmp_path / "att" / "attention.md").exists()
    assert main(["bench", "models", "--quick", "--models", "nope", "--out", str(tmp_path / "m")]) == 2


def test_targets_table_reads_bench_json(tmp_path):
    from lolvit.bench.targets import targets_table

    p = attention.run(shape=(1, 16, 4, 4), repeats_layers=(1,), parts=("attention",), heads=2, threads=1,
                      warmup=1, repeats=2, budget_s=None)
    attention.report(p, str(tmp_path / "attention"))
    table = targets_table(tmp_path)
    assert "FWA time <= 0.35x MHSA" in table and "FWA faster than ssa" in table
    assert "FAWA" not in table  # no fawa run under tmp_path


def test_train_bench(tmp_path):
    from lolvit.bench import train

    p = train.run(models=("lolvit_s", "mobilevit_xxs"), settings=((32, 4),), channels_last=True, threads=1,
                  warmup=1, repeats=2, budget_s=None)
    rows = {r["model"]: r for r in p["rows"]}
    assert set(rows) == {"lolvit_s", "mobilevit_xxs"} and all(len(r["samples_ms"]) == 2 for r in rows.values())
    assert rows["lolvit_s"]["vs_peer"] == pytest.approx(rows["lolvit_s"]["img_s"] / rows["mobilevit_xxs"]["img_s"])
    assert rows["mobilevit_xxs"]["vs_peer"] is None and p["channels_last"]
    _check_report(train.report(p, str(tmp_path))["paths"], "train")
    with pytest.raises(ValueError, match="unknown model"):
        train.run(models=("nope",), threads=1)
    with pytest.raises(ValueError, match="batch >= 2"):
        train.run(models=("lolvit_s",), settings=((32, 1),), threads=1)


@pytest.mark.slow
def test_deploy_bench_all_runtimes(tmp_path):
    from lolvit.bench import deploy

    p = deploy.run(models=("lolvit_s", "ghostnet_100"), runtimes=("eager", "eager_cl", "onnxruntime", "openvino"),
                   shapes=((64, 1), (64, 2)), threads=1, warmup=1, repeats=2, budget_s=None)
    keys = {(r["model"], r["runtime"], r["batch"]) for r in p["rows"]}
    installed = {rt for rt in ("onnxruntime", "openvino") if not any(k.endswith(rt) for k in p["skipped"])}
    expected = {("lolvit_s", "eager"), ("ghostnet_100", "eager"), ("ghostnet_100", "eager_cl")}
    expected |= {(m, rt) for m in ("lolvit_s", "ghostnet_100") for rt in installed}
    assert keys == {(m, rt, b) for m, rt in expected for b in (1, 2)}
    for r in p["rows"]:
        assert r["gflops"] > 0 and r["gflops_per_s"] == pytest.approx(r["gflops"] * r["batch"] / r["median_ms"] * 1e3)
        assert (r["vs_peer"] is not None) == (r["model"] == "lolvit_s")
    _check_report(deploy.report(p, str(tmp_path))["paths"], "deploy")


def test_deploy_and_train_cli_refuse_bad_input(tmp_path, capsys):
    assert main(["bench", "deploy", "--quick", "--runtimes", "tensorrt", "--out", str(tmp_path / "d")]) == 2
    assert "unknown runtime" in capsys.readouterr().err
    assert main(["bench", "train", "--quick", "--models", "nope", "--out", str(tmp_path / "t")]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "deploy", "--shapes", "224", "--out", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists() and not (tmp_path / "t").exists()


def test_busy_machine_warning_in_header_and_json(tmp_path, monkeypatch):
    from lolvit.bench import report

    monkeypatch.setattr(report.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(report.os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    quiet = report.machine_info(threads=2)
    quiet["load_avg_end"] = [2.4, 1.0, 0.5]  # the bench's own 2 threads at the end are allowed
    assert report.busy_warning(quiet) is None and "WARNING" not in report.header("t", quiet, "cmd")
    monkeypatch.setattr(report.os, "getloadavg", lambda: (3.1, 2.0, 1.0))  # > 4 - 2 + 0.5
    busy = report.machine_info(threads=2)
    md = report.header("t", busy, "cmd")
    assert "WARNING: the machine was busy" in md and "3.10 at start" in md
    ended_busy = dict(quiet, load_avg_end=[4.6, 3.0, 2.0])  # > 4 + 0.5
    assert "at end" in report.busy_warning(ended_busy)
    paths = report.write_report(tmp_path, "x", {"machine": busy, "rows": []}, md, lambda fig: None)
    assert "busy" in json.loads(paths["json"].read_text())["machine"]["busy_warning"]
    paths = report.write_report(tmp_path, "y", {"machine": quiet, "rows": []}, "q", lambda fig: None)
    assert json.loads(paths["json"].read_text())["machine"]["busy_warning"] is None


def test_time_interleaved_spins_up_thread_pool_first(monkeypatch):
    from lolvit.bench import timing

    events = []
    monkeypatch.setattr(timing, "spin_up_thread_pool", lambda n: events.append(("pool", n)))
    timing.time_interleaved({"a": lambda: events.append("a")}, warmup=1, repeats=2, min_sample_s=0.0)
    assert events[0] == ("pool", 8) and events.count(("pool", 8)) == 1 and events.count("a") == 3
    events.clear()
    timing.time_interleaved({"a": lambda: events.append("a")}, warmup=1, repeats=1, min_sample_s=0.0,
                            pool_warmup=0)
    assert ("pool", 8) not in events


def test_models_plot_is_split_into_legible_groups():
    from matplotlib.figure import Figure

    rows = [dict(model=f"m{i}", backend=b, size=s, batch=1, fps=float(i + 1))
            for s in (224, 384) for b in ("eager", "fused_cl", "onnxruntime") for i in range(10 + (b == "eager") * 4)]
    assert len(rows) == 2 * 34
    fig = models.plot_models(Figure(), rows)
    bars = [len(ax.patches) for ax in fig.axes]
    assert max(bars) <= 10 and sum(bars) == len(rows)
    assert len(fig.axes) == 2 * (2 + 1 + 1)  # eager's 14 models split 7 + 7
    titles = [ax.get_title() for ax in fig.axes]
    assert "224px, batch 1, eager (1/2)" in titles and "384px, batch 1, onnxruntime" in titles
    first = fig.axes[titles.index("224px, batch 1, eager (1/2)")]
    assert first.get_yticklabels()[-1].get_text() == "m13"  # fastest part first, fastest on top
    assert all(ax.get_yticklabels()[0].get_fontsize() >= 8 for ax in fig.axes)
