import dataclasses
import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.rows import ResultsStore, Row, RowSettings, to_frame
from harness.statistics import ci95
from harness.report import write_reports
from harness.tables import BEST_MAX_ACC_DROP, comparison_table, cost_table, detection_table, long_table, paired_table, render, verdict_table


def row(seed=0, acc=80.0, asr=5.0, attack="badencoder", defense="none", downstream="fmnist", seconds=None) -> Row:
    return Row(suite="effectiveness", profile="tiny", attack=attack, defense=defense, pretrain="fmnist", downstream=downstream,
               seed=seed, acc=acc, asr_all=asr, asr_nontarget=asr, n_test=10, n_nontarget=9, seconds=seconds or {"attack": 1.0})


def test_ci95_known_answer():
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.3027 -> 4.3027 / sqrt(3)
    assert ci95(pd.Series([1.0, 2.0, 3.0])) == pytest.approx(4.302653 / 3**0.5, rel=1e-5)
    assert ci95(pd.Series([5.0])) == 0.0


def test_long_table_shows_mean_and_ci_over_seeds():
    table = long_table(to_frame([row(0, acc=80), row(1, acc=82), row(2, acc=84)]))
    assert table.loc[0, "seeds"] == 3
    assert table.loc[0, "ACC %"].startswith("82.00 ± ")


def test_markdown_and_latex_known_output():
    table = long_table(to_frame([row(0, acc=80.5, asr=3.25)]))
    md = render(table, "markdown").splitlines()
    assert md[0].split("|")[1:-1] == [" attack     ", " downstream   ", " defense   ", " seeds   ", " ACC %   ", " ASR(all) %   ", " ASR(non-target) %   "]
    assert md[2] == "| badencoder | fmnist       | none      | 1       | 80.50   | 3.25         | 3.25                |"
    tex = [" ".join(line.split()) for line in render(table, "latex").splitlines()]
    assert tex[:3] == ["\\begin{tabular}{lllllll}", "\\toprule", "attack & downstream & defense & seeds & ACC \\% & ASR(all) \\% & ASR(non-target) \\% \\\\"]
    assert tex[4] == "badencoder & fmnist & none & 1 & 80.50 & 3.25 & 3.25 \\\\"
    assert tex[-2:] == ["\\bottomrule", "\\end{tabular}"]


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="terminal, markdown"):
        render(long_table(to_frame([row()])), "html")


def test_store_appends_and_skips_a_cut_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(row(0))
    store.append(row(1))
    with open(store.path, "a") as f:
        f.write(row(2).to_json()[:40])  # a killed writer
    assert [r.seed for r in store.rows()] == [0, 1]


def test_results_csv_is_deterministic_and_timings_apart(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_reports([row(0, seconds={"attack": 1.0})], a)
    write_reports([row(0, seconds={"attack": 99.0})], b)
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    assert (a / "timings.csv").read_text() != (b / "timings.csv").read_text()
    assert "attack_s" in (a / "timings.csv").read_text()


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 100), st.floats(0, 100)), min_size=1, max_size=12, unique_by=lambda t: t[0]))
@settings(max_examples=40, deadline=None)
def test_table_has_one_line_per_configuration_and_means_within_range(points):
    rows = [row(seed, acc=acc, asr=asr) for seed, acc, asr in points]
    table = long_table(to_frame(rows))
    assert len(table) == 1 and table.loc[0, "seeds"] == len(points)
    mean = float(table.loc[0, "ACC %"].split(" ")[0])
    assert min(p[1] for p in points) - 0.01 <= mean <= max(p[1] for p in points) + 0.01
    assert json.loads(rows[0].to_json())["seed"] == points[0][0]


def test_suite_column_appears_only_when_suites_differ():
    one = long_table(to_frame([row(0)]))
    two = long_table(to_frame([row(0), dataclasses.replace(row(0), suite="generalisation")]))
    assert "suite" not in one.columns
    assert list(two["suite"]) == ["effectiveness", "generalisation"]


def test_cost_table_averages_seconds_per_defense_and_phase():
    rows = [
        row(0, defense="mimic", seconds={"defense": 10.0, "defense_localisation": 2.0, "defense_distillation": 8.0}),
        row(1, defense="mimic", seconds={"defense": 14.0, "defense_localisation": 4.0, "defense_distillation": 10.0}),
        row(0, defense="ft", seconds={"defense": 5.0, "defense_finetune": 5.0}),
        row(0, defense="none", seconds={"attack": 3.0}),  # undefended rows cost no defense time
    ]
    table = cost_table(rows).set_index("defense")
    assert list(table.index) == ["ft", "mimic"]
    assert table.loc["mimic", "runs"] == 2 and table.loc["mimic", "seconds"].startswith("12.00 ± ")
    assert table.loc["mimic", "localisation s"].startswith("3.00 ± ") and table.loc["ft", "localisation s"] == ""
    assert table.loc["ft", "finetune s"] == "5.00"
    assert cost_table([row()]).empty


def test_comparison_table_has_one_column_per_defense_and_its_controls():
    rows = [row(s, acc=80.0, asr=100.0) for s in (0, 1)]
    rows += [row(0, acc=79.0, asr=4.0, defense="mimic"), row(1, acc=77.0, asr=6.0, defense="mimic")]  # mean 78 / 5
    rows += [row(0, acc=70.0, asr=1.0, defense="ft"), row(0, acc=81.0, asr=90.0, defense="nad")]  # ft: lowest ASR, 10 ACC points lost
    rows += [row(0, attack="clean", acc=81.0, asr=1.0), row(0, attack="random", acc=60.0, asr=9.0)]  # the controls' columns
    table = comparison_table(to_frame(rows))
    assert list(table.columns) == ["attack", "downstream", "clean", "random", "none", "ft", "mimic", "nad"]
    (line,) = table.to_dict("records")
    assert line["none"] == "80.00 / 100.00 / 100.00" and line["ft"] == "70.00 / 1.00 / 1.00" and line["random"] == "60.00 / 9.00 / 9.00"
    # ft lost too much ACC to be marked; nad shares only one seed with mimic: one seed ranks nothing.
    assert line["mimic"] == "78.00 / 5.00 / 5.00" and line["nad"] == "81.00 / 90.00 / 90.00"
    assert json.loads(render(table, "json"))[0]["mimic"] == "78.00 / 5.00 / 5.00"
    assert "\\toprule" in render(table, "latex")


def test_best_is_marked_only_when_its_paired_ci_against_the_runner_up_excludes_zero():
    base = [row(s, acc=80.0, asr=100.0) for s in range(3)]
    mimic = [row(s, acc=79.0, asr=a, defense="mimic") for s, a in enumerate((2.0, 3.0, 4.0))]
    ft = [row(s, acc=79.0, asr=a, defense="ft") for s, a in enumerate((20.0, 22.0, 24.0))]  # paired diff 18..20: separated
    nad = [row(s, acc=79.0, asr=a, defense="nad") for s, a in enumerate((3.0, 2.0, 5.0))]  # paired diff 1, -1, 1: tied
    (separated,) = comparison_table(to_frame(base + mimic + ft)).to_dict("records")
    assert separated["mimic"].endswith(" *") and not separated["ft"].endswith(("*", "~"))
    (tied,) = comparison_table(to_frame(base + mimic + ft + nad)).to_dict("records")
    assert tied["mimic"].endswith(" ~") and tied["nad"].endswith(" ~") and not tied["ft"].endswith(("*", "~"))
    # The cost suite holds the same rows again: they count once, so the CI is the same.
    again = [dataclasses.replace(r, suite="cost") for r in base + mimic + ft]
    (twice,) = comparison_table(to_frame(base + mimic + ft + again)).to_dict("records")
    assert twice == separated
    clean_defended = [dataclasses.replace(row(0, attack="clean", acc=10.0, defense="mimic"), suite="generalisation")]
    (line,) = comparison_table(to_frame(base + mimic + clean_defended + [row(0, attack="clean", acc=81.0)])).to_dict("records")
    assert line["clean"].startswith("81.00")  # the control column is the undefended clean encoder only


def test_paired_table_gives_each_defense_against_mimic_per_seed():
    from harness.tables import paired_table

    rows = [row(s, acc=79.0, asr=a, defense="mimic") for s, a in enumerate((2.0, 3.0, 4.0))]
    rows += [row(s, acc=81.0, asr=a, defense="ft") for s, a in enumerate((20.0, 22.0, 24.0))]
    (line,) = paired_table(to_frame(rows)).to_dict("records")
    assert line["defense"] == "ft" and line["seeds"] == 3
    assert line["ASR(all) - mimic"] == "19.00 ± 2.48" and line["ACC - mimic"] == "2.00 ± 0.00"


def test_ablation_is_informative_only_when_clone_loss_alone_inherits():
    from harness.tables import ablation_verdict

    def ablation(r, variant="", implanted=True):
        return dataclasses.replace(r, suite="ablation", variant=variant, implanted=None if r.attack == "clean" else implanted)

    control = ablation(row(0, attack="clean", asr=10.0))
    inherits = [control, ablation(row(0, defense="mimic", asr=60.0), "clone_only")]
    clean_anyway = [control, ablation(row(0, defense="mimic", asr=15.0), "clone_only")]
    never_implanted = [control, ablation(row(0, defense="mimic", asr=60.0), "clone_only", implanted=False)]
    assert ablation_verdict(to_frame(inherits))["verdict"].tolist() == ["informative"]
    assert ablation_verdict(to_frame(clean_anyway))["verdict"].tolist() == ["uninformative: clone loss alone did not inherit"]
    assert ablation_verdict(to_frame(never_implanted))["verdict"].tolist() == ["uninformative: the attack did not implant"]


def test_rows_of_other_resolved_profiles_or_scenarios_are_never_merged():
    a = row(0, acc=80.0)
    wider = dataclasses.replace(a, profile="tiny+1a2b3c4d", acc=90.0)  # --set width=32
    other_trigger = dataclasses.replace(a, scenario="checkerboard10", acc=70.0)
    frame = to_frame([a, wider, other_trigger])
    assert len(frame) == 3 and sorted(long_table(frame)["ACC %"]) == ["70.00", "80.00", "90.00"]
    assert a.identity != wider.identity != other_trigger.identity


_acc = st.floats(0, 100, allow_nan=False).filter(lambda a: abs(a - (50.0 - BEST_MAX_ACC_DROP)) > 1e-3)  # off the bound itself


@given(asrs=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=5), accs=st.lists(_acc, min_size=5, max_size=5))
@settings(max_examples=50, deadline=None)
def test_one_seed_marks_only_a_defense_without_rivals(asrs, accs):
    names = [f"d{i}" for i in range(len(asrs))]
    rows = [row(0, acc=50.0, asr=100.0)] + [row(0, acc=accs[i], asr=a, defense=n) for i, (n, a) in enumerate(zip(names, asrs))]
    (line,) = comparison_table(to_frame(rows)).to_dict("records")
    marked = [n for n in names if line[n].endswith((" *", " ~"))]
    usable = [n for n, acc in zip(names, accs) if acc > 50.0 - BEST_MAX_ACC_DROP]
    if not usable:
        assert marked == []
    elif len(usable) == 1:
        assert marked == usable and line[usable[0]].endswith(" *")
    else:  # one seed ranks nothing
        assert marked == []


def test_sweeps_become_one_png_per_suite_and_setting(tmp_path):
    rows = [dataclasses.replace(row(s, acc=80 - v, asr=v, defense="mimic"), suite="ablation", variant=f"lambda1={v / 10:g}")
            for s in (0, 1) for v in (0, 4, 10)]
    rows += [dataclasses.replace(row(0, defense="mimic"), suite="robustness", variant="clean_ratio=0.01"), row(0, defense="mimic")]
    paths = write_reports(rows, tmp_path)
    pngs = sorted(p.name for p in paths.values() if p.suffix == ".png")
    assert pngs == ["plot-ablation-lambda1.png", "plot-robustness-clean_ratio.png"]
    assert (tmp_path / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_points_average_over_seeds():
    from harness.plots import sweep_points

    rows = [dataclasses.replace(row(s, acc=70 + s, asr=10.0 * s, defense="mimic"), variant="lambda2=1000") for s in (0, 2)]
    rows.append(dataclasses.replace(row(0, defense="mimic"), variant="no_clone"))  # not a sweep point
    points = sweep_points(to_frame(rows))
    assert len(points) == 1 and points.loc[0, "sweep"] == "lambda2" and points.loc[0, "value"] == 1000.0
    assert points.loc[0, "acc"] == 71.0 and points.loc[0, "asr_nontarget"] == 10.0


def test_verdict_table_lists_detector_rows_with_their_evidence():
    flagged = dataclasses.replace(row(0, defense="decree"), settings=RowSettings(defense_meta={"flagged": True, "l1_share": 0.02}))
    clean = dataclasses.replace(row(1, defense="decree"), settings=RowSettings(defense_meta={"flagged": False, "l1_share": 0.07}))
    table = verdict_table([flagged, clean, row(0, defense="mimic")])
    assert table[["seed", "verdict", "l1_share"]].values.tolist() == [[0, "flagged", "0.0200"], [1, "not flagged", "0.0700"]]
    assert "variant" not in table


def test_verdict_table_lists_an_encoder_once_and_names_its_variant():
    verdict = RowSettings(defense_meta={"flagged": False, "l1_share": 0.07})
    effectiveness = dataclasses.replace(row(0, defense="decree"), settings=verdict)
    rows = [effectiveness, dataclasses.replace(effectiveness, suite="cost"),  # one encoder, two suites
            dataclasses.replace(effectiveness, suite="generalisation", variant="blend")]
    table = verdict_table(rows)
    assert table[["variant", "verdict"]].values.tolist() == [["", "not flagged"], ["blend", "not flagged"]]


def test_detection_table_gives_an_input_detectors_rates_over_seeds_and_counts_a_shared_row_once():
    def detected(seed, tpr, fpr, asr):
        meta = {"threshold": 0.1, "detection": {"tpr": tpr, "fpr": fpr}}
        return dataclasses.replace(row(seed, asr=asr, defense="dede"), settings=RowSettings(defense_meta=meta))

    first = detected(0, 90.0, 4.0, 10.0)
    rows = [first, dataclasses.replace(first, suite="cost"), detected(1, 70.0, 6.0, 30.0), row(0, defense="mimic")]
    table = detection_table(rows)
    assert len(table) == 1 and table["seeds"].tolist() == [2]
    assert table["TPR %"].tolist() == [f"80.00 ± {ci95(pd.Series([90.0, 70.0])):.2f}"]
    assert table["ASR(all) % after rejection"].iloc[0].startswith("20.00 ±")
    assert not len(detection_table([row(0, defense="mimic")]))
    assert "profile" not in table and "precision" not in table  # one profile and precision: no column says it again
    other = detection_table(rows + [dataclasses.replace(first, precision="bf16")])
    assert sorted(other["precision"]) == ["bf16", "fp32"] and other["seeds"].tolist() == [1, 2]
    mixed = [dataclasses.replace(first, implanted=True), dataclasses.replace(detected(1, 70.0, 6.0, 30.0), implanted=False)]
    assert detection_table(mixed)["implanted"].tolist() == ["1/2"]  # the positive control as the other tables label it


def test_markdown_and_latex_tables_match_a_known_rendering():
    # mimic: ACC 78.5 and 79.5 -> 79.00 ± 12.706 * 0.7071 / sqrt(2) = 6.35; ASR 2.25 and 3.75 -> 3.00 ± 9.53
    rows = [row(0, acc=80.0, asr=100.0), row(0, acc=78.5, asr=2.25, defense="mimic"), row(1, acc=79.5, asr=3.75, defense="mimic"),
            row(1, acc=81.0, asr=100.0)]
    frame = to_frame(rows)
    assert render(comparison_table(frame), "markdown") == (
        "| attack     | downstream   | none                    | mimic                 |\n"
        "|------------|--------------|-------------------------|-----------------------|\n"
        "| badencoder | fmnist       | 80.50 / 100.00 / 100.00 | 79.00 / 3.00 / 3.00 * |"
    )
    assert render(long_table(frame), "latex") == (
        "\\begin{tabular}{lllllll}\n\\toprule\n"
        " attack     & downstream   & defense   & seeds   & ACC \\%        & ASR(all) \\%    & ASR(non-target) \\%   \\\\\n"
        "\\midrule\n"
        " badencoder & fmnist       & mimic     & 2       & 79.00 ± 6.35 & 3.00 ± 9.53   & 3.00 ± 9.53         \\\\\n"
        " badencoder & fmnist       & none      & 2       & 80.50 ± 6.35 & 100.00 ± 0.00 & 100.00 ± 0.00       \\\\\n"
        "\\bottomrule\n\\end{tabular}"
    )


def test_rows_of_two_precisions_are_never_one_line():
    rows = [dataclasses.replace(r, precision=p) for p, asr in (("fp32", 90.0), ("bf16", 10.0))
            for r in (row(0, asr=100.0), row(0, asr=asr, defense="mimic"))]
    table = comparison_table(to_frame(rows))
    assert sorted(table["precision"]) == ["bf16", "fp32"]
    assert sorted(cell.split(" / ")[1] for cell in table["mimic"]) == ["10.00", "90.00"]
    mimic = [dataclasses.replace(r, defense="ft", asr_all=r.asr_all - 5) for r in rows if r.defense == "mimic"]
    paired = paired_table(to_frame(rows + mimic))
    assert sorted(paired["precision"]) == ["bf16", "fp32"]


def test_harness_table_never_mixes_code_versions(tmp_path, capsys):
    from harness.cli import main

    store = ResultsStore(tmp_path)
    for code, asr in (("old", 90.0), ("new", 10.0)):  # a folder that outlived an update of the harness
        store.append(dataclasses.replace(row(0, asr=asr, defense="mimic"), settings=RowSettings(code=code)))
        store.append(dataclasses.replace(row(1, asr=asr, defense="mimic"), settings=RowSettings(code=code)))
    store.append(dataclasses.replace(row(2, asr=30.0, defense="mimic"), settings=RowSettings(code="old")))
    store.append(dataclasses.replace(row(3, asr=10.0, defense="mimic"), settings=RowSettings(code="new")))
    assert main(["table", str(tmp_path), "--format", "markdown"]) == 0
    captured = capsys.readouterr()
    assert "3 rows of other code versions (old: 3) left out; the table holds the 3 rows of code new" in captured.err
    assert "| 10.00 " in captured.out and "90.00" not in captured.out and "30.00" not in captured.out


def test_a_gate_refuses_rows_of_several_code_versions_and_folders_of_different_code_are_not_one_table(tmp_path, capsys):
    from harness.cli import main

    old, new = ResultsStore(tmp_path / "old"), ResultsStore(tmp_path / "new")
    old.append(dataclasses.replace(row(0, asr=90.0, defense="mimic"), settings=RowSettings(code="old")))
    new.append(dataclasses.replace(row(0, asr=10.0, defense="mimic"), settings=RowSettings(code="new")))
    assert main(["report", str(tmp_path / "new"), str(tmp_path / "old"), "--out", str(tmp_path / "r.html")]) == 2
    assert "was last written by code new" in capsys.readouterr().err and not (tmp_path / "r.html").exists()
    new.append(dataclasses.replace(row(1, asr=90.0, defense="mimic"), settings=RowSettings(code="old")))
    new.append(dataclasses.replace(row(2, asr=10.0, defense="mimic"), settings=RowSettings(code="new")))
    assert main(["gate", str(tmp_path / "new"), "--gate", "asr_all<=50"]) == 2  # a gate never skips a row it was given
    assert "1 rows of other code versions (old: 1) beside the 2 of code new" in capsys.readouterr().err
