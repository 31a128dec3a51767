"""Class colours for the annotation layers this plugin creates (the sample, New).

Bright, distinct colours that stand out on dark fluorescence images: napari's
default colour for label 1 is a dark brown that disappears on them.
"""

CLASS_COLOURS = [
    (1.00, 0.65, 0.00),  # 1 orange (background by convention)
    (0.00, 0.90, 1.00),  # 2 cyan
    (1.00, 0.20, 0.80),  # 3 magenta
    (0.45, 1.00, 0.20),  # 4 green
    (1.00, 1.00, 0.30),  # 5 yellow
    (0.55, 0.45, 1.00),  # 6 violet
    (1.00, 0.35, 0.30),  # 7 red
    (0.30, 1.00, 0.75),  # 8 mint
]


def annotation_colormap(n: int = 64) -> dict:
    """{label: RGBA} for napari's add_labels(colormap=...); 0 transparent, ids beyond the list cycle."""
    colours = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for k in range(1, n + 1):
        colours[k] = (*CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)], 1.0)
    return colours
