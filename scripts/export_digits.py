"""Export scikit-learn's 8x8 handwritten digits (1,797 real scans, UCI) as an image folder:
OUT/<digit>/<index>.png, 8-bit grayscale (0..16 scaled to 0..255), for the fine-tuning example.

    pip install scikit-learn pillow && python3 scripts/export_digits.py data/digits
"""
import os
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

out = sys.argv[1] if len(sys.argv) > 1 else "data/digits"
digits = load_digits()
for i, (img, label) in enumerate(zip(digits.images, digits.target)):
    d = os.path.join(out, str(label))
    os.makedirs(d, exist_ok=True)
    Image.fromarray((img * (255.0 / 16.0)).round().astype(np.uint8), mode="L").save(
        os.path.join(d, f"{i:04d}.png")
    )
print(f"wrote {len(digits.images)} images of {len(digits.target_names)} classes to {out}")
