"""Reference shape and trend for tests/eval.rs (`headline_shape_and_trend_are_sdmetrics_quality_report`):
SDMetrics 0.32's QualityReport on two converted NSL-KDD slices, exactly as a user would call it on
the two tables (label column included). Reproduce:

    zcat KDDTrain+.txt.gz | head -3000 > a.csv; zcat KDDTrain+.txt.gz | sed -n 3001,4500p > b.csv
    flowsynth convert --preset nsl-kdd a.csv --out train
    flowsynth convert --preset nsl-kdd b.csv --out synth
    python quality_report_reference.py train synth

Column types come from the training dataset's manifest (numeric -> numerical, categorical and
label -> categorical); a column the second slice's conversion dropped as constant is filled with
its recorded value, as `flowsynth eval` does.
"""
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import sdmetrics
from sdmetrics.reports.single_table import QualityReport

train_dir, syn_dir = sys.argv[1], sys.argv[2]
m = json.loads((Path(train_dir) / "_dataset.json").read_text())
sm = json.loads((Path(syn_dir) / "_dataset.json").read_text())
real = pq.read_table(train_dir).to_pandas()
syn = pq.read_table(syn_dir).to_pandas()
for d in sm["dropped_columns"]:
    if d["reason"]["kind"] == "constant" and d["name"] in real.columns:
        syn[d["name"]] = type(real[d["name"]].iloc[0])(d["reason"]["value"])
names = [c["name"] for c in m["columns"]]
meta = {"columns": {c["name"]: {"sdtype": "numerical" if c["role"] == "numeric" else "categorical"}
                    for c in m["columns"]}}
r = QualityReport()
r.generate(real[names], syn[names], meta, verbose=False)
p = r.get_properties().set_index("Property")["Score"]
print("sdmetrics", sdmetrics.__version__)
print("shape", repr(float(p["Column Shapes"])))
print("trend", repr(float(p["Column Pair Trends"])))
