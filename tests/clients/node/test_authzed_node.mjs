// Wire compatibility with the official SpiceDB Node client (@authzed/authzed-node).
// Starts `kinbar serve` on a free loopback port and drives the main methods
// through the client's promise API. Run: node tests/clients/node/test_authzed_node.mjs
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { v1 } from "@authzed/authzed-node";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const bin = process.env.KINBAR_BIN ?? path.join(root, "target/debug/kinbar");
const KEY = "node-test-key";

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
const server = spawn(bin, ["serve", "--grpc-addr", `127.0.0.1:${port}`, "--preshared-key", `node:${KEY}:admin`], { stdio: "ignore" });
for (let i = 0; i < 200; i++) {
  const up = await new Promise((r) => {
    const c = net.connect(port, "127.0.0.1", () => { c.end(); r(true); });
    c.on("error", () => r(false));
  });
  if (up) break;
  await new Promise((r) => setTimeout(r, 50));
}

const { promises: client } = v1.NewClient(KEY, `127.0.0.1:${port}`, 2 /* INSECURE_PLAINTEXT_CREDENTIALS */);
const obj = (objectType, objectId) => v1.ObjectReference.create({ objectType, objectId });
const subj = (t, id, optionalRelation = "") => v1.SubjectReference.create({ object: obj(t, id), optionalRelation });
const rel = (rt, ri, r, st, si, sr = "") => v1.Relationship.create({ resource: obj(rt, ri), relation: r, subject: subj(st, si, sr) });
const touch = (r) => v1.RelationshipUpdate.create({ operation: v1.RelationshipUpdate_Operation.TOUCH, relationship: r });
const full = v1.Consistency.create({ requirement: { oneofKind: "fullyConsistent", fullyConsistent: true } });
const HAS = v1.CheckPermissionResponse_Permissionship.HAS_PERMISSION;
const NO = v1.CheckPermissionResponse_Permissionship.NO_PERMISSION;

const schema = `definition user {}
definition team {
    relation member: user | team#member
}
definition doc {
    relation viewer: user | team#member
    permission view = viewer
}`;

let passed = 0, failed = 0;
async function test(name, fn) {
  try { await fn(); passed++; console.log(`ok    ${name}`); }
  catch (e) { failed++; console.log(`FAIL  ${name}: ${e.stack ?? e}`); }
}

await test("WriteSchema and ReadSchema", async () => {
  await client.writeSchema(v1.WriteSchemaRequest.create({ schema }));
  const r = await client.readSchema(v1.ReadSchemaRequest.create({}));
  assert.equal(r.schemaText, schema);
});
let writtenAt;
await test("WriteRelationships", async () => {
  const r = await client.writeRelationships(v1.WriteRelationshipsRequest.create({
    updates: [touch(rel("doc", "1", "viewer", "user", "anna")), touch(rel("doc", "1", "viewer", "team", "eng", "member")), touch(rel("team", "eng", "member", "user", "bob"))],
  }));
  writtenAt = r.writtenAt;
  assert.ok(writtenAt.token.length > 0);
});
await test("CheckPermission at the write's token", async () => {
  const consistency = v1.Consistency.create({ requirement: { oneofKind: "atLeastAsFresh", atLeastAsFresh: writtenAt } });
  for (const [s, want] of [[subj("user", "anna"), HAS], [subj("user", "bob"), HAS], [subj("user", "carl"), NO]]) {
    const r = await client.checkPermission(v1.CheckPermissionRequest.create({ consistency, resource: obj("doc", "1"), permission: "view", subject: s }));
    assert.equal(r.permissionship, want);
  }
});
await test("CheckBulkPermissions", async () => {
  const item = (id) => v1.CheckBulkPermissionsRequestItem.create({ resource: obj("doc", "1"), permission: "view", subject: subj("user", id) });
  const r = await client.checkBulkPermissions(v1.CheckBulkPermissionsRequest.create({ consistency: full, items: [item("anna"), item("zed")] }));
  assert.equal(r.pairs.length, 2);
  assert.equal(r.pairs[0].response.item.permissionship, HAS);
  assert.equal(r.pairs[1].response.item.permissionship, NO);
});
await test("ExpandPermissionTree", async () => {
  const r = await client.expandPermissionTree(v1.ExpandPermissionTreeRequest.create({ consistency: full, resource: obj("doc", "1"), permission: "view" }));
  const leaf = r.treeRoot.treeType.leaf;
  assert.deepEqual(leaf.subjects.map((s) => s.object.objectId).sort(), ["anna", "eng"]);
});
await test("ReadRelationships and DeleteRelationships", async () => {
  const filter = v1.RelationshipFilter.create({ resourceType: "doc", optionalResourceId: "1" });
  const rows = await client.readRelationships(v1.ReadRelationshipsRequest.create({ consistency: full, relationshipFilter: filter }));
  assert.equal(rows.length, 2);
  const d = await client.deleteRelationships(v1.DeleteRelationshipsRequest.create({ relationshipFilter: filter }));
  assert.equal(Number(d.relationshipsDeletedCount), 2);
});
await test("errors carry gRPC codes", async () => {
  await assert.rejects(
    client.checkPermission(v1.CheckPermissionRequest.create({ consistency: full, resource: obj("nope", "1"), permission: "view", subject: subj("user", "a") })),
    (e) => e.code === 9 /* FAILED_PRECONDITION */,
  );
});

server.kill("SIGTERM");
console.log(`node authzed client: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
