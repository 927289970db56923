"""Test helpers for object storage: an S3-compatible server on loopback (moto) and a DuckDB 1.4.4 analyst
with the httpfs extension from PyPI, in a virtual environment of its own.

The server is moto's own WSGI app served on 127.0.0.1 (what moto's ThreadedMotoServer does), wrapped so a
test can make it answer 500 to every write, as a store that refuses writes would. moto keeps its buckets
in process-wide state, so each server starts by resetting it: one server at a time per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from threading import Thread

from ordersync_pipeline_tests.support import CLIENT_VENVS

REGION = "us-east-1"
DUMMY_KEY_ID = "AKIAORDERSYNCTESTKEY"
DUMMY_SECRET = "ordersync-test-S3CRET-must-never-leak"
ANALYST_DUCKDB = "1.4.4"


class S3Server:
    """moto on 127.0.0.1:<free port>; `refuse_writes = True` makes it answer 500 to every PUT and POST,
    `writes_to_fail = N` to the next N only."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self.refuse_writes = False
        self.writes_to_fail = 0  # the next N writes answer 500, then the store recovers
        self.write_delay_seconds = 0.0  # a slow store: each PUT/POST waits this long before it is handled
        self.requests: list[str] = []
        moto_app = DomainDispatcherApplication(create_backend_app)

        def app(environ, start_response):
            self.requests.append(f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}")
            if self.write_delay_seconds and environ["REQUEST_METHOD"] in ("PUT", "POST"):
                time.sleep(self.write_delay_seconds)
            failing = self.refuse_writes or self.writes_to_fail > 0
            if failing and environ["REQUEST_METHOD"] in ("PUT", "POST"):
                self.writes_to_fail -= 1
                start_response("500 Internal Server Error", [("Content-Type", "application/xml")])
                return [b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code><Message>We "
                        b"encountered an internal error. Please try again.</Message></Error>"]
            return moto_app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._post("/moto-api/reset", b"")
        self.key_id, self.secret = DUMMY_KEY_ID, DUMMY_SECRET

    def env(self) -> dict[str, str]:
        """The standard variables a pipeline process reads to reach this server."""
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix`, with its bytes."""
        s3 = self.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for o in page.get("Contents", [])]
        return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}

    def require_signatures(self) -> None:
        """From now on, check every request's signature against a real access key (moto's IAM): a wrong
        secret is refused with SignatureDoesNotMatch, as AWS would."""
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.key_id,
                           aws_secret_access_key=self.secret)
        iam.create_user(UserName="pipeline")
        iam.put_user_policy(UserName="pipeline", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="pipeline")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self._post("/moto-api/reset-auth", b"0")

    def stop(self) -> None:
        self._post("/moto-api/reset-auth", b"inf")  # process-wide: later servers start open again
        self._server.shutdown()
        self._thread.join(timeout=30)

    def _post(self, path: str, body: bytes) -> None:
        request = urllib.request.Request(f"{self.endpoint}{path}", data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=30).read()


def analyst_python() -> str:
    """The python of a venv with duckdb 1.4.4 and its httpfs extension from PyPI (created once, then reused)."""
    venv = CLIENT_VENVS / f"duckdb-{ANALYST_DUCKDB}-httpfs"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"duckdb=={ANALYST_DUCKDB}",
                        f"duckdb-ext-httpfs=={ANALYST_DUCKDB}.*"], check=True, timeout=900)
    return str(python)


SESSION_SCRIPT = Path(__file__).with_name("remote_analyst.py")


class RemoteAnalyst:
    """A DuckDB 1.4.4 process with httpfs and an S3 secret for `server`; send it SQL, get rows or an error."""

    def __init__(self, server: S3Server, memory_limit: str | None = None) -> None:
        self.process = subprocess.Popen(
            [analyst_python(), str(SESSION_SCRIPT), f"127.0.0.1:{server.port}", server.key_id, server.secret,
             memory_limit or ""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, sql: str) -> list[list]:
        """The rows of `sql`; raises RuntimeError with DuckDB's message if it failed."""
        answer = self.answer(sql)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer["rows"]

    def answer(self, sql: str) -> dict:
        self.process.stdin.write(json.dumps(sql) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the analyst's DuckDB process ended (exit code {self.process.wait(timeout=30)})")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
