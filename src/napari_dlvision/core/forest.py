"""Random forest on pixel features: fit on labelled pixels, predict all.

Training uses scikit-learn's RandomForestClassifier. Prediction always runs
through `TreeEnsemble`, rebuilt from plain arrays, so a freshly trained and
a loaded model take the same path and give identical results, and the
model file needs no pickle.
"""

from __future__ import annotations

import importlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import ModelFileError, UserInputError
from .images import n_threads

_NODE_FIELDS = ("left_child", "right_child", "feature", "threshold", "missing_go_to_left")
TREE_LEAF = -1  # scikit-learn's child index of a leaf
# Sanity bounds for forests read from files and for training settings; far
# above any useful forest (the widget offers up to 1000 trees).
MAX_TREES = 10_000
MAX_FEATURES = 1 << 16
MAX_CLASSES = 65535
_F32_MAX = float(np.finfo(np.float32).max)
# Training on more pixels than this adds time, not accuracy: subsample.
MAX_TRAINING_PIXELS = 200_000
TREE_SAMPLES_FRACTION, TREE_SAMPLES_MIN = 0.05, 50
_CHUNK = 1 << 16  # pixels per prediction chunk: keeps the working set in cache


class TreeEnsemble:
    """Averaged class probabilities of decision trees stored as arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], n_features: int, n_classes: int):
        """Build the trees from arrays, after checking every one of them.

        scikit-learn's Tree trusts its nodes: a child index out of range
        reads outside memory (a crash) and a cycle loops forever in apply().
        Arrays from a file are hostile until checked, so anything that is
        not a well-formed forest is refused with a one-line ModelFileError.
        """
        arrays = _checked_forest(arrays, n_features, n_classes)
        self.arrays = arrays
        self.n_features, self.n_classes = int(n_features), int(n_classes)
        self._built = None  # (trees, leaf values), made on first use
        self._lock = threading.Lock()
        prefetch_sklearn("sklearn.tree._tree")

    @property
    def trees(self) -> list:
        return self._build()[0]

    @property
    def leaf_values(self) -> list[np.ndarray]:
        return self._build()[1]

    def _build(self):
        """scikit-learn trees from the checked arrays, on first use.

        Importing scikit-learn takes a large part of a `dlvision predict`
        run; the import starts in the background when the model is read
        (prefetch_sklearn) and finishes while the first tile's features are
        computed, which mostly runs outside the GIL.
        """
        with self._lock:
            if self._built is None:
                from sklearn.tree._tree import NODE_DTYPE, Tree

                arrays, trees, leaf_values = self.arrays, [], []
                bounds = arrays["tree_offsets"]
                for t in range(len(bounds) - 1):
                    lo, hi = int(bounds[t]), int(bounds[t + 1])
                    nodes = np.zeros(hi - lo, dtype=NODE_DTYPE)
                    for f in _NODE_FIELDS:
                        if f in nodes.dtype.names:
                            nodes[f] = arrays[f][lo:hi]
                    values = arrays["values"][lo:hi].astype(np.float64)
                    tree = Tree(self.n_features, np.array([self.n_classes], dtype=np.intp), 1)
                    tree.__setstate__({"max_depth": int(arrays["max_depth"][t]), "node_count": hi - lo,
                                       "nodes": nodes, "values": values[:, None, :]})
                    trees.append(tree)
                    leaf_values.append(values.astype(np.float32))
                self._built = (trees, leaf_values)
            return self._built

    @classmethod
    def from_sklearn(cls, forest, n_classes: int) -> TreeEnsemble:
        """Convert a fitted RandomForestClassifier whose class ids lie in 0..K-1."""
        parts = {f: [] for f in _NODE_FIELDS}
        values, offsets, depths = [], [0], []
        for est in forest.estimators_:
            state = est.tree_.__getstate__()
            nodes = state["nodes"]
            for f in _NODE_FIELDS:
                parts[f].append(nodes[f] if f in nodes.dtype.names else np.zeros(len(nodes), np.uint8))
            v = np.zeros((len(nodes), n_classes), np.float32)
            # Trees work on the forest's encoded classes (0..n-1 over the ids
            # present); map them back to the ids, which may have gaps.
            v[:, forest.classes_.astype(int)] = state["values"][:, 0, :]
            v /= np.maximum(v.sum(axis=1, keepdims=True), 1e-12)
            values.append(v)
            offsets.append(offsets[-1] + len(nodes))
            depths.append(state["max_depth"])
        arrays = {f: np.concatenate(p) for f, p in parts.items()}
        arrays["threshold"] = arrays["threshold"].astype(np.float64)
        arrays.update(
            values=np.concatenate(values),
            tree_offsets=np.asarray(offsets, np.int64),
            max_depth=np.asarray(depths, np.int64),
        )
        return cls(arrays, forest.n_features_in_, n_classes)

    def predict_proba(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """X (N, F) -> probabilities (N, K) float32."""
        # Values beyond float32 become +-inf, which lie beyond every threshold
        # just as the clipped training values did (see _training_features).
        # Any memory layout: trees read X[i, f] through strides, so a
        # feature-major (F, N) array passed as its transpose needs no copy.
        with np.errstate(over="ignore"):
            X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise UserInputError(
                f"the classifier expects {self.n_features} features per pixel, got {X.shape[-1]}"
            )
        if out is None:
            out = np.empty((len(X), self.n_classes), np.float32)
        chunks = [slice(i, min(i + _CHUNK, len(X))) for i in range(0, len(X), _CHUNK)]

        trees, leaf_values = self._build()

        def run(sl):
            acc = np.zeros((sl.stop - sl.start, self.n_classes), np.float32)
            tmp = np.empty_like(acc)
            xs = X[sl]
            for tree, leaf in zip(trees, leaf_values):
                # apply() releases the GIL; take(out=) avoids fancy-index copies.
                np.take(leaf, tree.apply(xs), axis=0, out=tmp)
                acc += tmp
            out[sl] = acc / len(trees)

        if len(chunks) == 1 or n_threads() == 1:
            for sl in chunks:
                run(sl)
        else:
            with ThreadPoolExecutor(n_threads()) as ex:
                list(ex.map(run, chunks))
        return out


def prefetch_sklearn(module: str) -> None:
    """Import a scikit-learn module in a background thread, once.

    Its import takes longer than reading a model or an image; started early,
    it overlaps with work that releases the GIL (OpenCV filters, numpy).
    Whoever imports the module later simply waits for it to finish.
    """
    if module in sys.modules or module in _PREFETCHED:
        return
    _PREFETCHED.add(module)
    # Not a daemon: an early exit waits for the import instead of killing it halfway.
    threading.Thread(target=_quiet_import, args=(module,), name=f"import {module}").start()


def _quiet_import(module: str) -> None:
    try:
        importlib.import_module(module)
    except BaseException:  # noqa: BLE001 - e.g. the program is exiting (an error before the forest was
        pass  # needed); an import that truly fails fails again, visibly, where the module is used


_PREFETCHED: set[str] = set()


MIN_FEATURE_SPREAD = 1e-6  # 10x scikit-learn's smallest split (FEATURE_THRESHOLD, 1e-7)
SMALL_TREE_SAMPLES = 200  # pixels per tree below which one thread fits faster


def fit_forest(X: np.ndarray, y: np.ndarray, n_classes: int, n_trees: int = 50,
               max_depth: int | None = None, random_state: int = 0) -> TreeEnsemble:
    """Fit on labelled pixels: X (N, F), y (N,) in 0..n_classes-1."""
    from sklearn.ensemble import RandomForestClassifier

    if not _is_int(n_trees) or not 1 <= n_trees <= MAX_TREES:
        raise UserInputError(f"the number of trees must be a whole number from 1 to {MAX_TREES}, got {n_trees!r}")
    if max_depth is not None and (not _is_int(max_depth) or max_depth < 0):
        raise UserInputError(f"the maximum tree depth must be 0 (unlimited) or a positive whole number, "
                             f"got {max_depth!r}")
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"fit_forest needs X (N, F) and y (N,), got {X.shape} and {y.shape}")
    if len(y) == 0:
        raise UserInputError("no labelled pixels to train on: paint strokes of at least two classes")
    if X.shape[1] == 0:
        raise UserInputError("no features to train on: select at least one feature")
    if len(np.unique(y)) < 2:
        raise UserInputError("paint at least two classes before training")
    spread = float(np.max(np.ptp(X, axis=0)))
    if spread < MIN_FEATURE_SPREAD:
        # scikit-learn's trees never split between values closer than 1e-7:
        # the forest would predict one class everywhere, without a word.
        raise UserInputError(f"the painted pixels' values differ by at most {spread:.2g}, too little to learn from; "
                             "multiply the image by a large factor (e.g. 1e6) first")
    if len(y) > MAX_TRAINING_PIXELS:
        rng = np.random.default_rng(random_state)
        keep = _balanced_subsample(y, MAX_TRAINING_PIXELS, rng)
        X, y = X[keep], y[keep]
    X = _training_features(X)
    # Each tree sees a small bootstrap sample (5%, at least 50 pixels). On
    # sparse strokes this decorrelates the trees, so class boundaries fall
    # between the strokes instead of where one large-scale feature happens
    # to split them (blobs IoU 0.75 -> 0.88, synthetic nuclei unchanged);
    # fitting and prediction get faster too.
    per_tree = min(len(y), max(TREE_SAMPLES_MIN, int(TREE_SAMPLES_FRACTION * len(y))))
    clf = RandomForestClassifier(
        n_estimators=int(n_trees),
        max_depth=None if not max_depth else int(max_depth),
        max_samples=per_tree,
        # Small trees build faster on one thread than joblib can hand them to
        # two (331 stroke pixels, 50 trees: 0.044 s against 0.063-0.074 s);
        # from about 200 pixels per tree the second thread pays off.
        n_jobs=1 if per_tree < SMALL_TREE_SAMPLES else n_threads(),
        random_state=random_state,
    )
    # scikit-learn's finiteness check sums X first; with values near the
    # float32 limit the sum overflows and numpy warns on stderr, which the
    # CLI promises to keep to one line. The values themselves are finite.
    with np.errstate(over="ignore", invalid="ignore"):
        clf.fit(X, y)
    return TreeEnsemble.from_sklearn(clf, n_classes)


def _balanced_subsample(y, n, rng):
    """Indices of up to n samples, each class capped at an equal share."""
    classes = np.unique(y)
    share = n // len(classes)
    keep = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        keep.append(rng.choice(idx, min(share, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _training_features(X: np.ndarray) -> np.ndarray:
    """X as C-contiguous float32 that scikit-learn accepts.

    Trees split in float32; scikit-learn refuses values that overflow it
    ("contains infinity"), which a legitimate image of huge floats gives.
    Clipping to the float32 range keeps their order, which is all a split
    needs. NaN has no order: refused with a readable message.
    """
    if X.dtype.kind == "f":
        if np.isnan(X).any():
            raise UserInputError("the features contain NaN (not a number): does the image contain NaN?")
        X = np.clip(X, -_F32_MAX, _F32_MAX)
    return np.ascontiguousarray(X, dtype=np.float32)


def _checked_forest(arrays, n_features, n_classes) -> dict[str, np.ndarray]:
    """The forest's arrays in canonical dtypes, or ModelFileError if they are not a forest.

    Each tree t covers nodes tree_offsets[t]:tree_offsets[t+1], numbered
    locally from 0 (the root). A node is a leaf (both children TREE_LEAF) or
    a split whose children are later nodes of the same tree; every node but
    the root has exactly one parent. Children after their parent make the
    tree acyclic, so apply() always ends at a leaf within the tree.
    """

    def bad(msg):
        raise ModelFileError(f"damaged forest: {msg}")

    if not _is_int(n_features) or not 1 <= n_features <= MAX_FEATURES:
        bad(f"n_features must be 1..{MAX_FEATURES}, got {n_features!r}")
    if not _is_int(n_classes) or not 1 <= n_classes <= MAX_CLASSES:
        bad(f"n_classes must be 1..{MAX_CLASSES}, got {n_classes!r}")
    if not isinstance(arrays, dict):
        bad("the arrays are not a mapping")

    def get(key, kinds, ndim, required=True):
        if key not in arrays:
            if required:
                bad(f"array {key!r} is missing")
            return None
        a = np.asarray(arrays[key])
        if a.dtype.kind not in kinds:
            bad(f"array {key!r} has dtype {a.dtype}")
        if a.ndim != ndim:
            bad(f"array {key!r} has shape {a.shape}, expected {ndim}-D")
        return a

    offsets = get("tree_offsets", "iu", 1)
    n_trees = len(offsets) - 1
    if not 1 <= n_trees <= MAX_TREES:
        bad(f"it holds {max(n_trees, 0)} trees, expected 1..{MAX_TREES}")
    if offsets.dtype.kind == "u" and offsets.max() > np.iinfo(np.int64).max:
        bad("tree_offsets out of range")
    offsets = offsets.astype(np.int64)
    sizes = np.diff(offsets)
    if offsets[0] != 0:
        bad(f"tree_offsets must start at 0, got {offsets[0]}")
    if (sizes <= 0).any():
        t = int(np.flatnonzero(sizes <= 0)[0])
        bad(f"tree {t} is empty (tree_offsets must increase strictly)")
    n = int(offsets[-1])

    left, right, feature = (get(k, "i", 1) for k in ("left_child", "right_child", "feature"))
    threshold = get("threshold", "f", 1)
    values = get("values", "f", 2)
    max_depth = get("max_depth", "iu", 1)
    missing_left = get("missing_go_to_left", "ub", 1, required=False)
    if missing_left is None:  # written by a scikit-learn without missing-value support
        missing_left = np.zeros(n, np.uint8)
    for key, a in (("left_child", left), ("right_child", right), ("feature", feature),
                   ("threshold", threshold), ("missing_go_to_left", missing_left)):
        if len(a) != n:
            bad(f"array {key!r} has {len(a)} entries, tree_offsets says {n} nodes")
    if values.shape != (n, n_classes):
        bad(f"array 'values' has shape {values.shape}, expected ({n}, {n_classes})")
    if len(max_depth) != n_trees:
        bad(f"array 'max_depth' has {len(max_depth)} entries for {n_trees} trees")

    left, right, feature = (a.astype(np.int64) for a in (left, right, feature))
    tree_of = np.repeat(np.arange(n_trees), sizes)
    start = offsets[:-1][tree_of]
    local = np.arange(n, dtype=np.int64) - start
    size = sizes[tree_of]

    def where(mask):
        i = int(np.flatnonzero(mask)[0])
        return i, f"tree {int(tree_of[i])}, node {int(local[i])}"

    leaf = (left == TREE_LEAF) & (right == TREE_LEAF)
    split = ~leaf
    inside = (left > local) & (left < size) & (right > local) & (right < size)
    if (split & ~inside).any():
        i, at = where(split & ~inside)
        bad(f"{at}: children {int(left[i])}, {int(right[i])} are neither leaves ({TREE_LEAF}) "
            f"nor later nodes of the same tree")
    parents = np.bincount(np.concatenate([left[split], right[split]]) + np.tile(start[split], 2), minlength=n)
    if (parents != (local != 0)).any():
        i, at = where(parents != (local != 0))
        bad(f"{at} has {int(parents[i])} parents (a tree node has one, the root none)")
    if (split & ((feature < 0) | (feature >= n_features))).any():
        i, at = where(split & ((feature < 0) | (feature >= n_features)))
        bad(f"{at}: feature {int(feature[i])} is not in 0..{n_features - 1}")
    if not np.isfinite(threshold).all():
        bad(f"{where(~np.isfinite(threshold))[1]}: threshold is not finite")
    # Leaf values are used as float32: larger ones would become infinite.
    good_values = np.isfinite(values) & (values >= 0) & (values <= _F32_MAX)
    if not good_values.all():
        bad(f"{where(~good_values.all(axis=1))[1]}: class values must be finite, >= 0 and within float32")
    if ((missing_left != 0) & (missing_left != 1)).any():
        bad("missing_go_to_left must hold 0 or 1")
    # A binary tree of k nodes is at most (k - 1) // 2 levels deep.
    if (max_depth < 0).any() or (max_depth > (sizes - 1) // 2).any():
        t = int(np.flatnonzero((max_depth < 0) | (max_depth > (sizes - 1) // 2))[0])
        bad(f"tree {t}: max_depth {int(max_depth[t])} does not fit its {int(sizes[t])} nodes")
    return {
        "left_child": left, "right_child": right, "feature": feature,
        "threshold": threshold.astype(np.float64), "missing_go_to_left": missing_left.astype(np.uint8),
        "values": values.astype(np.float32), "tree_offsets": offsets, "max_depth": max_depth.astype(np.int64),
    }
