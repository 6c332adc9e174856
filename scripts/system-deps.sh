#!/usr/bin/env bash
# Debian packages the renderer needs: Pango for WeasyPrint, HarfBuzz's subsetter (without it
# WeasyPrint falls back to fontTools, ~5x slower per invoice) and a font with wide coverage;
# Chromium for the email layout test (Playwright drives /usr/bin/chromium, never its own download);
# Prometheus and promtool for the scrape test, the dashboards' query check and the alert rule tests;
# poppler-utils (pdftoppm, pdftotext) for the engines' look test and its committed pictures.
set -euo pipefail
# The manifest tests render the overlays with `kubectl kustomize` (kustomize v5 syntax). This machine
# image ships kubectl 1.32; Debian's own `kubernetes-client` (1.20, kustomize v2) cannot render them.
command -v kubectl >/dev/null || echo "warning: no kubectl on PATH; tests/unit/test_k8s_manifests.py will fail" >&2
packages=(libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core chromium prometheus poppler-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
