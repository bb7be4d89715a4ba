#!/usr/bin/env bash
# A third photo pool, disjoint from both the training photos and the held-out benchmark photos:
# the photographs (not the illustrations) among the Debian wallpaper packages
# plasma-workspace-wallpapers and mate-backgrounds, and scikit-learn's two sample photos; since
# image stage 10 (the fourth pool) also three photographs in gradio's wheel (gradio_*: a running
# cheetah on a motion-blurred background, a tower at dusk, a cheetah cub on white).
# Used only to choose between checkpoints (scripts/selection.py --photos), never for training
# and never in the README's held-out tables. Needs apt and pip package downloads, nothing else.
#
#   bash scripts/selection_photos.sh data/photos_select
set -euo pipefail
out=${1:-data/photos_select}
py=${PYTHON:-python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
(cd "$tmp" && apt-get download plasma-workspace-wallpapers mate-backgrounds >/dev/null 2>&1)
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/x"; done
"$py" -m pip download scikit-learn --no-deps --only-binary=:all: -d "$tmp/whl" -q
"$py" -m pip download gradio --no-deps --only-binary=:all: -d "$tmp/gradio" -q
"$py" - "$tmp" "$out" <<'EOF'
import glob, os, sys, zipfile, io
from pathlib import Path
from PIL import Image

tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
plasma = ["BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
          "Grey", "Kite", "OneStandsOut", "Path", "Volna", "summer_1am"]
mate = ["Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "Storm",
        "TwoWings", "Wood", "YellowFlower"]
images = {}
for name in plasma:
    files = glob.glob(str(tmp / f"x/usr/share/wallpapers/{name}/contents/images/*"))
    images[f"plasma_{name}"] = Image.open(max(files, key=os.path.getsize))
for name in mate:
    images[f"mate_{name}"] = Image.open(tmp / f"x/usr/share/backgrounds/mate/nature/{name}.jpg")
wheel = zipfile.ZipFile(next(iter(glob.glob(str(tmp / "gradio/*.whl")))))
for name, member in (("cheetah", "media_assets/images/cheetah.jpg"),
                     ("tower", "media_assets/images/tower.jpg"),
                     ("cheetah2", "test_data/cheetah2.jpg")):
    images[f"gradio_{name}"] = Image.open(io.BytesIO(wheel.read(f"gradio/{member}")))
wheel = zipfile.ZipFile(next(iter(glob.glob(str(tmp / "whl/*.whl")))))
for name in ("china", "flower"):
    images[f"sklearn_{name}"] = Image.open(io.BytesIO(wheel.read(f"sklearn/datasets/images/{name}.jpg")))
for name, im in images.items():
    im = im.convert("RGB")
    im.thumbnail((1024, 1024), Image.LANCZOS)
    im.save(out / f"{name}.png")
print(f"{len(images)} photos in {out}")
EOF
