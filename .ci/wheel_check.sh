#!/usr/bin/env bash
# The wheel as a user installs it: built, installed non-editable into a fresh virtual environment (the
# pinned libraries come from the project's own venv through system site-packages, so nothing is downloaded
# twice), one top-level import name, and the registry commands answer from it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Built from a copy of the files git tracks (or would), so setuptools' build/ stays out of the checkout and a
# file missing from the repository is missing from the wheel too.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src"
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation "$work/src" -w "$work/dist" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; exit 1; }
wheel=$(ls "$work"/dist/*.whl)
tops=$(.venv/bin/python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
print(" ".join(sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))})))
PY
)
if [ "$tops" != "llama_mobile" ]; then
  echo "wheel check: the wheel installs top-level names '$tops'; only llama_mobile belongs in site-packages" >&2
  exit 1
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python=$(.venv/bin/python -c 'import sys; print(sys.executable)')
"$python" -m venv "$work/venv"
echo "$site" > "$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/project-libraries.pth"
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"
cd "$work"  # away from the checkout: the commands must run from the installed wheel alone
where=$("$work/venv/bin/python" -c 'import llama_mobile.quantize.recipe as r; print(r.__file__)')
case "$where" in "$work/venv/"*) ;; *) echo "wheel check: llama_mobile imported from $where, not the wheel" >&2; exit 1 ;; esac
"$work/venv/bin/llama-mobile" --help >/dev/null
"$work/venv/bin/llama-mobile" recipes >/dev/null
"$work/venv/bin/llama-mobile" models >/dev/null
"$work/venv/bin/llama-mobile" targets >/dev/null
echo "wheel check: one import name (llama_mobile); --help, recipes, models and targets answer from the installed wheel"
