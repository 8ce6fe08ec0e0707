"""Wire compatibility with the official SpiceDB Python client (`authzed`).

Starts `kinbar serve` on a free loopback port with a preshared key and drives
every implemented method through `authzed.api.v1.InsecureClient`. Also
compares our protobuf descriptors (fetched through server reflection) with
the ones shipped in the `authzed` package, field by field.

Run: python3 tests/clients/test_authzed_python.py  (KINBAR_BIN points at the binary)
"""

import os
import socket
import subprocess
import sys
import time
import unittest

import grpc
from authzed.api.v1 import (
    CheckBulkPermissionsRequest,
    CheckBulkPermissionsRequestItem,
    CheckPermissionRequest,
    CheckPermissionResponse,
    Consistency,
    DeleteRelationshipsRequest,
    ExpandPermissionTreeRequest,
    InsecureClient,
    ObjectReference,
    ReadRelationshipsRequest,
    ReadSchemaRequest,
    Relationship,
    RelationshipFilter,
    RelationshipUpdate,
    SubjectReference,
    WriteRelationshipsRequest,
    WriteSchemaRequest,
)
from google.protobuf import descriptor_pb2, struct_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("KINBAR_BIN", os.path.join(ROOT, "target", "debug", "kinbar"))
KEY = "python-test-key"

SCHEMA = """
definition user {}
definition team {
    relation member: user | team#member
}
definition customer {
    relation owner: user
    relation sales_rep: user | team#member
    relation signed: user:*
    permission view = owner + sales_rep
    permission add_friend = view & signed
}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def obj(t, i):
    return ObjectReference(object_type=t, object_id=i)


def subj(t, i, rel=""):
    return SubjectReference(object=obj(t, i), optional_relation=rel)


def rel(rt, ri, r, st, si, sr=""):
    return Relationship(resource=obj(rt, ri), relation=r, subject=subj(st, si, sr))


def touch(*rels):
    return [RelationshipUpdate(operation=RelationshipUpdate.Operation.OPERATION_TOUCH, relationship=r) for r in rels]


FULL = Consistency(fully_consistent=True)
HAS = CheckPermissionResponse.PERMISSIONSHIP_HAS_PERMISSION
NO = CheckPermissionResponse.PERMISSIONSHIP_NO_PERMISSION


class AuthzedPythonClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.port = free_port()
        cls.proc = subprocess.Popen(
            [BIN, "serve", "--grpc-addr", f"127.0.0.1:{cls.port}", "--preshared-key", f"py:{KEY}:admin"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        cls.endpoint = f"127.0.0.1:{cls.port}"
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", cls.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        cls.client = InsecureClient(cls.endpoint, KEY)
        cls.client.WriteSchema(WriteSchemaRequest(schema=SCHEMA))
        meta = struct_pb2.Struct()
        meta.update({"reason": "python client test"})
        resp = cls.client.WriteRelationships(
            WriteRelationshipsRequest(
                updates=touch(
                    rel("customer", "c1", "owner", "user", "olga"),
                    rel("customer", "c1", "sales_rep", "team", "sales", "member"),
                    rel("team", "sales", "member", "user", "anna"),
                    rel("customer", "c1", "signed", "user", "*"),
                    rel("customer", "c2", "owner", "user", "olga"),
                ),
                optional_transaction_metadata=meta,
            )
        )
        cls.written_at = resp.written_at

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(timeout=10)

    def test_zz_sigterm_stops_gracefully(self):
        """Runs last: SIGTERM ends the server with exit status 0 after a clean drain."""
        self.proc.terminate()
        code = self.proc.wait(timeout=10)
        err = self.proc.stderr.read().decode()
        self.assertEqual(code, 0, err)
        self.assertIn("kinbar stopped", err)

    def test_read_schema(self):
        resp = self.client.ReadSchema(ReadSchemaRequest())
        self.assertEqual(resp.schema_text, SCHEMA)
        self.assertTrue(resp.read_at.token)

    def test_check_permission(self):
        for resource, perm, subject, want in [
            ("c1", "view", subj("user", "olga"), HAS),
            ("c1", "view", subj("user", "anna"), HAS),
            ("c1", "add_friend", subj("user", "anna"), HAS),
            ("c2", "add_friend", subj("user", "olga"), NO),
            ("c1", "view", subj("user", "bob"), NO),
        ]:
            resp = self.client.CheckPermission(
                CheckPermissionRequest(
                    consistency=Consistency(at_least_as_fresh=self.written_at),
                    resource=obj("customer", resource),
                    permission=perm,
                    subject=subject,
                )
            )
            self.assertEqual(resp.permissionship, want, (resource, perm, subject))
            self.assertTrue(resp.checked_at.token)

    def test_check_bulk_permissions(self):
        resp = self.client.CheckBulkPermissions(
            CheckBulkPermissionsRequest(
                consistency=FULL,
                items=[
                    CheckBulkPermissionsRequestItem(resource=obj("customer", "c1"), permission="view", subject=subj("user", "anna")),
                    CheckBulkPermissionsRequestItem(resource=obj("customer", "c1"), permission="view", subject=subj("user", "bob")),
                    CheckBulkPermissionsRequestItem(resource=obj("customer", "c1"), permission="nope", subject=subj("user", "bob")),
                ],
            )
        )
        self.assertEqual(len(resp.pairs), 3)
        self.assertEqual(resp.pairs[0].item.permissionship, HAS)
        self.assertEqual(resp.pairs[1].item.permissionship, NO)
        self.assertEqual(resp.pairs[2].WhichOneof("response"), "error")
        self.assertEqual(resp.pairs[2].error.code, grpc.StatusCode.FAILED_PRECONDITION.value[0])

    def test_expand_permission_tree(self):
        resp = self.client.ExpandPermissionTree(
            ExpandPermissionTreeRequest(consistency=FULL, resource=obj("customer", "c1"), permission="view")
        )
        root = resp.tree_root
        self.assertEqual(root.expanded_relation, "view")
        self.assertEqual(root.WhichOneof("tree_type"), "intermediate")
        leaves = {c.expanded_relation: c for c in root.intermediate.children}
        self.assertEqual([s.object.object_id for s in leaves["owner"].leaf.subjects], ["olga"])
        self.assertEqual(leaves["sales_rep"].leaf.subjects[0].optional_relation, "member")

    def test_read_and_delete_relationships(self):
        self.client.WriteRelationships(
            WriteRelationshipsRequest(updates=touch(rel("customer", "tmp", "owner", "user", "x"), rel("customer", "tmp", "owner", "user", "y")))
        )
        got = list(
            self.client.ReadRelationships(
                ReadRelationshipsRequest(consistency=FULL, relationship_filter=RelationshipFilter(resource_type="customer", optional_resource_id="tmp"))
            )
        )
        self.assertEqual(sorted(r.relationship.subject.object.object_id for r in got), ["x", "y"])
        resp = self.client.DeleteRelationships(
            DeleteRelationshipsRequest(relationship_filter=RelationshipFilter(resource_type="customer", optional_resource_id="tmp"))
        )
        self.assertEqual(resp.relationships_deleted_count, 2)
        got = list(
            self.client.ReadRelationships(
                ReadRelationshipsRequest(consistency=FULL, relationship_filter=RelationshipFilter(resource_type="customer", optional_resource_id="tmp"))
            )
        )
        self.assertEqual(got, [])

    def test_errors_have_precise_codes(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.client.CheckPermission(
                CheckPermissionRequest(consistency=FULL, resource=obj("nope", "1"), permission="view", subject=subj("user", "a"))
            )
        self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        bad = InsecureClient(self.endpoint, "wrong-key-123")
        with self.assertRaises(grpc.RpcError) as e:
            bad.ReadSchema(ReadSchemaRequest())
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)

    def test_descriptors_match_the_official_ones(self):
        """Every message of our services has the official fields: names, numbers, types, labels."""
        import authzed.api.v1.permission_service_pb2 as ps
        import authzed.api.v1.schema_service_pb2 as ss
        import authzed.api.v1.watch_service_pb2 as ws
        import authzed.api.v1.core_pb2 as core

        channel = grpc.insecure_channel(self.endpoint)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ours = {}
        names = ["authzed/api/v1/permission_service.proto", "authzed/api/v1/schema_service.proto", "authzed/api/v1/watch_service.proto", "authzed/api/v1/core.proto"]
        for name in names:
            reqs = iter([reflection_pb2.ServerReflectionRequest(file_by_filename=name)])
            for resp in stub.ServerReflectionInfo(reqs, metadata=[("authorization", f"Bearer {KEY}")]):
                for raw in resp.file_descriptor_response.file_descriptor_proto:
                    fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                    ours[fd.name] = fd
        compared = 0
        for module in (ps, ss, ws, core):
            theirs = descriptor_pb2.FileDescriptorProto()
            module.DESCRIPTOR.CopyToProto(theirs)
            mine = ours[theirs.name]
            self.assertEqual(mine.package, theirs.package)
            my_services = {s.name: [(m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in s.method] for s in mine.service}
            for s in theirs.service:
                self.assertEqual(my_services[s.name], [(m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in s.method], s.name)
            compared += self._compare_messages(mine.message_type, theirs.message_type, theirs.name)
            my_enums = {e.name: [(v.name, v.number) for v in e.value] for e in mine.enum_type}
            for e in theirs.enum_type:
                self.assertEqual(my_enums[e.name], [(v.name, v.number) for v in e.value], e.name)
        self.assertGreater(compared, 50)

    def _compare_messages(self, mine, theirs, where):
        my = {m.name: m for m in mine}
        n = 0
        for t in theirs:
            self.assertIn(t.name, my, f"{where}: message {t.name} missing")
            m = my[t.name]
            my_fields = {f.number: (f.name, f.type, f.label, f.type_name, f.HasField("oneof_index")) for f in m.field}
            for f in t.field:
                self.assertEqual(my_fields.get(f.number), (f.name, f.type, f.label, f.type_name, f.HasField("oneof_index")), f"{where}: {t.name}.{f.name}")
                n += 1
            self.assertEqual(len(m.field), len(t.field), f"{where}: {t.name} field count")
            n += self._compare_messages(m.nested_type, t.nested_type, f"{where}.{t.name}")
            my_enums = {e.name: [(v.name, v.number) for v in e.value] for e in m.enum_type}
            for e in t.enum_type:
                self.assertEqual(my_enums[e.name], [(v.name, v.number) for v in e.value], f"{t.name}.{e.name}")
        return n


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"python authzed client: {max(result.testsRun - failed, 0)} passed, {failed} failed")
    sys.exit(1 if failed else 0)
