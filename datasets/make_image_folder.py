"""Write a labelled image folder to train on: scikit-learn's bundled digits as PNG files.

    python datasets/make_image_folder.py                  # -> load/digits_png/ (about 4 s of CPU, no download)
    python datasets/make_image_folder.py --size 64 --out load/digits_big

It writes torchvision's layout, one folder per class, for each split of the `digits` dataset
(the same seeded split), and a folder of unlabelled images to predict on:

    load/digits_png/train/<zero|one|...|nine>/<n>.png    1,257 images
    load/digits_png/val/<class>/<n>.png                    270
    load/digits_png/test/<class>/<n>.png                   250 (the other 20 test images:)
    load/digits_png/new/<n>.png                             20 test images without their class
    load/digits_png/new_labels.csv                         their classes, to check --predict

The 8x8 digits are scaled up to `--size` pixels (grey PNGs). configs/digits-png.yaml trains on
them. This script sits beside the datasets it feeds; the registry's import of this folder only
defines the functions below, nothing runs.
"""
from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

CLASS_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
NEW_IMAGES = 20


def write_image_folder(out: Path, size: int = 32) -> dict[str, int]:
    """Write the folders described above under `out`; returns the number of images per folder."""
    from datasets.image_folder import DECODER_NOTICE  # torchvision: only when run as a script
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f'{out} exists and is not empty; remove it or choose another --out')
    with warnings.catch_warnings():   # torchvision 0.29's notice about TorchCodec, once per file otherwise
        warnings.filterwarnings('ignore', message=DECODER_NOTICE, category=DeprecationWarning)
        return _write(out, size)


def _write(out: Path, size: int) -> dict[str, int]:
    import torch  # torch: not needed by --list/--print-config
    from torch.nn import functional as F  # torch: not needed by --list/--print-config
    from torchvision.io import write_png  # torchvision: only when its models, transforms or files are used

    from datasets.digits import Digits  # scikit-learn: only when run as a script
    counts = {}
    for split in ('train', 'val', 'test'):
        data = Digits(split).tensors
        images = F.interpolate(data['image'], size=(size, size), mode='bilinear', align_corners=False)
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        labels = data['label'].tolist()
        keep = len(labels) - (NEW_IMAGES if split == 'test' else 0)
        for n, (image, label) in enumerate(zip(pixels[:keep], labels[:keep])):
            folder = out / split / CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            write_png(image, str(folder / f'{n:04d}.png'))
        counts[split] = keep
        if split == 'test':   # the rest: images to predict on, their classes kept apart
            (out / 'new').mkdir()
            with open(out / 'new_labels.csv', 'w', newline='') as f:
                writer = csv.writer(f)
                writer.writerow(['file', 'class'])
                for n, (image, label) in enumerate(zip(pixels[keep:], labels[keep:])):
                    write_png(image, str(out / 'new' / f'{n:04d}.png'))
                    writer.writerow([f'{n:04d}.png', CLASS_NAMES[label]])
            counts['new'] = len(labels) - keep
    return counts


def main() -> int:
    """Parse the command line and write the folder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='load/digits_png', help='where to write (default load/digits_png)')
    parser.add_argument('--size', type=int, default=32, help='image height and width in pixels (default 32)')
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    out = Path(args.out) if Path(args.out).is_absolute() else root / args.out
    try:
        counts = write_image_folder(out, args.size)
    except FileExistsError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {", ".join(f"{n} {k}" for k, n in counts.items())} images to {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
