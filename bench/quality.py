"""Augmentation-quality reference for `bench/quality.sh`, computed with the tools a user would
otherwise reach for: scikit-learn's RandomForestClassifier and HistGradientBoostingClassifier as
detectors, imbalanced-learn's RandomOverSampler and SMOTE / SMOTENC as the baselines, SDMetrics'
QualityReport for fidelity.

    python quality.py split --input CSV.gz --label COL --out DIR [--cut CLASS=N,...]
    python quality.py score --train DIR --test DIR --synthetic DIR --classes A,B --out JSON

`split` makes a stratified 70/30 split of a CSV (seed 0), optionally cutting classes of the
training part to N rows (the test part stays untouched), and writes `train.csv.gz` /
`test.csv.gz` with the original header and values.

`score` reads flowsynth datasets (converted folders and a `sample` output) as pandas does and
reports, per detector and setting (real only, + random oversampling, + SMOTE, + flowsynth),
macro-F1 over the classes of the test split and the rare-class F1 (mean test F1 of the augmented
classes), mean and std over seeds; and for the synthetic rows: SDMetrics shape/trend per augmented
class against that class's real training rows next to the same figure for its real test rows
(the ceiling), class agreement (share assigned to the class by a forest trained on real data) and
the exact-copy rate, each next to the real test rows' figure.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

warnings.filterwarnings("ignore")


def split(args):
    from sklearn.model_selection import train_test_split

    df = pd.read_csv(args.input, dtype=str, keep_default_na=False)
    label = next(c for c in df.columns if c.strip() == args.label)
    train, test = train_test_split(df, test_size=0.3, stratify=df[label], random_state=0)
    rng = np.random.default_rng(0)
    for item in filter(None, (args.cut or "").split(",")):
        cls, n = item.rsplit("=", 1)
        rows = np.flatnonzero(train[label].to_numpy() == cls)
        if len(rows) == 0:
            sys.exit(f"split: class {cls!r} not in {args.input}")
        drop = rng.permutation(rows)[int(n):]
        train = train.drop(train.index[drop])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train.to_csv(out / "train.csv.gz", index=False)
    test.to_csv(out / "test.csv.gz", index=False)
    print(f"split: {len(train)} train rows, {len(test)} test rows -> {out}")


def manifest(folder):
    for name in ("_dataset.json", "dataset.json", "_sample.json"):
        p = Path(folder) / name
        if p.exists():
            return json.loads(p.read_text())
    sys.exit(f"score: {folder} is not a flowsynth dataset")


def load(folder, features, label, constants):
    t = pq.read_table(folder).to_pandas()
    for c in features:
        if c not in t.columns:
            if c not in constants:
                sys.exit(f"score: {folder} lacks column {c!r}")
            t[c] = constants[c]
    return t


class Encoded:
    """Ordinal codes for categoricals (training categories first), floats for numerics."""

    def __init__(self, train_m, train, others):
        self.label = train_m["label_column"]
        cols = [c for c in train_m["columns"] if c["role"] != "label"]
        self.features = [c["name"] for c in cols]
        self.categorical = [c["role"] == "categorical" for c in cols]
        self.maps = {}
        for c, is_cat in zip(self.features, self.categorical):
            if is_cat:
                values = list(dict.fromkeys(
                    list(train[c].astype(str)) + [v for o in others for v in o[c].astype(str)]))
                self.maps[c] = {v: i for i, v in enumerate(values)}
        classes = list(dict.fromkeys(
            list(train[self.label].astype(str)) + [v for o in others for v in o[self.label].astype(str)]))
        self.classes = {v: i for i, v in enumerate(classes)}
        self.class_names = classes

    def x(self, df):
        out = np.empty((len(df), len(self.features)), dtype=np.float64)
        for j, (c, is_cat) in enumerate(zip(self.features, self.categorical)):
            if is_cat:
                out[:, j] = df[c].astype(str).map(self.maps[c]).to_numpy()
            else:
                out[:, j] = pd.to_numeric(df[c]).to_numpy(dtype=np.float64)
        return out

    def y(self, df):
        return df[self.label].astype(str).map(self.classes).to_numpy()


def oversample(kind, x, y, add, cat_mask, seed):
    """Adds add[c] rows of each class c with RandomOverSampler or SMOTE(-NC)."""
    from imblearn.over_sampling import SMOTE, SMOTENC, RandomOverSampler

    counts = np.bincount(y, minlength=max(add) + 1)
    strategy = {c: int(counts[c] + n) for c, n in add.items()}
    if kind == "ros":
        s = RandomOverSampler(sampling_strategy=strategy, random_state=seed)
        return s.fit_resample(x, y)
    k = max(1, min(5, min(int(counts[c]) for c in add) - 1))
    if any(cat_mask):
        s = SMOTENC(categorical_features=[int(i) for i in np.flatnonzero(cat_mask)], sampling_strategy=strategy,
                    k_neighbors=k, random_state=seed)
    else:
        s = SMOTE(sampling_strategy=strategy, k_neighbors=k, random_state=seed)
    return s.fit_resample(x, y)


def detectors(cat_mask, seed):
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    return {
        "random_forest": RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed),
        "hist_gradient_boosting": HistGradientBoostingClassifier(
            categorical_features=np.array(cat_mask) if any(cat_mask) else None,
            random_state=seed),
    }


def quality_report(real, synthetic, features, categorical):
    from sdmetrics.reports.single_table import QualityReport

    meta = {"columns": {c: {"sdtype": "categorical" if cat else "numerical"}
                        for c, cat in zip(features, categorical)}}
    r = QualityReport()
    r.generate(real[features].reset_index(drop=True), synthetic[features].reset_index(drop=True),
               meta, verbose=False)
    props = r.get_properties().set_index("Property")["Score"]
    return float(props["Column Shapes"]), float(props["Column Pair Trends"])


def score(args):
    train_m, test_m = manifest(args.train), manifest(args.test)
    constants = {d["name"]: d["reason"]["value"] for d in test_m.get("dropped_columns", [])
                 if d["reason"].get("kind") == "constant"}
    feats = [c["name"] for c in train_m["columns"] if c["role"] != "label"]
    label = train_m["label_column"]
    train = load(args.train, feats, label, {})
    test = load(args.test, feats, label, constants)
    syn = load(args.synthetic, feats, label, {})
    if "synthetic" in syn.columns:
        syn = syn[syn["synthetic"]]
    classes = args.classes.split(",")
    syn = syn[syn[label].astype(str).isin(classes)]
    enc = Encoded(train_m, train, [test, syn])
    xtr, ytr = enc.x(train), enc.y(train)
    xte, yte = enc.x(test), enc.y(test)
    xsy, ysy = enc.x(syn), enc.y(syn)
    add = {enc.classes[c]: int((ysy == enc.classes[c]).sum()) for c in classes}
    if any(n == 0 for n in add.values()):
        sys.exit(f"score: the synthetic set lacks some of {classes}: {add}")
    test_classes = sorted(set(yte.tolist()))
    rare = [enc.classes[c] for c in classes if enc.classes[c] in test_classes]
    from sklearn.metrics import f1_score

    settings = ["real", "ros", "smote", "flowsynth"]
    results = {}
    t0 = time.time()
    for seed in range(args.seeds):
        for setting in settings:
            if setting == "real":
                x, y = xtr, ytr
            elif setting == "flowsynth":
                x, y = np.vstack([xtr, xsy]), np.concatenate([ytr, ysy])
            else:
                x, y = oversample(setting, xtr, ytr, add, enc.categorical, seed)
            for name, model in detectors(enc.categorical, seed).items():
                model.fit(x, y)
                pred = model.predict(xte)
                per = f1_score(yte, pred, labels=test_classes, average=None, zero_division=0)
                per = dict(zip(test_classes, per))
                r = results.setdefault(name, {}).setdefault(setting, {"macro": [], "rare": [], "per_class": {}})
                r["macro"].append(float(np.mean(list(per.values()))))
                r["rare"].append(float(np.mean([per[c] for c in rare])))
                for c in rare:
                    r["per_class"].setdefault(enc.class_names[c], []).append(float(per[c]))
        print(f"score: seed {seed} done ({time.time() - t0:.0f} s)", file=sys.stderr)

    # Fidelity, agreement and copies per augmented class.
    from sklearn.ensemble import RandomForestClassifier

    judge = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0).fit(xtr, ytr)
    train_rows = {tuple(r) for r in xtr.tolist()}
    per_class = {}
    for c in classes:
        code = enc.classes[c]
        real_c = train[ytr == code]
        syn_c = syn[ysy == code]
        test_c = test[yte == code]
        entry = {"train_rows": int(len(real_c)), "synthetic_rows": int(len(syn_c)),
                 "test_rows": int(len(test_c))}
        s, t = quality_report(real_c, syn_c, feats, enc.categorical)
        entry.update(shape=s, trend=t)
        entry["agreement"] = float((judge.predict(xsy[ysy == code]) == code).mean())
        entry["copies"] = float(np.mean([tuple(r) in train_rows for r in xsy[ysy == code].tolist()]))
        if len(test_c) >= 2:
            s, t = quality_report(real_c, test_c, feats, enc.categorical)
            entry.update(holdout_shape=s, holdout_trend=t)
            entry["holdout_agreement"] = float((judge.predict(xte[yte == code]) == code).mean())
            entry["holdout_copies"] = float(np.mean([tuple(r) in train_rows for r in xte[yte == code].tolist()]))
        per_class[c] = entry

    def stat(v):
        return {"mean": float(np.mean(v)), "std": float(np.std(v))}

    out = {
        "classes": classes,
        "rare_in_test": [enc.class_names[c] for c in rare],
        "seeds": args.seeds,
        "detectors": {d: {s: {"macro_f1": stat(r["macro"]), "rare_f1": stat(r["rare"]),
                              "per_class_f1": {k: stat(v) for k, v in r["per_class"].items()}}
                          for s, r in by.items()} for d, by in results.items()},
        "per_class": per_class,
        "seconds": time.time() - t0,
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print_summary(out)


def print_summary(out):
    print(f"augmented: {', '.join(out['classes'])} (rare-class F1 over {', '.join(out['rare_in_test'])})")
    for d, by in out["detectors"].items():
        row = "  ".join(f"{s} {r['macro_f1']['mean']:.3f}/{r['rare_f1']['mean']:.3f}±{r['rare_f1']['std']:.3f}"
                        for s, r in by.items())
        print(f"{d:24} macro/rare F1: {row}")
    for c, e in out["per_class"].items():
        ho = (f"  real holdout: shape {e['holdout_shape']:.3f} trend {e['holdout_trend']:.3f} "
              f"agree {e['holdout_agreement']:.2f} copies {e['holdout_copies']:.2f}"
              if "holdout_shape" in e else "")
        print(f"  {c:28} n={e['train_rows']:<6} shape {e['shape']:.3f} trend {e['trend']:.3f} "
              f"agree {e['agreement']:.2f} copies {e['copies']:.2f}{ho}")


def summary(args):
    """Markdown tables of every dataset folder: the reference's F1 table, flowsynth eval's, the
    per-class fidelity, and the goals with their margins."""
    lines = []
    names = {"real": "nothing (real only)", "ros": "random oversampling", "smote": "SMOTE",
             "flowsynth": "flowsynth"}
    for folder in args.folders:
        d = Path(folder)
        score = json.loads((d / "score.json").read_text())
        report = json.loads((d / "report" / "report.json").read_text())
        train_s = float((d / "train_seconds").read_text())
        sample_s = float((d / "sample_seconds").read_text())
        det = score["detectors"]
        lines.append(f"### {d.name}: augmented {', '.join(score['classes'])}")
        lines.append("")
        lines.append(f"flowsynth training {train_s:.0f} s, sampling {sample_s:.0f} s "
                     f"({score['seeds']} seeds; rare-class F1 = mean test F1 of "
                     f"{', '.join(score['rare_in_test'])})")
        lines.append("")
        lines.append("scikit-learn / imbalanced-learn reference:")
        lines.append("")
        lines.append("| added rows from | RF macro-F1 | RF rare-class F1 | HGB macro-F1 | HGB rare-class F1 |")
        lines.append("|---|---|---|---|---|")
        for s in ["real", "ros", "smote", "flowsynth"]:
            cells = []
            for dn in ["random_forest", "hist_gradient_boosting"]:
                r = det[dn][s]
                cells += [f"{r['macro_f1']['mean']:.3f} ± {r['macro_f1']['std']:.3f}",
                          f"{r['rare_f1']['mean']:.3f} ± {r['rare_f1']['std']:.3f}"]
            lines.append(f"| {names[s]} | " + " | ".join(cells) + " |")
        lines.append("")
        down = report.get("downstream") or {}
        if down:
            lines.append("`flowsynth eval` (its own detectors):")
            lines.append("")
            lines.append("| detector | " + " | ".join(s["setting"] for s in down["detectors"][0]["settings"]) + " |")
            lines.append("|---|" + "---|" * len(down["detectors"][0]["settings"]))
            for dd in down["detectors"]:
                lines.append(f"| {dd['detector']} rare-class F1 | " + " | ".join(
                    f"{s['rare_f1']['mean']:.3f} ± {s['rare_f1']['std']:.3f}" if s.get("rare_f1") else "n/a"
                    for s in dd["settings"]) + " |")
            lines.append("")
            if report.get("verdict"):
                lines.append("verdict: " + report["verdict"]["lines"][-1])
                lines.append("")
        lines.append("| class | train rows | shape (real holdout) | trend (real holdout) | agreement (real holdout) | copies (real holdout) |")
        lines.append("|---|---|---|---|---|---|")
        shapes, ceilings = [], []
        for c, e in score["per_class"].items():
            def two(a, b):
                x = e.get(a)
                y = e.get(b)
                return (f"{x:.3f}" if x is not None else "n/a") + " (" + (f"{y:.3f}" if y is not None else "n/a") + ")"
            lines.append(f"| {c} | {e['train_rows']} | {two('shape', 'holdout_shape')} | {two('trend', 'holdout_trend')} "
                         f"| {two('agreement', 'holdout_agreement')} | {two('copies', 'holdout_copies')} |")
            if e.get("holdout_shape") is not None:
                shapes.append(e["shape"])
                ceilings.append(e["holdout_shape"])
        lines.append("")
        goals = []
        for dn, label in [("random_forest", "RF"), ("hist_gradient_boosting", "HGB")]:
            f = det[dn]
            y = f["flowsynth"]["rare_f1"]["mean"]
            goals.append(f"{label} rare-class F1 {y:.3f}: {y - f['real']['rare_f1']['mean']:+.3f} vs real only, "
                         f"{y - f['smote']['rare_f1']['mean']:+.3f} vs SMOTE")
        if shapes:
            gap = np.mean(ceilings) - np.mean(shapes)
            goals.append(f"rare-class shape {np.mean(shapes):.3f} vs real-holdout ceiling {np.mean(ceilings):.3f} "
                         f"(gap {gap:.3f}; goal <= 0.05)")
        goals.append(f"training {train_s:.0f} s (goal <= 600 s)")
        lines.append("Goals: " + "; ".join(goals) + ".")
        lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")


ABLATION_ORDER = ["tabular", "multimodal", "multimodal-joint", "data-space"]


def ablation_row(name, v, train_s, sk):
    """One table row from a sampled-and-evaluated folder `v` (report/, synthetic/)."""
    report = json.loads((v / "report" / "report.json").read_text())
    sample = json.loads((v / "synthetic" / "_sample.json").read_text())
    rows = sample["synthetic_rows"]
    generation = sample.get("generation_seconds")
    per = report.get("per_class") or []

    def mean(key):
        vals = [c[key] for c in per if c.get(key) is not None]
        return float(np.mean(vals)) if vals else float("nan")

    macro, rare, vs, ref = [], [], [], {}
    for dd in report["downstream"]["detectors"]:
        by = {s["setting"]: s for s in dd["settings"]}
        macro.append(f"{by['real+synthetic']['macro_f1']['mean']:.3f}")
        f = by["real+synthetic"]["rare_f1"]["mean"]
        rare.append(f"{f:.3f}")
        vs.append(f"{f - by['real+smote']['rare_f1']['mean']:+.3f}")
        ref[dd["detector"]] = {k: (by[k]["macro_f1"]["mean"], by[k]["rare_f1"]["mean"])
                               for k in ("real", "real+ros", "real+smote")}
    coherence = sample.get("cross_modal_coherence")
    speed = "n/a" if not generation else f"{rows / generation:.0f}"
    line = (f"| {name} | {train_s} | {speed} | {report['shape']:.3f} "
            f"| {report['trend']:.3f} | {report['detection']['score']:.3f} "
            f"| {report['alpha_precision']:.3f} | {report['beta_recall']:.3f} "
            f"| {mean('shape'):.3f} ({mean('holdout_shape'):.3f}) "
            f"| {mean('agreement'):.3f} ({mean('holdout_agreement'):.3f}) "
            f"| {'n/a' if coherence is None else f'{coherence:.4f}'} "
            f"| {' / '.join(macro)} | {' / '.join(rare)} | {' / '.join(vs)} | {sk} |")
    return line, ref


def ablation(args):
    """One table per dataset, one row per model variant and sampling setting (bench/ablation.sh's
    folders: <variant>/ at the default strength, <variant>/from-noise/ at strength 1)."""
    lines = []
    for folder in args.folders:
        d = Path(folder)
        variants = sorted((v for v in d.iterdir() if (v / "report" / "report.json").exists()),
                          key=lambda v: ABLATION_ORDER.index(v.name)
                          if v.name in ABLATION_ORDER else len(ABLATION_ORDER))
        if not variants:
            continue
        lines.append(f"### {d.name}")
        lines.append("")
        lines.append("| variant | train s | sampler rows/s | shape | trend | detection | alpha | beta "
                     "| class shape (holdout) | agreement (holdout) | coherence "
                     "| macro-F1 RF / GBT / MLP | rare-class F1 RF / GBT / MLP "
                     "| rare vs SMOTE RF / GBT / MLP | sklearn RF / HGB rare F1 |")
        lines.append("|---|" + "---|" * 14)
        ref = None
        for settings in ("default", "from-noise"):
            for v in variants:
                folder = v if settings == "default" else v / "from-noise"
                if not (folder / "report" / "report.json").exists():
                    continue
                train_s = f"{float((v / 'train_seconds').read_text()):.0f}"
                sk = "n/a"
                if (folder / "score.json").exists():
                    det = json.loads((folder / "score.json").read_text())["detectors"]
                    sk = (f"{det['random_forest']['flowsynth']['rare_f1']['mean']:.3f} / "
                          f"{det['hist_gradient_boosting']['flowsynth']['rare_f1']['mean']:.3f}")
                name = v.name if settings == "default" else f"{v.name}, from noise"
                line, r = ablation_row(name, folder, train_s, sk)
                lines.append(line)
                ref = ref or r
        lines.append("")
        if ref:
            lines.append("Same-run references (`flowsynth eval`, macro-F1 / rare-class F1): " + "; ".join(
                f"{det}: real {r['real'][0]:.3f} / {r['real'][1]:.3f}, "
                f"ROS {r['real+ros'][0]:.3f} / {r['real+ros'][1]:.3f}, "
                f"SMOTE {r['real+smote'][0]:.3f} / {r['real+smote'][1]:.3f}"
                for det, r in ref.items()) + ".")
            lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("--input", required=True)
    s.add_argument("--label", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--cut")
    s = sub.add_parser("score")
    for a in ("--train", "--test", "--synthetic", "--classes", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--seeds", type=int, default=5)
    for name in ("summary", "ablation"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("folders", nargs="+")
    args = p.parse_args()
    {"split": split, "score": score, "summary": summary, "ablation": ablation}[args.cmd](args)


if __name__ == "__main__":
    main()
