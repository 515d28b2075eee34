#!/usr/bin/env bash
# Real colour images that work offline: the 3,786 Twemoji of the npm package emoji-datasource-twitter,
# 64x64 RGBA PNGs, laid out by category as DIR/<category>/<image>.png for data.name=folder
# data.labels=subfolders. Twemoji graphics: Copyright Twitter, Inc and other contributors, CC-BY 4.0
# (https://creativecommons.org/licenses/by/4.0/); the package itself is MIT (Cal Henderson).
#
#   bash scripts/get_twemoji.sh [DIR]        # default data/twemoji64; `make data-twemoji` runs this
#
# Each image goes into its emoji's category (emoji.json's `category`, skin-tone variants with their
# emoji), folder names lower-case with '-' for anything else: 9 categories, 3,781 images. The 5
# "Component" images (skin-tone swatches, hair styles) are left out. Needs npm and network access
# to the npm registry once; rerunning with a complete DIR does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-data/twemoji64}
PKG=emoji-datasource-twitter
if [ -f "$DIR/.complete" ]; then
  echo "get_twemoji.sh: $DIR is already complete ($(cat "$DIR/.complete") images)"
  exit 0
fi
command -v npm >/dev/null || { echo "get_twemoji.sh: needs npm (apt-get install npm)" >&2; exit 2; }
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "+ npm pack $PKG (about 62 MB)"
(cd "$TMP" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$TMP"/$PKG-*.tgz -C "$TMP" package/emoji.json package/img/twitter/64
rm -rf "$DIR"
"$PY" - "$TMP/package" "$DIR" <<'PYEOF'
import json
import re
import shutil
import sys
from pathlib import Path

pkg, out = Path(sys.argv[1]), Path(sys.argv[2])
n = 0
for emoji in json.loads((pkg / "emoji.json").read_text()):
    if emoji["category"] == "Component":
        continue
    folder = out / re.sub(r"[^a-z0-9]+", "-", emoji["category"].lower()).strip("-")
    folder.mkdir(parents=True, exist_ok=True)
    for image in [emoji["image"], *(v["image"] for v in emoji.get("skin_variations", {}).values())]:
        src = pkg / "img" / "twitter" / "64" / image
        if src.is_file():
            shutil.copyfile(src, folder / image)
            n += 1
(out / ".complete").write_text(f"{n}\n")
print(f"wrote {n} images in {len(list(out.iterdir())) - 1} category folders under {out}")
PYEOF
