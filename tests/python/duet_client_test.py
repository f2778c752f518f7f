#!/usr/bin/python3
"""Drives a Duet cluster's public gRPC API (duet.v1.Duet) from Python, as a user's client would.

Generates the Python stubs from proto/ into a temporary directory, writes a tiny synthetic model
with `duet make-model`, starts `duet cluster` (router, one prefill and one decode node, CPU
backend) on a free port, and checks a streaming Generate, a cancellation, error statuses and
ListModels through the stubs. Finally stops the cluster with SIGTERM and checks it exits 0.

Runs with Debian's /usr/bin/python3 and its python3-grpcio and python3-protobuf (see
scripts/install-deps.sh). Stubs come from the system protoc plus grpc_python_plugin: the protoc
bundled in Debian 12's python3-grpc-tools (1.14) rejects proto3 `optional` fields.

Usage: duet_client_test.py --duet BUILD/tools/duet/duet --proto-dir SOURCE/proto
Exits non-zero on any failure; every wait has a timeout.
"""

import argparse
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

try:
    import grpc
    import google.protobuf  # noqa: F401  (the generated *_pb2 modules need it)
except ImportError as error:
    sys.exit(f"duet_client_test: FAIL: {sys.executable} cannot import grpc or google.protobuf "
             f"({error}); run scripts/install-deps.sh (python3-grpcio, python3-protobuf)")

# Seconds. The cluster starts in a few seconds (four processes, a tiny model, CPU backend) and each
# RPC takes milliseconds; these are generous bounds so that a wedged cluster fails the test
# instead of hanging it.
READY_TIMEOUT_S = 120
RPC_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30

PROMPT = "Once upon a time"

# The generated modules, imported once the stubs exist (main()).
pb = None  # duet.v1.duet_pb2
types_pb = None  # duet.v1.types_pb2
pb_grpc = None  # duet.v1.duet_pb2_grpc
# The running cluster's stub, shared by the test cases.
stub = None


def generate_stubs(proto_dir, out_dir):
    """Writes duet/v1/{duet,types}_pb2.py and duet/v1/duet_pb2_grpc.py under out_dir."""
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    if protoc is None or plugin is None:
        sys.exit("duet_client_test: FAIL: protoc or grpc_python_plugin is not on PATH; run "
                 "scripts/install-deps.sh (protobuf-compiler, protobuf-compiler-grpc)")
    protos = [os.path.join(proto_dir, "duet", "v1", name) for name in ("duet.proto", "types.proto")]
    cmd = [protoc, f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
           f"--plugin=protoc-gen-grpc_python={plugin}"] + protos
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        sys.exit(f"duet_client_test: FAIL: {' '.join(cmd)} exited {result.returncode}:\n"
                 f"{result.stderr}")


def import_stubs(out_dir):
    global pb, types_pb, pb_grpc
    sys.path.insert(0, out_dir)
    from duet.v1 import duet_pb2, duet_pb2_grpc, types_pb2
    pb, types_pb, pb_grpc = duet_pb2, types_pb2, duet_pb2_grpc


class Cluster:
    """`duet cluster` as a child process; stdout is drained by a thread into a queue of lines."""

    def __init__(self, duet, model_path, log_path):
        self._log = open(log_path, "w+")
        self._lines = queue.Queue()  # stdout lines; None at EOF
        self.stdout = []
        self.proc = subprocess.Popen(
            [duet, "cluster", "--model", model_path, "--port", "0", "--prefill", "1", "--decode",
             "1", "--backend", "cpu", "--kv-dtype", "f32", "--log-level", "error",
             "--ready-timeout-s", str(READY_TIMEOUT_S)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.stdout.append(line)
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def stderr(self):
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def wait_listening(self):
        """Returns HOST:PORT from the first stdout line, `listening on HOST:PORT`."""
        try:
            line = self._lines.get(timeout=READY_TIMEOUT_S + 30)
        except queue.Empty:
            raise RuntimeError(f"duet cluster printed nothing in {READY_TIMEOUT_S + 30} s; "
                               f"stderr:\n{self.stderr()}")
        if line is None:
            raise RuntimeError(f"duet cluster exited (code {self.proc.wait(timeout=10)}) before "
                               f"it was ready; stderr:\n{self.stderr()}")
        match = re.fullmatch(r"listening on (\S+:\d+)", line)
        if match is None:
            raise RuntimeError(f"duet cluster's first stdout line is {line!r}, expected "
                               f"'listening on HOST:PORT'; stderr:\n{self.stderr()}")
        return match.group(1)

    def stop(self):
        """SIGTERM; returns the exit code, or None if the cluster did not exit in time."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=10)
        return code

    def kill(self):
        """SIGKILL if still running. The router and nodes follow: they get SIGTERM when their
        parent dies (PR_SET_PDEATHSIG in tools/cluster/launcher.cc)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        self._log.close()


def greedy(max_tokens, request_id="", **request_fields):
    """A GenerateRequest for PROMPT (unless request_fields names another prompt), greedy."""
    if "token_ids" not in request_fields:
        request_fields.setdefault("text", PROMPT)
    return pb.GenerateRequest(
        request_id=request_id,
        sampling=types_pb.SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                                         seed=1),
        **request_fields)


def tokens_of(responses):
    return [t for response in responses for t in response.token_ids]


class DuetClientTest(unittest.TestCase):

    def generate(self, request):
        return list(stub.Generate(request, timeout=RPC_TIMEOUT_S))

    def assert_status(self, request, code):
        """Generate(request) must fail with `code`; returns the status details."""
        with self.assertRaises(grpc.RpcError) as raised:
            self.generate(request)
        self.assertEqual(raised.exception.code(), code, raised.exception.details())
        return raised.exception.details()

    def test_streaming_generate(self):
        responses = self.generate(greedy(12, request_id="py-greedy-1"))
        for response in responses:
            self.assertEqual(response.request_id, "py-greedy-1")
        with_tokens = [r for r in responses if r.token_ids]
        self.assertGreaterEqual(len(with_tokens), 2, "tokens should stream in several messages")
        tokens = tokens_of(responses)
        self.assertEqual(len(tokens), 12)
        for response in responses[:-1]:
            self.assertEqual(response.finish_reason, types_pb.FINISH_REASON_UNSPECIFIED)
            self.assertFalse(response.HasField("usage"))
        last = responses[-1]
        self.assertEqual(last.finish_reason, types_pb.FINISH_REASON_LENGTH)
        self.assertEqual(last.usage.completion_tokens, 12)
        prompt_ids = stub.Tokenize(pb.TokenizeRequest(text=PROMPT),
                                   timeout=RPC_TIMEOUT_S).token_ids
        self.assertEqual(last.usage.prompt_tokens, len(prompt_ids))
        text = "".join(r.text for r in responses)

        # Greedy decoding is deterministic: the same request (the second one may take its prompt
        # from the prefix cache), and the same prompt as token ids, give the same completion.
        again = self.generate(greedy(12, request_id="py-greedy-2"))
        self.assertEqual(tokens_of(again), tokens)
        self.assertEqual("".join(r.text for r in again), text)
        as_ids = self.generate(greedy(12, token_ids=pb.TokenIds(ids=prompt_ids)))
        self.assertEqual(tokens_of(as_ids), tokens)

    def test_cancel(self):
        # As long as the context allows, so that the stream is still running when we cancel.
        model = stub.ListModels(pb.ListModelsRequest(), timeout=RPC_TIMEOUT_S).models[0]
        num_prompt = len(stub.Tokenize(pb.TokenizeRequest(text=PROMPT),
                                       timeout=RPC_TIMEOUT_S).token_ids)
        max_tokens = model.context_length - num_prompt
        call = stub.Generate(greedy(max_tokens, request_id="py-cancel"), timeout=RPC_TIMEOUT_S)
        received = 0
        for response in call:
            received += len(response.token_ids)
            if received > 0:
                break
        self.assertGreater(received, 0)
        self.assertTrue(call.cancel(), "the call ended before it could be cancelled")
        with self.assertRaises(grpc.RpcError) as raised:
            for response in call:
                received += len(response.token_ids)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.CANCELLED)
        self.assertEqual(call.code(), grpc.StatusCode.CANCELLED)
        self.assertLess(received, max_tokens)

        # The cluster keeps serving.
        after = self.generate(greedy(4, request_id="py-after-cancel"))
        self.assertEqual(len(tokens_of(after)), 4)
        self.assertEqual(after[-1].finish_reason, types_pb.FINISH_REASON_LENGTH)

    def test_max_tokens_zero_is_invalid(self):
        details = self.assert_status(greedy(0), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("max_tokens", details)

    def test_unknown_model_is_not_found(self):
        details = self.assert_status(greedy(4, model="no-such-model"), grpc.StatusCode.NOT_FOUND)
        self.assertIn("no-such-model", details)

    def test_list_models(self):
        models = stub.ListModels(pb.ListModelsRequest(), timeout=RPC_TIMEOUT_S).models
        self.assertEqual(len(models), 1)
        model = models[0]
        self.assertTrue(model.id)
        self.assertEqual(model.architecture, "llama")
        self.assertGreater(model.context_length, 0)
        self.assertGreater(model.vocab_size, 0)
        self.assertGreater(model.num_parameters, 0)
        # The listed id is what clients pass as `model`.
        responses = self.generate(greedy(2, model=model.id))
        self.assertEqual(len(tokens_of(responses)), 2)
        for token in tokens_of(responses):
            self.assertIn(token, range(model.vocab_size))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duet", required=True, help="the duet executable")
    parser.add_argument("--proto-dir", required=True, help="the import root of duet/v1/*.proto")
    args = parser.parse_args()

    global stub
    with tempfile.TemporaryDirectory(prefix="duet_client_test.") as tmp:
        generate_stubs(args.proto_dir, tmp)
        import_stubs(tmp)
        model_path = os.path.join(tmp, "tiny.gguf")
        subprocess.run([args.duet, "make-model", "--shape", "tiny", "--dtype", "f32", "--seed",
                        "1", "-o", model_path], check=True, stdout=subprocess.DEVNULL, timeout=60)

        cluster = Cluster(args.duet, model_path, os.path.join(tmp, "cluster.stderr"))
        try:
            start = time.monotonic()
            address = cluster.wait_listening()
            print(f"duet cluster listening on {address} after {time.monotonic() - start:.1f} s",
                  flush=True)
            # Loopback only: never route through an http_proxy from the environment.
            channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
            stub = pb_grpc.DuetStub(channel)

            suite = unittest.defaultTestLoader.loadTestsFromTestCase(DuetClientTest)
            passed = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
            channel.close()

            code = cluster.stop()
            stopped = code == 0
            if not stopped:
                how = f"exited with {code}" if code is not None else (
                    f"was still running {STOP_TIMEOUT_S} s")
                print(f"FAIL: after SIGTERM duet cluster {how}; expected exit code 0",
                      flush=True)
            else:
                print("duet cluster exited 0 after SIGTERM", flush=True)
            if not (passed.wasSuccessful() and stopped):
                print(f"--- duet cluster stdout:\n{''.join(cluster.stdout)}"
                      f"--- duet cluster stderr:\n{cluster.stderr()}", flush=True)
                return 1
            return 0
        finally:
            cluster.kill()


if __name__ == "__main__":
    sys.exit(main())
