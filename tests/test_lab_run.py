"""The lab end to end on stories260K with a tiny budget: the CLI writes a sane JSON report, the table and the plots
(or says how to get them when matplotlib is missing); the long-run mode shifts the context and logs rep-4."""
from __future__ import annotations

import json
import sys

import pytest

from minillama.cli import main

TINY = ["--n", "3", "--max-new-tokens", "12", "--max-prompts", "2", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def lab_report(stories_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    code = main(["lab", "-m", str(stories_dir), "--samplers", "greedy,drugs-K-0.3,entropy,alpha",
                 "--out", str(out), *TINY])
    assert code == 0
    return out, json.loads((out / "stories260K-lab.json").read_text())


def test_report_schema_and_figures(lab_report):
    _, report = lab_report
    assert report["kind"] == "sampler-lab" and report["minillama_version"]
    assert report["settings"] == {**report["settings"], "n": 3, "max_new_tokens": 12, "seed": 0,
                                  "chat_template_applied": False}
    assert report["model"]["n_layers"] == 5 and len(report["prompts"]) == 2
    assert [c["name"] for c in report["configs"]] == ["greedy", "drugs-K-0.3", "entropy", "alpha"]
    for config in report["configs"]:
        m = config["metrics"]
        assert 0 < m["distinct_1"] <= 1 and 0 <= m["self_bleu4"] <= 1 and 1 <= m["unique_samples"] <= 3
        assert m["ppl_mean"] > 1 and m["ppl_min"] <= m["ppl_mean"] <= m["ppl_max"]
        assert m["tokens_per_s"] > 0 and m["slowdown_vs_greedy"] > 0 and 0 <= m["rep4_char"] <= 1
        assert len(config["per_prompt"]) == 2
        assert all(len(p["samples"]) == 3 and all(s["text"] for s in p["samples"]) for p in config["per_prompt"])
    by_name = {c["name"]: c["metrics"] for c in report["configs"]}
    assert by_name["greedy"]["unique_samples"] == 1 and by_name["greedy"]["self_bleu4"] == 1.0
    assert by_name["greedy"]["slowdown_vs_greedy"] == 1.0
    assert by_name["drugs-K-0.3"]["unique_samples"] > 1
    assert by_name["drugs-K-0.3"]["distinct_2"] > by_name["greedy"]["distinct_2"]
    assert set(by_name["entropy"]["regime_shares"]) <= {"flowing", "treading", "exploring", "resampling",
                                                        "adaptive"}
    assert sum(by_name["alpha"]["regime_shares"].values()) == pytest.approx(1.0)
    assert "regime_shares" not in by_name["greedy"]


def test_plot_written_when_matplotlib_is_present(lab_report):
    pytest.importorskip("matplotlib")
    out, _ = lab_report
    png = out / "stories260K-frontier.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_skipped_with_a_message_without_matplotlib(stories_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # `import matplotlib` now raises ImportError
    assert main(["lab", "-m", str(stories_dir), "--samplers", "greedy", "--out", str(tmp_path), *TINY]) == 0
    captured = capsys.readouterr()
    assert "pip install 'minillama[plot]'" in captured.err
    assert "| greedy" in captured.out
    assert (tmp_path / "stories260K-lab.json").exists() and not list(tmp_path.glob("*.png"))


def test_long_run_shifts_the_context_and_logs_rep4(stories_dir, tmp_path, capsys):
    code = main(["lab", "-m", str(stories_dir), "--long-run", "--long-tokens", "60", "--long-every", "20",
                 "--long-context", "32", "--long-prompt", "Once upon a time", "--long-arms", "greedy,rdnet,drugs", "--out", str(tmp_path),
                 "--no-progress", "--threads", "1"])
    assert code == 0
    report = json.loads((tmp_path / "stories260K-long_run.json").read_text())
    assert report["settings"]["context_length"] == 32 and report["settings"]["context_shift"]
    assert [r["name"] for r in report["runs"]] == ["greedy", "rdnet", "drugs"]
    for run in report["runs"]:
        assert run["new_tokens"] == 60                     # past the 32-token context: it shifted, EOS banned
        assert [t for t, _ in run["rep4"]] == [20, 40, 60]
        assert all(0 <= v <= 1 for _, v in run["rep4"])
    rdnet = report["runs"][1]
    assert [t for t, _ in rdnet["drift"]] == [20, 40, 60] and rdnet["drift"][0][1] <= 0.1
    assert "| 60" in capsys.readouterr().out


def test_bad_arguments_are_named(stories_dir, tmp_path, capsys):
    assert main(["lab", "-m", str(stories_dir), "--samplers", "bogus", "--out", str(tmp_path)]) == 1
    assert "unknown configuration 'bogus'" in capsys.readouterr().err
    assert main(["lab", "-m", str(stories_dir), "--long-run", "--long-arms", "x", "--out", str(tmp_path)]) == 1
    assert "unknown arm 'x'" in capsys.readouterr().err
