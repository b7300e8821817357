//! Behaviour of the engine through its public API: each detector with its look-alikes,
//! styles, reveal and counts, field rules, JSON walks and the SSE masker.

use serde_json::{Value, json};

use super::*;

fn masker() -> Masker {
    Masker::default()
}

/// The masked text and the counts, nothing revealed.
fn run(text: &str) -> (String, MaskCounts) {
    let mut counts = MaskCounts::default();
    let out = masker().mask_text(text, &Reveal::none(), &mut counts).into_owned();
    (out, counts)
}

fn masked(text: &str) -> String {
    run(text).0
}

/// Asserts that `secret` inside `text` is masked as `kind` (and nothing else is masked).
#[track_caller]
fn caught(kind: &str, text: &str, secret: &str) {
    let (out, counts) = run(text);
    assert!(!out.contains(secret), "{kind}: {secret:?} survived in {out:?}");
    assert!(
        out.contains(&format!("[MASKED:{kind}]")),
        "{kind}: wrong kind in {out:?}"
    );
    assert_eq!(counts.total(), 1, "{kind}: {counts:?} for {text:?}");
}

/// Asserts that nothing in `text` is masked.
#[track_caller]
fn kept(text: &str) {
    let (out, counts) = run(text);
    assert_eq!(out, text, "masked: {counts:?}");
    assert!(counts.is_empty());
}

#[test]
fn aws_access_key_id() {
    for key in ["AKIAIOSFODNN7EXAMPLE", "ASIAINU76VHIIQOFDLHO", "AROA2345672345672345"] {
        caught("aws_access_key_id", &format!("key {key} here"), key);
    }
    caught(
        "aws_access_key_id",
        "AWS_ACCESS=AKIAIKKNRVQXVVHSP7IG",
        "AKIAIKKNRVQXVVHSP7IG",
    );
    caught("aws_access_key_id", "\"AKIAIKKNRVQXVVHSP7IG\"", "AKIAIKKNRVQXVVHSP7IG");
    kept("xAKIAIOSFODNN7EXAMPLE");
    kept("AKIAIOSFODNN7EXAMPLEX");
    kept("AKIAIOSFODNN7EXAMPL1"); // 1 is not base32
    kept("QTJEGERXBYKTZVRXWGFJ and AKIA");
}

#[test]
fn aws_secret_access_key_needs_its_key() {
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    for text in [
        format!("aws_secret_access_key = {secret}"),
        format!("AWS_SECRET_ACCESS_KEY={secret}"),
        format!("\"SecretAccessKey\": \"{secret}\""),
        format!("secret_access_key: {secret}"),
    ] {
        caught("aws_secret_access_key", &text, secret);
    }
    kept(&format!("value {secret}"));
    kept("aws_secret_access_key = short");
}

#[test]
fn pgp_private_key_blocks_with_their_checksum() {
    let block = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\
                 lQWGBGSVV4YBDAClvRnxezIRy2Yv7SFlzC0iFiRF/O/jePSw+XYhvcrTaqSYTGic\n\
                 =8xQN\n\
                 -----END PGP PRIVATE KEY BLOCK-----";
    let (out, counts) = run(&format!("key:\n{block}\nend"));
    assert_eq!(out, "key:\n[MASKED:private_key]\nend");
    assert_eq!(counts.total(), 1);
    kept("-----BEGIN PRIVATE KEY-----\nanything\n-----END PRIVATE KEY-----");
    kept("-----BEGIN OPENSSH PRIVATE KEY----------END OPENSSH PRIVATE KEY-----");
}

#[test]
fn aws_key_ids_of_every_prefix_and_no_fills() {
    for key in ["ABIAQ7ZMB2LRX4T6PWKD", "ACCAQ7ZMB2LRX4T6PWKD", "A3T9Q7ZMB2LRX4T6PWKD"] {
        caught("aws_access_key_id", &format!("id {key}"), key);
    }
    kept("key = AKIAXXXXXXXXXXXXXXXX");
    kept("TODAYINASIAASACKOFRICEFELLOVER");
}

#[test]
fn aws_secret_keys_in_prompts_and_xml() {
    let secret = "Q7ZmB2lRx4T6pWkD+9sF0aLq3VnE8cY1uJ5hG/Ri";
    caught(
        "aws_secret_access_key",
        &format!("AWS Secret Access Key [None]: {secret}\nDefault region name [None]:"),
        secret,
    );
    caught(
        "aws_secret_access_key",
        &format!("AWS Secret Access Key [****************ABCD]: {secret}"),
        secret,
    );
    caught(
        "aws_secret_access_key",
        &format!("<SecretAccessKey>{secret}</SecretAccessKey>"),
        secret,
    );
    caught("sensitive_field", &format!("<secret>{secret}</secret>"), secret);
    kept("<secret>$AWS_SECRET</secret> and <secretName>prod-db</secretName>");
    kept("<secret>a</other>");
}

#[test]
fn slack_tokens_of_every_family() {
    for token in [
        "xoxb-781236542736-2364535789652-GkwFDQoHqzXDVsC6GzqYUypD",
        "xoxb-263594206564-FGqddMF8t08v8N7Oq4i57vs1",
        "xoxp-41684372915-1320496754-45609968301-e708ba56e1517a99f6b5fb07349476ef",
        "xapp-1-A052FGTS2DL-5171572773297-610b6a11f4b7eb819e87b767d80e6575a3634791acb9a9ead051da879eb5b55e",
        "xoxe-1-My0xLTMxNzcwMjQ0MTcxMy01MTU4MTUyNjkxNzE0LTUxODE4NDI0MDY3MzYtMjA5MGFkOTFlZThkZWE2OGFlZDYw",
        "xoxe.xoxp-1-Mi0yLTM0MTQwNDE0MDE3Ni0zNjU5NDY0Njg4MTctNTE4MjA3NTQ5NjA4MC01NDEyOTYyODY5NzUxLThh",
        "xoxs-416843729158-132049654-5609968301-e708ba56e1",
        "xoxa-2-511111111-31111111111-3111111111111-e039d02840a0b9379c",
    ] {
        caught("slack_token", &format!("t={token} end"), token);
    }
    let query = "https://files.slack.com/files-pri/T04MCQ-F04MAA/image.png?t=xoxe-4726837507825-4848681849303-4856614048758-e0b1f3d4cb371f92260edb0d9444d206";
    caught("slack_token", query, "xoxe-4726837507825");
    for hook in [
        "https://hooks.slack.com/workflows/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",
        "hooks.slack.com/triggers/Q7ZmB2lRx4T6pWkD9sF0aLq3VnE8cY1uJ5hGRiAbCdEfGhIjKlMnOpQr",
        "hooks.slack.com/services/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",
    ] {
        caught("slack_token", &format!("url: {hook}"), "hooks.slack.com/");
    }
    for fake in [
        "xoxb-xxxxxxxxx-xxxxxxxxxx-xxxxxxxxxxxx",
        "xoxb-12345-abcd234",
        "xoxb-abcdef-abcdef",
        "xoxp-1234567890",
        "xoxp-1234-1234-1234-4ddbc191d40ee098cbaae6f3523ada2d",
        "xoxp-572370529330-573807301142-572331691188-####################",
        "xoxb-Slack_BOT_TOKEN",
        "xoxe-1-xxx",
        "xoxe.xoxp-1-SlackAppConfigurationAccessTokenHere",
        "xoxb-xoxb-my-bot-token",
    ] {
        kept(&format!("assert token != \"{fake}\""));
    }
}

#[test]
fn jwts_whose_header_does_not_decode_and_jwts_in_base64() {
    let mangled = "eyJhbGciOieeeiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.a_5icKBDo-8EjUlrfvz2k2k-FYaindQ0DEYNrlsnRG0";
    caught("jwt", &format!("JWT := {mangled}"), mangled);
    let jwt =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let b64 = "ZXlKaGJHY2lPaUpJVXpJMU5pSXNJblI1Y0NJNklrcFhWQ0o5LmV5SnpkV0lpT2lJeE1qTTBOVFkzT0Rrd0lu\
               MC5TZmxLeHdSSlNNZUtLRjJRVDRmd3BNZUpmMzZQT2s2eUpWX2FkUXNzdzVj"
        .replace(' ', "");
    assert!(b64.len() > 100, "{jwt}");
    caught("jwt", &format!("sent {b64} (base64)"), &b64);
    kept("ZXlKaGVsbG8gd29ybGQgdGhpcyBpcyBub3QgYSB0b2tlbiBhdCBhbGw=");
    kept("eyJzaG9ydCI6MX0.eyJ4IjoxfQ.sig and eyesight.eyeball");
}

#[test]
fn generic_assignments_under_secret_names() {
    let v = "Zf3D0LXCM3EIMbgJpUNnkRtOfOueHznB";
    for text in [
        format!("todo_secret_do_not_commit = {v}"),
        format!("mySecretString={v}"),
        format!("some_api_token_123 = \"{v}\""),
        format!("DB_PASSWORD := \"{v}\""),
        format!("API_TOKEN := {v}"),
        format!("SECRET ?= {v}"),
        format!("$token .= \"{v}\";"),
        format!("utils.GetEnvOrDefault(\"api_token\", \"{v}\")"),
        format!("os.getenv('DB_PASSWORD', '{v}')"),
        format!("creds = {v}"),
        format!("\"user_auth\": \"{v}\""),
        format!("\"credentials\" : \"{v}\""),
        format!("API Key: {v}"),
        format!("vaulttoken={v}"),
    ] {
        caught("sensitive_field", &text, v);
    }
    for text in [
        "publicToken = \"9Cnzj4p4WGeKLs1Pt8QuKUpRKfFLfRYC9AIKjbJTWit\"",
        "public_key = \"9Cnzj4p4WGeKLs1Pt8QuKUpRKfFLfRYC9AIKjbJTWit\"",
        "credentialsId: 'ff083f76-7804-4ef1-80e4-fe975bb9141b'",
        "secret_length = 32",
        "LLM_SECRET_NAME = \"NEXUS-GPT4-API-KEY\"",
        "access_token_url='https://github.com/login/oauth/access_token'",
        "notes = \"Maven - io.jsonwebtoken:jjwt-jackson-0.11.2\"",
        "PuttyPassword=0",
        "passwordVariable: 'PASSWORD'",
        "creds = vault",
        "\"auth\": \"basic\"",
        "password = \"${DB_PASSWORD}\"",
        "token: {{ .Values.token }}",
        "api_key=%API_KEY%",
        "password: <your password>",
        "Authorization: Bearer XXXXXXXXXXXX",
        "Authorization: Bearer $API_KEY",
        "Authorization: Bearer <your token>",
        "Authorization: Basic ...",
        "Authorization: Token **********",
        "mongodb://xxxx:xxxxx@db.internal:27017/app",
        "x := y; count := 3",
    ] {
        kept(text);
    }
    // `:=` masks the value, never the `=`.
    let out = masked(&format!("DB_PASSWORD := {v}"));
    assert_eq!(out, "DB_PASSWORD := [MASKED:sensitive_field]");
}

#[test]
fn curl_user_passwords() {
    for (text, password) in [
        (
            "curl --cacert ca.crt -u elastic:P@ssw0rd$1 https://localhost:9200",
            "P@ssw0rd$1",
        ),
        (
            "curl -k -X POST https://h/x \\\n  -d 'world' \\\n  -u developer:yqDVtkqPECriaLRi",
            "yqDVtkqPECriaLRi",
        ),
        ("curl -u \":d2LkV78zLx!t\" https://localhost:9200", "d2LkV78zLx!t"),
        (
            "curl -s --user 'api:d2LkV78zLx!t' https://api.example.net/v2",
            "d2LkV78zLx!t",
        ),
        (
            "curl -s -v --user \"j.smith:dB2yF6@qL9vZm1P#4J\" \"https://api.example.org\"",
            "dB2yF6@qL9vZm1P#4J",
        ),
        ("curl --user kevin:'pRf7vG2h1L8nQkW9' -iX PATCH", "pRf7vG2h1L8nQkW9"),
        (
            "curl --user=roger23@gmail.com:pQ9wTxu4Fg https://www.example.com",
            "pQ9wTxu4Fg",
        ),
    ] {
        let text = text.replace("\\n", "\n");
        caught("command_line_password", &text, password);
    }
    for text in [
        "curl -i -u 'test:test'",
        "curl -sL --user \"$1:$2\" \"$3\"",
        "curl -u <user:password> https://test.com/endpoint",
        "curl --user neo4j:[PASSWORD] http://[IP]:7474/db/data/",
        "curl -u \"myusername\" http://localhost:15130/api/check_user/",
        "curl -u username:token",
        "curl -u \"${_username}:${_password}\"",
        "curl --user \"xxx:yyy\"",
        "curl -u \":\" https://localhost:9200",
        "curl -X POST --user \"$(cat ./login.txt):$(cat ./password.txt)\"",
        "docker run -u 1000:1000 image",
        "git push -u origin main",
    ] {
        kept(text);
    }
}

#[test]
fn stripe_prod_keys_and_fills() {
    for key in [
        "sk_prod_51OuEMLAlTWGaDypq4P5cuDHbuKeG4tAG",
        "rk_prod_51OuEMLAlTWGaDypquDn9aZigaJOsa9N",
    ] {
        caught("stripe_key", &format!("key {key}"), key);
    }
    kept("sk_live_xxxxxxxxxxxxxxxxxxxxxxxx and ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    kept("AIzaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
}

#[test]
fn tokens() {
    let ghp = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
    caught("github_token", &format!("token {ghp}."), ghp);
    caught("github_token", &format!("contact={ghp}"), ghp);
    let pat = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz";
    caught("github_token", &format!("use {pat}"), pat);
    kept("ghp_short and ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789_x");

    let slack = "xoxb-48244757710-46563414839-B0bobzjcU9kCTGRBI1oOZSHC";
    caught("slack_token", &format!("{slack} -- end"), slack);
    let hook = "https://hooks.slack.com/services/T024TTTTT/BBB72BBL/AZAAA9u0pA4ad666eMgbi555";
    caught("slack_token", &format!("post to {hook} now"), "T024TTTTT/BBB72BBL");
    // Slack's documentation example is a placeholder.
    kept("post to https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX now");
    kept("xoxb- and xoxz-1234567890123");

    for key in [
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_8FJowoRoWD8s7bA16J7PglOU",
        "pk_test_TYooMQauvdEDq54NiTphI7jx",
    ] {
        caught("stripe_key", &format!("key: {key}"), key);
    }
    kept("sk_live_short and mask_live_4eC39HqLyjWDarjtT1zdp7dc");

    let google = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY";
    caught("google_api_key", &format!("({google})"), google);
    kept("AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWYZ");
}

#[test]
fn jwt() {
    let jwt =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    caught("jwt", &format!("Bearer {jwt}"), jwt);
    caught("jwt", &format!("{jwt}."), jwt);
    let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.";
    caught("jwt", &format!("t={unsigned} x"), "eyJzdWIiOiIxIn0");
    // No `alg` in the header, or not three segments.
    kept("eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.abc");
    kept("eyJhbGciOiJIUzI1NiJ9.only-two");
}

/// A PEM body of `lines` full lines of `width` base64 characters and a shorter last one.
fn pem_body(lines: usize, width: usize) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = String::new();
    for n in 0..lines {
        body.extend((0..width).map(|k| char::from(alphabet[(n * 7 + k * 13) % 64])));
        body.push('\n');
    }
    body.push_str("MIIEvQIBADAN==");
    body
}

#[test]
fn private_keys() {
    let pem = format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
        pem_body(4, 64)
    );
    let (out, counts) = run(&format!("key:\n{pem}\nafter"));
    assert_eq!(out, "key:\n[MASKED:private_key]\nafter");
    assert_eq!(counts.0.get("private_key"), Some(&1), "{counts:?}");

    // Headers of an encrypted key (RFC 1421), CRLF, indentation, OpenSSH's 70 columns.
    let encrypted = format!(
        "-----BEGIN RSA PRIVATE KEY-----\r\nProc-Type: 4,ENCRYPTED\r\nDEK-Info: AES-128-CBC,0A1B2C\r\n\r\n{}\r\n-----END RSA PRIVATE KEY-----",
        pem_body(3, 64).replace('\n', "\r\n")
    );
    assert_eq!(masked(&format!("{encrypted} tail")), "[MASKED:private_key] tail");
    let indented = format!(
        "key: |\n  -----BEGIN OPENSSH PRIVATE KEY-----\n  {}\n  -----END OPENSSH PRIVATE KEY-----\n",
        pem_body(3, 70).replace('\n', "\n  ")
    );
    assert_eq!(masked(&indented), "key: |\n  [MASKED:private_key]\n");
    // One line with blanks for line breaks, as environment variables flatten it.
    let flat = format!(
        "K=-----BEGIN PRIVATE KEY----- {} -----END PRIVATE KEY-----",
        pem_body(3, 64).replace('\n', " ")
    );
    assert_eq!(masked(&flat), "K=[MASKED:private_key]");

    // Cut at the end of the text, or after two full lines and followed by something else.
    let cut = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}",
        pem_body(2, 70).trim_end_matches("MIIEvQIBADAN==")
    );
    assert_eq!(masked(&format!("x {}", cut.trim_end())), "x [MASKED:private_key]");
    assert_eq!(
        masked(&format!("{cut}[truncated]")),
        "[MASKED:private_key]\n[truncated]"
    );
    let escaped = format!(
        "{}{}",
        r"-----BEGIN PRIVATE KEY-----\n",
        pem_body(2, 64).replace('\n', r"\n")
    ) + r"\n-----END PRIVATE KEY----- tail";
    assert_eq!(masked(&escaped), "[MASKED:private_key] tail");
    assert_eq!(
        masked(&format!("private_key={pem}")),
        "private_key=[MASKED:private_key]"
    );

    kept("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
    kept("---------- ----- -----BEGIN");
}

#[test]
fn private_key_markers_never_hide_other_text() {
    // The red team's query: SQL between a BEGIN and an END line is not a key.
    for sql in [
        "SELECT name FROM customers /* -----BEGIN PRIVATE KEY----- */ UNION SELECT value FROM service_config /* -----END PRIVATE KEY----- */",
        "SELECT 1\n-----BEGIN PRIVATE KEY-----\nUNION SELECT value FROM service_config\n-----END PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\nUNION\n-----END PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nDROP TABLE users;\n-----END PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nUNION SELECT 1\n-----END RSA PRIVATE KEY-----",
    ] {
        kept(sql);
    }
    // Lines of different widths are no PEM body; nor is padding in the middle.
    kept(
        "-----BEGIN PRIVATE KEY-----\nAAAAAAAAAAAAAAAAAAAA\nBBBBBBBBBBBBBBBBBBBBBBBBBBBBB\nCC\n-----END PRIVATE KEY-----",
    );
    kept("-----BEGIN PRIVATE KEY-----\nAAAAAAAAAAAAAAA=\nBBBBBBBBBBBBBBBB\n-----END PRIVATE KEY-----");
    // Nor is a block longer than any key.
    let huge = format!(
        "-----BEGIN PRIVATE KEY-----\n{}-----END PRIVATE KEY-----",
        "A".repeat(64).repeat(300).replace(
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
        )
    );
    kept(&huge);
    // A body with other text after it is masked only through its lines.
    let (out, _) = run(&format!(
        "-----BEGIN PRIVATE KEY-----\n{}UNION SELECT 1",
        pem_body(2, 64).trim_end_matches("MIIEvQIBADAN==")
    ));
    assert!(
        out.starts_with("[MASKED:private_key]") && out.ends_with("\nUNION SELECT 1"),
        "{out}"
    );
}

#[test]
fn key_value_matches_are_bounded_to_the_value() {
    // An unterminated quote does not take the rest of the text.
    kept("password = 'x UNION SELECT value FROM service_config");
    kept("{\\\"token\\\": \\\"abc UNION SELECT 1");
    // A long quoted value with blanks is prose, not a secret.
    let prose = format!(
        "secret: \"{}\"",
        "UNION SELECT value FROM service_config WHERE 1=1 ".repeat(2)
    );
    kept(&prose);
    // In free text a quoted value with a blank cannot be validated as a secret: masking it
    // would let quotes hide code (`/* "password": " */ UNION … /* " */`).
    kept("password: \"correct horse battery\"");
    for key in ["password", "secret", "api_key", "token"] {
        let sql = format!(
            "SELECT name FROM customers WHERE id = 1 /* \"{key}\": \" */ UNION SELECT value FROM service_config /* \" */"
        );
        kept(&sql);
        kept(&format!("SELECT 1 /* {key}=\" */ UNION SELECT 2 /* \" */"));
        kept(&format!("SELECT 1 /* {key}='\t*/ UNION SELECT 2 /*' */"));
        // No blank needed: comments, quotes and substitutions switch context too.
        kept(&format!(
            "SELECT 1 /* \"{key}\": \"*/UNION(SELECT(value)FROM(service_config))/*\" */"
        ));
        kept(&format!(
            "SELECT'{key}:\"'UNION(SELECT(value)FROM(service_config))WHERE'\"'='\"'"
        ));
        kept(&format!("SELECT 1 -- {key}=\"\\nUNION(SELECT(2))--\""));
        kept(&format!("curl -H {key}=\"$(cat${{IFS}}/etc/passwd)\""));
        kept(&format!("{key}=\"a`id`b\""));
        kept(&format!(
            "SELECT 1 /* {key}=*/UNION/**/SELECT/**/value/**/FROM/**/service_config/* */"
        ));
        kept(&format!("sh -c 'x {key}=$(cat${{IFS}}/etc/passwd)'"));
    }
    // Under a JSON key the structure says where the value ends: it is masked whole.
    let mut v = serde_json::json!({"password": "correct horse battery"});
    assert!(Masker::default().mask_value(&mut v, &Reveal::none(), &mut MaskCounts::default()));
    assert_eq!(v, serde_json::json!({"password": "[MASKED:sensitive_field]"}));
    // Authorization takes its scheme and credentials, not the rest of the line.
    assert_eq!(
        masked("Authorization: Bearer abc.def UNION SELECT 1"),
        "Authorization: [MASKED:sensitive_field] UNION SELECT 1"
    );
    assert_eq!(
        masked("Cookie: a=b; sid=xyz and then prose"),
        "Cookie: [MASKED:sensitive_field] and then prose"
    );
}

#[test]
fn passwords_in_urls_and_connection_strings() {
    assert_eq!(
        masked("postgres://app:s3cr3t@db.internal:5432/app"),
        "postgres://app:[MASKED:password_in_url]@db.internal:5432/app"
    );
    assert_eq!(
        masked("redis://:p@ss@cache:6379"),
        "redis://:[MASKED:password_in_url]@cache:6379"
    );
    assert_eq!(
        masked("Server=db;Database=app;User Id=sa;Password=Hunter2!;"),
        "Server=db;Database=app;User Id=sa;[MASKED:password_in_url];".replace("[MASKED", "Password=[MASKED")
    );
    assert_eq!(masked("uid=sa;pwd=abc"), "uid=sa;pwd=[MASKED:password_in_url]");
    kept("https://example.com/path?q=1 and ftp://user@host/");
}

#[test]
fn emails() {
    caught(
        "email",
        "mail jane.doe+tag@mail.example.co.uk now",
        "jane.doe+tag@mail.example.co.uk",
    );
    caught("email", "qpfqlgnz.ighye@corp.internal.", "qpfqlgnz.ighye@corp.internal");
    caught("email", "mailto:a@b.io", "a@b.io");
    kept("@decorator user@localhost a@b.c 1@2.3 @@ x@ @y.com");
}

#[test]
fn credit_cards() {
    for card in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
        "3782 822463 10005",
    ] {
        caught("credit_card", &format!("card {card}, exp 12/29"), card);
    }
    caught("credit_card", "name,4111111111111111,12/29", "4111111111111111");
    kept("4111111111111112"); // Luhn
    kept("ORDER-4111111111111111 i-4111111111111111 x4111111111111111");
    kept("0.4111111111111111 and 1,4111111111111111 and 4111111111111111.5");
    kept("41111111111111111111"); // 20 digits
    kept("1111111111111117 9111111111111112");
    kept("4275 2051 9331 7390 5105 5346 5253 3920");
    // A longer group run: the longest valid prefix is the card.
    caught("credit_card", "4111 1111 1111 1111 2024", "4111 1111 1111 1111");
}

#[test]
fn us_ssns() {
    caught("us_ssn", "ssn 123-45-6789.", "123-45-6789");
    caught("us_ssn", "contact=798-70-7683", "798-70-7683");
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "123-00-4567",
        "123-45-0000",
    ] {
        kept(bad);
    }
    kept("x-123-45-6789 123-45-67890 2023-45-6789");
}

#[test]
fn ibans() {
    for iban in [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
    ] {
        caught("iban", &format!("iban {iban}."), iban);
    }
    kept("DE89370400440532013001"); // checksum
    kept("DE8937040044053201300"); // length
    kept("US89370400440532013000"); // no IBAN in the US
    kept("XDE89370400440532013000");
}

#[test]
fn phones() {
    for phone in [
        "+1 415 555 0123",
        "+44 20 7946 0958",
        "+49-30-1234567",
        "+33 (0)1 23 45 67 89",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
    ] {
        caught("phone", &format!("call {phone} now"), phone);
    }
    // Bare digit runs, account ids, dates and versions are not phone numbers.
    kept("156244203504 and 5551234567 and 2026-11-23 and v2.2.65 and 1234-567-8901");
    kept("a+14155550123 and +1234 and 155-123-4567");
}

#[test]
fn look_alikes_survive() {
    kept(
        "f06c144a-e198-6196-afbd-f81337730edf 2b97b2a82ec6cc5a9a6f5d50a029fe9aec209164 \
         1734f2097516d556ff6670d07ba12ebfb4e565aa38498aed926bc541ebfbf0ca 156244203504 \
         i-0240102efcbd06504 arn:aws:s3:::bloplalgwz v2.2.65 QTJEGERXBYKTZVRXWGFJ \
         ORDER-1535184184396778 DE57964023592563416858 666-20-9011 4695604230411441 \
         372172321668480 2026-11-23T10:45:12Z request_id=9f2c max_tokens=100 token_type: bearer",
    );
}

#[test]
fn text_field_rule() {
    assert_eq!(
        masked("password=hunter2 next"),
        "password=[MASKED:sensitive_field] next"
    );
    assert_eq!(masked("db_password: 'x.y'"), "db_password: '[MASKED:sensitive_field]'");
    // In free text a quote inside the value could close another context: the value is not
    // taken past it.
    assert!(masked(r#"{"api_key": "abc\"def", "n": 1}"#).contains(r#"\"def""#));
    assert_eq!(
        masked(r#"{"api_key": "abc-def_1.2~x!", "n": 1}"#),
        r#"{"api_key": "[MASKED:sensitive_field]", "n": 1}"#
    );
    assert_eq!(
        masked(r#"{\"token\": \"abc\"}"#),
        r#"{\"token\": \"[MASKED:sensitive_field]\"}"#
    );
    assert_eq!(
        masked("Authorization: Bearer abc.def\nnext"),
        "Authorization: [MASKED:sensitive_field]\nnext"
    );
    assert_eq!(
        masked("X-Api-Key: k1 --secret=s2"),
        "X-Api-Key: [MASKED:sensitive_field] --secret=[MASKED:sensitive_field]"
    );
    kept("max_tokens=100 token_count: 5 password_hint=cat password: null token={}");
    kept("if a == b and password == x");
}

#[test]
fn escaped_newlines_do_not_glue_words() {
    assert_eq!(
        masked(r"line\nAKIAIOSFODNN7EXAMPLE"),
        r"line\n[MASKED:aws_access_key_id]"
    );
}

#[test]
fn utf8_around_matches() {
    let (out, _) = run("é jane@example.com ü 123-45-6789 ✓");
    assert_eq!(out, "é [MASKED:email] ü [MASKED:us_ssn] ✓");
    kept("héllo wörld ✓ 😀");
}

#[test]
fn counts_and_reveal() {
    let m = masker();
    let text = "a@example.com b@example.com 123-45-6789";
    let mut counts = MaskCounts::default();
    let out = m.mask_text(text, &Reveal::from_header("email"), &mut counts);
    assert_eq!(out, "a@example.com b@example.com [MASKED:us_ssn]");
    assert_eq!(counts.0.get("us_ssn"), Some(&1));
    assert_eq!(counts.0.get("email"), None, "revealed kinds are not counted");

    let mut counts = MaskCounts::default();
    m.mask_text(text, &Reveal::none(), &mut counts);
    assert_eq!(counts.0.get("email"), Some(&2));
    assert_eq!(counts.total(), 3);

    let mut counts = MaskCounts::default();
    let all = Reveal::from_header("email,us_ssn");
    assert!(matches!(
        m.mask_text(text, &all, &mut counts),
        std::borrow::Cow::Borrowed(_)
    ));
    assert!(counts.is_empty());
}

fn with(config: MaskConfig) -> Masker {
    Masker::new(&config).expect("valid config")
}

const KEY: &str = "000102030405060708090a0b0c0d0e0f";

#[test]
fn styles() {
    let m = with(MaskConfig {
        styles: [
            ("credit_card".to_owned(), Style::Last4),
            ("email".to_owned(), Style::Token),
            ("sensitive_field".to_owned(), Style::Last4),
        ]
        .into(),
        token_key: Some(KEY.to_owned()),
        ..MaskConfig::default()
    });
    let mut c = MaskCounts::default();
    let none = Reveal::none();
    assert_eq!(
        m.mask_text("4111 1111 1111 1111", &none, &mut c),
        "[MASKED:credit_card:\u{2026}1111]"
    );
    assert_eq!(
        m.mask_text("pwd=short", &none, &mut c),
        "pwd=[MASKED:sensitive_field]",
        "under 8 chars"
    );
    assert_eq!(
        m.mask_text(r#"pwd="abcdefgh]""#, &none, &mut c),
        r#"pwd="[MASKED:sensitive_field]""#
    );
    let a = m.mask_text("a@example.com", &none, &mut c).into_owned();
    let b = m.mask_text("b@example.com", &none, &mut c).into_owned();
    assert!(
        a.starts_with("[MASKED:email:tok_") && a.len() == "[MASKED:email:tok_]".len() + 20,
        "{a}"
    );
    assert_ne!(a, b);
    assert_eq!(a, m.mask_text("a@example.com", &none, &mut c), "deterministic");
    let other = with(MaskConfig {
        default_style: Style::Token,
        token_key: Some("ff".repeat(16)),
        ..MaskConfig::default()
    });
    assert_ne!(a, other.mask_text("a@example.com", &none, &mut c), "depends on the key");
    // The style is applied to field rules in JSON too.
    let mut v = json!({"password": "correct horse battery"});
    m.mask_value(&mut v, &none, &mut c);
    assert_eq!(v, json!({"password": "[MASKED:sensitive_field:\u{2026}tery]"}));
}

#[test]
fn config_problems_are_all_listed() {
    let config: MaskConfig = serde_json::from_value(json!({
        "disabled": ["email", "emial"],
        "sensitive_keys": ["pin", "--"],
        "custom": [
            {"name": "", "pattern": "x"},
            {"name": "email", "pattern": "y"},
            {"name": "ticket", "pattern": "TICKET-("},
            {"name": "ok", "pattern": "OK-[0-9]{1,12}"},
            {"name": "ok", "pattern": "z"},
            {"name": "bad name", "pattern": "w"},
            {"name": "huge", "pattern": "(a{1000}){1000}"},
            {"name": "spans", "pattern": "BEGIN.*END"},
            {"name": "long", "pattern": "[a-z]{2000}"}
        ],
        "styles": {"nope": "redact", "ok": "token"},
    }))
    .unwrap();
    let problems = Masker::new(&config).unwrap_err().problems;
    let expect = [
        "disabled[1]",
        "sensitive_keys[1]",
        "custom[0].name",
        "custom[1].name",
        "custom[2].pattern",
        "custom[4].name",
        "custom[5].name",
        "custom[6].pattern",
        "custom[7].pattern",
        "custom[8].pattern",
        "styles.nope",
        "token_key",
    ];
    for e in expect {
        assert!(
            problems.iter().any(|p| p.starts_with(e)),
            "missing {e} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");

    for (key, why) in [("zz", "not hex"), ("00ff", "at least 16")] {
        let err = Masker::new(&MaskConfig {
            token_key: Some(key.to_owned()),
            ..MaskConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
}

#[test]
fn custom_rules_and_disabled_kinds() {
    let m = with(MaskConfig {
        disabled: vec!["email".to_owned()],
        custom: vec![CustomRule {
            name: "ticket".to_owned(),
            pattern: r"TICKET-\d{4}".to_owned(),
        }],
        sensitive_keys: vec!["pin".to_owned()],
        ..MaskConfig::default()
    });
    let mut c = MaskCounts::default();
    let out = m.mask_text("TICKET-1234 a@example.com 123-45-6789 pin=42", &Reveal::none(), &mut c);
    assert_eq!(
        out,
        "[MASKED:ticket] a@example.com [MASKED:us_ssn] pin=[MASKED:sensitive_field]"
    );
    assert!(m.kinds().contains(&"ticket".to_owned()));
    assert!(!m.kinds().contains(&"email".to_owned()));
    assert_eq!(builtin_kinds().len(), 16);
    assert_eq!(masker().kinds().len(), 16);

    // Overlaps between custom and built-in matches: earliest wins, then longest.
    let m = with(MaskConfig {
        custom: vec![CustomRule {
            name: "host".to_owned(),
            pattern: r"example\.com/[A-Za-z0-9_]{1,64}".to_owned(),
        }],
        ..MaskConfig::default()
    });
    let out = m.mask_text("jane@example.com/path example.com/x", &Reveal::none(), &mut c);
    assert_eq!(out, "[MASKED:email]/path [MASKED:host]");
}

fn mask_value(v: &mut Value) -> MaskCounts {
    let mut counts = MaskCounts::default();
    masker().mask_value(v, &Reveal::none(), &mut counts);
    counts
}

#[test]
fn json_field_rules() {
    let mut v = json!({
        "user": "jane",
        "password": "hunter2",
        "db_password": 12345,
        "client_secret": {"a": "x", "b": [1, true, null, "y"]},
        "apiKey": "",
        "access_token": false,
        "max_tokens": 100,
        "token_type": "bearer",
        "password_hint": "cat",
        "nested": [{"Authorization": "Basic abc"}],
        "aws_secret_access_key": "anything",
    });
    let counts = mask_value(&mut v);
    assert_eq!(
        v,
        json!({
            "user": "jane",
            "password": "[MASKED:sensitive_field]",
            "db_password": "[MASKED:sensitive_field]",
            "client_secret": {"a": "[MASKED:sensitive_field]", "b": ["[MASKED:sensitive_field]", true, null, "[MASKED:sensitive_field]"]},
            "apiKey": "",
            "access_token": false,
            "max_tokens": 100,
            "token_type": "bearer",
            "password_hint": "cat",
            "nested": [{"Authorization": "[MASKED:sensitive_field]"}],
            "aws_secret_access_key": "[MASKED:aws_secret_access_key]",
        })
    );
    assert_eq!(counts.0.get("sensitive_field"), Some(&6));
    assert_eq!(counts.0.get("aws_secret_access_key"), Some(&1));

    // Revealed: the value is walked like any other.
    let mut v = json!({"password": "a@example.com"});
    let mut counts = MaskCounts::default();
    masker().mask_value(&mut v, &Reveal::from_header("sensitive_field"), &mut counts);
    assert_eq!(v, json!({"password": "[MASKED:email]"}));
}

#[test]
fn json_strings_numbers_and_keys() {
    let mut v = json!({"jane@example.com": "call 555-123-4567", "card": 4111111111111111u64, "n": 4111111111111112u64, "f": 1.5});
    let counts = mask_value(&mut v);
    assert_eq!(
        v,
        json!({"[MASKED:email]": "call [MASKED:phone]", "card": "[MASKED:credit_card]", "n": 4111111111111112u64, "f": 1.5})
    );
    assert_eq!(counts.total(), 3);
}

#[test]
fn json_inside_strings() {
    let inner = r#"{"row0": "DE89370400440532013000", "ref": "v9.1.7", "password": "x"}"#;
    let mut v = json!({"content": [{"type": "text", "text": inner}]});
    let counts = mask_value(&mut v);
    let text = v["content"][0]["text"].as_str().unwrap();
    // Re-serialized compact; serde_json (without `preserve_order`) sorts the keys.
    assert_eq!(
        text,
        r#"{"password":"[MASKED:sensitive_field]","ref":"v9.1.7","row0":"[MASKED:iban]"}"#
    );
    assert_eq!(counts.total(), 2);

    // Unchanged inside: the original text stays as it was (not re-serialized).
    let mut v = json!({"text": " [1, 2,   3] "});
    assert!(!masker().mask_value(&mut v, &Reveal::none(), &mut MaskCounts::default()));
    assert_eq!(v["text"], " [1, 2,   3] ");

    // Not JSON after all: masked as text.
    let mut v = json!({"text": "[INFO] jane@example.com"});
    mask_value(&mut v);
    assert_eq!(v["text"], "[INFO] [MASKED:email]");
}

#[test]
fn only_long_strict_base64_blobs_are_not_scanned() {
    // Long strict base64 is binary content: skipped, even where a detector would match.
    let blob = format!("{}AAA+AKIAIOSFODNN7EXAMPLE", "iVBORw0K".repeat(40));
    let blob = blob.as_str();
    let mut v = json!({"content": [
        {"type": "image", "data": blob, "mimeType": "image/png"},
        {"type": "audio", "data": blob},
        {"type": "resource", "resource": {"uri": "file:///a", "blob": blob}},
        {"type": "resource", "resource": {"uri": "file:///b", "text": blob}},
        {"type": "text", "data": blob},
    ]});
    mask_value(&mut v);
    assert_eq!(v["content"][0]["data"], blob);
    assert_eq!(v["content"][1]["data"], blob);
    assert_eq!(v["content"][2]["resource"]["blob"], blob);
    assert_ne!(v["content"][3]["resource"]["text"], blob);
    assert_ne!(v["content"][4]["data"], blob);

    // Anything else in those fields is text: not base64, or short enough to be a secret.
    for text in [
        "AKIAIOSFODNN7EXAMPLE jane@example.com",
        "AKIAIOSFODNN7EXAMPLE+jane@example.com",
        &format!("{}==jane@example.com", "QUJD".repeat(100)),
        &format!("{} 4111111111111111", "QUJD".repeat(100)),
        "AKIAIOSFODNN7EXAMPLE",
        "4111111111111111",
    ] {
        let mut v = json!({"contents": [{"uri": "x:y", "blob": text}, {"type": "image", "data": text}]});
        mask_value(&mut v);
        let out = v.to_string();
        for secret in ["AKIAIOSFODNN7EXAMPLE", "jane@example.com", "4111111111111111"] {
            assert!(!out.contains(secret), "{secret} survived in {out}");
        }
    }
}

#[test]
fn strict_base64() {
    for ok in ["QUJD", "QUI=", "QQ==", "a+/9"] {
        assert!(super::engine::is_strict_base64(ok), "{ok}");
    }
    for bad in ["", "QUJ", "QUJD=", "Q===", "QU=D", "QUJD\n", "QU D", "QU_D", "QU-D"] {
        assert!(!super::engine::is_strict_base64(bad), "{bad}");
    }
}

#[test]
fn keys_are_masked_at_any_depth_without_losing_values() {
    let mut v = json!({"a": {"b": [{"AKIAIOSFODNN7EXAMPLE": 1, "jane@example.com": 2, "ok": 3}]},
        "text": r#"{"ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789": "x"}"#,
        "password": {"bob@example.com": "y"}});
    let counts = mask_value(&mut v);
    let out = v.to_string();
    for secret in ["AKIAIOSFODNN7EXAMPLE", "jane@example.com", "ghp_", "bob@example.com"] {
        assert!(!out.contains(secret), "{secret} survived in {out}");
    }
    assert_eq!(v["a"]["b"][0]["[MASKED:aws_access_key_id]"], 1);
    assert_eq!(v["a"]["b"][0]["ok"], 3);
    assert!(counts.total() >= 5, "{counts:?}");

    // Two keys that mask to the same placeholder (and a key already named like one) keep
    // every value.
    let mut v = json!({"a@example.com": 1, "b@example.com": 2, "[MASKED:email]": 3, "[MASKED:email]#2": 4});
    mask_value(&mut v);
    let map = v.as_object().unwrap();
    assert_eq!(map.len(), 4, "{v}");
    let mut values: Vec<i64> = map.values().filter_map(Value::as_i64).collect();
    values.sort_unstable();
    assert_eq!(values, [1, 2, 3, 4]);
    assert!(!v.to_string().contains("@example.com"));
}

#[test]
fn card_numbers_in_any_number_notation() {
    for text in [
        "4111111111111111",
        "-4111111111111111",
        "4111111111111111.0",
        "4111111111111111e0",
        "41111111111111.11e2",
        "4111111111111111.25",
        "-4.111111111111111E15",
        "6011000990139424.000",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"card":{text},"list":[{text}]}}}}"#);
        let mut c = MaskCounts::default();
        let JsonMasked::Changed(out) = masker().mask_json(body.as_bytes(), &Reveal::none(), &mut c) else {
            panic!("{text} was not masked");
        };
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["result"]["card"], "[MASKED:credit_card]", "{text}");
        assert_eq!(out["result"]["list"][0], "[MASKED:credit_card]", "{text}");
    }
    // Not cards: Luhn fails, too short, a plain float, too many digits to be one.
    for text in [
        "4111111111111112",
        "-4111111111111112.0",
        "411111111111",
        "1.5",
        "1e300",
        "-0.0",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"n":{text}}}}}"#);
        let out = masker().mask_json(body.as_bytes(), &Reveal::none(), &mut MaskCounts::default());
        assert_eq!(out, JsonMasked::Unchanged, "{text}");
    }
    // A float past 2^53 has lost the digits it was written with: masked, not guessed.
    let body = r#"{"jsonrpc":"2.0","id":1,"result":{"n":4111111111111111111.0}}"#;
    let out = masker().mask_json(body.as_bytes(), &Reveal::none(), &mut MaskCounts::default());
    assert!(matches!(out, JsonMasked::Changed(_)));
}

#[test]
fn message_members_are_masked_like_any_string() {
    let body = r#"{"jsonrpc":"2.0 AKIAIOSFODNN7EXAMPLE","id":"AKIAIOSFODNN7EXAMPLE jane@example.com","method":"x bob@example.com","result":{}}"#;
    let JsonMasked::Changed(out) = masker().mask_json(body.as_bytes(), &Reveal::none(), &mut MaskCounts::default())
    else {
        panic!("changed");
    };
    let out = String::from_utf8(out).unwrap();
    for secret in ["AKIAIOSFODNN7EXAMPLE", "jane@example.com", "bob@example.com"] {
        assert!(!out.contains(secret), "{secret} survived in {out}");
    }
    // A number id that is a card is masked too; a plain one is left as it is.
    let body = r#"[{"jsonrpc":"2.0","id":4111111111111111,"result":{}},{"jsonrpc":"2.0","id":7,"result":{}}]"#;
    let JsonMasked::Changed(out) = masker().mask_json(body.as_bytes(), &Reveal::none(), &mut MaskCounts::default())
    else {
        panic!("changed");
    };
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out[0]["id"], "[MASKED:credit_card]");
    assert_eq!(out[1]["id"], 7);
}

#[test]
fn messages_and_bodies() {
    let m = masker();
    let none = Reveal::none();
    let mut c = MaskCounts::default();
    let body = json!({"jsonrpc": "2.0", "id": "jane@example.com", "method": "tools/call",
        "params": {"name": "login", "arguments": {"password": "x", "note": "123-45-6789"}}});
    let JsonMasked::Changed(out) = m.mask_json(body.to_string().as_bytes(), &none, &mut c) else {
        panic!("changed");
    };
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["id"], "[MASKED:email]", "ids are masked like any string");
    assert_eq!(out["params"]["arguments"]["password"], "[MASKED:sensitive_field]");
    assert_eq!(out["params"]["arguments"]["note"], "[MASKED:us_ssn]");

    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "a@example.com"}]}},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -1, "message": "bad 123-45-6789", "data": {"token": "t"}}},
    ]);
    let JsonMasked::Changed(out) = m.mask_json(batch.to_string().as_bytes(), &none, &mut c) else {
        panic!("changed");
    };
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out[0]["result"]["content"][0]["text"], "[MASKED:email]");
    assert_eq!(out[1]["error"]["message"], "bad [MASKED:us_ssn]");
    assert_eq!(out[1]["error"]["data"]["token"], "[MASKED:sensitive_field]");

    // A non-message JSON body has every string walked, `id` and `method` included.
    let JsonMasked::Changed(out) = m.mask_json(br#"{"id": "a@example.com"}"#, &none, &mut c) else {
        panic!("changed");
    };
    assert_eq!(out, br#"{"id":"[MASKED:email]"}"#);

    assert_eq!(
        m.mask_json(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, &none, &mut c),
        JsonMasked::Unchanged
    );
    assert_eq!(m.mask_json(b"not json", &none, &mut c), JsonMasked::NotJson);
    assert_eq!(m.mask_json(b"\"\xFF\"", &none, &mut c), JsonMasked::NotJson);
    assert_eq!(m.mask_json(b"", &none, &mut c), JsonMasked::NotJson);
}

#[test]
fn bytes_as_text() {
    let m = masker();
    let none = Reveal::none();
    let mut c = MaskCounts::default();
    assert_eq!(m.mask_bytes_as_text(b"plain", &none, &mut c), None);
    assert_eq!(
        m.mask_bytes_as_text(b"bad \xFF byte", &none, &mut c),
        Some("bad \u{FFFD} byte".as_bytes().to_vec())
    );
    assert_eq!(
        m.mask_bytes_as_text(b"\xC3 a@example.com", &none, &mut c),
        Some("\u{FFFD} [MASKED:email]".as_bytes().to_vec())
    );
}

#[test]
fn deep_json_in_strings_is_bounded() {
    // Each level of JSON inside a string doubles the escapes; past the bound the text is
    // masked as text, so it is still masked.
    let mut s = json!({"email": "a@example.com"}).to_string();
    for _ in 0..8 {
        s = json!([s]).to_string();
    }
    let mut v = Value::String(s);
    let counts = mask_value(&mut v);
    assert_eq!(counts.total(), 1);
    assert!(!v.as_str().unwrap().contains("a@example.com"));
}

// ---- SSE ----

/// The client bytes and the records for `input` fed in `chunks`.
fn sse_run(m: &Masker, reveal: &Reveal, chunks: &[&[u8]], max: usize) -> (Vec<u8>, Vec<MaskedEvent>, MaskCounts) {
    let mut s = SseMasker::new(max);
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut counts = MaskCounts::default();
    for chunk in chunks {
        s.push(m, reveal, chunk, &mut out, &mut counts, |e| events.push(e));
        assert!(s.buffered_bytes() <= 2 * max);
    }
    s.finish(m, reveal, &mut out, &mut counts, |e| events.push(e));
    (out, events, counts)
}

#[test]
fn sse_passes_clean_events_through_byte_for_byte() {
    let input = b": ping\r\n\r\nevent: message\r\nid: 1\r\ndata: {\"jsonrpc\": \"2.0\",  \"id\": 1}\r\n\r\ndata: hi\rdata: there\r\r";
    let (out, events, counts) = sse_run(&masker(), &Reveal::none(), &[input], 1 << 20);
    assert_eq!(out, input);
    assert!(counts.is_empty());
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].data, None);
    assert_eq!(events[1].data.as_deref(), Some("{\"jsonrpc\": \"2.0\",  \"id\": 1}"));
    assert_eq!(events[1].id.as_deref(), Some("1"));
    assert_eq!(events[2].data.as_deref(), Some("hi\nthere"));
}

#[test]
fn sse_rebuilds_masked_events() {
    let input = b"event: message\r\nid: 7\r\nretry: 100\r\ndata: mail a@example.com\r\ndata: ssn 123-45-6789\r\n\r\n\
data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"t\":\"a@example.com\"}}\n\n";
    let (out, events, counts) = sse_run(&masker(), &Reveal::from_header("us_ssn"), &[input], 1 << 20);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "event: message\nid: 7\nretry: 100\ndata: mail [MASKED:email]\ndata: ssn 123-45-6789\n\n\
data: {\"id\":1,\"jsonrpc\":\"2.0\",\"result\":{\"t\":\"[MASKED:email]\"}}\n\n"
    );
    assert_eq!(counts.0.get("email"), Some(&2));
    assert_eq!(counts.0.get("us_ssn"), None);
    // The record reveals nothing.
    assert_eq!(
        events[0].data.as_deref(),
        Some("mail [MASKED:email]\nssn [MASKED:us_ssn]")
    );
    assert_eq!(events[0].masked.total(), 2);
    assert_eq!(events[1].masked.total(), 1);
}

#[test]
fn sse_withholds_oversize_events_and_masks_the_tail() {
    let big = format!(
        "data: a@example.com {}\n\ndata: ok\n\ndata: tail b@example.com",
        "x".repeat(200)
    );
    let (out, events, counts) = sse_run(&masker(), &Reveal::none(), &[big.as_bytes()], 64);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        ": gatehouse withheld an event over 64 bytes\n\ndata: ok\n\ndata: tail [MASKED:email]"
    );
    assert!(events[0].truncated);
    assert_eq!(events[0].data, None, "no data line fit within the bound");
    assert!(events[2].incomplete);
    assert_eq!(counts.0.get("email"), Some(&1));
    assert_eq!(events[2].masked.0.get("email"), Some(&1));

    let partial = "data: a@example.com\ndata: b@example.com and more and more\n\n";
    let (_, events, _) = sse_run(&masker(), &Reveal::none(), &[partial.as_bytes()], 30);
    assert!(events[0].truncated);
    assert_eq!(events[0].data.as_deref(), Some("[MASKED:email]"));
}

#[test]
fn sse_invalid_utf8_never_passes_through() {
    let (out, _, _) = sse_run(&masker(), &Reveal::none(), &[b"data: \xFF ok\n\n"], 1 << 20);
    assert_eq!(out, "data: \u{FFFD} ok\n\n".as_bytes());
    // Found by `cargo fuzz run sse_masker`: a comment with invalid UTF-8.
    let input = b"event: message\r\ndata: x\r\n\r\n: p\x84ng\n\ndata: tail";
    let (out, _, _) = sse_run(&masker(), &Reveal::none(), &[input], 1 << 20);
    assert_eq!(
        out,
        "event: message\r\ndata: x\r\n\r\n: p\u{FFFD}ng\n\ndata: tail".as_bytes()
    );
}

const STREAM: &[u8] = b"\xEF\xBB\xBF: hello\r\n\r\nevent: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\r\n\
data: \"id\":1,\"result\":{\"t\":\"h\xC3\xA9llo \xE2\x82\xAC a@example.com \xF0\x9F\x98\x80\"}}\r\n\r\n\
retry: 10\rdata: cr only 123-45-6789\r\rdata: lf\nid: 2\n\n: ping\n\ndata: clean \xC3\xA9\r\n\n\
data: card 4111 1111 1111 1111\r\n\r\ndata: tail +44 20 7946 0958";

#[test]
fn sse_output_is_the_same_for_every_split() {
    let m = masker();
    let reveal = Reveal::from_header("phone");
    for max in [1 << 20, 40] {
        let whole = sse_run(&m, &reveal, &[STREAM], max);
        if max > 1000 {
            let text = String::from_utf8(whole.0.clone()).unwrap();
            assert!(
                text.contains("[MASKED:email]") && text.contains("[MASKED:us_ssn]"),
                "{text}"
            );
            assert!(
                text.contains("data: clean \u{e9}\r\n\n"),
                "clean events pass as they are: {text}"
            );
            assert!(text.ends_with("data: tail +44 20 7946 0958"), "revealed: {text}");
        }
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(sse_run(&m, &reveal, &[a, b], max), whole, "split at {i}");
            for j in (i..=STREAM.len()).step_by(7) {
                let (b, c) = STREAM[i..].split_at(j - i);
                assert_eq!(sse_run(&m, &reveal, &[a, b, c], max), whole, "split at {i} and {j}");
            }
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(sse_run(&m, &reveal, &bytes, max), whole);
    }
}

#[test]
fn adversarial_inputs_stay_linear() {
    // Each would take minutes if some detector re-read the rest of the text from every
    // repetition; linear, they take milliseconds even in a debug build.
    let patterns = [
        "xoxb-",
        "eyJ-",
        "eyJa.",
        "token={",
        "aws_secret_access_key=",
        "password:",
        "password=\"\\\"",
        "a@",
        "@a.",
        "-----BEGIN ",
        "-----BEGIN A PRIVATE KEY-----",
        "1234 ",
        "1-",
        "+1 ",
        "DE89 ",
        "://a:",
        "(555) ",
        "x@a.a",
        "github_pat_",
        "AKIA",
        "\\n",
    ];
    let start = std::time::Instant::now();
    for p in patterns {
        let text = p.repeat(100_000 / p.len()) + "_";
        let mut counts = MaskCounts::default();
        masker().mask_text(&text, &Reveal::none(), &mut counts);
    }
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
}

#[test]
fn a_recognized_value_under_a_sensitive_key_keeps_its_own_kind() {
    let mut v = json!({
        "github_token": "ghp_KlGOfWlnolt5ZgdYu4Uje1CjocVs9wdLfCmY",
        "password": "hunter2",
        "api_key": "prefix AKIAIOSFODNN7EXAMPLE",
    });
    let mut counts = MaskCounts::default();
    assert!(masker().mask_value(&mut v, &Reveal::none(), &mut counts));
    assert_eq!(
        v,
        json!({
            "github_token": "[MASKED:github_token]",
            "password": "[MASKED:sensitive_field]",
            "api_key": "[MASKED:sensitive_field]",
        })
    );
    assert_eq!(counts.0.get("github_token"), Some(&1));
    assert_eq!(counts.0.get("sensitive_field"), Some(&2));
}

#[test]
fn duplicate_keys_never_let_the_unread_value_out() {
    let m = masker();
    let none = Reveal::none();
    // The red team's answer: the parsed view (last key wins) has nothing to mask.
    let body = br#"{"jsonrpc":"2.0","id":1,"result":{"aws_key":"AKIAIOSFODNN7EXAMPLE","email":"ops@example.com","aws_key":"n/a","email":"n/a"}}"#;
    let out = match m.mask_json(body, &none, &mut MaskCounts::default()) {
        JsonMasked::Changed(out) => String::from_utf8(out).unwrap(),
        other => panic!("passed as it came: {other:?}"),
    };
    assert!(!out.contains("AKIA") && !out.contains("ops@"), "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["result"],
        json!({"aws_key": "n/a", "email": "n/a"})
    );

    // JSON inside a text content: the string is replaced by what was read.
    let text = r#"{"aws_key":"AKIAIOSFODNN7EXAMPLE","aws_key":"n/a"}"#;
    let mut v = json!({"content": [{"type": "text", "text": text}]});
    assert!(m.mask_value(&mut v, &none, &mut MaskCounts::default()));
    assert_eq!(v["content"][0]["text"], r#"{"aws_key":"n/a"}"#);

    // Deep inside a batch, and in an SSE event's data.
    let batch = br#"[{"jsonrpc":"2.0","id":1,"result":{"a":{"x":"4111 1111 1111 1111","x":1}}}]"#;
    assert!(
        matches!(m.mask_json(batch, &none, &mut MaskCounts::default()), JsonMasked::Changed(out) if !String::from_utf8_lossy(&out).contains("4111"))
    );
    let sse = b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"e\":\"ops@example.com\",\"e\":\"n/a\"}}\n\n";
    let (out, _, _) = sse_run(&m, &none, &[sse], 1 << 20);
    assert!(!String::from_utf8_lossy(&out).contains("ops@"));
    // Without a repeated key, clean JSON still goes out byte for byte.
    assert_eq!(
        m.mask_json(br#"{"a": {"a": 1}}"#, &none, &mut MaskCounts::default()),
        JsonMasked::Unchanged
    );
}

#[test]
fn json_escapes_do_not_hide_secrets_in_text() {
    for (text, kind) in [
        (r"key \u0041KIAIOSFODNN7EXAMPLE end", "aws_access_key_id"),
        (r"mail ops\u0040example.com", "email"),
        (r"url postgres:\/\/app:s3cret@db\/x", "password_in_url"),
        (r"card 4111\u00201111\u00201111\u00201111", "credit_card"),
        (r"twice \\u0041KIAIOSFODNN7EXAMPLE", "aws_access_key_id"),
    ] {
        let (out, counts) = run(text);
        assert_eq!(counts.0.get(kind), Some(&1), "{text}: {out} {counts:?}");
        assert!(
            !out.contains("IOSFODNN7") && !out.contains("ops") && !out.contains("s3cret") && !out.contains("1111"),
            "{out}"
        );
    }
    kept(r"C:\users\new\table \u00e9t\u00e9");

    // A `+json` media type as the filter masks it: as JSON when it parses, as text (with
    // its escapes) when it does not (JSON text sequences).
    let seq = "\u{1e}{\"k\":\"\\u0041KIAIOSFODNN7EXAMPLE\"}\n\u{1e}{\"m\":\"ops\\u0040example.com\"}\n";
    let out = masker()
        .mask_bytes_as_text(seq.as_bytes(), &Reveal::none(), &mut MaskCounts::default())
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("IOSFODNN7") && !out.contains("ops\\u0040"), "{out}");
    assert!(out.starts_with('\u{1e}') && out.contains("\u{1e}{\"m\":\""), "{out}");
}

#[test]
fn sse_masks_every_line_that_reaches_the_client() {
    let m = masker();
    let input = b": note ops@example.com\nevent: ev-ops@example.com\nid: AKIAIOSFODNN7EXAMPLE\nretry: 4111111111111111\nx-extra: 123-45-6789\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"n\"}\n\n\
id: tok-ops@example.com\n\n: keepalive 4111 1111 1111 1111\n\n";
    for chunked in [vec![&input[..]], input.chunks(7).collect::<Vec<_>>()] {
        let (out, events, counts) = sse_run(&m, &Reveal::none(), &chunked, 1 << 20);
        let out = String::from_utf8(out).unwrap();
        for secret in ["ops@", "AKIA", "4111", "123-45"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(
            out.contains("event: [MASKED:email]\nid: [MASKED:aws_access_key_id]\ndata: {"),
            "{out}"
        );
        assert_eq!(
            events[0].id.as_deref(),
            Some("[MASKED:aws_access_key_id]"),
            "the record's id"
        );
        assert_eq!(events[1].id.as_deref(), Some("[MASKED:email]"));
        assert!(counts.0.get("email") >= Some(&2), "{counts:?}");
    }
    // Revealed kinds stay in the client's fields, never in the record's id.
    let (out, events, _) = sse_run(
        &m,
        &Reveal::from_header("email"),
        &[b"id: ops@example.com\ndata: x\n\n"],
        1 << 20,
    );
    assert_eq!(out, b"id: ops@example.com\ndata: x\n\n");
    assert_eq!(events[0].id.as_deref(), Some("[MASKED:email]"));
}

#[test]
fn a_batch_answer_shows_each_message_only_what_its_request_may() {
    let m = masker();
    let body = br#"[{"jsonrpc":"2.0","id":1,"result":{"e":"a@example.com"}},{"jsonrpc":"2.0","id":"1","result":{"e":"b@example.com"}},{"jsonrpc":"2.0","id":2,"result":{"e":"c@example.com"}},{"jsonrpc":"2.0","method":"n","params":{"e":"d@example.com"}}]"#;
    let by_id: std::collections::BTreeMap<_, _> =
        [(RevealPlan::id_key(&json!(1)), Reveal::from_header("email"))].into();
    let header = RevealPlan::ids_header(&by_id);
    let plan = RevealPlan {
        all: Reveal::none(),
        by_id: Some(RevealPlan::by_id_from_header(&header)),
    };
    let JsonMasked::Changed(out) = m.mask_json_for(body, &plan, &mut MaskCounts::default()) else {
        panic!("masked");
    };
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("a@example.com"), "id 1 may see e-mails: {out}");
    for other in ["b@", "c@", "d@"] {
        assert!(
            !out.contains(other),
            "{other}: string id \"1\", another id and a notification see nothing: {out}"
        );
    }
    // Text that is no message gets nothing either; SSE events are matched the same way.
    assert!(plan.for_other().is_empty());
    let sse = b"data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":\"c@example.com\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"a@example.com\"}\n\n";
    let mut s = SseMasker::new(1 << 20);
    let mut out = Vec::new();
    s.push_for(&m, &plan, sse, &mut out, &mut MaskCounts::default(), |_| {});
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("c@example.com") && out.contains("a@example.com"), "{out}");
    // A header that cannot be read reveals nothing.
    assert!(RevealPlan::by_id_from_header("zz=email,31").is_empty());
}

/// Property: whatever shape a JSON answer has, a secret is in no key, no member (`id`,
/// `method` and `jsonrpc` included), no number and no non-base64 `blob`/`data` of the
/// output, and no value is lost to a masked key that met another key.
#[test]
fn no_secret_survives_anywhere_in_json() {
    const SECRETS: [&str; 4] = [
        "AKIAIVF3HDRHMIRTO2I2",
        "alice@example.com",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "4111111111111111",
    ];
    const CARDS: [&str; 5] = [
        "4111111111111111",
        "-4111111111111111",
        "4111111111111111.0",
        "4111111111111111e0",
        "411111111111111.1E1",
    ];
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn secret(&mut self) -> String {
            let s = SECRETS[self.below(SECRETS.len())];
            ["", "x ", "k=", "{\"a\":1} "][self.below(4)].to_owned() + s
        }
    }
    // Writes JSON text, numbers in any notation.
    fn value(rng: &mut Rng, depth: usize, out: &mut String) {
        match rng.below(if depth > 3 { 4 } else { 7 }) {
            0 => out.push_str(CARDS[rng.below(CARDS.len())]),
            1 => out.push_str(&serde_json::to_string(&rng.secret()).unwrap()),
            2 => out.push('7'),
            3 => {
                let inner = format!("{{{}:1}}", serde_json::to_string(&rng.secret()).unwrap());
                out.push_str(&serde_json::to_string(&inner).unwrap());
            }
            4 => {
                out.push('[');
                for n in 0..rng.below(3) {
                    if n > 0 {
                        out.push(',');
                    }
                    value(rng, depth + 1, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                let special = ["\"uri\":\"x:y\",\"blob\":", "\"type\":\"image\",\"data\":"];
                if rng.below(3) == 0 {
                    out.push_str(special[rng.below(2)]);
                    out.push_str(&serde_json::to_string(&rng.secret()).unwrap());
                    out.push(',');
                }
                for n in 0..1 + rng.below(3) {
                    if n > 0 {
                        out.push(',');
                    }
                    // Keys that collide once masked, or plain ones.
                    let key = match rng.below(3) {
                        0 => rng.secret(),
                        1 => "[MASKED:email]".to_owned(),
                        _ => format!("k{n}"),
                    };
                    out.push_str(&serde_json::to_string(&key).unwrap());
                    out.push(':');
                    value(rng, depth + 1, out);
                }
                out.push('}');
            }
        }
    }
    fn count_leaves(v: &Value) -> usize {
        match v {
            Value::Array(items) => items.iter().map(count_leaves).sum(),
            Value::Object(map) => map.values().map(count_leaves).sum(),
            _ => 1,
        }
    }
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for round in 0..3000 {
        let mut result = String::new();
        value(&mut rng, 0, &mut result);
        let id = [serde_json::to_string(&rng.secret()).unwrap(), "1".to_owned()][rng.below(2)].clone();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":{},"result":{result}}}"#,
            json!(rng.secret())
        );
        // Parsing merges repeated keys: count what was read, not what was written.
        let Ok(read) = serde_json::from_str::<Value>(&body) else {
            panic!("round {round}: bad test input {body}");
        };
        let out = match masker().mask_json(body.as_bytes(), &Reveal::none(), &mut MaskCounts::default()) {
            JsonMasked::Changed(out) => String::from_utf8(out).unwrap(),
            other => panic!("round {round}: {other:?} for {body}"),
        };
        for secret in SECRETS {
            assert!(!out.contains(secret), "round {round}: {secret} survived\n{body}\n{out}");
        }
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            count_leaves(&out),
            count_leaves(&read),
            "round {round}: a value was lost\n{body}"
        );
    }
}
