#!/usr/bin/env bash
# Offline checks of castra's Nix files, for CI machines that have Debian's
# nix-bin but no nixpkgs and no binary cache (nothing here downloads):
#
#   1. every .nix file parses (nix-instantiate --parse);
#   2. flake.lock is well formed and agrees with flake.nix's input;
#   3. nix/castra-toml.nix renders the expected castra.toml text, and the
#      real castra accepts what it renders (castra status on a temp project);
#      3b. the NixOS VM test's guest flake runs with real `nix run` (its app
#      derivation builds offline, no nixpkgs), when nix can write its store;
#   4. guest/nixos-module.nix, called with a stand-in lib: option names,
#      types, defaults, docs, type patterns and the agent's command line;
#   5. with CASTRA_NIXPKGS_LIB=<nixpkgs>/lib: the module under the real
#      lib.evalModules (type enforcement), and the flake's outputs evaluated
#      with that lib (the names of every package, app, check, module).
#
# What it cannot do offline: build anything from nixpkgs (castra, the guest
# image) or run the NixOS VM tests; `nix flake check` does those (docs/NIX.md).
#
# Environment: CASTRA_NIXPKGS_LIB (see 5); CASTRA_BIN, the castra binary for
# 3 (default: target/debug/castra, built with cargo if cargo is present);
# CASTRA_CHECK_NIX_NO_CASTRA=1 skips the castra half of 3.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nix-instantiate >/dev/null; then
    echo "check-nix: nix-instantiate not found (Debian: apt-get install nix-bin)" >&2
    exit 1
fi
# A dummy store: evaluation only, never a write to /nix.
nixi() { nix-instantiate --store dummy:// "$@"; }
eval_true() { # NAME EXPR
    local out
    if ! out=$(nixi --eval --strict -E "$2" 2>&1); then
        echo "check-nix: FAIL $1" >&2
        echo "$out" >&2
        exit 1
    fi
    if [ "$out" != "true" ]; then
        echo "check-nix: FAIL $1: evaluated to $out" >&2
        exit 1
    fi
    echo "ok   $1"
}

echo "check-nix: $(nix-instantiate --version)"

# 1. Parse every .nix file in the repository.
mapfile -t files < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' | sort)
for f in "${files[@]}"; do
    if ! nixi --parse "$f" >/dev/null 2>/tmp/check-nix-parse.$$; then
        echo "check-nix: FAIL parse $f" >&2
        cat /tmp/check-nix-parse.$$ >&2
        rm -f /tmp/check-nix-parse.$$
        exit 1
    fi
done
rm -f /tmp/check-nix-parse.$$
echo "ok   parse: ${#files[@]} files (${files[*]})"

# 2. flake.nix / flake.lock.
eval_true "flake.lock matches flake.nix" 'import ./nix/tests/flake-shape.nix { }'

# 3. castra.toml rendering.
eval_true "castra-toml renders" 'import ./nix/tests/castra-toml.nix'
if [ "${CASTRA_CHECK_NIX_NO_CASTRA:-}" != 1 ]; then
    castra_bin=${CASTRA_BIN:-target/debug/castra}
    if [ ! -x "$castra_bin" ] && [ -z "${CASTRA_BIN:-}" ] && command -v cargo >/dev/null; then
        cargo build --quiet --bin castra
        castra_bin=${CARGO_TARGET_DIR:-target}/debug/castra
    fi
    if [ -x "$castra_bin" ]; then
        castra_bin=$(realpath "$castra_bin")
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        # The project the NixOS VM test uses (with its story-4 bootstrap), with
        # stand-in store paths.
        nixi --eval --strict --json -E '
          import ./nix/castra-toml.nix {
            project.name = "nixtest";
            vms = [ { name = "web"; machine = "q35"; memory = "1536M";
                      image = { kernel = "/nix/store/x-castra-guest-image/kernel";
                                initrd = "/nix/store/x-castra-guest-image/initrd";
                                cmdline = "init=/nix/store/y-nixos-system/init console=ttyS0 panic=-1"; };
                      bootstrap = { flake = "path:/etc/castra-flake"; env.GREETING = "hello from the host"; timeout = "5m"; }; }
                    { name = "db"; count = 2; forwards = [ "127.0.0.1:5432:5432" "udp:5353:53" ]; } ];
            broker = { port = 7750; allow_tokenless_handshake = false; };
            lifecycle = { powerdown_wait = "20s"; sigterm_wait = "5s"; };
          }' | python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin))' >"$tmp/castra.toml"
        # `castra status` loads and validates the whole file (every key, type and
        # cross-check) and launches nothing; `plan` would also preflight the launch
        # inputs, and the stand-in store paths do not exist on this host.
        set +e
        status=$(cd "$tmp" && "$castra_bin" status --json 2>&1)
        code=$?
        set -e
        if [ "$code" != 0 ] || ! printf '%s' "$status" | grep -q '"project": *"nixtest"'; then
            echo "check-nix: FAIL castra status on the rendered castra.toml exited $code:" >&2
            echo "$status" >&2
            cat "$tmp/castra.toml" >&2
            exit 1
        fi
        vms=$(printf '%s' "$status" | python3 -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin)["vms"]))')
        echo "ok   castra accepts the rendered castra.toml (vms: $vms)"
    else
        echo "skip castra status on rendered castra.toml (no castra binary, no cargo)"
    fi
fi

# 3b. The NixOS VM test's guest flake, with real `nix run` (Debian's nix):
#     its app derivation builds from the flake alone, offline. The script is
#     swapped for one that needs no broker.
if command -v nix >/dev/null && { [ -w /nix/store ] || [ "$(id -u)" = 0 ]; }; then
    flake_tmp=$(mktemp -d)
    cp nixos-tests/guest-flake/flake.nix "$flake_tmp/"
    printf '#!/bin/sh\necho "guest flake ran: $GREETING"\n' > "$flake_tmp/app.sh"
    chmod +x "$flake_tmp/app.sh"
    nixf=(nix --extra-experimental-features "nix-command flakes" --option sandbox false
        --option substituters "" --option flake-registry "")
    # Inside a chroot (no mount at "/" in our view of the mount table), Nix 2.8's
    # `nix run` re-enters its mount namespace before exec and so looks for the
    # app in the host's /nix/store, not the chroot's. There the same derivation
    # is built with `nix build` and its app run directly; on a machine (or
    # scripts/fresh-root.sh, which uses pivot_root) it is the real `nix run`.
    if awk '$5 == "/" {found = 1} END {exit !found}' /proc/self/mountinfo; then
        how="nix run"
        out=$(GREETING=offline "${nixf[@]}" run "path:$flake_tmp" 2>&1) ||
            { echo "check-nix: FAIL nix run of the guest flake:" >&2; echo "$out" >&2; exit 1; }
    else
        how="its app built and run by hand (in a chroot, where Nix 2.8's nix run cannot exec)"
        # The app's program, and the derivation its string context names.
        program="(builtins.getFlake \"path:$flake_tmp\").apps.x86_64-linux.default.program"
        out=$(prog=$("${nixf[@]}" eval --impure --raw --expr "$program") &&
            drv=$("${nixf[@]}" eval --impure --raw --expr \
                "builtins.head (builtins.attrNames (builtins.getContext $program))") &&
            nix-store --option sandbox false --option substituters "" --realise "$drv" >/dev/null &&
            GREETING=offline "$prog" 2>&1) ||
            { echo "check-nix: FAIL building or running the guest flake's app:" >&2; echo "$out" >&2; exit 1; }
    fi
    rm -rf "$flake_tmp"
    case "$out" in
        *"guest flake ran: offline"*) echo "ok   nixos-tests/guest-flake runs with $how ($(nix --version))" ;;
        *) echo "check-nix: FAIL guest flake printed: $out" >&2; exit 1 ;;
    esac
else
    echo "skip nix run of the guest flake (no nix, or the store is not writable)"
fi

# 4. The NixOS module, stand-in lib.
eval_true "nixos module (stand-in lib)" 'import ./nix/tests/module-stub.nix'

# 5. With a real nixpkgs lib.
if [ -n "${CASTRA_NIXPKGS_LIB:-}" ]; then
    lib="import $(realpath "$CASTRA_NIXPKGS_LIB")"
    echo "     nixpkgs lib $(nixi --eval -E "($lib).version")"
    eval_true "nixos module (real lib.evalModules)" "import ./nix/tests/module-lib.nix { lib = $lib; }"
    eval_true "flake outputs (real lib)" "import ./nix/tests/flake-shape.nix { lib = $lib; }"
else
    echo "skip real-lib checks (set CASTRA_NIXPKGS_LIB=<nixpkgs checkout>/lib)"
fi
echo "check-nix: all passed"
