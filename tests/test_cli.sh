#!/bin/sh
# weightctl's offline verbs end to end, on generated models and the reference corpus:
# scan/ls/info/validate/meta, their exit codes and JSON, --help on every verb, and user
# metadata surviving a rescan and a new process.
set -u
W="$WD_BUILD/weightctl"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
S="--state-dir $T/state"
n=0
fail() { echo "FAIL: $*"; exit 1; }
check() { # check DESCRIPTION EXPECTED_RC COMMAND...
	desc=$1 want=$2
	shift 2
	"$@" >"$T/out" 2>"$T/err"
	rc=$?
	n=$((n + 1))
	[ "$rc" -eq "$want" ] || { cat "$T/out" "$T/err"; fail "$desc: exit $rc, want $want"; }
}
has() { grep -q -- "$1" "$T/out" || { cat "$T/out"; fail "output lacks '$1'"; }; }

for v in scan ls info validate meta gen; do
	check "$v --help" 0 $W $v --help
	has "usage: weightctl $v"
done
check "no verb" 2 $W
check "unknown verb" 2 $W frobnicate

check "gen demo" 0 $W gen --preset demo "$T/models"
check "scan" 0 $W $S scan "$T/models"
has "3 models (0 invalid)"
check "ls --json" 0 $W $S ls --json
python3 - "$T/out" <<'PY' || fail "ls --json content"
import json, sys
models = {m["name"]: m for m in json.load(open(sys.argv[1]))["models"]}
assert models["sd-tiny"]["format"] == "diffusers" and models["sd-tiny"]["arch"] == "sd1", models
assert models["llama-tiny"]["format"] == "sharded" and models["llama-tiny"]["arch"] == "llama"
assert {c["name"] for c in models["sd-tiny"]["components"]} == {"unet", "vae", "text_encoder"}
assert all(m["valid"] and m["params"] > 0 for m in models.values())
PY
check "rescan unchanged" 0 $W $S scan --json
python3 -c "import json,sys; r=json.load(open('$T/out')); assert r['parsed']==0 and not r['wrote'], r" ||
	fail "unchanged rescan parsed or wrote"

check "info by name" 0 $W $S info llama-tiny
has "model.layers.0.self_attn.q_proj.weight"
check "info by path" 0 $W $S info "$T/models/llama-tiny"
has "llama-tiny"
check "info unknown" 1 $W $S info no-such-model

check "meta set tags" 0 $W $S meta set sd-tiny tags prod,fp16
check "meta set note" 0 $W $S meta set sd-tiny note "keep warm"
check "meta set on unknown model" 1 $W $S meta set ghost note x
check "meta bad args" 2 $W $S meta set sd-tiny note
touch "$T/models/vae-tiny.safetensors" # a change, so the rescan rewrites rows
check "rescan" 0 $W $S scan "$T/models"
check "meta get survives" 0 $W $S meta get --json sd-tiny
python3 -c "
import json; m=json.load(open('$T/out'))['meta']
assert m == {'note': 'keep warm', 'tag:fp16': '', 'tag:prod': ''}, m" || fail "metadata lost"
check "meta get tags" 0 $W $S meta get sd-tiny tags
has "fp16,prod"

# validate: the reference corpus is valid; a broken file gives exit 1 and a JSON error.
if [ -d "$WD_CORPUS" ]; then
	check "validate corpus" 0 $W validate --json "$WD_CORPUS"
	[ "$(wc -l <"$T/out")" -eq "$(ls "$WD_CORPUS"/*.safetensors | wc -l)" ] ||
		fail "validate --json: not one line per file"
	check "validate --deep corpus" 0 $W validate --deep "$WD_CORPUS"
fi
head -c 40000 "$T/models/vae-tiny.safetensors" >"$T/trunc.safetensors"
check "validate truncated" 1 $W validate --json "$T/trunc.safetensors" "$T/models/vae-tiny.safetensors"
python3 - "$T/out" <<'PY' || fail "validate --json content"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 2, rows
bad, good = rows
assert bad["valid"] is False and bad["error"]["code"] == "file_size_mismatch", bad
assert "trunc.safetensors" in bad["error"]["message"], bad
assert good["valid"] is True and "error" not in good, good
PY
check "validate usage" 2 $W validate
check "validate missing file" 1 $W validate "$T/nope.safetensors"

# A scan that meets a broken model says so and exits 1; the catalog keeps the rest.
cp "$T/trunc.safetensors" "$T/models/broken.safetensors"
check "scan with a broken file" 1 $W $S scan "$T/models"
has "invalid"
check "ls after" 0 $W $S ls
has "INVALID"
has "sd-tiny"
echo "$n checks passed"
