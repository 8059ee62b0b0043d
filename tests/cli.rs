//! The command line as operators and newcomers meet it: `check` exit codes and messages, `serve`
//! refusing a bad config, `get` without a daemon, and `demo` working out of the box.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KillOnDrop, eventually, jwt_claims, secret_file};

fn tokend(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn config(dir: &std::path::Path, client_extra: &str) -> String {
    let secret = secret_file(dir, "s.secret", "x");
    let path = dir.join("tokend.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nsocket = \"{}/t.sock\"\n[clients.billing]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"b\"\nclient_secret_file = \"{}\"\n{client_extra}\n",
            dir.display(),
            secret.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn check_accepts_a_good_config_and_names_file_key_and_reason_for_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), "");
    let (code, out, _) = tokend(&["check", "--config", &good]);
    assert_eq!(code, 0);
    assert!(out.contains("ok, 1 client"), "{out}");

    let bad = config(dir.path(), "auth_method = \"digest\"");
    let (code, out, err) = tokend(&["check", "--config", &bad]);
    assert_eq!(code, 78, "EX_CONFIG");
    assert!(out.is_empty());
    assert_eq!(
        err.trim(),
        format!(
            "tokend: {bad}: clients.billing.auth_method: \"digest\" is not an auth method; use one of \"basic\", \"post\", \"none\", \"private_key_jwt\", \"client_secret_jwt\", \"tls_client_auth\", \"self_signed_tls_client_auth\", \"federated_assertion\""
        )
    );
}

#[test]
fn check_explains_each_allow_entry_and_refuses_unknown_or_bad_selectors() {
    let dir = tempfile::tempdir().unwrap();
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let entries = format!(
        "[[clients.billing.allow]]\nunit = \"billing.service\"\nuser = \"root\"\n\
         [[clients.billing.allow]]\nexecutable = \"{}\"\ncgroup = \"/system.slice\"\n\
         [[clients.billing.allow]]\npod_namespace = \"billing\"\npod_service_account = \"api\"\npod_label = \"tier=web\"\n",
        sh.display()
    );
    let good = config(dir.path(), &entries);
    let (code, out, err) = tokend(&["check", "--config", &good]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(
        lines,
        [
            "clients.billing.allow[0]: callers user root, in unit billing.service".to_string(),
            format!(
                "clients.billing.allow[1]: callers in cgroup /system.slice, running {}",
                sh.display()
            ),
            "clients.billing.allow[2]: callers in a pod of namespace billing, with service account api, with pod label tier=web".to_string(),
        ]
    );

    let refused = |extra: &str| {
        let bad = config(dir.path(), extra);
        let (code, out, err) = tokend(&["check", "--config", &bad]);
        assert_eq!(code, 78, "EX_CONFIG for {extra}: {out}");
        err
    };
    let err = refused("[[clients.billing.allow]]\npod_lable = \"a=b\"\n");
    assert!(
        err.contains("unknown field `pod_lable`") && err.contains("pod_label"),
        "{err}"
    );
    let err = refused("[[clients.billing.allow]]\n");
    assert!(
        err.contains("clients.billing.allow[0]: an entry needs at least one selector"),
        "{err}"
    );
    let err = refused("[[clients.billing.allow]]\nunit = \"billing\"\n");
    assert!(err.contains("clients.billing.allow[0].unit:"), "{err}");
    let err = refused(
        "[[clients.billing.allow]]\nexecutable = \"/bin/sh\"\nexecutable_sha256 = \"abc\"\n",
    );
    assert!(
        err.contains("allow[0].executable_sha256: must be 64 hexadecimal"),
        "{err}"
    );
    let err = refused("[[clients.billing.allow]]\npod_label = \"=x\"\n");
    assert!(err.contains("allow[0].pod_label:"), "{err}");
    let err = refused(
        "[[clients.billing.allow]]\nuser = \"root\"\n[[clients.billing.allow]]\ngroup = \"no-such-group-xyz\"\n",
    );
    assert!(err.contains("clients.billing.allow[1].group:"), "{err}");
    if sh != std::path::Path::new("/bin/sh") {
        let err = refused("[[clients.billing.allow]]\nexecutable = \"/bin/sh\"\n");
        assert!(
            err.contains("allow[0].executable: /bin/sh leads to"),
            "{err}"
        );
    }
}

#[test]
fn check_notes_an_id_that_cannot_be_sent_raw_and_refuses_raw_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "s.secret", "x");
    let write = |extra: &str| {
        let path = dir.path().join("colon.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nsocket = \"{}/t.sock\"\n[clients.billing]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"urn:billing\"\nclient_secret_file = \"{}\"\n{extra}\n",
                dir.path().display(),
                secret.display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let auto = write("");
    let (code, out, err) = tokend(&["check", "--config", &auto]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok, 1 client"), "{out}");
    assert!(
        err.contains(&format!(
            "{auto}: note: clients.billing.client_id: contains ':'"
        )),
        "{err}"
    );
    assert!(err.contains("auth_method = \"post\""), "{err}");

    let raw = write("basic_encoding = \"raw\"");
    let (code, _, err) = tokend(&["check", "--config", &raw]);
    assert_eq!(code, 78, "EX_CONFIG");
    assert!(
        err.contains("clients.billing.basic_encoding: the client id \"urn:billing\" contains ':'"),
        "{err}"
    );
}

#[test]
fn authorize_help_keeps_its_example_a_paragraph_of_its_own() {
    let (code, out, _) = tokend(&["authorize", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "\n\nExample: tokend authorize likeco --config /etc/tokend/tokend.toml\n\nWithout a browser on this host:"
        ),
        "{out}"
    );
}

#[test]
fn serve_refuses_a_bad_config_without_touching_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let bad = config(dir.path(), "grant = \"refresh_token\"");
    let (code, _, err) = tokend(&["serve", "--config", &bad]);
    assert_eq!(code, 78);
    assert!(err.contains("clients.billing.refresh_token_file"), "{err}");
    assert!(!dir.path().join("t.sock").exists());
}

#[test]
fn get_without_a_daemon_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let (code, out, err) = tokend(&["get", "x", "--socket", socket.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach tokend at"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_both_clients_and_logs_refreshes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("demo.sock");
    let log = dir.path().join("demo.log");
    let child = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["demo", "--socket"])
        .arg(&socket)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _demo = KillOnDrop(child);
    {
        let s = socket.to_str().unwrap();
        for client in ["demo-basic", "demo-post"] {
            let (code, out, err) = eventually(Duration::from_secs(10), "demo socket", || async {
                let r = tokend(&["get", client, "--socket", s]);
                (r.0 == 0).then_some(r)
            })
            .await;
            assert_eq!(code, 0, "{err}");
            assert_eq!(jwt_claims(out.trim())["sub"], client);
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(&format!("tokend get demo-basic --socket {s}")),
            "{text}"
        );
        assert!(
            text.contains("grpc.insecure_channel"),
            "Python snippet printed: {text}"
        );
        // 20 s tokens are refreshed at 14-15 s: a second "token refreshed" per client shows up.
        eventually(Duration::from_secs(20), "a logged refresh", || async {
            let text = std::fs::read_to_string(&log).unwrap();
            let refreshed = |c: &str| {
                text.lines()
                    .filter(|l| l.contains("token refreshed") && l.contains(&format!("client={c}")))
                    .count()
            };
            (refreshed("demo-basic") >= 2 && refreshed("demo-post") >= 2).then_some(())
        })
        .await;
    }
}
