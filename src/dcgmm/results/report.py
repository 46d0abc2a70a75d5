"""The results table from run records alone: ``RESULTS.md`` (settings, one table per dataset, the
verdict, what each column means) and ``<preset>.json`` (every number, every run's record).

:func:`write_report` needs only the plan (which runs make which row) and the records; nothing is
trained, so a table of runs made on several machines, or by several launches, is aggregated the
same way.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from dcgmm.app.config import TOPOLOGY_LETTERS
from dcgmm.app.locations import project_root
from dcgmm.data.sources import atomic_file
from dcgmm.results.plan import CLASSES, DATASETS, PEER_ROWS, Planner
from dcgmm.results.records import write_json
from dcgmm.results.verdict import CLAIMS, pooled_spread, verdict_markdown

__all__ = ["row_values", "run_values", "write_report"]

MISSING = "–"


def provenance(records) -> tuple[str, str]:
    """Where and with which code the records were made: the machines with their run counts, and
    the commits their launches ran (``+changes``: tracked files outside ``results/`` differed
    from that commit at launch; records older than the stamp have none), for the report's settings."""
    records = list(records)
    machines = Counter(r["machine"] for r in records if r.get("machine"))
    where = ", ".join(f"{name} ({count} run{'s' if count != 1 else ''})" for name, count in sorted(machines.items(), key=lambda item: (-item[1], item[0])))
    stamps = [r.get("code") for r in records]
    commits = {stamp.removesuffix("+changes") for stamp in stamps if stamp}
    changed = sum(1 for stamp in stamps if stamp and stamp.endswith("+changes"))
    unstamped = sum(1 for stamp in stamps if not stamp)
    code = (f"the records name the commit their launch ran: {len(stamps) - unstamped} records from {len(commits)} commits"
            + (f" ({changed} of them launched with uncommitted changes to tracked files, marked `+changes`; from commit 15b7594 on, the stamp ignores changes under `results/`)" if changed else "")
            + (f"; {unstamped} record{'s are' if unstamped != 1 else ' is'} older than that stamp" if unstamped else "")
            + "; a launch reuses a record whose record version and settings match, whatever code made it")
    return where, code


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


MAIN_METRICS = ("K", "params", "top_sigma", "purity", "nmi", "ari", "hungarian_acc", "dunn", "davies_bouldin", "acc", "loglik", "bpd", "ndb_ratio", "js",
                "ndb_sharpened", "js_sharpened", "train_seconds", "images_per_second", "ndb_learned", "js_learned", "ndb_authors", "js_authors")
# the samplers of mode=samples (record["samplers"]): the table's own (learned) and the authors'
SAMPLERS = ("learned", "authors")
AUTHORS_NOTE = " (authors' sampler)"
OUTLIER_METRICS = ("auroc", "auroc_sum", "auroc_cross", "auroc_noise")


def run_values(record: dict, method: str) -> dict:
    """The numbers of one run record (None where a value does not exist)."""
    ndb, sharp = record.get("ndb") or {}, record.get("ndb_sharpened") or {}
    values: dict[str, Any] = dict(K=record.get("K"), params=record.get("params"), top_sigma=record.get("top_sigma"),
                                  ndb_ratio=ndb.get("ndb_ratio"), js=ndb.get("js"), ndb_sharpened=sharp.get("ndb_ratio"), js_sharpened=sharp.get("js"))
    passed = not (record.get("samplers") or {}).get("error")  # a failed pass's error stands beside older figures: none shown
    for name in SAMPLERS:  # the kept model's samples under each sampler (mode=samples)
        figures = (record.get("samplers") or {}).get(name) or {} if passed else {}
        values.update({f"ndb_{name}": figures.get("ndb_ratio"), f"js_{name}": figures.get("js"), f"file_{name}": figures.get("file"),
                       f"grid_{name}": figures.get("grid") and f"samples/{record.get('dataset')}/{figures['grid']}"})
    if method in ("em", *PEER_ROWS):  # baselines: flat records (no clusters for a circuit)
        cluster = record.get("cluster") or {}
        values.update(acc=record.get("acc"), loglik=record.get("loglik"), bpd=record.get("bpd"), train_seconds=record.get("seconds"),
                      images_per_second=record.get("images_per_second"), auroc=record.get("auroc"))
    else:
        m = record.get("metrics") or {}
        cluster = {k.split("/")[-1]: v for k, v in m.items() if k.startswith("test/cluster/")}
        speed = record.get("speed") or {}
        cross = [v for k, v in m.items() if k.startswith("test/auroc_") and k.endswith("/top") and not k.startswith("test/auroc_noise/")]
        values.update(
            # log p(x) only where the model is a density over pixels (it has bits/dim)
            acc=m.get("test/acc"), loglik=m.get("test/loglik") if "test/bpd" in m else None, bpd=m.get("test/bpd"),
            train_seconds=speed.get("fit_seconds"), images_per_second=speed.get("images_per_second"),
            auroc=m.get("test/auroc"), auroc_sum=m.get("test/auroc/sum"), auroc_cross=cross[0] if cross else None,
            auroc_noise=m.get("test/auroc_noise/top"),
        )
    values.update(purity=cluster.get("purity"), nmi=cluster.get("nmi"), ari=cluster.get("ari"), hungarian_acc=cluster.get("hungarian_acc"),
                  dunn=cluster.get("dunn"), davies_bouldin=cluster.get("davies_bouldin"))
    return values


def mean_sd(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values) of the known values."""
    known = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not known:
        return None, None
    mean = sum(known) / len(known)
    sd = math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1)) if len(known) > 1 else None
    return mean, sd


def row_values(row, records: dict, held_out: list[int], failures: dict | None = None) -> dict:
    """The numbers of one table row: per metric the mean over the row's seeds and its standard
    deviation (``<metric>_sd``, None with one seed); None where no finished run has the value."""
    main = [run_values(records[k], row.method) for k in row.main if k in records]
    outs = {c: [run_values(records[k], row.method) if k in records else {} for k in keys] for c, keys in row.outliers.items()}
    values: dict[str, Any] = dict(label=row.label, row_id=row.row_id, note=row.note, method=row.method, seeds=len(main), planned_seeds=len(row.main))
    if row.method in PEER_ROWS:
        values["not_applicable"] = ["nmi", "ndb_authors"]  # a circuit has no cluster ids, and no authors' sampler
    for metric in MAIN_METRICS:
        found = [v.get(metric) for v in main]
        values[metric], values[f"{metric}_sd"] = mean_sd(found)
        values[f"{metric}_n"] = sum(1 for x in found if x is not None)  # records of an older code may lack a metric
    first = [v for v in outs.get(held_out[0], []) if v] if held_out else []
    for metric in ("K", "params", "top_sigma"):
        values[f"{metric}_outliers"] = mean_sd([v.get(metric) for v in first])[0]
    values["authors_sampler"] = next((v["file_authors"] for v in main if v.get("file_authors")), None)
    values["grids"] = next(({name: v[f"grid_{name}"] for name in SAMPLERS if v.get(f"grid_{name}")} for v in main if v.get("grid_learned")), {})
    # AUROC per held-out class of the row (mean and spread over that class's seeds), and over its classes
    classes = sorted(row.outliers)
    per_class = {c: mean_sd([v.get("auroc") for v in outs.get(c, [])]) for c in classes}
    values["auroc"], values["auroc_sd"] = {c: m for c, (m, _) in per_class.items()}, {c: sd for c, (_, sd) in per_class.items()}
    values["auroc_seeds"] = {c: sum(1 for v in outs.get(c, []) if v.get("auroc") is not None) for c in classes}
    values["auroc_classes"], values["auroc_classes_sd"] = mean_sd(list(values["auroc"].values()))
    values["auroc_classes_n"], values["auroc_classes_planned"] = sum(1 for m, _ in per_class.values() if m is not None), len(classes)
    values["runs_main"], values["runs_outliers"] = list(row.main), sorted(k for keys in row.outliers.values() for k in keys)
    shared = [c for c in held_out if c in outs]  # the preset's held_out classes, which every row holds out with every seed
    seeds = max((len(outs[c]) for c in shared), default=0)
    for metric in OUTLIER_METRICS:
        # per seed: the mean over the preset's held-out classes (only when every class has its run)
        per_seed = []
        for j in range(seeds):
            found = [outs[c][j].get(metric) for c in shared if j < len(outs.get(c, [])) and outs[c][j]]
            per_seed.append(sum(found) / len(found) if found and len(found) == len(shared) and None not in found else None)
        values[f"{metric}_mean"], values[f"{metric}_mean_sd"] = mean_sd(per_seed)
        values[f"{metric}_mean_n"] = sum(1 for x in per_seed if x is not None)
    values["seconds_all_runs"] = sum((records.get(k) or {}).get("seconds", 0.0) for k in row.keys)
    values["runs_done"], values["runs_planned"] = sum(1 for k in row.keys if k in records), len(row.keys)
    values["failed"] = [k.split("/", 1)[1] for k in row.keys if k in (failures or {})]
    return values


def table_columns(held_out: list[int]) -> list[str]:
    return [
        "model", "seeds", "K", "params", "σ end", "K (outl.)", "params (outl.)", "σ end (outl.)", "purity", "NMI", "ARI", "Hung. acc", "Dunn", "DB",
        "clf acc", "log p(x)", "bits/dim", "NDB/B", "NDB/B sharp.", "JS", *[f"AUROC {c}" for c in held_out], "AUROC classes", "AUROC cross", "AUROC noise",
        "train s", "img/s", "runs",
    ]


def fmt_sd(value, sd, digits: int = 3, n: int | None = None, seeds: int | None = None) -> str:
    """``mean ± sd`` (the spread over seeds), or the value alone; ``(n of seeds)`` when fewer of the
    row's finished seeds have the value."""
    text = fmt(value, digits)
    if text != MISSING and sd is not None:
        text = f"{text} ± {sd:.{digits}f}"
    if text != MISSING and n is not None and seeds is not None and n < seeds:
        text += f" ({n} of {seeds})"
    return text


def table_line(values: dict, held_out: list[int]) -> list[str]:
    seconds, rate = values["train_seconds"], values["images_per_second"]
    v = values
    return [
        v["label"], f"{v['seeds']}/{v['planned_seeds']}", fmt(v["K"] if v["K"] is None else int(v["K"])), fmt(v["params"] if v["params"] is None else int(v["params"])),
        fmt(v["top_sigma"], 2), fmt(v["K_outliers"] if v["K_outliers"] is None else int(v["K_outliers"])),
        fmt(v["params_outliers"] if v["params_outliers"] is None else int(v["params_outliers"])), fmt(v["top_sigma_outliers"], 2),
        fmt_sd(v["purity"], v["purity_sd"]), fmt_sd(v["nmi"], v["nmi_sd"]), fmt_sd(v["ari"], v["ari_sd"]), fmt(v["hungarian_acc"]),
        fmt_sd(v["dunn"], v["dunn_sd"], 3, v["dunn_n"], v["seeds"]), fmt_sd(v["davies_bouldin"], v["davies_bouldin_sd"], 2, v["davies_bouldin_n"], v["seeds"]), fmt_sd(v["acc"], v["acc_sd"]), fmt_sd(v["loglik"], v["loglik_sd"], 1, v["loglik_n"], v["seeds"]), fmt_sd(v["bpd"], v["bpd_sd"], 3, v["bpd_n"], v["seeds"]), fmt_sd(v["ndb_ratio"], v["ndb_ratio_sd"], 2), fmt_sd(v["ndb_sharpened"], v["ndb_sharpened_sd"], 2),
        fmt(v["js"]), *[fmt_sd(v["auroc"].get(c), v["auroc_sd"].get(c)) for c in held_out], auroc_classes(v),
        fmt(v["auroc_cross_mean"]), fmt(v["auroc_noise_mean"]),
        MISSING if seconds is None else f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}",
        MISSING if rate is None or not math.isfinite(rate) else f"{rate:.0f}", f"{v['runs_done']}/{v['runs_planned']}",
    ]


def auroc_classes(values: dict) -> str:
    """The mean AUROC over a row's held-out classes ± its spread from class to class, and how many
    classes that is (``of n`` while some are not finished)."""
    done, planned = values["auroc_classes_n"], values["auroc_classes_planned"]
    if not done:
        return MISSING
    count = f"{done} class{'es' if done > 1 else ''}" if done == planned else f"{done} of {planned} classes"
    return f"{fmt_sd(values['auroc_classes'], values['auroc_classes_sd'])} ({count})"


def class_table(values: list[dict], classes: int) -> str:
    """AUROC per held-out class (columns ``0 .. classes-1``) of every row with outlier runs, and the
    mean ± standard deviation over the classes each row holds out."""
    lines = [
        [v["label"], *[fmt(v["auroc"].get(c)) for c in range(classes)], auroc_classes(v)]
        for v in values if v["auroc_classes_planned"]
    ]
    return markdown_table(["model", *map(str, range(classes)), "mean ± sd over classes"], lines)


def sampler_table(values: list[dict]) -> str:
    """NDB/B and JS of each row's kept models under the learned spread and the authors' sampler
    (mean ± sd over the models measured), for the rows with such figures."""
    lines = [
        [v["label"], f"{max(v['ndb_learned_n'], v['ndb_authors_n'])}/{v['planned_seeds']}", fmt_sd(v["ndb_learned"], v["ndb_learned_sd"], 2), fmt(v["js_learned"]),
         fmt_sd(v["ndb_authors"], v["ndb_authors_sd"], 2), fmt(v["js_authors"]), f"`{v['authors_sampler']}`" if v["authors_sampler"] else MISSING,
         " · ".join(f"[{name}]({path})" for name, path in v["grids"].items()) or MISSING]
        for v in values if v["ndb_learned_n"] or v["ndb_authors_n"]
    ]
    return markdown_table(["model", "models measured", "NDB/B, learned spread", "JS", "NDB/B, authors' sampler", "JS", "authors' sampler (conf/sampler)",
                           "sample grids"], lines)


def markdown_table(columns: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def describe_epochs(rows: list, records: dict, kind: str) -> str:
    per_label: dict[str, str] = {}
    for row in rows:
        if row.method != "sgd":
            continue
        keys = list(row.main) if kind == "main" else [k for keys in row.outliers.values() for k in keys]
        for key in keys:
            rec = records.get(key) or {}
            if "max_epochs" in rec:
                text = f"{rec['max_epochs']}"
                if rec.get("limit_train_batches") is not None:
                    text += f" x {rec['limit_train_batches']} batches"
                per_label.setdefault(row.label, text)
    values = set(per_label.values())
    if not values:
        return MISSING
    if len(values) == 1:
        return f"{values.pop()} (every row)"
    return ", ".join(f"{label}: {text}" for label, text in per_label.items())


def data_description(dataset: str, rows: list, records: dict, preset: dict) -> str:
    main = next((records[k] for r in rows if r.method == "sgd" for k in r.main if (records.get(k) or {}).get("split_sizes")), None)
    parts = []
    if main:
        sizes = main["split_sizes"]
        per_epoch = main["speed"]["train_images"] / max(main["epochs"], 1) if main.get("epochs") else None
        held_back = f" ({sizes['val']:,} more for validation)" if sizes["val"] else " (no validation split, as published)"
        text = f"{sizes['train']:,} training images{held_back}, {sizes['test']:,} test images"
        if per_epoch is not None and per_epoch < sizes["train"]:
            text += f"; {per_epoch:,.0f} training images per epoch"
        parts.append(text)
    held, every = preset["held_out"], preset.get("every_class") or []
    shown = f"class{'es' if len(held) > 1 else ''} {', '.join(map(str, held))}"
    if every:
        letters = ", ".join(TOPOLOGY_LETTERS.get(t, t) for t in every)
        parts.append(f"outlier runs: each of the {CLASSES} classes held out in turn for {letters}, their flat GMMs with the same K and "
                     f"EM ({shown} with every seed, the other classes with the first); {shown} only for the other rows")
    else:
        parts.append(f"outlier runs: only {shown} of {CLASSES} held out, one run per class and seed")
    em = preset["em"]
    parts.append(
        "EM baseline: " + ("all training images" if em.get("n_train") is None else f"the first {int(em['n_train']):,} training images (a subset)")
        + f" of the kept classes, at most {int(em.get('max_iter', 100))} EM iterations"
    )
    return "; ".join(parts)


def verdict_rule(preset: dict, pooled: dict[str, float]) -> str:
    floors = ", ".join(dict.fromkeys(f"{c.label} {c.floor}" for c in CLAIMS))  # one floor per metric label
    return (
        "Each DCGMM row against the rows of its dataset compared with it, per claim: clustering by NMI against the flat GMM and EM "
        "with the same K only (NMI, ARI and purity move with the number of clusters, so the flat GMMs with as many "
        "parameters, another K, are not counted for it); sampling by NDB/B (lower is better) under two samplers, the learned "
        "spread of the table's NDB column and the authors' sampler of each row (conf/sampler, measured on the kept models by "
        "`mode=samples`: each model under the settings the authors used for its kind of model, so this compares model and "
        "sampler together; the flat GMMs' divisor 10 is that of outliers-A.bash, as DCGMM-A.bash samples nothing"
        + ("" if all(c.metric in pooled for c in CLAIMS if c.borrow) else "; where the rows have no spread of their own, one kept model each, the learned sampler's pooled seed spread stands in")
        + "), and outlier detection by the AUROC "
        "against both flat GMMs (the same K; as many parameters), paired by held-out class: the mean difference over the classes "
        "both rows hold out. **better** / **worse**: the difference exceeds the margin, twice the noise, and at least a floor "
        f"({floors}); **equal** otherwise. The noise: for AUROC over several classes, the standard deviation of the per-class "
        "differences over the square root of their number (the class-to-class spread); otherwise the standard deviations over the "
        "rows' seeds, added in quadrature, where a row with one seed takes the spread pooled over the rows with two ("
        + (", ".join(f"{c.label}{AUTHORS_NOTE if c.borrow else ''} {pooled[c.metric]:.3f}" for c in CLAIMS if c.metric in pooled) or "none yet")
        + "). A pair of runs counts once per claim. Nothing here was tuned on the test set: "
        "every run uses the settings of its experiment file (conf/experiment/table_*.yaml), each of which names the authors' "
        "script it follows; no FashionMNIST outlier script exists, so the FashionMNIST outlier runs carry the MNIST outlier settings."
    )


def write_report(report_dir: Path, preset_name: str, planner: Planner, records: dict, failures: dict, meta: dict) -> tuple[Path, Path]:
    """``<report_dir>/RESULTS.md`` and ``<report_dir>/<preset_name>.json`` from the records of the
    planned runs (``{run key: record}``) and the errors of failed ones; ``meta``: command, date,
    wall time, machine, records folder, finished and planned runs."""
    preset = planner.preset
    datasets = list(dict.fromkeys(row.dataset for row in planner.rows))
    held_out = preset["held_out"]
    columns = table_columns(held_out)
    ndb_cfg = preset["ndb"]
    lines = [
        f"# DCGMM against flat GMMs and EM: results (preset `{preset_name}`)",
        "",
        f"Written by `{meta['command']}` (`dcgmm.results`); every number is also in `{preset_name}.json`.",
        "",
        f"- **preset**: `{preset_name}` (conf/results/{preset_name}.yaml): {preset.get('description', '')}",
        f"- **epochs**: runs on all classes: {describe_epochs(planner.rows, records, 'main')}; outlier runs: {describe_epochs(planner.rows, records, 'outliers')}",
    ]
    for dataset in datasets:
        rows = [r for r in planner.rows if r.dataset == dataset]
        lines.append(f"- **data, {DATASETS.get(dataset, dataset)}**: {data_description(dataset, rows, records, preset)}")
    top_s = ("each GMM layer's s most probable components, s the smallest K of the stack (the whole prior only in the layer "
             "with the fewest components)") if ndb_cfg.get("top_s") is None else f"each GMM layer's top_s={ndb_cfg['top_s']} most probable components"
    divisor = float(ndb_cfg.get("divisor", 1.0))
    references: dict[str, dict] = {}  # NDB of real test images, as recorded with the runs
    for spec in planner.runs.values():
        ref = ((records.get(spec.key) or {}).get("ndb") or {}).get("reference")
        if ref:
            references.setdefault(spec.dataset, ref)
    reference = "; ".join(f"{DATASETS.get(d, d)} {r['ndb_ratio']:.2f} (JS {r['js']:.3f})" for d, r in references.items())
    seeds = "; ".join(f"{DATASETS.get(d, d)}: {', '.join(map(str, planner.seeds(d)))}" for d in datasets)
    machines, code = provenance(records.values())
    sharpening = ndb_cfg.get("sharpening")
    lines += [
        f"- **NDB**: {int(ndb_cfg.get('samples', 1000)):,} samples per row (components drawn among {top_s}; standard deviations "
        + ("as learned" if divisor == 1 else f"divided by {divisor:g}")
        + f"), B = {int(ndb_cfg.get('bins', 100))} k-means bins of the training split (cached in data/cache)"
        + (f"; for reference, {int(ndb_cfg.get('samples', 1000)):,} real test images: NDB/B {reference} (what a perfect model would score)" if reference else "")
        + (f"; **NDB/B sharp.**: the same draws sharpened below every folding whose patches overlap (rate {sharpening.get('rate')}, "
           f"{sharpening.get('iterations')} iterations, reconstruction weight {sharpening.get('reconstruction', 0.0)}; rows without such a folding: –)" if sharpening else ""),
        f"- **seeds** of the SGD rows (the table shows mean ± standard deviation over them): {seeds}; EM: one fit (seed 0)"
        + ("; circuit: one run (seed 0)" if any(r.method in PEER_ROWS for r in planner.rows) else ""),
        f"- **machine**: the runs ran on {machines or meta['machine']['cpu']}; this report: {meta['machine']['cpu']}, "
        f"{meta['machine']['cores']} cores, {meta['machine']['torch_threads']} torch thread(s); "
        f"torch {meta['machine']['torch']}, lightning {meta['machine']['lightning']}, scikit-learn {meta['machine']['sklearn']}, Python {meta['machine']['python']}",
        f"- **code**: {code}",
        f"- **progress**: {meta['finished']} of {meta['planned']} runs finished (records in `{meta['records_dir']}`; "
        f"a relaunch continues); training and evaluation time in the records: {sum(r.get('seconds', 0.0) for r in records.values()) / 3600:.2f} h",
        f"- **date**: {meta['date']}; wall time of this call: {meta['wall_seconds'] / 60:.1f} min",
        "",
    ]
    json_rows: dict[str, list[dict]] = {}
    for dataset in datasets:
        rows = [r for r in planner.rows if r.dataset == dataset]
        values = [row_values(r, records, held_out, failures) for r in rows]
        json_rows[dataset] = values
        lines += [f"## {DATASETS.get(dataset, dataset)}", "", markdown_table(columns, [table_line(v, held_out) for v in values]), ""]
        if any(v["auroc_classes_planned"] > len(held_out) for v in values):
            lines += [f"### {DATASETS.get(dataset, dataset)}: outlier detection per held-out class (AUROC, top layer)", "",
                      class_table(values, CLASSES), ""]
        if any(v["ndb_learned_n"] or v["ndb_authors_n"] for v in values):
            lines += [f"### {DATASETS.get(dataset, dataset)}: samples under two samplers (kept models, `python results.py preset={preset_name} mode=samples`)", "",
                      sampler_table(values), ""]
    pooled = pooled_spread([row for rows in json_rows.values() for row in rows])
    lines += ["## Verdict", "", verdict_rule(preset, pooled), ""]
    for dataset in datasets:
        lines += verdict_markdown(DATASETS.get(dataset, dataset), json_rows[dataset], pooled)
    lines += [
        "## Columns",
        "",
        f"What each column means: [docs/results.md, Columns]({os.path.relpath(project_root() / 'docs' / 'results.md', report_dir)}#columns).",
        "",
        "## Rows",
        "",
    ]
    seen = set()
    for row in planner.rows:
        if (row.row_id, row.label) in seen:
            continue
        seen.add((row.row_id, row.label))
        lines.append(f"- **{row.label}**: {row.note}")
    lines += ["", "Reproduce one run: `python train.py experiment=<experiment> data=<mnist|fashion>` plus the overrides in the JSON file "
              f"(`runs[].overrides`); the preset's overrides: {json.dumps(preset['overrides'])}."]
    if failures:
        lines += ["", "## Failed runs (trained again by the next launch)", ""] + [f"- {k}: {err}" for k, err in failures.items()]
    md, js = report_dir / "RESULTS.md", report_dir / f"{preset_name}.json"
    with atomic_file(md) as out:
        out.write(("\n".join(lines) + "\n").encode())
    payload = dict(
        preset=preset_name, settings=preset, meta=meta, columns=columns, rows=json_rows, notes=[],
        runs=[{**(records.get(k) or {}), **dict(dataset=s.dataset, name=s.name, kind=s.kind, method=s.method, experiment=s.experiment,
                                                 overrides=s.overrides, held_out=s.held_out, seed=s.seed, planned_K=s.K, planned_params=s.params,
                                                 finished=k in records, **({"error": failures[k]} if k in failures else {}))}
              for k, s in planner.runs.items()],
    )
    write_json(js, payload)
    return md, js


