"""`cloudidentity-spawner credentials` against a hub that answers badly or maliciously: nothing it
says reaches a shell unquoted, the token never leaves the hub's URL or shows in an error, and
every failure is one line. (The end-to-end use, with boto3 and the demo hub: tests/test_demo.py.)"""

from __future__ import annotations

import io
import json
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cloudidentity_spawner.cli import build_parser
from cloudidentity_spawner.client import credentials_command

GOOD = {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "c2VjcmV0/+=", "SessionToken": "FwoGZXIvYXdzE+/=",
        "Expiration": "2026-12-03T10:00:00Z", "AssumedRoleArn": "arn:aws:sts::1:assumed-role/r/alice"}


class Hub:
    """A stub hub: /hub/api/user names alice; her server answers with *answer* (status, body, type)."""

    def __init__(self, answer):
        self.answer, self.seen = answer, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.seen.append((self.path, self.headers.get("Authorization")))
                status, body, kind = (200, json.dumps({"name": "alice"}), "application/json") \
                    if self.path == "/hub/api/user" else hub.answer
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                if 300 <= status < 400:
                    self.send_header("Location", "https://sso.example.org/login")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(request):
    stub = Hub(request.param)
    yield stub
    stub.close()


def run(hub_url, *args, token="tok-123", capsys=None):
    parsed = build_parser().parse_args(["credentials", "--hub", hub_url, *args])
    out = io.StringIO()
    code = credentials_command(parsed, {"JUPYTERHUB_API_TOKEN": token} if token is not None else {}, out)
    return code, out.getvalue(), capsys.readouterr().err if capsys else ""


@pytest.mark.parametrize("hub", [(200, json.dumps(GOOD), "application/json")], indirect=True)
def test_the_outputs_are_made_from_checked_values(hub, capsys):
    code, out, _ = run(hub.url, "aws", capsys=capsys)
    assert code == 0 and json.loads(out) == {"Version": 1, **{k: GOOD[k] for k in
                                                               ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")}}
    code, out, _ = run(hub.url, "--format", "env", "aws", capsys=capsys)
    assert out.splitlines()[0] == "export AWS_ACCESS_KEY_ID=ASIAEXAMPLE"
    assert hub.seen[-1] == ("/user/alice/api/cloudcreds/aws?format=json", "token tok-123")


@pytest.mark.parametrize("hub", [
    (200, json.dumps({**GOOD, "AccessKeyId": "x;touch /tmp/pwned"}), "application/json"),
    (200, json.dumps({**GOOD, "SessionToken": "$(id)"}), "application/json"),
    (200, json.dumps({"access_token": "a'b\nexport PATH=/evil"}), "application/json"),
    (200, "<html>Welcome to the captive portal</html>", "text/html"),
], indirect=True)
def test_nothing_a_server_says_reaches_a_shell(hub, capsys):
    for args in (["--format", "env", "aws"], ["aws"], ["--format", "env", "gcp"]):
        code, out, err = run(hub.url, *args, capsys=capsys)
        assert code == 1 and out == "", (args, out)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("hub", [(404, json.dumps({"error": "This server has no AWS identity: AWS_ROLE_ARN ..."}),
                                  "application/json")], indirect=True)
def test_the_servers_own_reason_is_told(hub, capsys):
    code, _, err = run(hub.url, "aws", capsys=capsys)
    assert code == 1 and "no AWS identity" in err


@pytest.mark.parametrize("hub", [(302, "", "text/html")], indirect=True)
def test_a_redirect_is_not_followed_and_says_where_it_went(hub, capsys):
    code, _, err = run(hub.url, "aws", capsys=capsys)
    assert code == 1 and "not running" in err and "sso.example.org" in err
    assert [p for p, _ in hub.seen] == ["/hub/api/user", "/user/alice/api/cloudcreds/aws?format=json"]


@pytest.mark.parametrize("hub", [(200, json.dumps(GOOD), "application/json")], indirect=True)
def test_names_cannot_leave_the_users_server_path(hub, capsys):
    for args in (["--server", "..", "aws"], ["--user", ".", "aws"], ["--user", "..", "aws"]):
        code, _, err = run(hub.url, *args, capsys=capsys)
        assert code == 1 and "is not a" in err
    code, _, _ = run(hub.url, "--user", "a/../b?x#y", "aws", capsys=capsys)
    assert hub.seen[-1][0] == "/user/a%2F..%2Fb%3Fx%23y/api/cloudcreds/aws?format=json"


def test_plain_http_to_another_computer_is_refused_before_anything_is_sent(capsys):
    code, _, err = run("http://hub.example.org", "aws", capsys=capsys)
    assert code == 1 and "plain http" in err and "--insecure-http" in err


def test_a_token_file_that_is_not_one_token_is_refused_without_showing_it(tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text("SECRET-TOKEN-VALUE\n# my hub token\n")
    code, _, err = run("http://127.0.0.1:9", "--token-file", str(token_file), "aws", token=None, capsys=capsys)
    assert code == 1 and "SECRET-TOKEN-VALUE" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("hub", [(200, json.dumps(GOOD), "application/json")], indirect=True)
def test_another_hubs_token_in_the_environment_is_not_sent(hub, capsys):
    """Inside a notebook of hub A, JUPYTERHUB_API_TOKEN is A's server token: asking hub B with it
    would hand it to B. It is refused before any request; the same hub's token is used."""
    parsed = build_parser().parse_args(["credentials", "--hub", hub.url, "aws"])
    elsewhere = {"JUPYTERHUB_API_TOKEN": "a-hubs-token", "JUPYTERHUB_API_URL": "https://hub-a.example.org/hub/api"}
    assert credentials_command(parsed, elsewhere, io.StringIO()) == 1
    assert "--token-file" in capsys.readouterr().err and hub.seen == []
    same = {"JUPYTERHUB_API_TOKEN": "tok-123", "JUPYTERHUB_API_URL": hub.url + "/hub/api"}
    assert credentials_command(parsed, same, io.StringIO()) == 0
    assert hub.seen[-1][1] == "token tok-123"



SUBJECT = {"token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
           "expiration_time": 1893456000, "service_account": None,
           "audience": "identitynamespace:my-project.svc.id.goog:https://container.googleapis.com/v1/projects/my-project/"
                       "locations/europe-west4/clusters/hub"}


@pytest.mark.parametrize("hub", [(200, json.dumps(SUBJECT), "application/json")], indirect=True)
def test_googles_formats_are_made_from_checked_values(hub, capsys, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("tok-123")
    code, out, _ = run(hub.url, "--token-file", str(token_file), "--server", "gpu", "gcp", "--format", "executable",
                       token=None, capsys=capsys)
    assert code == 0 and json.loads(out) == {"version": 1, "success": True, "token_type": SUBJECT["token_type"],
                                             "id_token": SUBJECT["subject_token"], "expiration_time": 1893456000}
    assert hub.seen[-1] == ("/user/alice/gpu/api/cloudcreds/gcp?format=subject_token", "token tok-123")
    code, out, _ = run(hub.url, "--token-file", str(token_file), "--server", "gpu", "gcp", "--format", "external-account",
                       token=None, capsys=capsys)
    config = json.loads(out)
    assert code == 0 and config["audience"] == SUBJECT["audience"] and config["type"] == "external_account"
    assert shlex.split(config["credential_source"]["executable"]["command"]) == [
        "cloudidentity-spawner", "credentials", "--hub", hub.url, "--server=gpu", f"--token-file={token_file}",
        "gcp", "--format", "executable"]
    assert "service_account_impersonation_url" not in config  # a principal: nothing to impersonate
    assert "tok-123" not in out  # the token stays where it was: in the file, read by the command


@pytest.mark.parametrize("hub, formats", [
    ((200, json.dumps({**SUBJECT, "audience": "identitynamespace:x.svc.id.goog:https://evil.example.org/"}), "application/json"),
     ["external-account"]),
    ((200, json.dumps({**SUBJECT, "service_account": "me@evil.example.org"}), "application/json"), ["external-account"]),
    ((200, json.dumps({**SUBJECT, "subject_token": "not a token; rm -rf ~"}), "application/json"),
     ["external-account", "executable"]),
    ((200, json.dumps({**SUBJECT, "expiration_time": "soon"}), "application/json"), ["external-account", "executable"]),
], indirect=["hub"])
def test_a_google_credential_file_names_only_googles_and_the_clusters_places(hub, formats, capsys):
    """The credentials.json tells google-auth where to send the token and whom to impersonate: a
    server's answer cannot point it anywhere else (google-auth would send the token there)."""
    for fmt in formats:
        code, out, err = run(hub.url, "gcp", "--format", fmt, capsys=capsys)
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, (fmt, err)


WITH_ACCOUNT = {**SUBJECT, "service_account": "nb-alice@my-project.iam.gserviceaccount.com"}


@pytest.mark.parametrize("hub", [(200, json.dumps(WITH_ACCOUNT), "application/json")], indirect=True)
def test_a_google_service_account_is_impersonated_and_a_stale_file_is_told(hub, capsys):
    code, out, _ = run(hub.url, "gcp", "--format", "external-account", capsys=capsys)
    assert code == 0 and json.loads(out)["service_account_impersonation_url"] == (
        "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
        "nb-alice@my-project.iam.gserviceaccount.com:generateAccessToken")
    # Run by google-auth for a file made before the rule changed: told to make it again.
    parsed = build_parser().parse_args(["credentials", "--hub", hub.url, "gcp", "--format", "executable"])
    for environ in ({"GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE": SUBJECT["audience"]},  # no impersonation in that file
                    {"GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE": SUBJECT["audience"].replace("/hub", "/old"),
                     "GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL": WITH_ACCOUNT["service_account"]}):
        out = io.StringIO()
        assert credentials_command(parsed, {"JUPYTERHUB_API_TOKEN": "tok-123", **environ}, out) == 1
        assert "--format external-account" in capsys.readouterr().err and out.getvalue() == ""
    current = {"GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE": SUBJECT["audience"],
               "GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL": WITH_ACCOUNT["service_account"]}
    out = io.StringIO()
    assert credentials_command(parsed, {"JUPYTERHUB_API_TOKEN": "tok-123", **current}, out) == 0
    assert json.loads(out.getvalue())["id_token"] == SUBJECT["subject_token"]


def test_googles_formats_are_for_gcp_only(capsys):
    code, out, err = run("http://127.0.0.1:9", "aws", "--format", "executable", capsys=capsys)
    assert code == 1 and out == "" and "for gcp" in err
