#!/usr/bin/env python3
"""Reference values for the task head's logistic regression (tasks/src/logreg.rs).

Fits scikit-learn's LogisticRegression (multinomial, L2, lbfgs to a tight tolerance, intercept not
penalised: the objective logreg.rs minimises, times C*n) on a small data set defined by a formula both
sides compute, and prints the fitted class probabilities of a few rows as Rust constants. The values
are pasted into logreg.rs's tests; this script is not run by the tests. Versions used when it was
written: scikit-learn 1.7.2, numpy 2.4.6.

    python3 scripts/logreg_reference.py
"""
import math

import numpy as np
from sklearn.linear_model import LogisticRegression

N, D, K = 45, 5, 3


def data():
    x = [[math.sin(1.3 * i + 0.7 * j * j + 0.5) + 0.25 * math.cos(0.9 * i * j) for j in range(D)]
         for i in range(N)]
    y = [(i * 7 + i // 4) % K for i in range(N)]
    return np.array(x, dtype=np.float64), np.array(y)


def main():
    x, y = data()
    for c in (1.0, 100.0):
        m = LogisticRegression(C=c, solver="lbfgs", tol=1e-12, max_iter=100000).fit(x, y)
        p = m.predict_proba(x[:6])
        rows = ", ".join("[" + ", ".join(f"{v:.9}" for v in r) + "]" for r in p)
        print(f"// C = {c}: iterations {m.n_iter_[0]}")
        print(f"({c:.1f}, [{rows}]),")


if __name__ == "__main__":
    main()
