#!/usr/bin/env bash
# RustSec advisories, offline (issue 17 item 10): checks Cargo.lock against a
# local snapshot of https://github.com/rustsec/advisory-db when one is present
# (KINBAR_ADVISORY_DB, default ../shared/advisory-db beside the repository);
# these machines have no network access to fetch one. Without a snapshot it
# prints a notice and succeeds; with one, any advisory (or yanked crate)
# matching the lock file fails.
set -euo pipefail
cd "$(dirname "$0")/.."

db="${KINBAR_ADVISORY_DB:-../shared/advisory-db}"
if [ ! -d "$db/crates" ]; then
  echo "ci: cargo-deny advisories not checked: no RustSec snapshot at $db (set KINBAR_ADVISORY_DB)"
  exit 0
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
url="https://github.com/rustsec/advisory-db"
# cargo-deny (0.20) opens a database at <db-path>/<last url segment>-<XxHash64
# of the url, seed 0xca80de71>; this is that name for the url above.
copy="$root/advisory-db-3157b0e258782691"
mkdir -p "$copy"
cp -R "$db"/. "$copy"/
# cargo-deny reads the database as a git checkout (it dates it by its HEAD):
# a plain directory snapshot becomes a one-commit repository.
if [ ! -e "$copy/.git" ]; then
  git -C "$copy" init --quiet
  git -C "$copy" add --all
  git -C "$copy" -c user.name=ci -c user.email=ci@localhost \
    commit --quiet --no-gpg-sign -m "RustSec snapshot from $db"
fi
newest="$(find "$copy/crates" -name 'RUSTSEC-*.md' | sed 's/.*RUSTSEC-//' | sort | tail -n 1)"
echo "ci: cargo-deny advisories against the snapshot at $db (newest advisory RUSTSEC-${newest%.md})"

# deny.toml with the snapshot as the only database; its age is reported
# above, not refused (a snapshot is as fresh as its machine makes it).
sed -e "s|^db-urls = \[\]|db-path = \"$root\"\ndb-urls = [\"$url\"]\nmaximum-db-staleness = \"P36500D\"|" \
  deny.toml > "$root/deny.toml"
grep -q "^db-path" "$root/deny.toml" || { echo "ci: deny.toml has no 'db-urls = []' line to point at the snapshot" >&2; exit 1; }
cargo deny --offline --config "$root/deny.toml" check advisories
