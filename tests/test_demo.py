from lolvit.cli import main
from lolvit.tasks.classify.demo import DEMO_MODELS, run_demo


def test_quick_demo_writes_report_png_and_latency_table(tmp_path):
    r = run_demo(str(tmp_path / "demo"), quick=True, threads=1, sizes=(64,), progress=False)
    report = (tmp_path / "demo" / "report.md").read_text()
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "train" / "last.safetensors").is_file()
    assert set(r["latency_ms"][64]) == set(DEMO_MODELS) and all(v > 0 for v in r["latency_ms"][64].values())
    for name in DEMO_MODELS:
        assert f"| {name} |" in report
    assert "quick smoke run" in report and f"{r['top1']:.2f}%" in report


def test_cli_exposes_classification_commands(capsys):
    for cmd in ("train", "val", "ablate", "demo"):
        try:
            main([cmd, "--help"])
        except SystemExit as e:
            assert e.code == 0
        assert "usage: lolvit " + cmd in capsys.readouterr().out
