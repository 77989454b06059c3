#!/usr/bin/env bash
# Fuzzes Kitsune's parsers with cargo-fuzz (libFuzzer), on the stable toolchain.
#
#   scripts/fuzz.sh --quick [TARGET...]   each target briefly (CI): FUZZ_QUICK_SECONDS, 25 s
#   scripts/fuzz.sh [TARGET...]           the long runs: FUZZ_RUNS executions each, 10,000,000
#   scripts/fuzz.sh --list                the targets
#
# Targets (fuzz/fuzz_targets/, described in docs/FUZZING.md): bitswap_frame, key_parse,
# refs_query, watch_line. Each run starts from seeds made from the repository's real test
# inputs (proxy/testdata, common/testdata and the parsers' unit-test vectors) plus the
# corpus earlier runs left in fuzz/corpus/ (not committed). A failing input is written to
# fuzz/artifacts/TARGET/ and the script exits non-zero. Logs: fuzz/target/logs/ (or
# FUZZ_LOG_DIR); the last lines of each give the execution count and rate.
#
# Environment: FUZZ_SANITIZER=none|address (default none: the code under test has no
# `unsafe` of its own, and without ASan it runs several times faster), FUZZ_RUNS,
# FUZZ_QUICK_SECONDS, FUZZ_LOG_DIR, FUZZ_JOBS_NICE (a `nice` level for the runs),
# FUZZ_FORK=N (libFuzzer's fork mode: N worker processes share the run and its corpus,
# one per core; the execution budget counts all of them).
set -euo pipefail

# cargo-fuzz is pinned: its flags and its libFuzzer driver are what the figures in
# docs/FUZZING.md were measured with.
CARGO_FUZZ_VERSION=0.13.1
TARGETS=(bitswap_frame key_parse refs_query watch_line)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$root/fuzz"

quick=false
selected=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=true ;;
        --list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "unknown option $arg" >&2; exit 2 ;;
        *) selected+=("$arg") ;;
    esac
done
[ ${#selected[@]} -gt 0 ] || selected=("${TARGETS[@]}")
for t in "${selected[@]}"; do
    [[ " ${TARGETS[*]} " == *" $t "* ]] || { echo "unknown target $t" >&2; exit 2; }
done

sanitizer="${FUZZ_SANITIZER:-none}"
runs="${FUZZ_RUNS:-10000000}"
quick_seconds="${FUZZ_QUICK_SECONDS:-25}"
logs="${FUZZ_LOG_DIR:-$fuzz/target/logs}"
nice_level="${FUZZ_JOBS_NICE:-0}"
fork="${FUZZ_FORK:-0}"

if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# Only the stable toolchain is assumed. With `-s none` cargo-fuzz passes no -Z flag;
# ASan (`-s address`) needs -Zsanitizer on a stable rustc, which RUSTC_BOOTSTRAP allows.
# It is set either way, so switching sanitizers does not also change the build's
# environment.
export RUSTC_BOOTSTRAP=1
# The fuzz crate is its own workspace; never build it into a shared target dir.
unset CARGO_TARGET_DIR
build_flags=(-s "$sanitizer" -O --debug-assertions)

# Seeds: real inputs, regenerated every run (cheap) into fuzz/target/seeds/.
seeds="$fuzz/target/seeds"
rm -rf "$seeds"
mkdir -p "$seeds"/{bitswap_frame,key_parse,refs_query,watch_line}
# A stream holding one frame: the varint length (all seeds are under 128 bytes) then it.
frame() { printf "\\x$(printf '%02x' "$(wc -c <"$1")")"; cat "$1"; }
td="$root/proxy/testdata"
frame "$td/kubo-wantlist.bin" >"$seeds/bitswap_frame/kubo-wantlist"
frame "$td/kubo-dont-have.bin" >"$seeds/bitswap_frame/kubo-dont-have"
cat "$seeds/bitswap_frame/kubo-wantlist" "$seeds/bitswap_frame/kubo-dont-have" \
    >"$seeds/bitswap_frame/two-frames"
# Blocks: a 1.1.0+ payload (prefix CIDv1 raw sha2-256, data "hello") and a 1.0.0 block.
printf '\x0f\x1a\x0d\x0a\x04\x01\x55\x12\x20\x12\x05hello' >"$seeds/bitswap_frame/payload-block"
printf '\x07\x12\x05hello' >"$seeds/bitswap_frame/v0-block"
cd="$root/common/testdata"
cp "$cd/kubo-rsa.b64" "$seeds/key_parse/kubo-rsa.b64"
base64 -d <"$cd/kubo-rsa.b64" >"$seeds/key_parse/kubo-rsa.raw"
printf '{"Identity":{"PeerID":"%s","PrivKey":"%s"}}' "$(tr -d '\n' <"$cd/kubo-rsa.peerid")" \
    "$(tr -d '\n' <"$cd/kubo-rsa.b64")" >"$seeds/key_parse/kubo-config.json"
# An Ed25519 PrivateKey protobuf (type 1, 64 bytes of key then public key) is built by
# the fuzzer from the RSA seeds' structure; give it the shape too.
printf '\x08\x01\x12\x40' >"$seeds/key_parse/ed25519-prefix"
head -c 64 /dev/zero >>"$seeds/key_parse/ed25519-prefix"
v0=QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn
v1=bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy
printf 'r=true&arg=%s' "$v0" >"$seeds/refs_query/js-ipfs"
printf 'arg=/ipfs/%s/a/b&arg=%s&unique&max-depth=3&recursive=1' "$v0" "$v1" \
    >"$seeds/refs_query/two-args"
printf 'arg=%s&r=maybe&max-depth=x' "$v1" >"$seeds/refs_query/bad-flags"
# watch_line: the first byte is the chunk size, the rest the NDJSON stream.
{
    printf '\x07'
    printf '%s\n' '{"type":"snapshot","version":7,"backends":[{"address":"10.0.0.5","rpc_port":5001,"swarm_port":4001,"pod_name":"kubo-0"}]}'
    printf '%s\n' '{"type":"heartbeat","version":7}'
    printf '%s\n' '{"type":"snapshot","version":8,"backends":[{"address":"kubo-1.kubo.ns.svc","rpc_port":5001,"zone":"a"},{"address":"fd00::1","rpc_port":5001}]}'
} >"$seeds/watch_line/stream"

max_len() {
    case "$1" in
        bitswap_frame) echo 65536 ;;
        key_parse) echo 8192 ;;
        refs_query) echo 4096 ;;
        watch_line) echo 16384 ;;
    esac
}

cd "$fuzz"
echo "== building ${selected[*]} (sanitizer: $sanitizer)"
for t in "${selected[@]}"; do
    nice -n "$nice_level" cargo fuzz build "${build_flags[@]}" "$t"
done

mkdir -p "$logs"
failed=()
for t in "${selected[@]}"; do
    mkdir -p "corpus/$t"
    if $quick; then
        budget=(-max_total_time="$quick_seconds")
    else
        budget=(-runs="$runs")
    fi
    log="$logs/$t.log"
    echo "== $t: ${budget[*]} (log: $log)"
    mode=()
    [ "$fork" -gt 0 ] && mode=(-fork="$fork")
    # -len_control=0: inputs up to -max_len from the first execution. By default libFuzzer
    # raises its length limit slowly, and in fork mode every short job starts it again, so
    # a 10 M fork-mode run of bitswap_frame never tried an input over 873 bytes.
    if nice -n "$nice_level" cargo fuzz run "${build_flags[@]}" "$t" "corpus/$t" "$seeds/$t" -- \
        "${budget[@]}" "${mode[@]}" -max_len="$(max_len "$t")" -len_control=0 -timeout=20 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        if [ "$fork" -gt 0 ]; then
            # Fork mode's status lines: "#RUNS: cov: E ... exec/s: R ... time: Ss job: J"; R
            # is the last job's rate, so the average is RUNS / S.
            last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1)
            execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
            secs=$(grep -o 'time: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
            rate=$((execs / (secs > 0 ? secs : 1)))
        else
            execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
            rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
        fi
        echo "   ok: ${execs:-?} executions, ${rate:-?} exec/s"
    else
        echo "   FAILED: see $log and fuzz/artifacts/$t/" >&2
        grep -m5 -E 'panicked|ERROR|Test unit written' "$log" >&2 || true
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "all ${#selected[@]} targets passed"
