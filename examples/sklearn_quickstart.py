"""Meta-Weight-Net as a scikit-learn classifier, with no clean data at all: 40 % of the
labels flipped, a pipeline, the accuracy against plain cross-entropy, and the labels it
finds wrong."""

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mwnet.sklearn import MetaWeightClassifier

rng = np.random.default_rng(0)
truth = rng.integers(0, 4, 2000)
X = rng.normal(size=(2000, 20))
X[np.arange(2000), truth] += 3  # make the classes learnable
noisy = np.where(rng.random(2000) < 0.4, (truth + 1) % 4, truth)  # 40 % of labels are wrong
names = np.array(["cat", "dog", "fox", "owl"])  # any labels will do
X_train, X_test, y_train, _, true_train, true_test = train_test_split(
    X, names[noisy], names[truth], test_size=500, random_state=0
)

for method in ("ce", "mwnet"):
    model = make_pipeline(StandardScaler(), MetaWeightClassifier(method=method, random_state=0))
    model.fit(X_train, y_train)  # no trusted set: pseudo-meta sets from the noisy labels
    print(f"{method}: accuracy on true labels {model.score(X_test, true_test):.3f}")

clf = model[-1]
wrong = y_train != true_train
w = clf.weights_
print(f"mean weight: clean labels {w[~wrong].mean():.3f}, wrong labels {w[wrong].mean():.3f}")
issues = clf.label_issues_
flagged = issues.flagged
print(
    f"flagged {flagged.sum()} of {len(wrong)} labels (estimated noise rate "
    f"{issues.noise_rate:.3f}, true {wrong.mean():.3f}); "
    f"{(flagged & wrong).sum() / flagged.sum():.3f} of the flagged are wrong"
)
likely = clf.classes_[issues.likely[flagged]]
print(f"their likely labels are right for {(likely == true_train[flagged]).mean():.3f}")
