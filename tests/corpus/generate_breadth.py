#!/usr/bin/env python3
"""Generate tests/corpus/breadth.jsonl, a breadth corpus for Gatehouse's masking rules.

Same format as masking.jsonl (see core/tests/corpus.rs): one sample per line,
`{"id", "format": "text" | "mcp_json", "input", "secrets": [{"kind", "value"}], "decoys"}`.
A secret is caught when its value no longer appears in the masked output; a decoy is kept
when it still appears. Each secret class is placed in many contexts (logs, shell commands,
.env / YAML / INI / TOML / Makefile / Go / PHP / Python / JS / XML / properties, CLI prompts,
MCP tool answers, structuredContent); decoys are placeholders, malformed tokens, harmless
values under secret-looking keys and ordinary look-alikes (UUIDs, SHAs, ARNs, ...).

Every secret and decoy value is random (nothing is copied from a real credential), drawn
from `random.Random(seed)`: the output is deterministic for a given --seed (default 1729).
A secret's value is only what must disappear: the password of `curl -u user:PASS`, the token in
a files.slack.com `?t=` query, but the whole URL of a Slack webhook.
Regenerate with:  python3 tests/corpus/generate_breadth.py   [--seed N] [--out PATH]
The script checks what it wrote and prints counts per secret kind and decoy class.
"""

import argparse
import base64
import json
import random
import string
from collections import Counter
from pathlib import Path

DEFAULT_SEED = 1729
PER_KIND = 38  # samples per secret kind
DECOY_ONLY = 64  # samples holding only decoys
R = random.Random(DEFAULT_SEED)

UP, LO, DIG = string.ascii_uppercase, string.ascii_lowercase, string.digits
ALNUM, HEX, B32 = UP + LO + DIG, "0123456789abcdef", UP + "234567"
B64URL, PWCH = ALNUM + "-_", ALNUM + "!@#$%~"


def rs(alphabet, n, m=None):
    return "".join(R.choice(alphabet) for _ in range(R.randint(n, m) if m else n))


def b64u(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def uuid4():
    h = rs(HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{R.choice('89ab')}{h[17:20]}-{h[20:]}"


def key_parts():
    if R.random() < 0.25:
        return R.choice(FIXED_KEYS)
    return R.choice(PREFIXES) + R.choice(SECRET_WORDS) + R.choice(SUFFIXES)


STYLES = {
    "k_snake": lambda p: "_".join(p),
    "k_camel": lambda p: p[0] + "".join(w.capitalize() for w in p[1:]),
    "k_kebab": lambda p: "-".join(p),
    "K": lambda p: "_".join(p).upper(),
}


class Ctx(dict):
    """format_map namespace: a missing name is filled once with a fresh random value."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.extra = []  # secrets a template pulls in besides {v}, e.g. {akid}

    def __missing__(self, name):
        if name == "akid":
            self.extra.append({"kind": "aws_access_key_id", "value": akid()})
            val = self.extra[-1]["value"]
        elif name in STYLES:
            val = STYLES[name](self["parts"])
        elif name == "k":
            val = self[R.choice(list(STYLES))]
        else:
            val = FILL[name]()
        self[name] = val
        return val


# fmt: off
# The tables from here to DECOY_CLASSES are laid out by hand (one context per entry, up to 120 columns).

# --- secret values: each generator takes the sample's Ctx (most ignore it) -----------------
def draw(make, ok):
    """make() until ok(value)."""
    while not ok(v := make()):
        pass
    return v


def not_json(segment):
    try:
        json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        return False
    except ValueError:
        return True


def jwt_real(_c=None):
    hdr = R.choice([{"alg": "HS256", "typ": "JWT"}, {"alg": "RS256", "typ": "JWT", "kid": rs(HEX, 16)},
                    {"typ": "JWT", "alg": "HS512"}, {"alg": "ES256", "typ": "JWT"}])
    now = R.randint(1_650_000_000, 1_760_000_000)
    claims = {"sub": R.choice([uuid4(), rs(LO, 8), str(R.randint(1, 99999))]), "iat": now,
              "exp": now + R.choice([900, 3600, 86400])}
    extra = [("iss", "https://auth.example.com"), ("role", R.choice(["admin", "viewer"])),
             ("name", R.choice(["Ada", "Lin", "Sam"])), ("jti", rs(ALNUM, 16)), ("scope", "read write")]
    claims.update(R.sample(extra, R.randint(0, 3)))
    sep = R.choice([(",", ":"), (", ", ": ")])
    head, body = (b64u(json.dumps(o, separators=sep).encode()) for o in (hdr, claims))
    return f"{head}.{body}.{rs(B64URL, 43)}"


IDS = UP + DIG
akid = lambda _c=None: R.choice(["AKIA", "ASIA", "ABIA", "ACCA"]) + rs(B32, 16)
aws_secret = lambda _c: rs(ALNUM + "/+", 40)
slack_bot = lambda _c: f"xoxb-{rs(DIG, 10, 13)}-{rs(DIG, 10, 13)}-{rs(ALNUM, 24)}"
slack_user = lambda _c, p="xoxp": f"{p}-{rs(DIG, 10, 13)}-{rs(DIG, 10, 13)}-{rs(DIG, 10, 13)}-{rs(HEX, 32)}"
slack_app = lambda _c: f"xapp-1-A{rs(IDS, 10)}-{rs(DIG, 13)}-{rs(HEX, 64)}"
slack_refresh = lambda _c: "xoxe-1-" + rs(ALNUM, 146)
slack_config = lambda _c: "xoxe.xoxp-1-" + rs(ALNUM, 163)
hook = lambda path: ("" if R.random() < 0.3 else "https://") + "hooks.slack.com/" + path  # sometimes no scheme
hook_services = lambda _c: hook(f"services/T{rs(IDS, 8)}/B{rs(IDS, 8)}/{rs(ALNUM, 24)}")
hook_workflows = lambda _c: hook(f"workflows/T{rs(IDS, 10)}/A{rs(IDS, 10)}/{rs(DIG, 18)}/{rs(ALNUM, 24)}")
hook_triggers = lambda _c: hook(f"triggers/{rs(ALNUM, 56)}")
jwt_double = lambda _c: base64.b64encode(jwt_real().encode()).decode()   # starts "ZXlK"
jwt_fake = lambda _c: (draw(lambda: "eyJ" + rs(B64URL, 20, 40), not_json)
                       + f".ey{rs(B64URL, 30, 80)}.{rs(B64URL, 43)}")
mixed_value = lambda _c: draw(lambda: rs(ALNUM, 20, 40), lambda v: all(set(v) & set(cs) for cs in (UP, LO, DIG)))
password = lambda _c: draw(lambda: rs(PWCH, 10, 20), lambda v: v[0].isalnum() and bool(set(v) & set(UP + LO)))
stripe = lambda _c: R.choice(["sk_live_", "rk_live_", "sk_test_", "sk_prod_", "rk_prod_"]) + rs(ALNUM, 24, 99)
github = lambda _c: (f"github_pat_{rs(ALNUM, 22)}_{rs(ALNUM, 59)}" if R.random() < 0.25
                     else R.choice(["ghp_", "gho_", "ghs_"]) + rs(ALNUM, 36))
WORDS = ["deploy", "finished", "green", "blue", "build", "nightly", "report", "cache", "warm", "the", "at", "noon",
         "migration", "ok", "staging", "rollout"]
words = lambda n: " ".join(R.choice(WORDS) for _ in range(n))

pick = lambda *xs: lambda: R.choice(xs)  # a generator choosing among fixed strings

# Key names for sensitive_field: a secret word as one part of a longer identifier.
SECRET_WORDS = [["secret"], ["password"], ["passwd"], ["pwd"], ["token"], ["api", "token"], ["api", "key"], ["auth"],
                ["creds"], ["credentials"], ["access", "token"], ["client", "secret"], ["private", "token"],
                ["passphrase"], ["secret", "key"], ["auth", "token"], ["pass"]]
PREFIXES = [[], [], ["my"], ["some"], ["todo"], ["db"], ["user"], ["prod"], ["app"], ["admin"], ["smtp"], ["redis"],
            ["jenkins"], ["legacy"], ["service"], ["backup"], ["mail"], ["sentry"]]
SUFFIXES = [[], [], [], ["do", "not", "commit"], ["string"], ["123"], ["value"], ["v2"], ["old"], ["2"], ["tmp"]]
FIXED_KEYS = [["todo", "secret", "do", "not", "commit"], ["my", "secret", "string"], ["some", "api", "token", "123"],
              ["creds"], ["user", "auth"], ["credentials"], ["db", "password"], ["client", "secret"]]

# Context fillers for {name} in templates (see Ctx).
FILL = {
    "parts": key_parts, "user": pick("deploy", "ci-bot", "jdoe", "admin", "svc_backup", "release", "mwong"),
    "host": lambda: R.choice(["api", "nexus", "ci", "artifacts", "grafana", "search"]) + "."
    + R.choice(["example.com", "corp.example.net", "internal.example.org"]),
    "path": pick("api/v1/status", "repository/releases/app-1.4.2.tgz", "v2/items?limit=50", "_cluster/health",
                 "service/rest/v1/components"),
    "ts": lambda: f"2024-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}T{R.randint(0, 23):02d}:"
    f"{R.randint(0, 59):02d}:{R.randint(0, 59):02d}Z",
    "region": pick("us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2"),
    "profile": pick("default", "prod", "staging", "ci"), "ns": pick("default", "payments", "monitoring"),
    "last4": lambda: rs(IDS, 4), "tail": lambda: rs(IDS, 4), "n": lambda: str(R.randint(2, 999)),
    "org": pick("acme", "octo-org", "platform-team"), "repo": pick("infra", "web", "billing-service", "tools"),
    "team": lambda: "T" + rs(IDS, 8, 10), "file": lambda: "F" + rs(IDS, 10),
    "fname": pick("image.png", "screenshot.png", "report.pdf"), "var": pick("apiToken", "secret", "cfg", "fallback"),
}

# --- secret classes: (value generator, context templates); {v} is the secret --------------
AWS_ID_T = [
    "[{profile}]\naws_access_key_id = {v}\nregion = {region}", "export AWS_ACCESS_KEY_ID={v}",
    "{ts} INFO  sts.assume_role: session started access_key={v} region={region}", "AWS Access Key ID [None]: {v}",
    "provider \"aws\" {{\n  region     = \"{region}\"\n  access_key = \"{v}\"\n}}", "aws.accessKeyId={v}",
    "  aws:\n    accessKeyId: {v}\n    region: {region}", "<AccessKeyId>{v}</AccessKeyId>",
    "creds := credentials.NewStaticCredentialsProvider(\"{v}\", secret, \"\")", "      AWS_ACCESS_KEY_ID: \"{v}\"",
    "<Error><Code>InvalidAccessKeyId</Code><AWSAccessKeyId>{v}</AWSAccessKeyId></Error>",
    "$ aws configure set aws_access_key_id {v} --profile {profile}",
]
AWS_SECRET_T = [
    "AWS Secret Access Key [None]: {v}", "AWS Secret Access Key [****************{last4}]: {v}",
    "$ aws configure\nAWS Access Key ID [None]: {akid}\nAWS Secret Access Key [None]: {v}\n"
    "Default region name [None]: {region}\nDefault output format [None]: json",
    "AWS Access Key ID [****************{tail}]:\nAWS Secret Access Key [****************{last4}]: {v}",
    "<secret>{v}</secret>", "<credentials>\n  <user>{user}</user>\n  <secret>{v}</secret>\n</credentials>",
    "<Credentials>\n  <AccessKeyId>{akid}</AccessKeyId>\n  <SecretAccessKey>{v}</SecretAccessKey>\n"
    "  <Expiration>{ts}</Expiration>\n</Credentials>", "<SecretAccessKey>{v}</SecretAccessKey>",
    "[{profile}]\naws_access_key_id = {akid}\naws_secret_access_key = {v}", "aws_secret_access_key = {v}",
    "export AWS_SECRET_ACCESS_KEY=\"{v}\"", "s3 = boto3.client(\"s3\", aws_secret_access_key=\"{v}\")",
    "  secretAccessKey: {v}", "$ aws configure set aws_secret_access_key {v} --profile {profile}",
]
SLACK_TOKEN_T = [
    "SLACK_TOKEN={v}", "slack:\n  token: {v}\n  channel: \"#deploys\"", "client = WebClient(token=\"{v}\")",
    "curl -s -H \"Authorization: Bearer {v}\" https://slack.com/api/auth.test", "[slack]\ntoken = \"{v}\"",
    "{ts} DEBUG slack_sdk.web.base_client: Sending a request - token: {v}", "? Paste your Slack token: {v}",
    "const app = new App({{ token: '{v}', signingSecret: process.env.SLACK_SIGNING_SECRET }});",
    "{{\"ok\": true, \"access_token\": \"{v}\", \"team\": {{\"id\": \"{team}\"}}}}",
]
SLACK_FILE_T = [  # {v} is the token in the query, not the whole URL
    "<img src=\"https://files.slack.com/files-pri/{team}-{file}/{fname}?t={v}\">",
    "{ts} GET https://files.slack.com/files-pri/{team}-{file}/{fname}?t={v} 200",
    "curl -sO 'https://files.slack.com/files-pri/{team}-{file}/{fname}?t={v}'",
]
SLACK_HOOK_T = [
    "SLACK_WEBHOOK_URL={v}", "curl -X POST -H 'Content-type: application/json' --data '{{\"text\":\"done\"}}' {v}",
    "webhook_url: \"{v}\"", "requests.post(\"{v}\", json={{\"text\": msg}})", "notify:\n  slack: {v}",
    "{ts} INFO notifier: posted alert to {v} (200)", "<property name=\"slackWebhook\" value=\"{v}\"/>",
    "$webhook = \"{v}\";",
]
JWT_T = [
    "Authorization: Bearer {v}", "{ts} DEBUG auth: verifying token {v}", "export ACCESS_TOKEN={v}", "jwt: {v}",
    "Set-Cookie: session={v}; Path=/; HttpOnly; Secure", "GET /callback#id_token={v}&state={n} HTTP/1.1",
    "kubectl --token={v} get pods -n {ns}", "{{\"access_token\": \"{v}\", \"expires_in\": 3600}}", "auth.jwt={v}",
    "const token = '{v}';", "grpcurl -H 'authorization: Bearer {v}' {host}:443 list",
    "apiVersion: v1\nkind: Secret\ndata:\n  token: {v}",
]
SENSITIVE_T = [  # {k} is a random style of the key; {k_snake} {k_camel} {k_kebab} {K} force one
    "{k_snake} = \"{v}\"", "{k_camel} = \"{v}\"", "{k}: {v}", "{K}={v}", "{k_kebab}={v}", "{K} ?= {v}",
    "{{\"user\": \"{user}\", \"{k}\": \"{v}\"}}", "{k_camel} := \"{v}\"", "{K} := {v}", "{K} := \"{v}\"",
    "${k_camel} .= \"{v}\";", "${k_snake} = '{v}';", "<{k_camel}>{v}</{k_camel}>", "app.{k_kebab}={v}",
    "{var} := GetEnvOrDefault(\"{k_snake}\", \"{v}\")", "{var} = os.getenv(\"{K}\", \"{v}\")",
    "const {k_camel} = process.env.{K} || \"{v}\";", "[database]\nhost = db.internal\n{k_snake} = {v}",
    "docker run -e {K}={v} app:latest", "{ts} DEBUG config loaded: {k_snake}={v} region={region}",
]
CURL_T = [
    "curl -u {user}:{v} https://{host}/{path}", "curl --user '{user}:{v}' https://{host}/{path}",
    "curl --user \"{user}:{v}\" -X GET https://{host}/{path}",
    "curl -s -X POST \\\n  -u {user}:{v} \\\n  -H 'Content-Type: application/json' \\\n  https://{host}/{path}",
    "+ curl -fsSL -u {user}:{v} -o app.tgz https://{host}/{path}", "RUN curl -u {user}:{v} -O https://{host}/{path}",
    "publish:\n\tcurl --user {user}:{v} --upload-file dist/app.tgz https://{host}/{path}",
    "      - run: curl --user \"{user}:{v}\" https://{host}/{path}", "$ curl -k -u {user}:{v} https://{host}:9200/{path}",
    "{ts} audit: exec 'curl -u {user}:{v} https://{host}/{path}' uid=1000",
]
STRIPE_T = [
    "STRIPE_SECRET_KEY={v}", "stripe.api_key = \"{v}\"", "curl https://api.stripe.com/v1/charges -u {v}: -d amount=20",
    "const stripe = require('stripe')('{v}');", "$stripe = new \\Stripe\\StripeClient('{v}');", "stripe.apiKey={v}",
    "stripe:\n  secret_key: {v}\n  webhook_tolerance: 300", "{ts} ERROR payments: charge failed for key {v}: declined",
    "Stripe.apiKey = \"{v}\";", "? Enter your Stripe secret key: {v}", "[stripe]\nsecret_key = \"{v}\"",
]
GITHUB_T = [
    "git clone https://{v}@github.com/{org}/{repo}.git", "GITHUB_TOKEN={v}", "echo {v} | gh auth login --with-token",
    "//npm.pkg.github.com/:_authToken={v}", "Authorization: token {v}", "github:\n  token: {v}", "gh = Github(\"{v}\")",
    "[remote \"origin\"]\n\turl = https://x-access-token:{v}@github.com/{org}/{repo}.git",
    "Password for 'https://{user}@github.com': {v}", "docker login ghcr.io -u {user} -p {v}",
    "{ts} WARN ci: token {v} expires in 3 days", "machine github.com login {user} password {v}",
]
SECRETS = {  # a kind's samples cycle through its (generator, templates) pairs
    "aws_access_key_id": [(akid, AWS_ID_T)],
    "aws_secret_access_key": [(aws_secret, AWS_SECRET_T)],
    "slack_token": [(slack_bot, SLACK_TOKEN_T), (hook_services, SLACK_HOOK_T), (slack_user, SLACK_TOKEN_T),
                    (hook_workflows, SLACK_HOOK_T), (slack_app, SLACK_TOKEN_T), (hook_triggers, SLACK_HOOK_T),
                    (slack_refresh, SLACK_TOKEN_T), (slack_config, SLACK_TOKEN_T),
                    (lambda c: slack_user(c, "xoxe"), SLACK_FILE_T)],
    "jwt": [(jwt_real, JWT_T), (jwt_double, JWT_T), (jwt_fake, JWT_T)],
    "sensitive_field": [(mixed_value, SENSITIVE_T)],
    "command_line_password": [(password, CURL_T)],
    "stripe_key": [(stripe, STRIPE_T)],
    "github_token": [(github, GITHUB_T)],
}
# structuredContent of an MCP answer: (value, rendered line, ctx) -> object holding the secret.
STRUCTURED = {
    "aws_access_key_id": lambda v, _l, c: {"Credentials": {"AccessKeyId": v, "Expiration": c["ts"]}},
    "aws_secret_access_key": lambda v, _l, c: {"Credentials": {"SecretAccessKey": v, "Expiration": c["ts"]}},
    "slack_token": lambda v, _l, _c: {"integration": "slack", ("webhook_url" if "hooks" in v else "token"): v},
    "jwt": lambda v, _l, _c: {"access_token": v, "token_type": "Bearer", "expires_in": 3600},
    "sensitive_field": lambda v, _l, c: {"settings": {c["k"]: v, "region": c["region"]}},
    "command_line_password": lambda _v, line, _c: {"command": line, "exit_code": 0},
    "stripe_key": lambda v, _l, _c: {"provider": "stripe", "secret_key": v},
    "github_token": lambda v, _l, _c: {"token": v, "scopes": ["repo", "read:org"]},
}

# --- decoys by class: (template with {d}, decoy value or generator); {d} must survive ----------
DECOYS = {
    "placeholder": [
        ("GITHUB_TOKEN={d}", "ghp_" + "x" * 36),
        ("SLACK_BOT_TOKEN={d}  # replace me", "xoxb-xxxxxxxxx-xxxxxxxxxx-xxxxxxxxxxxx"),
        ("slack:\n  user_token: {d}", "xoxp-XXXXXXXXXX-XXXXXXXXXX-XXXXXXXXXXX-" + "X" * 32),
        ("aws_access_key_id = {d}", "AKIAXXXXXXXXXXXXXXXX"), ("stripe.api_key = \"{d}\"", "sk_live_" + "x" * 24),
        ("GOOGLE_API_KEY={d}", lambda: "AIza" + R.choice("aAxX0z") * 35),
        ("curl -H \"Authorization: Bearer {d}\" https://{host}/v1/me", lambda: "X" * R.randint(12, 32)),
        ("-H 'Authorization: Bearer {d}'", pick("$API_KEY", "$TOKEN", "${GITHUB_TOKEN}", "$OPENAI_API_KEY")),
        ("Authorization: Bearer {d}", pick("<your token>", "<YOUR_API_KEY>", "<access-token>")),
        ("Authorization: {d}", "Basic ..."), ("api_key={d}", pick("%API_KEY%", "%SECRET_TOKEN%")),
        ("password = \"{d}\"", pick("${DB_PASSWORD}", "${POSTGRES_PASSWORD}", "${MYSQL_ROOT_PASSWORD}")),
        ("token: {d}", pick("{{ .Values.token }}", "{{ .Values.slack.token }}", "${{ secrets.GITHUB_TOKEN }}")),
        ("MONGO_URL={d}db.example.internal:27017/app", "mongodb://xxxx:xxxxx@"),
        ("DATABASE_URL={d}localhost:5432/app", "postgres://<user>:<password>@"),
        ("curl -u \"{d}\" https://{host}/{path}", "$USER:$PASS"), ("curl -u \"{d}\" \"$URL\"", "${u}:${p}"),
        ("curl --user \"{d}\" https://{host}/{path}", "<user>:<password>"),
        ("curl -u {d} https://{host}/{path}", "username:password"),
        ("curl --user {d} http://localhost:8080/{path}", "test:test"),
        ("[Session]\n{d}\nPuttyPort=22", "PuttyPassword=0"),
        ("withCredentials([usernamePassword(credentialsId: 'nexus', usernameVariable: 'USER', {d})])",
         "passwordVariable: 'PASSWORD'"),
    ],
    "malformed": [
        ("assert not SLACK_TOKEN_RE.fullmatch(\"{d}\")", "xoxb-abcdef-abcdef"),
        ("# example (truncated): {d}", "xoxp-1234567890"), ("slack_token: \"{d}\"", "xoxb-Slack_BOT_TOKEN"),
        ("{ts} WARN slack: rejecting malformed token '{d}'", "xoxb-12345-abcd234"),
        ("\"example\": \"{d}\",", "xoxe-1-xxx"),
        ("{ts} ERROR gh: token prefix {d} is too short", lambda: "ghp_" + rs(ALNUM, 6)),
        ("invalid key id {d} (expected 20 characters)", lambda: "AKIA" + rs(B32, 8)),
        ("decoded {d} -> {{\"alg\":\"HS256\",\"typ\":\"JWT\"}}", b64u(b'{"alg":"HS256","typ":"JWT"}')),
    ],
    "benign_key": [  # a whole "key = value" as the decoy when the value alone is too short to be unique
        ("publicToken = \"{d}\"", lambda: rs(ALNUM, 43)), ("credentialsId: '{d}'", uuid4),
        ("public_key = \"{d}\"", lambda: base64.b64encode(R.randbytes(32)).decode()),
        ("{d}", lambda: f"secret_length = {R.choice([16, 24, 32, 48, 64])}"),
        ("LLM_SECRET_NAME = \"{d}\"", lambda: f"{R.choice(['NEXUS', 'ORION'])}-{R.choice(['GPT4', 'EMBED'])}-API-KEY"),
        ("access_token_url='{d}'", pick("https://github.com/login/oauth/access_token", "https://oauth2.example.com/token")),
        ("TokenFile=\"{d}\"", pick("RTL_INST_CODE.cer", "client_auth.p12", "signing.pem")),
        ("author = \"{d}\"", lambda: R.choice(["jane", "li", "omar", "ana"]) + R.choice([".doe", ".chen", ".costa"])),
        ("notes = \"Maven - {d}\"", lambda: f"io.jsonwebtoken:jjwt-{R.choice(['jackson', 'api', 'impl'])}-0.11.2"),
        ("csrf-token={d}", lambda: rs(ALNUM, 40)),
        ("<meta name=\"csrf-token\" content=\"{d}\">", lambda: rs(B64URL, 40)),
        ("{d}", lambda: f"max_tokens: {R.choice([256, 1024, 4096, 8192])}"), ("{d}", "token_type: \"Bearer\""),
        ("keyword: \"{d}\"", lambda: R.choice(["Befaehigung", "Zulassung", "Pruefung"]) + f"_P{R.randint(1, 9)}"),
        ("{d}", lambda: f"password_min_length = {R.randint(8, 16)}"),
        ("{d}", lambda: f"tokens_used={R.randint(99, 9999)}"),
        ("secret_name: {d}", lambda: f"prod/{R.choice(['db', 'api', 'payments'])}/credentials"),
        ("kms_key_id = \"{d}\"", lambda: f"arn:aws:kms:us-east-1:{rs(DIG, 12)}:key/{uuid4()}"),
        ("api_key_header = \"{d}\"", "X-Api-Key"), ("credentials_file = \"{d}\"", "~/.aws/credentials"),
        ("ssh_key_path: {d}", "~/.ssh/id_ed25519.pub"), ("{d}", lambda: f"token_ttl: {R.choice([300, 900, 3600])}"),
        ("apiKeyName = \"{d}\"", pick("billing-reader", "ci-readonly", "grafana-viewer")),
        ("secretKeyRef:\n  name: {d}", pick("app-secrets", "db-credentials")),
    ],
    "lookalike": [
        ("request_id={d} status=200", uuid4), ("commit {d}\nDate:   Mon Mar 4 10:12:55 2024", lambda: rs(HEX, 40)),
        ("HEAD is now at {d} Merge pull request #{n}", lambda: rs(HEX, 12)),
        ("echo {d} | base64 -d", lambda: base64.b64encode(words(R.randint(4, 7)).encode()).decode()),
        ("RoleArn: {d}", lambda: f"arn:aws:iam::{rs(DIG, 12)}:role/{R.choice(['deploy', 'ReadOnly', 'ci-runner'])}"),
        ("Instance {d} is now running", lambda: "i-" + rs(HEX, 17)), ("ImageId: {d}", lambda: "ami-" + rs(HEX, 17)),
        ("version: {d}", lambda: f"{R.randint(0, 9)}.{R.randint(0, 30)}.{R.randint(0, 99)}" + R.choice(["", "-rc.1"])),
        ("image: ghcr.io/acme/app@{d}", lambda: "sha256:" + rs(HEX, 64)), ("ETag: \"{d}\"", lambda: rs(HEX, 32)),
        ("Content-MD5: {d}", lambda: base64.b64encode(R.randbytes(16)).decode()),
    ],
}
DECOY_CLASSES = list(DECOYS)
# fmt: on


def mcp(text, structured=None):
    result = {"content": [{"type": "text", "text": text}], "isError": False}
    if structured is not None:
        result["structuredContent"] = structured
    return json.dumps({"jsonrpc": "2.0", "id": R.randint(1, 9999), "result": result})


def make_sample(kind, idx, decoy_picks):
    """One sample: kind's secret (None: no secret) in a random context, plus one decoy per class in decoy_picks."""
    c, lines, secrets, structured = Ctx(), [], [], None
    if kind:
        gen, templates = SECRETS[kind][idx % len(SECRETS[kind])]
        c["v"] = v = gen(c)
        line = R.choice(templates).format_map(c)
        secrets = [{"kind": kind, "value": v}] + c.extra
        lines.append(line)
    decoys = []
    for cls in decoy_picks:
        tpl, dgen = R.choice(DECOYS[cls])
        d = dgen() if callable(dgen) else dgen
        lines.append(tpl.format_map(Ctx(d=d)))
        decoys.append(d)
    R.shuffle(lines)
    fmt = R.choice(["text", "mcp_json"])
    if fmt == "text":
        return {"format": "text", "input": "\n".join(lines), "secrets": secrets, "decoys": decoys}
    if kind and not c.extra and R.random() < 0.35:
        structured = STRUCTURED[kind](v, line, c)
        lines.remove(line)
        lines.insert(0, json.dumps(structured) if R.random() < 0.5 else R.choice(["ok", "Done.", "1 result"]))
    return {"format": "mcp_json", "input": mcp("\n".join(lines), structured), "secrets": secrets, "decoys": decoys}


def forms(value):
    once = json.dumps(value)[1:-1]
    return {value, once, json.dumps(once)[1:-1]}


def problems(s):
    """Why a sample is unusable (empty list: fine)."""
    out = []
    for sec in s["secrets"]:
        if not any(f in s["input"] for f in forms(sec["value"])):
            out.append(f"secret {sec['value']!r} not in input")
    for d in s["decoys"]:
        if sum(s["input"].count(f) for f in forms(d)) != 1:
            out.append(f"decoy {d!r} does not occur exactly once")
        for sec in s["secrets"]:
            if d in sec["value"] or sec["value"] in d:
                out.append(f"decoy {d!r} overlaps secret {sec['value']!r}")
    return out


def generate():
    jobs = [(k, i) for k in SECRETS for i in range(PER_KIND)] + [(None, i) for i in range(DECOY_ONLY)]
    R.shuffle(jobs)
    samples, dclass_count, turn = [], Counter(), 0
    for n, (kind, idx) in enumerate(jobs):
        k = R.choice([0, 0, 1, 1, 2]) if kind else R.choice([1, 1, 2, 3])
        picks = [DECOY_CLASSES[(turn + j) % len(DECOY_CLASSES)] for j in range(k)]
        turn += k
        for _ in range(50):  # redraw on a rare collision (e.g. a short decoy inside a random secret)
            s = make_sample(kind, idx, picks)
            if not problems(s):
                break
        else:
            raise SystemExit(f"sample {n}: {problems(s)}")
        samples.append({"id": f"b-{n}", **s})
        dclass_count.update(picks)
    return samples, dclass_count


def check(path):
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({s["id"] for s in samples}) == len(samples), "duplicate ids"
    for s in samples:
        assert s["format"] in ("text", "mcp_json") and set(s) == {"id", "format", "input", "secrets", "decoys"}
        if s["format"] == "mcp_json":
            body = json.loads(s["input"])
            assert body["jsonrpc"] == "2.0" and body["result"]["content"][0]["type"] == "text"
        bad = problems(s)
        assert not bad, f"{s['id']}: {bad}"
    return samples


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "breadth.jsonl")
    args = ap.parse_args()
    R.seed(args.seed)
    samples, dclass_count = generate()
    with args.out.open("w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    samples = check(args.out)
    kinds = Counter(sec["kind"] for s in samples for sec in s["secrets"])
    shape = Counter(("secrets" if s["secrets"] else "") + ("+decoys" if s["decoys"] else "") for s in samples)
    fmts = Counter(s["format"] for s in samples)
    structured = sum('"structuredContent"' in s["input"] for s in samples)
    print(f"wrote {len(samples)} samples to {args.out} (seed {args.seed}); checks passed")
    print("formats:", dict(fmts), f"(structuredContent: {structured})")
    print("samples:", {k.strip("+") or "none": v for k, v in sorted(shape.items())})
    for title, counts in (("secrets per kind", sorted(kinds.items())), ("decoys per class", dclass_count.items())):
        print(title + ":", *(f"\n  {k:24} {v}" for k, v in counts), sep="")


if __name__ == "__main__":
    main()
