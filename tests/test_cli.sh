#!/bin/sh
# weightctl's offline verbs end to end, on generated models and the reference corpus:
# scan/ls/info/validate/meta, their exit codes and JSON, --help on every verb, and user
# metadata surviving a rescan and a new process. Then with a daemon running: the catalog
# verbs (ls, info, meta, scan, history, bench) show the daemon's catalog, not the state
# directory's, and say which they read; MODEL is a name or a path in every verb (load,
# tensor-data, state, pin, unload, info, meta, bench); the deprecated verb cat still works and
# says so (docs/names.md); as another user, a daemon catalog that user cannot open
# is a clear error.
set -u
W="$WD_BUILD/weightctl"
T=$(mktemp -d)
DP='' U=''
D=''
trap '[ -n "$DP" ] && kill $DP 2>/dev/null; [ -n "$U" ] && userdel "$U" 2>/dev/null; rm -rf "$T" $D' EXIT
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

# ---- with a daemon: its catalog, and MODEL as a name or a path ----
# Not under $TMPDIR (the runner's, private to its user): the unprivileged check below must
# reach the socket. The daemon's state dir is 0700.
D=$(mktemp -d /tmp/wdcli.XXXXXX)
chmod 0755 "$D"
check "gen demo (daemon)" 0 $W gen --preset demo "$D/m"
"$WD_BUILD/weightd" --foreground --socket "$D/sock" --state-dir "$D/state" --models "$D/m" \
	--allow-user 0 --allow-user "$(id -u)" ${WD_CLI_ALLOW:-} 2>"$D/log" &
DP=$!
i=0
until $W status --socket "$D/sock" --json 2>/dev/null | grep -q '"models":3'; do
	i=$((i + 1))
	[ $i -lt 200 ] || { tail "$D/log"; fail "the daemon did not publish the demo models"; }
	sleep 0.05
done
export WEIGHTD_SOCKET="$D/sock"
# No --state-dir: the default state directory's catalog is empty, the daemon's has three.
check "ls (daemon)" 0 $W ls
[ "$(grep -c ' valid' "$T/out")" -eq 3 ] || { cat "$T/out"; fail "ls does not show the daemon's three models"; }
grep -q "^catalog: $D/state/catalog.db (the daemon's, pid $DP, at $D/sock)" "$T/err" ||
	{ cat "$T/err"; fail "ls does not say it read the daemon's catalog"; }
check "ls --json (daemon)" 0 $W ls --json
python3 - "$T/out" "$D/state/catalog.db" <<'PY' || fail "ls --json (daemon)"
import json, sys
j = json.load(open(sys.argv[1]))
assert sorted(m["name"] for m in j["models"]) == ["llama-tiny", "sd-tiny", "vae-tiny"], j
assert j["catalog"]["source"] == "daemon" and j["catalog"]["path"] == sys.argv[2], j["catalog"]
PY
check "info (daemon)" 0 $W info llama-tiny
has "model      llama-tiny"
check "info by path (daemon)" 0 $W info --json "$D/m/sd-tiny/unet/diffusion_pytorch_model.safetensors"
python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))
assert j["name"] == "sd-tiny" and j["catalog"]["source"] == "daemon", j' "$T/out" || fail "info --json by path"
check "meta set by path (daemon)" 0 $W meta set "$D/m/vae-tiny.safetensors" note by-path
check "meta get (daemon)" 0 $W meta get vae-tiny note
has "^by-path$"
check "history (daemon)" 0 $W history --json
grep -q '"source": "daemon"' "$T/out" || { cat "$T/out"; fail "history --json source"; }
check "scan (daemon)" 0 $W scan "$D/m"
has "scanned  $D/m: 3 models, published by the daemon"
check "scan --json (daemon)" 0 $W scan --json
python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))
assert j["roots"] == [{"dir": None, "models": 3}] and j["invalid"] == [], j
assert j["catalog"]["source"] == "daemon", j' "$T/out" || fail "scan --json (daemon)"
# bench finds the model in the daemon's catalog (no WEIGHTD_STATE_DIR needed).
check "bench (daemon catalog)" 0 $W bench --no-record --json vae-tiny
# MODEL as a path in the daemon verbs: absolute, relative, a member file of a model.
check "load by path" 0 $W load "$D/m/vae-tiny.safetensors"
check "tensor-data by name" 0 $W tensor-data vae-tiny encoder.conv_in.weight
cp "$T/out" "$T/by-name"
[ -s "$T/by-name" ] || fail "tensor-data by name printed nothing"
[ -s "$T/err" ] && { cat "$T/err"; fail "tensor-data wrote to stderr"; }
check "tensor-data by path" 0 $W tensor-data "$D/m/vae-tiny.safetensors" encoder.conv_in.weight
cmp -s "$T/out" "$T/by-name" || fail "tensor-data by path differs from by name"
(cd "$D/m" && check "tensor-data by relative path" 0 $W tensor-data ./vae-tiny.safetensors encoder.conv_in.weight) || exit 1
cmp -s "$T/out" "$T/by-name" || fail "tensor-data by relative path differs from by name"
# cat, its deprecated name: the same bytes, and a note on stderr.
check "cat (deprecated)" 0 $W cat vae-tiny encoder.conv_in.weight
cmp -s "$T/out" "$T/by-name" || fail "cat differs from tensor-data"
grep -q "'cat' is deprecated, use 'tensor-data'" "$T/err" || { cat "$T/err"; fail "cat: no deprecation note"; }
# state: one target's state on a tier (status is the daemon's).
check "state by path" 0 $W state "$D/m/vae-tiny.safetensors"
has "vae-tiny.safetensors on host: resident"
check "state --json" 0 $W state --json --tier host vae-tiny
python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))
assert j["verb"] == "state" and j["state"] == "resident" and j["tier"] == "host", j
assert j["done"] == j["total"] > 0, j' "$T/out" || fail "state --json"
check "state of a component" 0 $W state --component unet sd-tiny
has "sd-tiny/unet on host: "
check "state of an unknown model" 1 $W state no-such-model
check "state without MODEL" 2 $W state
check "pin by path" 0 $W pin "$D/m/vae-tiny.safetensors"
check "load a member file" 0 $W load --component unet "$D/m/sd-tiny/unet/diffusion_pytorch_model.safetensors"
check "unload by path" 0 $W unload "$D/m/vae-tiny.safetensors"
check "unload by directory" 0 $W unload "$D/m/sd-tiny"
check "tensor-data of an unknown path" 1 $W tensor-data "$D/m/none.safetensors" x
grep -q "not in the registry" "$T/err" || { cat "$T/err"; fail "tensor-data of an unknown path: unclear"; }
# Another user, allowed to attach (group root reaches the 0660 socket) but not to open the
# daemon's catalog (its state dir is 0700): a clear error, not that user's own catalog.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && command -v useradd >/dev/null; then
	U="wdcli$$"
	useradd --system --no-create-home --shell /usr/sbin/nologin "$U" || fail "useradd $U"
	kill $DP && wait $DP 2>/dev/null
	"$WD_BUILD/weightd" --foreground --socket "$D/sock" --state-dir "$D/state" --models "$D/m" \
		--allow-user 0 --allow-user "$U" 2>>"$D/log" &
	DP=$!
	i=0
	until $W status --json 2>/dev/null | grep -q '"models":3'; do
		i=$((i + 1))
		[ $i -lt 200 ] || { tail "$D/log"; fail "the daemon did not restart"; }
		sleep 0.05
	done
	check "ls as a user who cannot open the daemon's catalog" 1 \
		env HOME="$D" setpriv --reuid="$U" --regid=0 --clear-groups $W ls
	grep -q "keeps its catalog in $D/state/catalog.db, which this user cannot open" "$T/err" ||
		{ cat "$T/err"; fail "no clear message for an unreadable daemon catalog"; }
fi
# A daemon started with a relative --state-dir (as `make run` does) names it absolutely.
kill $DP && wait $DP 2>/dev/null
(cd "$D" && exec "$WD_BUILD/weightd" --foreground --socket "$D/sock" --state-dir rel-state \
	--models m --allow-user 0 --allow-user "$(id -u)" 2>>"$D/log") &
DP=$!
i=0
until $W status --json 2>/dev/null | grep -q '"models":3'; do
	i=$((i + 1))
	[ $i -lt 200 ] || { tail "$D/log"; fail "the daemon (relative state dir) did not start"; }
	sleep 0.05
done
(cd / && check "ls (daemon with a relative state dir)" 0 $W ls) || exit 1
[ "$(grep -c ' valid' "$T/out")" -eq 3 ] || { cat "$T/out" "$T/err"; fail "ls via a relative state dir"; }
grep -q "^catalog: $D/rel-state/catalog.db (the daemon's" "$T/err" || { cat "$T/err"; fail "relative state dir not made absolute"; }
# No daemon: the state directory's catalog, and it says so.
kill $DP && wait $DP 2>/dev/null
DP=''
check "ls (no daemon)" 0 $W ls --json
python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))
assert j["models"] == [] and j["catalog"]["source"] == "state_dir", j' "$T/out" || fail "ls with no daemon"
check "ls text (no daemon)" 0 $W ls
grep -q "^catalog: .*(the state directory: no daemon answers at $D/sock)" "$T/err" ||
	{ cat "$T/err"; fail "ls does not say it read the state directory"; }
echo "$n checks passed"
