"""`genssl reproduce` end to end at a micro scale: the same code path as --quick, in seconds."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from hf_genssl import reproduce

pytestmark = pytest.mark.slow

MICRO_VIT_PRETRAIN = {"image_dataset": "mnist_5k", "max_images": 128, "max_steps": 3, "hidden_size": 32,
                      "num_hidden_layers": 1, "batch_size": 8, "eval_every": 3, "save_every": 1000}


def test_reproduce_writes_results_from_json_and_resumes(tmp_path, monkeypatch):
    cache = os.environ.get("GENSSL_CACHE") or str(tmp_path / "cache")
    micro = reproduce.Scale({"max_steps": 4, "hidden_size": 32, "num_hidden_layers": 1, "vocab_size": 600,
                             "max_docs": 3, "batch_size": 4, "seq_len": 32, "eval_every": 4, "save_every": 1000},
                            finetune_epochs=1, finetune_samples=64, ppl_texts=1, seeds=2,
                            vit_pretrain=MICRO_VIT_PRETRAIN, vit_images=64, vit_finetune_epochs=1, ood_texts=4,
                            connectivity_samples=12)
    shipped = reproduce.load_definitions()
    definitions = dataclasses.replace(
        shipped, tasks=("rt-polarity",), scales={"quick": micro},
        classification_cells={k: shipped.classification_cells[k] for k in ("ar", "semi_ar_g2")},
        generation_cells={k: shipped.generation_cells[k] for k in ("masked_0.15", "variable_0.1-0.9")},
        vision_classification_cells={k: shipped.vision_classification_cells[k] for k in ("vit_ar", "vit_semi_ar_g2")},
        vision_generation_cells={k: shipped.vision_generation_cells[k] for k in ("vit_masked_0.75",
                                                                                  "vit_variable_0.1-0.9")},
        borderline=None)  # 2 seeds of micro runs are often "borderline": the rule has its own tests below
    text = reproduce.run_reproduce(str(tmp_path / "results"), quick=True, cache_dir=cache, definitions=definitions)

    assert "not evidence" in text and "fine-tunes better than AR" in text and "variable mask ratio" in text
    assert "out of domain" in text and "Feature connectivity" in text
    assert "linear-probe accuracy" in text and "reconstructs with lower L2" in text
    assert "| random_init (control, 2 seeds) |" in text and "| raw_pixels (control, 2 seeds) |" in text
    assert "Label-aware connectivity on the BBC news" in text and "Label-aware connectivity on the Fashion" in text
    results = tmp_path / "results"
    runs = sorted(results.glob("*/*.json"))
    # 2 seeds each; text: 2 classification cells + 3 controls, 2 masked + AR + semi-AR; images: AR + semi-AR + 3
    # controls, 2 masked + the same 2
    assert len(runs) == 2 * (5 + 4 + 5 + 4)
    for record in (json.loads(path.read_text()) for path in runs):
        assert {"seed", "hardware", "seconds", "settings", "data", "experiment", "cell"} <= set(record)
    generation = json.loads((results / "generation" / "ar-seed0.json").read_text())
    assert generation["ood_tokens_scored"] > 0 and generation["connectivity"]["num_samples"] == 12
    assert generation["test_tokens_scored"] > 0 and "test split, 1 texts" in generation["data"]
    ar, random_init = (json.loads((results / "classification" / f"{c}-seed0.json").read_text())
                       for c in ("ar", "random_init"))
    assert 0 <= ar["label_connectivity"]["knn_accuracy"] <= 1 and ar["label_connectivity"]["k"] == 10
    assert random_init["scores"]["rt-polarity"] != ar["scores"]["rt-polarity"] or \
        random_init["label_connectivity"] != ar["label_connectivity"]  # not the pretrained weights
    for control in ("bag_of_words", "majority"):
        record = json.loads((results / "classification" / f"{control}-seed1.json").read_text())
        assert 0 < record["scores"]["rt-polarity"] < 1, control
    pixels = json.loads((results / "vision_classification" / "raw_pixels-seed0.json").read_text())
    assert 0 < pixels["scores"]["linear_probe"] <= 1 and "fine_tune" not in pixels["scores"]
    vision = json.loads((results / "vision_generation" / "vit_masked_0.75-seed1.json").read_text())
    assert vision["l2"] > 0 and vision["hidden_patches"] == 12  # 25% of 49 patches
    for figure in ("prefix_perplexity.png", "connectivity.png", "figures/reconstruction-vit_ar.png"):
        assert (results / figure).exists(), figure
    # RESULTS.md comes from the JSON files alone: a second call reruns nothing and writes the same table
    first = (tmp_path / "results" / "RESULTS.md").read_text()
    assert reproduce.run_reproduce(str(tmp_path / "results"), quick=True, cache_dir=cache,
                                   definitions=definitions) == first
    # Rerunning a cell from scratch with the same seed reproduces its numbers.
    import shutil

    cell = results / "generation" / "masked_0.15-seed1.json"
    before = json.loads(cell.read_text())
    cell.unlink()
    shutil.rmtree(results / "runs" / "masked_0.15-seed1")
    reproduce.run_reproduce(str(results), quick=True, cache_dir=cache, experiments=("generation",),
                            definitions=definitions)
    after = json.loads(cell.read_text())
    for key in ("perplexity", "ood_perplexity", "tokens_scored", "connectivity"):
        assert after[key] == pytest.approx(before[key], rel=1e-5), key
    # A JSON written before the protocol recorded the test split is rerun (from its checkpoint), not skipped.
    stale = results / "generation" / "ar-seed1.json"
    record = json.loads(stale.read_text())
    test_perplexity = record.pop("test_perplexity")
    stale.write_text(json.dumps(record))
    reproduce.run_reproduce(str(results), quick=True, cache_dir=cache, experiments=("generation",),
                            definitions=definitions)
    assert json.loads(stale.read_text())["test_perplexity"] == pytest.approx(test_perplexity, rel=1e-5)


def test_readme_block_is_generated_from_results_md(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "RESULTS.md").write_text("# Results\n\nintro\n\n## Table\n\n| a |\n\n![plot](prefix_perplexity.png)\n")
    begin, end = reproduce.readme_markers("results")
    other = reproduce.readme_markers("elsewhere")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n{begin}\nold numbers\n{end}\n\n{other[0]}\nkept\n{other[1]}\n## After\n")
    reproduce.update_readme(readme, out)
    text = readme.read_text()
    assert "old numbers" not in text and "### Table" in text and "## After" in text
    assert "kept" in text  # another folder's block is left alone
    assert "![plot](results/prefix_perplexity.png)" in text  # relative to the README
    reproduce.update_readme(readme, out)
    assert readme.read_text() == text  # idempotent
    readme.write_text(f"# only another block\n{other[0]}\n{other[1]}\n")
    with pytest.raises(ValueError, match="no results block for results"):
        reproduce.update_readme(readme, out)


COMMITTED_SCALES = ("small", "default")


@pytest.mark.parametrize("scale", COMMITTED_SCALES)
def test_committed_results_md_and_readme_block_regenerate_byte_for_byte_from_the_json_files(scale, tmp_path):
    """RESULTS.md is what `genssl reproduce --report-only` writes from the committed JSON files alone, and the
    README's block of that folder is exactly what `--readme` renders from it."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    folder = root / "results" / scale
    copy = tmp_path / scale
    for path in folder.glob("*/*.json"):
        (copy / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, copy / path.parent.name / path.name)
    assert reproduce.summarise(copy, quick=False) == (folder / "RESULTS.md").read_text()
    readme = (root / "README.md").read_text()
    begin, end = reproduce.readme_markers(f"results/{scale}")
    block = readme[readme.index(begin) : readme.index(end) + len(end)]
    assert block == reproduce.readme_block(folder, link_prefix=f"results/{scale}")


def test_committed_claims_summary_and_its_readme_block_regenerate_byte_for_byte(tmp_path):
    """results/CLAIMS.md (every scale's verdicts side by side) is what `genssl reproduce` writes from the committed
    JSON files of all the scale folders, and the README's block of it is exactly its rendering."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    for path in (root / "results").glob("*/*/*.json"):
        (tmp_path / path.parent.parent.name / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / path.parent.parent.name / path.parent.name / path.name)
    assert reproduce.summarise_scales(tmp_path) == (root / "results" / reproduce.CLAIMS).read_text()
    readme = (root / "README.md").read_text()
    begin, end = reproduce.claims_markers()
    block = readme[readme.index(begin) : readme.index(end) + len(end)]
    assert block == reproduce.claims_block(root / "results", prefix="results")


def test_claims_summary_puts_each_scales_verdict_side_by_side(tmp_path):
    """Known answers: a clear win at the small scale (held), a missing seed at the default scale (pending), an
    experiment the default scale has not run (no runs), semi-AR's cost per scale; the quick scale and a scale
    without a folder get no column, and a folder that is not a scale's gets no summary."""
    from scipy import stats

    generation = reproduce.ComparisonSpec("semi-AR is as good as AR", "generation", "semi_ar_g2", "ar",
                                          "perplexity", False, paper="P 1 vs 2")
    scale = reproduce.Scale({}, 1, 8, 1, seeds=3)
    definitions = dataclasses.replace(
        reproduce.load_definitions(), comparisons=(SPEC, generation), borderline=None,
        scales={name: scale for name in ("quick", "small", "default", "gpu")})
    small = {("classification", "a"): [0.90, 0.93, 0.91], ("classification", "b"): [0.80, 0.81, 0.82],
             ("generation", "semi_ar_g2"): [12.0, 13.0, 14.0], ("generation", "ar"): [10.0, 10.0, 10.0]}
    default = {("classification", "a"): [0.90, 0.91], ("classification", "b"): [0.10, 0.12, 0.11]}
    for name, cells in (("small", small), ("default", default), ("quick", small)):
        for (experiment, cell), values in cells.items():
            (tmp_path / name / experiment).mkdir(parents=True, exist_ok=True)
            for seed, value in enumerate(values):
                key = "average" if experiment == "classification" else "perplexity"
                (tmp_path / name / experiment / f"{cell}-seed{seed}.json").write_text(json.dumps(
                    {"experiment": experiment, "cell": cell, "seed": seed, key: value, "scale_name": name,
                     "seconds": 60.0}))
    p_win = stats.ttest_rel(small["classification", "a"], small["classification", "b"]).pvalue
    p_cost = stats.ttest_rel(small["generation", "semi_ar_g2"], small["generation", "ar"]).pvalue
    assert 0.001 < p_win < p_cost < 0.05  # Holm: the smaller p doubled, the larger kept

    reproduce.update_claims(tmp_path / "elsewhere", definitions=definitions)
    reproduce.update_claims(tmp_path / "quick", definitions=definitions)
    assert not (tmp_path / reproduce.CLAIMS).exists()
    readme = tmp_path / "README.md"
    begin, end = reproduce.claims_markers()
    readme.write_text(f"# Project\n\n{begin}\nold\n{end}\n\n## After\n")
    reproduce.update_claims(tmp_path / "small", readme, definitions=definitions)
    text = (tmp_path / reproduce.CLAIMS).read_text()
    assert "| claim | paper | small | default |\n" in text  # no quick, no gpu
    assert "(`small/`: 12 runs, 0 h 12 min of recorded wall time; `default/`: 5 runs, 0 h 05 min" in text
    assert (f"| a beats b | - | a 0.913 vs b 0.810: **held** (Holm p = {2 * p_win:.3f}, 3 seeds) | **pending** |"
            in text)
    assert (f"| semi-AR is as good as AR | P 1 vs 2 | semi_ar_g2 13.0 vs ar 10.0: **not held** "
            f"(Holm p = {p_cost:.3f}, 3 seeds) | no runs |") in text
    assert ("- small, validation: semi-AR (g = 2) prefix perplexity +30% against AR (per seed +20%, +30%, +40%; "
            "seeds 0, 1, 2)") in text
    assert "- default" not in text
    rendered = readme.read_text()
    assert "\nold\n" not in rendered and "## After" in rendered
    assert rendered == f"# Project\n\n{reproduce.claims_block(tmp_path, prefix='.')}\n\n## After\n"
    readme.write_text("# no block\n")
    assert reproduce.update_readme_claims(readme, tmp_path) is False and readme.read_text() == "# no block\n"


@pytest.mark.parametrize("experiment,prefix,metric,collator", [
    ("generation", "variable", "perplexity", "DataCollatorForVariableLengthMasking"),
    ("vision_generation", "vit_variable", "l2", "DataCollatorForVariableLengthImageMasking"),
])
def test_default_mask_ratio_ranges_are_the_best_committed_variable_cells(experiment, prefix, metric, collator):
    """The collators' default ranges were chosen by the default-scale experiments: the variable cell that
    RESULTS.md's claim picks (lowest mean prefix perplexity in domain / reconstruction L2 over the committed seeds)
    has the default's range."""
    import dataclasses
    from operator import itemgetter

    import hf_genssl

    folder = Path(__file__).resolve().parents[1] / "results" / "default"
    by_cell = reproduce._by_cell([json.loads(p.read_text()) for p in folder.glob(f"{experiment}/*.json")], experiment)
    variable = {cell: runs for cell, runs in by_cell.items() if cell.startswith(prefix)}
    assert len(variable) >= 2 and all(len(runs) >= 3 for runs in variable.values()), variable
    best = reproduce._best(by_cell, prefix, itemgetter(metric), lower_is_better=True)
    default = next(f.default for f in dataclasses.fields(getattr(hf_genssl, collator)) if f.name == "mask_ratio_range")
    assert tuple(default) == tuple(variable[best][0]["settings"]["mask_ratio_range"]), best


@pytest.mark.parametrize("scale", list(reproduce.load_definitions().scales))
def test_every_cell_of_every_scale_is_a_valid_pretraining_config(scale):
    """A typo in a cell (an invalid ratio range, an unknown key) fails here, not hours into `genssl reproduce`."""
    from hf_genssl import train_tokenizer
    from hf_genssl.pretraining import OBJECTIVES, _image_processor, load_config

    tokenizer = train_tokenizer(["a few words of text to train on"] * 20, vocab_size=300)
    definitions = reproduce.load_definitions()
    for settings in definitions.all_cells().values():
        config = load_config(reproduce.pretrain_config(settings, definitions.scales[scale], 0, "unused"))
        objective = OBJECTIVES[config.objective]
        text = objective.modality == "text"
        collator = objective.make_collator(config, tokenizer if text else _image_processor(config), 0)
        if hasattr(collator, "group_size"):  # the cell's group size reaches the collator (AR is one token per group)
            assert collator.group_size == (1 if config.objective.endswith("ar") and "semi" not in config.objective
                                           else config.group_size), settings
        if hasattr(collator, "mask_ratio_range"):
            assert tuple(collator.mask_ratio_range) == tuple(config.mask_ratio_range), settings
        assert hasattr(collator, "group_size") != hasattr(collator, "mask_ratio_range"), type(collator)
        if text:
            batch = collator([tokenizer("a few words of text")["input_ids"]] * 2)
            assert (batch["labels"] != -100).any(), settings


def test_glue_flag_adds_the_real_glue_tasks_and_their_metrics(tmp_path, monkeypatch):
    """--glue fine-tunes on the GLUE tasks too (stubbed here: they need the Hub); CoLA is judged by Matthews."""
    import hf_genssl.connectivity
    import hf_genssl.finetuning

    seen = []

    def fake_finetuning(config):
        seen.append(config["task"])
        metric = "eval_matthews_correlation" if config["task"] == "glue/cola" else "eval_accuracy"
        return {"final": {metric: 0.25, "eval_loss": 1.0}}

    monkeypatch.setattr(hf_genssl.finetuning, "run_finetuning", fake_finetuning)
    monkeypatch.setattr(reproduce, "_pretrain", lambda *args, **kwargs: "checkpoint")
    monkeypatch.setattr(reproduce, "_labelled_texts", lambda cache_dir: (["text"], [0]))
    monkeypatch.setattr(hf_genssl.connectivity, "classification_features", lambda checkpoint, texts: None)
    monkeypatch.setattr(hf_genssl.connectivity, "label_connectivity", lambda features, labels, k: {"k": k})
    shipped = reproduce.load_definitions()
    definitions = dataclasses.replace(shipped, scales={"quick": reproduce.Scale({}, 1, 8, 1, seeds=1)},
                                      classification_cells={"ar": {"objective": "ar"}}, classification_controls={})
    text = reproduce.run_reproduce(str(tmp_path), quick=True, experiments=("classification",), glue=True,
                                   definitions=definitions)
    assert seen == [*shipped.tasks, *shipped.glue_tasks] and "glue/cola" in shipped.glue_tasks
    record = json.loads((tmp_path / "classification" / "ar-seed0.json").read_text())
    assert record["scores"]["glue/cola"] == 0.25 and " | glue/cola | " in text  # a column of the table


def _claim_runs(values: dict[str, list[float]], experiment="classification") -> list[dict]:
    return [{"experiment": experiment, "cell": cell, "seed": seed, "average": v, "scale_name": "micro"}
            for cell, vs in values.items() for seed, v in enumerate(vs)]


SPEC = reproduce.ComparisonSpec("a beats b", "classification", "a", "b", "average", True)


def test_a_claim_with_a_missing_seed_is_pending_not_judged():
    """A resumed run leaves cells with different seeds: their claim is pending, and a 0.01 gap on one seed is no
    verdict."""
    [one] = reproduce.judge_comparisons(_claim_runs({"a": [0.81], "b": [0.80]}), [SPEC])
    assert one.result.verdict == "pending"
    [missing] = reproduce.judge_comparisons(_claim_runs({"a": [0.9, 0.91, 0.92], "b": [0.1, 0.11]}), [SPEC])
    assert missing.result.verdict == "pending" and "seed(s) 2 in one cell only" in missing.result.reason
    [held] = reproduce.judge_comparisons(_claim_runs({"a": [0.90, 0.91, 0.92], "b": [0.10, 0.12, 0.11]}), [SPEC])
    assert held.result.verdict == "held"
    two_of_three = _claim_runs({"a": [0.90, 0.91], "b": [0.10, 0.12]})
    for r in two_of_three:
        r["scale_name"] = "small"  # a scale of 3 seeds, still running
    [short] = reproduce.judge_comparisons(two_of_three, [SPEC])
    assert short.result.verdict == "pending" and "a verdict needs 3" in short.result.reason
    [absent] = reproduce.judge_comparisons(_claim_runs({"a": [0.9, 0.91]}), [SPEC])
    assert absent.result.verdict == "pending" and "no runs of b" in absent.result.reason


def test_claims_are_holm_corrected_together_and_best_of_is_chosen_on_its_own_metric():
    """Two claims each at p ~ 0.02 alone: Holm doubles it to ~0.04 (still held); with a third (tie) claim the
    smallest is tripled and nothing is held. `best:` picks the cell by `chosen_on`, the verdict uses `metric`."""
    runs = _claim_runs({"a": [0.80, 0.925, 0.675], "b": [0.70, 0.80, 0.60], "c": [0.70, 0.80, 0.60]})
    for r in runs:  # a choice metric on which c looks best, while the verdict metric is `average`
        r["validation"] = {"a": 0.1, "b": 0.2, "c": 0.9}[r["cell"]]
    best = reproduce.ComparisonSpec("best beats b", "classification", "best:", "b", "average", True,
                                    chosen_on="validation")
    [judged] = reproduce.judge_comparisons(runs, [best])
    assert judged.better == "c" and judged.result.p == 1.0 and judged.result.verdict == "inconclusive"
    alone = reproduce.judge_comparisons(runs, [SPEC])[0].result
    assert alone.verdict == "held" and alone.p_holm == pytest.approx(alone.p)
    spec_ac = reproduce.ComparisonSpec("a beats c", "classification", "a", "c", "average", True)
    tie = reproduce.ComparisonSpec("b beats c", "classification", "b", "c", "average", True)
    two = reproduce.judge_comparisons(runs, [SPEC, spec_ac])
    assert [j.result.p_holm for j in two] == pytest.approx([2 * alone.p] * 2)
    three = reproduce.judge_comparisons(runs, [SPEC, spec_ac, tie])
    assert [j.result.verdict for j in three] == ["inconclusive", "inconclusive", "inconclusive"]
    exploratory = reproduce.ComparisonSpec("a beats b (split of the choice)", "classification", "a", "b",
                                           "average", True, verdict=False)
    judged = reproduce.judge_comparisons(runs, [SPEC, exploratory])
    assert judged[0].result.p_holm == pytest.approx(alone.p)  # not in the family
    assert judged[1].result.verdict == "not a verdict"


BORDERLINE_RULE = reproduce.BorderlineRule(p_below=0.2, seeds=5)
SPEC_CD = reproduce.ComparisonSpec("c beats d", "classification", "c", "d", "average", True)
# a beats b by 0.02, 0.04, 0.01 on seeds 0-2 (paired t(2) = 2.65, p = 0.118: borderline next to c / d's clear win,
# which Holm ranks first); seeds 3-4 add 0.03, 0.02 (t(4) = 4.71, p = 0.009: held). c / d's seed 3 is a reversal
# that must not count: c / d is not borderline, so it keeps seeds 0-2.
BORDERLINE_VALUES = {("a", 0): 0.82, ("a", 1): 0.84, ("a", 2): 0.81, ("a", 3): 0.83, ("a", 4): 0.82,
                     ("b", 0): 0.80, ("b", 1): 0.80, ("b", 2): 0.80, ("b", 3): 0.80, ("b", 4): 0.80,
                     ("c", 0): 0.90, ("c", 1): 0.91, ("c", 2): 0.89, ("c", 3): 0.10,
                     ("d", 0): 0.40, ("d", 1): 0.40, ("d", 2): 0.40, ("d", 3): 0.90}


def _borderline_runs(seeds_of: dict[str, int]) -> list[dict]:
    return [{"experiment": "classification", "cell": cell, "seed": seed, "average": value, "scale_name": "small"}
            for (cell, seed), value in BORDERLINE_VALUES.items() if seed < seeds_of[cell]]


def test_a_borderline_claim_is_judged_again_on_five_seeds_of_its_cells_and_the_others_keep_three():
    """The pre-registered rule, on numbers whose answer is known: on seeds 0-2, a / b has p = 0.118 < 0.2 and Holm
    p >= 0.05 (borderline), so it is pending until seeds 3-4 exist, then judged on 0-4 (held); c / d, held on
    0-2, is not extended and ignores its seed 3. Without the rule the same data leave a / b inconclusive."""
    from scipy import stats

    definitions = dataclasses.replace(reproduce.load_definitions(), borderline=BORDERLINE_RULE,
                                      comparisons=(SPEC, SPEC_CD))
    assert definitions.scales["small"].seeds == 3
    three = _borderline_runs({"a": 3, "b": 3, "c": 4, "d": 4})
    ab, cd = reproduce.judge_comparisons(three, definitions=definitions)
    first_p = stats.ttest_rel([0.82, 0.84, 0.81], [0.80, 0.80, 0.80]).pvalue
    assert ab.first_look.p == pytest.approx(first_p) and 0.05 < first_p < 0.2
    assert ab.first_look.p_holm == pytest.approx(first_p)  # Holm: the second of two p-values, times 1
    assert ab.result.verdict == "pending" and "borderline on 3 seeds (p = 0.118" in ab.result.reason
    assert "3 paired so far" in ab.result.reason
    assert cd.first_look is None and cd.result.verdict == "held" and cd.result.seeds == (0, 1, 2)
    assert reproduce.borderline_cells(three, definitions) == {"classification": ("a", "b")}

    five = _borderline_runs({"a": 5, "b": 5, "c": 4, "d": 4})
    ab, cd = reproduce.judge_comparisons(five, definitions=definitions)
    assert ab.result.seeds == (0, 1, 2, 3, 4) and ab.result.verdict == "held"
    assert ab.result.p == pytest.approx(stats.ttest_rel([0.82, 0.84, 0.81, 0.83, 0.82], [0.80] * 5).pvalue)
    assert ab.first_look.p == pytest.approx(first_p)  # the first look is still reported
    assert cd.result.seeds == (0, 1, 2) and cd.result.verdict == "held"
    without = dataclasses.replace(definitions, borderline=None)
    ab, _ = reproduce.judge_comparisons(five, definitions=without)
    assert ab.result.verdict == "inconclusive" and ab.first_look is None and ab.result.seeds == (0, 1, 2)


def test_the_runner_schedules_the_extra_seeds_of_borderline_claims_only(tmp_path, monkeypatch):
    """run_reproduce runs every cell for the scale's 3 seeds, then seeds 3-4 for the two cells of the borderline
    claim (a, b) and nothing more; RESULTS.md judges it on 5 seeds and says it was borderline on 3."""
    runs = []

    def runner(out, scale, cache_dir, definitions, **options):
        for run in reproduce._pending(out, "classification", definitions.classification_cells, scale):
            runs.append((run.cell, run.seed))
            value = BORDERLINE_VALUES.get((run.cell, run.seed), 0.5)
            run.record("fake", scores={"task": value}, average=value,
                       label_connectivity={"k": 10, "knn_accuracy": value, "same_class_fraction": value})

    for experiment in reproduce.EXPERIMENTS:
        monkeypatch.setitem(reproduce.RUNNERS, experiment, runner)
    shipped = reproduce.load_definitions()
    definitions = dataclasses.replace(
        shipped, classification_cells={cell: {"objective": "ar"} for cell in "abcd"}, classification_controls={},
        comparisons=(SPEC, SPEC_CD), borderline=BORDERLINE_RULE,
        scales={"small": reproduce.Scale({}, 1, 8, 1, seeds=3)})
    text = reproduce.run_reproduce(str(tmp_path), scale="small", experiments=("classification",),
                                   definitions=definitions)
    assert sorted(runs) == sorted([(cell, seed) for cell in "abcd" for seed in range(3)] +
                                  [(cell, seed) for cell in "ab" for seed in (3, 4)])
    row = next(line for line in text.splitlines() if line.startswith("| a beats b |"))
    assert "**held**" in row and "| 0, 1, 2, 3, 4 (borderline on 0, 1, 2: p = 0.118, Holm p = 0.118) |" in row
    assert "a 0.824 ± 0.011 vs b 0.800 ± 0.000" in row  # the means of the seeds tested
    assert "is **borderline**: its two cells run 5 seeds" in text
    runs.clear()
    reproduce.run_reproduce(str(tmp_path), scale="small", experiments=("classification",), definitions=definitions)
    assert runs == []  # resumed: nothing left to run


def test_resuming_into_a_folder_of_another_scale_is_refused(tmp_path):
    """Finished cells are skipped on resume, so a small-scale JSON must not pass for a default-scale cell."""
    (tmp_path / "classification").mkdir()
    (tmp_path / "classification" / "ar-seed0.json").write_text(
        json.dumps({"scale_name": "small", "label_connectivity": {}}))
    scale = reproduce.Scale({}, 1, 8, 1, seeds=1, name="default")
    with pytest.raises(ValueError, match="'small'-scale run.*--out results/default"):
        list(reproduce._pending(tmp_path, "classification", {"ar": {"objective": "ar"}}, scale))
    same = reproduce.Scale({}, 1, 8, 1, seeds=1, name="small")
    assert list(reproduce._pending(tmp_path, "classification", {"ar": {"objective": "ar"}}, same)) == []


def test_cli_writes_each_scale_to_its_own_folder(monkeypatch):
    from hf_genssl import cli

    calls = []
    monkeypatch.setattr(reproduce, "run_reproduce",
                        lambda out, **kwargs: calls.append(("run", out, kwargs["scale"])) or "")
    monkeypatch.setattr(reproduce, "update_readme", lambda readme, out: calls.append(("readme", readme, out)))
    monkeypatch.setattr(reproduce, "update_claims", lambda out, readme: calls.append(("claims", out, readme)))
    assert cli.main(["reproduce", "--scale", "small", "--readme", "README.md"]) == 0
    assert cli.main(["reproduce", "--quick", "--experiments", "classification"]) == 0
    assert cli.main(["reproduce", "--out", "elsewhere"]) == 0
    assert calls == [("run", "results/small", "small"), ("readme", "README.md", "results/small"),
                     ("claims", "results/small", "README.md"), ("run", "results/quick", "default"),
                     ("claims", "results/quick", None), ("run", "elsewhere", "default"), ("claims", "elsewhere", None)]


def test_cells_flag_runs_only_the_named_cells_and_refuses_unknown_ones(tmp_path, monkeypatch, capsys):
    """`genssl reproduce --cells ar bag_of_words` reaches the runner as the only pending cells (every seed); a
    misspelt cell is a one-line error before anything runs or any folder is written."""
    from hf_genssl import cli

    pending = []

    def runner(out, scale, cache_dir, definitions, **options):
        cells = {**definitions.classification_cells, **definitions.classification_controls}
        pending.extend((run.cell, run.seed) for run in reproduce._pending(out, "classification", cells, scale))

    for experiment in reproduce.EXPERIMENTS:  # nothing real runs, even when the checks below are broken
        monkeypatch.setitem(reproduce.RUNNERS, experiment, runner)
    out = tmp_path / "out"
    assert cli.main(["reproduce", "--scale", "small", "--experiments", "classification", "--out", str(out),
                     "--cells", "bag_of_words", "ar"]) == 0
    seeds = reproduce.load_definitions().scales["small"].seeds
    assert sorted(pending) == sorted((cell, seed) for cell in ("ar", "bag_of_words") for seed in range(seeds))
    with pytest.raises(ValueError, match=r"Unknown cells \['nope'\].*'bag_of_words'"):
        reproduce.run_reproduce(str(tmp_path / "never"), scale="small", cells=("ar", "nope"))
    assert not (tmp_path / "never").exists()
    assert cli.main(["reproduce", "--scale", "small", "--out", str(tmp_path / "never"), "--cells", "nope"]) == 2
    assert "Unknown cells ['nope']" in capsys.readouterr().err


def test_masked_generation_cells_record_the_fixed_masks_perplexity_and_old_jsons_are_topped_up(tmp_path, monkeypatch,
                                                                                              tokenizer):
    """A masked generation cell records its prefix perplexity read with one trailing [MASK] (equal to
    `prefix_perplexity(..., trailing_masks=1)` on each split), beside the default reading; a JSON written before
    that measurement existed gets only the new one (computed from its checkpoint: its other numbers are kept, its
    seconds add up); an AR cell is not rerun for it. RESULTS.md shows both readings side by side."""
    import torch

    from hf_genssl import GenSSLForPreTraining
    from hf_genssl.perplexity import prefix_perplexity
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config(vocab_size=len(tokenizer), content_attention="bidirectional",
                                             initializer_range=0.5)).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    texts = {"in_domain": ["the man said that he would not be there", "she had been there before"],
             "test": ["it was one of them", "he would not say"], "out_of_domain": ["she said it was there"],
             "passages": ["the man said that he would not be there", "she had been there before"]}
    monkeypatch.setattr(reproduce, "_held_out_texts", lambda scale, cache_dir: texts)
    monkeypatch.setattr(reproduce, "_pretrain", lambda out, run, cache_dir: str(checkpoint))
    definitions = reproduce.load_definitions()
    scale = reproduce.Scale({}, 1, 8, 1, seeds=1, name="small", only=("masked_0.15",))
    out = tmp_path / "results"
    reproduce.run_generation(out, scale, None, definitions)
    path = out / "generation" / "masked_0.15-seed0.json"
    record = json.loads(path.read_text())
    fixed = record["fixed_masks"]
    assert fixed["trailing_masks"] == definitions.trailing_masks == 1 and fixed["window"] == record["window"]
    for key, split in (("perplexity", "in_domain"), ("test_perplexity", "test"), ("ood_perplexity", "out_of_domain")):
        expected = prefix_perplexity(model, texts[split], tokenizer, trailing_masks=1)
        assert fixed[key] == pytest.approx(expected.perplexity, rel=1e-5), key
    assert fixed["tokens_scored"] == record["tokens_scored"]  # one mask: the same tokens, the same contexts
    assert abs(fixed["perplexity"] - record["perplexity"]) > 0.01 * record["perplexity"]  # another reading

    old = {key: value for key, value in record.items() if key != "fixed_masks"}
    old.update(perplexity=12345.0, seconds=1000.0)  # a sentinel: kept only if nothing else is recomputed
    path.write_text(json.dumps(old))
    reproduce.run_generation(out, scale, None, definitions)
    topped_up = json.loads(path.read_text())
    assert topped_up["perplexity"] == 12345.0 and topped_up["seconds"] > 1000.0
    for key in ("perplexity", "test_perplexity", "ood_perplexity"):
        assert topped_up["fixed_masks"][key] == pytest.approx(fixed[key], rel=1e-6), key
    assert topped_up["connectivity"] == record["connectivity"]
    ar = {**old, "cell": "ar", "settings": {"objective": "ar"}}
    (out / "generation" / "ar-seed0.json").write_text(json.dumps(ar))
    cells = {"ar": {"objective": "ar"}, "masked_0.15": definitions.generation_cells["masked_0.15"]}
    assert list(reproduce._pending(out, "generation", cells, dataclasses.replace(scale, only=()))) == []

    text = reproduce.summarise(out, quick=False, definitions=definitions)
    assert "the prefix perplexity read two ways" in text and "validation: 1 trailing mask" in text
    row = [line for line in text.splitlines() if line.startswith("| masked_0.15 (1 seed) | ")][-1]
    assert row.split(" | ")[1:3] == ["12345.000", f"{fixed['perplexity']:.3f}"]  # validation, both readings
    assert row.endswith(f" | {fixed['ood_perplexity']:.3f} |")


def test_report_only_rewrites_results_md_from_the_json_files_and_runs_nothing(tmp_path, monkeypatch, capsys):
    from hf_genssl import cli

    monkeypatch.setattr(reproduce, "run_reproduce", lambda *args, **kwargs: pytest.fail("ran an experiment"))
    with pytest.raises(SystemExit, match="no results in"):
        cli.main(["reproduce", "--report-only", "--out", str(tmp_path)])
    record = {"experiment": "classification", "cell": "ar", "seed": 0, "scores": {"rt-polarity": 0.75},
              "average": 0.75, "scale_name": "small", "hardware": "test machine"}
    (tmp_path / "classification").mkdir()
    (tmp_path / "classification" / "ar-seed0.json").write_text(json.dumps(record))
    assert cli.main(["reproduce", "--report-only", "--out", str(tmp_path)]) == 0
    assert "| ar (1 seed) | 0.750 | 0.750 |" in (tmp_path / "RESULTS.md").read_text()  # one seed: no SD


def test_vit_cells_are_evaluated_on_the_pixels_they_were_pretrained_on(tmp_path):
    """The pixels a ViT cell is evaluated on equal what its saved image processor makes of the same images, and what
    its pretraining saw. (Evaluating [0, 1]-pretrained models on [-1, 1] pixels once made every ViT number
    meaningless, reconstructions worse than a constant guess, with no error anywhere.)"""
    import torch
    from transformers import AutoImageProcessor

    from hf_genssl.data.images import load_image_dataset
    from hf_genssl.pretraining import PretrainConfig, _image_data

    cache = os.environ.get("GENSSL_CACHE") or str(tmp_path / "cache")
    micro = reproduce.Scale({}, finetune_epochs=1, finetune_samples=None, ppl_texts=1, seeds=1,
                            vit_pretrain={**MICRO_VIT_PRETRAIN, "max_images": 16, "max_steps": 1, "eval_every": 1},
                            vit_images=8, name="micro")
    cell = "vit_masked_0.75"
    settings = reproduce.load_definitions().vision_generation_cells[cell]
    run = reproduce._Run("vision_generation", cell, settings, 0, micro, tmp_path / "unused.json")
    vit = reproduce._pretrained_vit(tmp_path, run, cache, reproduce._image_tensors(micro, cache))
    evaluated = vit.images["test"][0]

    test_images = [row["image"] for row in load_image_dataset("mnist_5k", cache_dir=cache, limit=8)["test"]]
    processor = AutoImageProcessor.from_pretrained(tmp_path / "runs" / f"{cell}-seed0" / "final")
    torch.testing.assert_close(evaluated, processor(test_images, return_tensors="pt")["pixel_values"])
    config = reproduce.pretrain_config(settings, micro, 0, str(tmp_path / "unused"), cache)
    pretrained_on = torch.stack([e["pixel_values"] for e in _image_data(PretrainConfig(**config)).validation[:8]])
    torch.testing.assert_close(evaluated, pretrained_on)


def test_reconstruction_section_from_hand_written_json(tmp_path):
    """L2 with 4 decimals (values are ~0.02 on [0, 1] pixels), the constant-guess baseline, and the verdict."""
    folder = tmp_path / "vision_generation"
    folder.mkdir()
    values = {"vit_masked_0.50": (0.020, 0.022), "vit_variable_0.1-0.9": (0.0241, 0.0243)}
    for cell, l2s in values.items():
        for seed, l2 in enumerate(l2s):
            record = {"experiment": "vision_generation", "cell": cell, "seed": seed, "l2": l2, "psnr": 17.0,
                      "baseline_l2": 0.11 + seed * 0.01, "scale_name": "micro", "hardware": "test machine"}
            (folder / f"{cell}-seed{seed}.json").write_text(json.dumps(record))
    text = reproduce.summarise(tmp_path, quick=False)
    # sample SD (ddof = 1): 0.002 / sqrt(2) = 0.0014; baselines 0.11, 0.12, 0.11, 0.12: 0.0058
    assert "| vit_masked_0.50 (2 seeds) | 0.0210 ± 0.0014 | 17.000 ± 0.000 |" in text
    assert "| vit_variable_0.1-0.9 (2 seeds) | 0.0242 ± 0.0001 |" in text
    assert "visible pixels) on the same images and hidden patches: L2 0.1150 ± 0.0058." in text
    # the variable cell is worse in both seeds (by 0.0041 and 0.0023): effect -0.0032, t(1) = -3.56, p = 0.175
    row = next(line for line in text.splitlines() if line.startswith("| a variable mask ratio reconstructs"))
    assert "vit_variable_0.1-0.9 0.0242 ± 0.0001 vs vit_masked_0.50 0.0210 ± 0.0014" in row
    assert "| -0.0032 [" in row and "paired t(1) = -3.56, p = 0.175" in row and "**pending**" not in row

def test_definitions_come_from_the_packaged_yaml_and_are_read_only():
    """The experiments are package data (a wheel install has them), loaded when asked, not at import, and the
    loaded object cannot be changed under a running experiment."""
    from importlib.resources import files

    import yaml

    shipped = yaml.safe_load((files("hf_genssl") / "configs" / "experiments" / "reproduce.yaml").read_text())
    definitions = reproduce.load_definitions()
    assert definitions.tasks == tuple(shipped["tasks"]) and set(definitions.scales) == set(shipped["scales"])
    assert dict(definitions.generation_cells) == shipped["generation_cells"]
    assert definitions.scales["small"].name == "small"
    assert not hasattr(reproduce, "SCALES") and not hasattr(reproduce, "CLASSIFICATION_CELLS")  # no import-time read
    with pytest.raises(dataclasses.FrozenInstanceError):
        definitions.tasks = ()
    with pytest.raises(TypeError):
        definitions.scales["tiny"] = definitions.scales["quick"]
    with pytest.raises(ValueError, match="Unknown keys"):
        reproduce.Definitions.from_dict({**shipped, "classification_cell": {}})


def test_every_run_records_the_code_that_made_it_and_results_md_says_so(tmp_path, monkeypatch, caplog):
    """A run resumed across sessions may mix code versions: every JSON records its version (the git commit in a
    checkout), RESULTS.md lists each with its count beside the summed wall time, and resuming warns."""
    import subprocess

    def runner(out, scale, cache_dir, definitions, **options):
        for run in reproduce._pending(out, "classification", definitions.classification_cells, scale):
            run.started -= 1800  # half an hour each
            run.record("fake", scores={"task": 0.5}, average=0.5,
                       label_connectivity={"k": 10, "knn_accuracy": 0.5, "same_class_fraction": 0.5})

    for experiment in reproduce.EXPERIMENTS:
        monkeypatch.setitem(reproduce.RUNNERS, experiment, runner)
    definitions = dataclasses.replace(
        reproduce.load_definitions(), classification_cells={"a": {"objective": "ar"}}, classification_controls={},
        comparisons=(), borderline=None, scales={"small": reproduce.Scale({}, 1, 8, 1, seeds=3)})
    (tmp_path / "classification").mkdir()
    old = {"experiment": "classification", "cell": "a", "seed": 0, "settings": {}, "scale": {}, "data": "fake",
           "scores": {"task": 0.5}, "average": 0.5, "seconds": 600.0, "scale_name": "small", "hardware": "h",
           "label_connectivity": {"k": 10, "knn_accuracy": 0.5, "same_class_fraction": 0.5}}
    (tmp_path / "classification" / "a-seed0.json").write_text(json.dumps(old))  # made before versions were recorded
    with caplog.at_level("WARNING", logger="hf_genssl.reproduce"):
        text = reproduce.run_reproduce(str(tmp_path), scale="small", experiments=("classification",),
                                       definitions=definitions)
    assert "holds runs made by other code (not recorded)" in caplog.text
    current = json.loads((tmp_path / "classification" / "a-seed1.json").read_text())["code"]
    from hf_genssl import __version__

    root = Path(reproduce.__file__).resolve().parents[1]
    if (root / ".git").exists():
        code = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h", "--", "hf_genssl"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert current.startswith(f"hf_genssl {__version__}, git {code}"), current
    else:
        assert current == f"hf_genssl {__version__}"
    assert f"Code: {current} (2 runs); not recorded (1 run)." in text  # sorted: "hf_genssl" < "not recorded"
    assert "Wall time: the 3 runs' recorded times add up to 1 h 10 min." in text
    assert "Hardware: h (1 run); " in text


def test_the_recorded_code_version_is_the_newest_commit_that_changed_the_package(tmp_path):
    """A default-scale run lasts several sessions and commits its JSON files as it goes: those commits (results,
    README) must not change the version the next cells record, while any change to ``hf_genssl/`` must."""
    import subprocess

    from hf_genssl import __version__

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    def commit(message):
        git("add", "-A")
        git("commit", "-q", "-m", message)
        return git("rev-parse", "--short", "HEAD")

    git("init", "-q")
    (tmp_path / "hf_genssl").mkdir()
    (tmp_path / "hf_genssl" / "model.py").write_text("x = 1\n")
    code = commit("code")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a-seed0.json").write_text("{}")
    (tmp_path / "README.md").write_text("results\n")
    results = commit("results")
    assert results != code
    assert reproduce._code_version(tmp_path) == f"hf_genssl {__version__}, git {code}"
    (tmp_path / "hf_genssl" / "model.py").write_text("x = 2\n")
    assert reproduce._code_version(tmp_path) == f"hf_genssl {__version__}, git {code} + uncommitted changes"
    changed = commit("code again")
    assert reproduce._code_version(tmp_path) == f"hf_genssl {__version__}, git {changed}"
    assert reproduce._code_version(tmp_path / "hf_genssl") == f"hf_genssl {__version__}"  # no .git there


def test_test_split_documents_are_scored_on_their_first_thousand_words(monkeypatch):
    """A Shakespeare play (20,000+ words) made one masked cell's test-split scoring take minutes and outweigh every
    other text: each test document is cut after its 1,000th word, its own line breaks kept."""
    from datasets import Dataset

    from hf_genssl import data

    play = "\n".join(f"LINE{i} to be  or not" for i in range(1000))  # 5,000 words, two spaces kept
    test = Dataset.from_dict({"text": ["short news story.", play], "source": ["news", "shakespeare"]})
    corpus = {"validation": Dataset.from_dict({"text": ["a b c"], "source": ["news"]}), "test": test}
    monkeypatch.setattr(data, "load_pretraining_corpus", lambda **kwargs: corpus)
    monkeypatch.setattr(data, "load_task", lambda *args, **kwargs: {"test": {"sentence": ["ood"]}})
    texts = reproduce._held_out_texts(reproduce.Scale({}, 1, 8, ppl_texts=2, seeds=1), cache_dir=None)
    assert texts["test"][0] == "short news story."
    assert len(texts["test"][1].split()) == reproduce.TEST_WORDS == 1000
    assert texts["test"][1] == play[: len(texts["test"][1])] and texts["test"][1].endswith("LINE199 to be  or not")
