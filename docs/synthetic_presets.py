"""Draw docs/synthetic_presets.png: one synthetic image per class in both presets.

Same seed per row, so the steel is identical and only the defect contrast
differs; masks are outlined in their class colours.

    python docs/synthetic_presets.py
"""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from steelflow import synthetic
from steelflow.report import outline, save

fig, axes = plt.subplots(8, 1, figsize=(16, 21))
panels = [(cls, preset) for cls in (1, 2, 3, 4) for preset in synthetic.PRESETS]
for ax, (cls, preset) in zip(axes, panels, strict=True):
    drawn = synthetic.draw_image(
        np.random.default_rng(100 + cls), (cls,), synthetic.PRESETS[preset]
    )
    ax.imshow(outline(drawn.image, drawn.masks, thickness=2))
    ax.set_title(f"class {cls}, preset {preset}", fontsize=11)
    ax.axis("off")
save(fig, Path(__file__).with_suffix(".png"))
