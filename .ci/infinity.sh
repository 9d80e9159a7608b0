#!/usr/bin/env bash
# Set up Infinity (infinity-emb), the real serving engine the remote-backend tests talk to, in a venv
# of its own: it pins old transformers, sentence-transformers and numpy that would break ours.
#
# Usage: .ci/infinity.sh [VENV_DIR]     (default: .venv-infinity at the repository root)
# Prints the line to run next, e.g.  export BGE_INFINITY_VENV=/path/.venv-infinity
# Idempotent: a venv whose `infinity_emb` already starts is kept as is.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-.venv-infinity}"
mkdir -p "$(dirname "$venv")"
venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"
export PIP_DISABLE_PIP_VERSION_CHECK=1 DO_NOT_TRACK=1 INFINITY_ANONYMOUS_USAGE_STATS=0 HF_HUB_OFFLINE=1

# pip --quiet still warns about unusable --find-links/index locations of the machine's pip config.
pip_install() {
    "$venv/bin/python" -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}

works() {
    [ -x "$venv/bin/infinity_emb" ] && timeout 120 "$venv/bin/infinity_emb" v2 --help >/dev/null 2>&1
}

if works; then
    echo "infinity.sh: $venv already works; kept" >&2
else
    if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv")" ]; then
        echo "infinity.sh: $venv exists and is not a venv; refusing to replace it" >&2
        exit 1
    fi
    echo "infinity.sh: installing infinity-emb into $venv (about 2 minutes)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    # The CPU build of torch first: infinity-emb's bare `torch` requirement would pull CUDA wheels.
    pip_install "torch==2.13.0"
    pip_install "infinity-emb[server,torch]==0.0.78"  # the version these tests were checked against
    works || { echo "infinity.sh: infinity_emb does not start from $venv" >&2; exit 1; }
fi
echo "export BGE_INFINITY_VENV=$venv"
