# Sourced by the binary's test scripts: the binary, the source tree, the demo model, a python3 and a temporary
# directory removed on exit ($tmp), and fail/pass counting into $fails.
set -u
bin=${PS_BIN:?PS_BIN must point at the patchsweep binary}
src=${PS_SRC:?}
demo=${PS_DEMO:-$src/models/demo}
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
command -v "$py" >/dev/null || { echo "FAIL: python3 is needed to write the test inputs"; exit 1; }
[ -f "$demo/model.safetensors" ] || { echo "FAIL: demo model missing at $demo"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }
# The dataset items "a a+1 a+2 a+3" -> " a+4" (corrupted: last token repeated) for a = 1..N, then one "A B C D" item:
# a JSON list's body for a config's "dataset".
count_items() {
    local a out=""
    for a in $(seq 1 "$1"); do
        out="$out{\"clean\": \"$a $((a + 1)) $((a + 2)) $((a + 3))\", \"corrupted\": \"$a $((a + 1)) $((a + 2)) $((a + 2))\", \"answer\": \" $((a + 4))\", \"wrong\": \" $((a + 3))\"},"
    done
    printf '%s {"clean": "A B C D", "corrupted": "A B C C", "answer": " E", "wrong": " D"}' "$out"
}
