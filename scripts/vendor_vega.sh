#!/usr/bin/env bash
# Re-fetch the vendored Vega builds from the npm registry and regenerate the offline plots template.
#
#   scripts/vendor_vega.sh            # pinned versions below; verifies each tarball's sha512 integrity
#   VEGA=5.33.1 VEGA_LITE=5.23.0 VEGA_EMBED=6.29.0 scripts/vendor_vega.sh   # other exact versions
#
# Needs curl (or npm), tar, openssl or python3. Talks only to registry.npmjs.org (no CDN). Writes:
#   reflectevo/resources/vega/{vega,vega-lite,vega-embed}.min.js   verbatim `build/*.min.js` of each tarball
#   reflectevo/resources/vega/LICENSE-*                           the packages' license texts
#   reflectevo/resources/vega/manifest.json                       versions, tarball URLs, integrity, sha256
#   reflectevo/resources/plots_template.html                      `dvc plots show` template, JS inlined
# When you change versions, update the pinned integrity values below (printed on a mismatch) and
# reflectevo/resources/vega/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

VEGA=${VEGA:-5.33.1}
VEGA_LITE=${VEGA_LITE:-5.23.0}
VEGA_EMBED=${VEGA_EMBED:-6.29.0}
REGISTRY=${NPM_REGISTRY:-https://registry.npmjs.org}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

# npm `dist.integrity` of the pinned versions (sha512, base64). Empty for other versions: then the
# registry's own value (npm view) is used and printed.
declare -A PINNED=(
  [vega@5.33.1]="sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw=="
  [vega-lite@5.23.0]="sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA=="
  [vega-embed@6.29.0]="sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q=="
)

DEST=reflectevo/resources/vega
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$DEST"
MANIFEST="$TMP/manifest.tsv"
: > "$MANIFEST"

sha512_b64() { openssl dgst -sha512 -binary "$1" | base64 -w0 2>/dev/null || "$PY" -c \
  'import base64,hashlib,sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1],"rb").read()).digest()).decode(), end="")' "$1"; }

fetch() {  # fetch NAME VERSION
  local name=$1 version=$2 url want got
  url="$REGISTRY/$name/-/$name-$version.tgz"
  want=${PINNED[$name@$version]:-}
  if [ -z "$want" ]; then
    want=$(npm view "$name@$version" dist.integrity --registry "$REGISTRY")
    echo "note: $name@$version is not pinned; registry integrity $want" >&2
  fi
  curl -fsSL --retry 3 -o "$TMP/$name.tgz" "$url"
  got="sha512-$(sha512_b64 "$TMP/$name.tgz")"
  if [ "$got" != "$want" ]; then
    echo "error: $url integrity mismatch: got $got, expected $want" >&2
    exit 1
  fi
  mkdir -p "$TMP/$name"
  tar xzf "$TMP/$name.tgz" -C "$TMP/$name"
  cp "$TMP/$name/package/build/$name.min.js" "$DEST/$name.min.js"
  if [ -f "$TMP/$name/package/LICENSE" ]; then
    cp "$TMP/$name/package/LICENSE" "$DEST/LICENSE-$name"
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$version" "$url" "$want" \
    "$(grep -o '"license": *"[^"]*"' "$TMP/$name/package/package.json" | head -1 | sed 's/.*: *"//; s/"$//')" >> "$MANIFEST"
  echo "$name@$version: $(wc -c < "$DEST/$name.min.js") bytes, $want"
}

fetch vega "$VEGA"
fetch vega-lite "$VEGA_LITE"
fetch vega-embed "$VEGA_EMBED"

"$PY" - "$MANIFEST" "$DEST" <<'EOF'
import hashlib, json, sys
from pathlib import Path
rows, dest = Path(sys.argv[1]).read_text().splitlines(), Path(sys.argv[2])
out = []
for line in rows:
    name, version, url, integrity, lic = line.split("\t")
    f = dest / f"{name}.min.js"
    out.append({"name": name, "version": version, "file": f.name, "license": lic, "tarball": url,
                "integrity": integrity, "tarball_path": f"package/build/{name}.min.js",
                "sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "bytes": f.stat().st_size})
(dest / "manifest.json").write_text(json.dumps({"packages": out}, indent=2) + "\n")
EOF

"$PY" -c 'from reflectevo.report import write_plots_template; print(write_plots_template())'
