"""Reference values for the quantile-transform parity test in model/src/preprocess.rs,
computed with scikit-learn's QuantileTransformer(output_distribution="normal").

A count-like column: 30 zeros (a point mass at the minimum), then 1.5 .. 105 in steps of 1.5,
with 7.5 repeated five more times (a point mass inside the range). Run: python quantile_reference.py
"""
import numpy as np
import sklearn
from sklearn.preprocessing import QuantileTransformer

x = np.array([0.0] * 30 + [1.5 * i for i in range(1, 71)] + [7.5] * 5)
qt = QuantileTransformer(n_quantiles=21, output_distribution="normal").fit(x[:, None])
print("sklearn", sklearn.__version__)
print("quantiles", list(qt.quantiles_[:, 0]))
points = [0.0, 0.7, 3.0, 7.5, 10.0, 33.3, 60.0, 104.0, 105.0, -1.0, 200.0]
print("points", points)
print("transformed", list(qt.transform(np.array(points)[:, None])[:, 0]))
