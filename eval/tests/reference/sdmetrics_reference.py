"""Reference values for eval/tests/reference.rs, computed with SDMetrics (single-column and
column-pair metrics) and with numpy + scikit-learn following synthcity's AlphaPrecision code
(naive variant) on the same deterministic data. Run: python sdmetrics_reference.py"""
import numpy as np
import pandas as pd
from sdmetrics.single_column import KSComplement, TVComplement
from sdmetrics.column_pairs import CorrelationSimilarity, ContingencySimilarity
from sklearn.neighbors import NearestNeighbors

CATS = ["a", "b", "c"]

def frame(n, mx, my, mc, shift):
    x = np.array([((i * mx) % 101) / 10.0 + shift for i in range(n)])
    y = np.array([x[i] * 0.5 + ((i * my) % 7) for i in range(n)])
    c = [CATS[(i * mc) % 3] if i % 5 else "a" for i in range(n)]
    return pd.DataFrame({"x": x, "y": y, "c": c})

real = frame(40, 37, 13, 7, 0.0)
syn = frame(30, 41, 11, 5, 0.73)
print("ks_x", KSComplement.compute(real["x"], syn["x"]))
print("ks_y", KSComplement.compute(real["y"], syn["y"]))
print("tv_c", TVComplement.compute(real["c"], syn["c"]))
print("corr_xy", CorrelationSimilarity.compute(real[["x", "y"]], syn[["x", "y"]], coefficient="Pearson"))
print("cont_xc", ContingencySimilarity.compute(real[["x", "c"]], syn[["x", "c"]], continuous_column_names=["x"], num_discrete_bins=10))
print("cont_yc", ContingencySimilarity.compute(real[["y", "c"]], syn[["y", "c"]], continuous_column_names=["y"], num_discrete_bins=10))

# synthcity-style encoding: min-max numerics over the real data, one-hot categoricals.
def encode(df):
    out = []
    for col in ["x", "y"]:
        lo, hi = real[col].min(), real[col].max()
        out.append(((df[col] - lo) / (hi - lo)).to_numpy()[:, None])
    out.append(np.stack([(df["c"] == v).to_numpy().astype(float) for v in CATS], axis=1))
    return np.concatenate(out, axis=1)

X, Y = encode(real), encode(syn)
n_steps = 30
alphas = np.linspace(0, 1, n_steps)
emb_center = np.mean(X, axis=0)
Radii = np.quantile(np.sqrt(np.sum((X - emb_center) ** 2, axis=1)), alphas)
synth_center = np.mean(Y, axis=0)
synth_to_center = np.sqrt(np.sum((Y - emb_center) ** 2, axis=1))
real_to_real, _ = NearestNeighbors(n_neighbors=2).fit(X).kneighbors(X)
real_to_synth, args = NearestNeighbors(n_neighbors=1).fit(Y).kneighbors(X)
real_to_real = real_to_real[:, 1].squeeze()
real_to_synth = real_to_synth.squeeze()
args = args.squeeze()
closest_d = np.sqrt(np.sum((Y[args] - synth_center) ** 2, axis=1))
closest_radii = np.quantile(closest_d, alphas)
prec = [np.mean(synth_to_center <= Radii[k]) for k in range(n_steps)]
cov = [np.mean((real_to_synth <= real_to_real) * (closest_d <= closest_radii[k])) for k in range(n_steps)]
print("alpha_precision", 1 - np.sum(np.abs(alphas - prec)) / np.sum(alphas))
print("beta_recall", 1 - np.sum(np.abs(alphas - cov)) / np.sum(alphas))
# Authenticity as in the paper: each synthetic row against its nearest real row's own gap.
synth_to_real, sargs = NearestNeighbors(n_neighbors=1).fit(X).kneighbors(Y)
print("authenticity", np.mean(synth_to_real.squeeze() > real_to_real[sargs.squeeze()]))

# The same two frames through SDMetrics' QualityReport: each side's numeric columns binned over
# their own range, and a pair counted in the trend only when its real dependence exceeds the
# report's thresholds (|r| > 0.5, Cramer's V > 0.3).
from sdmetrics.reports.single_table import QualityReport

meta = {"columns": {"x": {"sdtype": "numerical"}, "y": {"sdtype": "numerical"},
                    "c": {"sdtype": "categorical"}}}
report = QualityReport()
report.generate(real, syn, meta, verbose=False)
details = report.get_details("Column Pair Trends")
for _, row in details.iterrows():
    print("pair", row["Column 1"], row["Column 2"], row["Metric"], row["Score"],
          row["Real Association"], row["Meets Threshold?"])
props = report.get_properties().set_index("Property")["Score"]
print("quality_report_shape", props["Column Shapes"])
print("quality_report_trend", props["Column Pair Trends"])
