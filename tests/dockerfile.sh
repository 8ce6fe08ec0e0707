#!/usr/bin/env bash
# The Dockerfile without docker (none on CI machines, and no registry to pull
# base images from): what can go wrong in it is checked against the code.
#  - every COPY of the build stage names a file the context has and
#    .dockerignore does not drop;
#  - the crate builds from exactly those files (a new include_str!, build
#    input or manifest target outside them breaks the image): the build
#    stage's context is assembled in a scratch directory and built there
#    (debug profile, sharing the CI build's target directory; the image
#    builds --release, which compiles the same files);
#  - the build stage's Rust is at least the crate's rust-version;
#  - the binary the build installs is the one the runtime stage copies and
#    runs, as a non-root numeric USER, and the default CMD is a command line
#    `kinbar` accepts.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KINBAR_BIN:-target/debug/kinbar}
# Share the build cache (the crate is built again from the copied files).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
fail() { echo "dockerfile: $*" >&2; exit 1; }

# Stages: the build stage is everything before the second FROM.
build_stage=$(awk '/^FROM /{n++} n==1' Dockerfile)
runtime_stage=$(awk '/^FROM /{n++} n==2' Dockerfile)
[ -n "$build_stage" ] && [ -n "$runtime_stage" ] || fail "expected a build and a runtime stage"

# Rust version of the build image vs Cargo.toml's rust-version.
image_rust=$(sed -n 's/^FROM rust:\([0-9][0-9.]*\).*/\1/p' <<<"$build_stage")
crate_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$image_rust" ] || fail "the build stage is not FROM rust:<version>"
[ "$(printf '%s\n%s\n' "$crate_rust" "$image_rust" | sort -V | head -n1)" = "$crate_rust" ] \
  || fail "rust:$image_rust is older than rust-version $crate_rust"

# .dockerignore patterns (top-level names; comments and blanks skipped).
mapfile -t ignored < <(grep -v '^\s*\(#\|$\)' .dockerignore)
is_ignored() {
  local path=$1 p
  for p in "${ignored[@]}"; do
    # shellcheck disable=SC2053 # glob match on purpose (docker's patterns)
    if [[ $path == $p || $path == $p/* ]]; then return 0; fi
  done
  return 1
}

# The build context as the build stage sees it.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ctx="$scratch/src"
mkdir -p "$ctx"
copies=0
while read -r _ args; do
  # shellcheck disable=SC2206 # COPY's words
  words=($args)
  dest=${words[-1]}
  unset 'words[-1]'
  for src in "${words[@]}"; do
    [ -e "$src" ] || fail "COPY $src: no such file in the repository"
    if is_ignored "$src"; then fail "COPY $src: excluded by .dockerignore"; fi
    if [ "$dest" = "./" ]; then
      cp -r "$src" "$ctx/"
    else
      mkdir -p "$ctx/$(dirname "$dest")"
      cp -r "$src" "$ctx/$dest"
    fi
    copies=$((copies + 1))
  done
done < <(grep '^COPY ' <<<"$build_stage" | grep -v -- '--from')
[ "$copies" -ge 5 ] || fail "found only $copies COPY sources"

# The final build command of the stage, built here in debug.
grep -q 'cargo build --release --locked --bin kinbar' <<<"$build_stage" \
  || fail "the build stage no longer runs 'cargo build --release --locked --bin kinbar'"
installed=$(sed -n 's/.*install -D -s -m 0755 target\/release\/kinbar \([^ ]*\).*/\1/p' <<<"$build_stage")
[ -n "$installed" ] || fail "the build stage does not install target/release/kinbar"
(cd "$ctx" && cargo build --locked --offline --quiet --bin kinbar) \
  || fail "the crate does not build from the files the Dockerfile copies"

# The runtime stage runs what was installed, as a non-root user.
grep -q "^COPY --from=build $installed /usr/local/bin/kinbar\$" <<<"$runtime_stage" \
  || fail "the runtime stage does not copy $installed to /usr/local/bin/kinbar"
grep -q '^ENTRYPOINT \["/usr/local/bin/kinbar"\]$' <<<"$runtime_stage" \
  || fail "ENTRYPOINT is not /usr/local/bin/kinbar"
user=$(sed -n 's/^USER \([0-9]*\):\([0-9]*\)$/\1/p' <<<"$runtime_stage")
[ -n "$user" ] && [ "$user" -ne 0 ] || fail "USER must be a numeric non-root uid:gid"
cmd=$(sed -n 's/^CMD \(\[.*\]\)$/\1/p' <<<"$runtime_stage")
[ -n "$cmd" ] || fail "no CMD in exec form"
mapfile -t cmd_args < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$cmd")
"$BIN" "${cmd_args[@]}" --print-config >/dev/null \
  || fail "kinbar does not accept the image's CMD: ${cmd_args[*]}"
echo "dockerfile: $copies COPY sources present, crate builds from them, rust:$image_rust >= $crate_rust, runs /usr/local/bin/kinbar as uid $user, CMD accepted"
