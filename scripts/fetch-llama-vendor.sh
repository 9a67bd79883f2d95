#!/usr/bin/env bash
# Unpacks, from the llama-cpp-python 0.3.36 sdist on PyPI, the reference data the tokenizer tests
# read: llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf with their .inp and .out)
# and its collection of real chat templates (models/templates/*.jinja); and, for the tokenizer
# benchmark, real text (its docs and two of its sources). Nothing of it is committed. Running
# it again when the files are there does nothing.
#
#   scripts/fetch-llama-vendor.sh        # into target/llama-vendor/{models,templates,corpus}
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/target/llama-vendor
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
stamp=$dest/.complete-2
python=${PYTHON:-python3}

if [ -f "$stamp" ]; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sdist=${LLAMA_SDIST:-}
if [ -z "$sdist" ]; then
    echo "downloading the llama-cpp-python 0.3.36 sdist (77 MB) from PyPI..." >&2
    sdist=$work/llama_cpp_python-0.3.36.tar.gz
    # The simple index names the file; pip itself would try to build it.
    "$python" - "$sdist" <<'PY'
import re, shutil, sys, urllib.request
index = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/", timeout=60).read().decode()
(url,) = set(re.findall(r'href="([^"#]*/llama_cpp_python-0\.3\.36\.tar\.gz)', index))
with urllib.request.urlopen(url, timeout=600) as src, open(sys.argv[1], "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
fi
if ! echo "$sha256  $sdist" | sha256sum --check --status; then
    echo "error: $sdist does not match sha256 $sha256" >&2
    exit 1
fi
rm -rf "$dest"
mkdir -p "$dest/models" "$dest/templates" "$dest/corpus"
src=llama_cpp_python-0.3.36/vendor/llama.cpp
tar -xzf "$sdist" -C "$work" --wildcards "$src/models/ggml-vocab-*" "$src/models/templates/*" \
    "$src/docs/*.md" "$src/src/llama-vocab.cpp" "$src/src/llama-model.cpp"
cp "$work/$src"/models/ggml-vocab-* "$dest/models/"
cp "$work/$src"/models/templates/* "$dest/templates/"
find "$work/$src/docs" -name '*.md' | sort | xargs cat > "$dest/corpus/docs.md"
cp "$work/$src/src/llama-vocab.cpp" "$work/$src/src/llama-model.cpp" "$dest/corpus/"
touch "$stamp"
echo "$dest: $(ls "$dest/models" | wc -l) vocabulary files, $(ls "$dest/templates" | wc -l) templates" >&2
