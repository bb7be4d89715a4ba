#!/usr/bin/env bash
# More natural photographs for training content, disjoint from the held-out benchmark photos
# (scikit-image's astronaut, chelsea, coffee, rocket, motorcycle) and from the selection pool
# (scripts/selection_photos.sh): the 14 photographs (not the illustrations) among the Debian
# packages lomiri-wallpapers-16.04 and lomiri-wallpapers-20.04. The package photos the synthetic
# data uses by default are mostly textures and scientific images (Hubble, retina, coins, brick);
# these are scenes: landscapes, a bridge over a bright beach, a bird under a lamp, a clock face,
# dogs, brushes, a fig. Pass the folder to `mofme synth allweather --source DIR`.
#
#   bash scripts/training_photos.sh data/photos_train
set -euo pipefail
out=${1:-data/photos_train}
py=${PYTHON:-python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
(cd "$tmp" && apt-get download lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 >/dev/null 2>&1)
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/x"; done
"$py" - "$tmp" "$out" <<'PY'
import sys
from pathlib import Path
from PIL import Image

tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
names = ["Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
         "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
         "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
         "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
         "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
         "Kleiber_by_Lukas_Baubkus"]
for name in names:
    im = Image.open(tmp / f"x/usr/share/backgrounds/{name}.jpg").convert("RGB")
    im.thumbnail((1024, 1024), Image.LANCZOS)
    im.save(out / f"lomiri_{name}.png")
print(f"{len(names)} photos in {out}")
PY
