//! mTLS client authentication (RFC 8705) and `ca_file`, against oidc-provider behind Node's
//! `https` server with `requestCert` (`"https"` in `tests/oidc/server.mjs`): `tls_client_auth`
//! with a CA-issued certificate and `self_signed_tls_client_auth` with a certificate registered
//! as the client's JWK; certificate-bound tokens; rotation of the certificate and key without a
//! restart; the provider's private CA trusted only through `ca_file`; and the failures an
//! operator must fix (an expired certificate, a key file readable by others, a certificate
//! that is not the key's), each naming what is wrong, without a retry storm.
//!
//! The certificates are made for each test with the `openssl` command.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{Daemon, OidcServer, eventually, get, jwt_claims, openssl};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Digest;
use tokend::proto::{self, RefreshTokenRequest};
use tonic::Code;

/// The SAN the provider registers for `tls-client` (`tls_client_auth_san_dns`).
const CLIENT_DNS: &str = "client.tokend.test";

/// A test CA in `dir`, and the certificates the tests need, made with `openssl`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The CA, a server certificate for 127.0.0.1, a CA-issued client certificate
    /// (`client.pem`/`client.key`) and a self-signed one (`self.pem`/`self.key`).
    fn new(dir: &Path) -> Pki {
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir_all(dir.join("cadb")).unwrap();
        std::fs::write(dir.join("cadb/index.txt"), "").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {d}/cadb/index.txt\nnew_certs_dir = {d}/cadb\n\
                 rand_serial = yes\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n",
                d = dir.display()
            ),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tokend test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        pki.issue(
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
            None,
        );
        pki.client("client", None);
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "self.key",
                "-out",
                "self.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tokend self-signed",
            ],
        );
        pki.private("self.key");
        pki
    }

    /// A CA-issued client certificate `NAME.pem` with a fresh key `NAME.key`, valid now or
    /// over `dates` (openssl's `YYYYMMDDHHMMSSZ`).
    fn client(&self, name: &str, dates: Option<(&str, &str)>) {
        self.issue(
            name,
            "/CN=tokend-mtls-client",
            &format!("subjectAltName=DNS:{CLIENT_DNS}\nextendedKeyUsage=clientAuth"),
            dates,
        );
    }

    fn issue(&self, name: &str, subject: &str, ext: &str, dates: Option<(&str, &str)>) {
        let ext_file = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext_file),
            format!("basicConstraints=CA:FALSE\n{ext}\n"),
        )
        .unwrap();
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                subject,
            ],
        );
        let (start, end) = dates.unwrap_or(("20200101000000Z", "20991231000000Z"));
        openssl(
            &self.dir,
            &[
                "ca",
                "-batch",
                "-notext",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                &csr,
                "-out",
                &pem,
                "-extfile",
                &ext_file,
                "-startdate",
                start,
                "-enddate",
                end,
            ],
        );
        self.private(&key);
    }

    fn private(&self, name: &str) {
        std::fs::set_permissions(self.dir.join(name), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// RFC 8705 section 3.1: `cnf.x5t#S256` of a certificate bound token.
    fn thumbprint(&self, name: &str) -> String {
        let der = CertificateDer::from_pem_file(self.dir.join(name)).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der))
    }

    /// Puts `from`'s certificate and key in place of `to`'s, each by rename, as a deployment
    /// tool replaces files.
    fn replace(&self, from: &str, to: &str) {
        for ext in ["pem", "key"] {
            let tmp = self.dir.join(format!("{to}.{ext}.new"));
            std::fs::copy(self.dir.join(format!("{from}.{ext}")), &tmp).unwrap();
            std::fs::rename(&tmp, self.dir.join(format!("{to}.{ext}"))).unwrap();
        }
    }
}

/// oidc-provider on https with the PKI's server certificate, and the two mTLS clients.
fn provider(pki: &Pki) -> OidcServer {
    OidcServer::start(serde_json::json!({
        "accessTokenTtl": 60,
        "https": {
            "cert": pki.path("server.pem"),
            "key": pki.path("server.key"),
            "ca": pki.path("ca.pem"),
            "selfSignedCerts": {"self-client": pki.path("self.pem")}
        },
        "clients": [
            {"client_id": "tls-client", "token_endpoint_auth_method": "tls_client_auth",
             "tls_client_auth_san_dns": CLIENT_DNS,
             "tls_client_certificate_bound_access_tokens": true,
             "grant_types": ["client_credentials"], "scope": "api:read"},
            {"client_id": "self-client", "token_endpoint_auth_method": "self_signed_tls_client_auth",
             "tls_client_certificate_bound_access_tokens": true,
             "grant_types": ["client_credentials"], "scope": "api:read"}
        ]
    }))
}

/// A `[clients.NAME]` table for an mTLS client; `ca` adds `ca_file`.
/// A client of each mTLS method: "tls" (CA-issued certificate) and "self" (self-signed).
fn both_methods(idp: &OidcServer) -> String {
    table("tls", idp, "tls_client_auth", "tls-client", "client", true)
        + &table(
            "self",
            idp,
            "self_signed_tls_client_auth",
            "self-client",
            "self",
            true,
        )
}

fn table(
    name: &str,
    idp: &OidcServer,
    method: &str,
    client_id: &str,
    files: &str,
    ca: bool,
) -> String {
    format!(
        r#"
[clients.{name}]
token_endpoint = "{ep}"
client_id = "{client_id}"
auth_method = "{method}"
client_cert_file = "{{dir}}/{files}.pem"
client_key_file = "{{dir}}/{files}.key"
scope = "api:read"
{ca}
"#,
        ep = idp.token_endpoint,
        ca = if ca { "ca_file = \"{dir}/ca.pem\"" } else { "" },
    )
}

/// Token requests the provider has seen from `client_id`, read over https with the test CA.
async fn requests_from(idp: &OidcServer, pki: &Pki, client_id: &str) -> usize {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let all: Vec<serde_json::Value> = serde_json::from_slice(
        &http
            .get(format!("{}/_test/requests", idp.issuer))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    all.iter().filter(|r| r["client_id"] == client_id).count()
}

/// `tokend check`: its exit code and what it printed on stderr.
fn check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn tls_setup() -> (tempfile::TempDir, Pki) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    (dir, pki)
}

#[tokio::test(flavor = "multi_thread")]
async fn both_mtls_methods_get_certificate_bound_tokens_and_pick_up_a_rotated_certificate() {
    let (dir, pki) = tls_setup();
    pki.client("next", None);
    let idp = provider(&pki);
    let clients = both_methods(&idp);
    let d = Daemon::start_in(dir, &clients).await;
    let mut rpc = d.client().await;

    let tls = rpc.get_token(get("tls")).await.unwrap().into_inner();
    let claims = jwt_claims(&tls.access_token);
    assert_eq!(claims["client_id"], "tls-client");
    assert_eq!(claims["cnf"]["x5t#S256"], pki.thumbprint("client.pem"));
    let own = rpc.get_token(get("self")).await.unwrap().into_inner();
    let claims = jwt_claims(&own.access_token);
    assert_eq!(claims["client_id"], "self-client");
    assert_eq!(claims["cnf"]["x5t#S256"], pki.thumbprint("self.pem"));

    // A new certificate and key, in place of the old: the next request presents them.
    pki.replace("next", "client");
    rpc.refresh_token(RefreshTokenRequest {
        client: "tls".into(),
        rejected_access_token: tls.access_token.clone(),
    })
    .await
    .unwrap();
    let rotated = rpc.get_token(get("tls")).await.unwrap().into_inner();
    assert_ne!(rotated.access_token, tls.access_token);
    assert_eq!(
        jwt_claims(&rotated.access_token)["cnf"]["x5t#S256"],
        pki.thumbprint("next.pem")
    );
    assert_ne!(pki.thumbprint("next.pem"), pki.thumbprint("self.pem"));
    let log = d.log_text();
    assert!(log.contains("TLS files read"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_providers_private_ca_is_trusted_only_through_ca_file() {
    let (dir, pki) = tls_setup();
    let idp = provider(&pki);
    let clients = table(
        "with-ca",
        &idp,
        "self_signed_tls_client_auth",
        "self-client",
        "self",
        true,
    ) + &table(
        "no-ca",
        &idp,
        "self_signed_tls_client_auth",
        "self-client",
        "self",
        false,
    );
    let d = Daemon::start_in(dir, &clients).await;
    let mut rpc = d.client().await;

    rpc.get_token(get("with-ca")).await.unwrap();
    let err = rpc.get_token(get("no-ca")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let s = eventually(Duration::from_secs(10), "no-ca fails", || async {
        let s = d.status("no-ca").await;
        (!s.last_error.is_empty()).then_some(s)
    })
    .await;
    assert!(s.last_error.contains("UnknownIssuer"), "{}", s.last_error);
    assert!(s.last_error.contains("set ca_file"), "{}", s.last_error);
    // The platform store alone must not have let the provider's certificate through.
    assert_eq!(requests_from(&idp, &pki, "self-client").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_refused_by_the_provider_and_waits_for_an_operator() {
    let (dir, pki) = tls_setup();
    pki.client("old", Some(("20200101000000Z", "20200102000000Z")));
    let idp = provider(&pki);
    let clients = table(
        "expired",
        &idp,
        "tls_client_auth",
        "tls-client",
        "old",
        true,
    ) + &table(
        "self",
        &idp,
        "self_signed_tls_client_auth",
        "self-client",
        "self",
        true,
    );
    let d = Daemon::start_in(dir, &clients).await;
    let mut rpc = d.client().await;

    let s = eventually(
        Duration::from_secs(10),
        "the expired client fails",
        || async {
            let s = d.status("expired").await;
            (s.state == proto::ClientState::NeedsOperator as i32).then_some(s)
        },
    )
    .await;
    assert!(s.last_error.contains("invalid_client"), "{}", s.last_error);
    assert_eq!(
        rpc.get_token(get("expired")).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // The other client is served all along; the failed one is not retried in a loop.
    rpc.get_token(get("self")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(requests_from(&idp, &pki, "tls-client").await, 1);

    // A valid certificate put in place is tried without waiting for the operator retry.
    pki.replace("client", "old");
    eventually(
        Duration::from_secs(15),
        "the replaced certificate is used",
        || async { (d.status("expired").await.has_valid_token).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_key_files_are_named_at_check_and_at_run_time() {
    let (dir, pki) = tls_setup();
    pki.client("other", None);
    let idp = provider(&pki);
    let clients = both_methods(&idp);
    let d = Daemon::start_in(dir, &clients).await;
    let mut rpc = d.client().await;
    let tls = rpc.get_token(get("tls")).await.unwrap().into_inner();
    rpc.get_token(get("self")).await.unwrap();

    // A certificate that is not the key's.
    std::fs::copy(pki.path("other.pem"), pki.path("client.pem")).unwrap();
    let (code, err) = check(&d.config_path());
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("clients.tls.client_cert_file"), "{err}");
    assert!(
        err.contains(&format!(
            "{}: the certificate does not belong to the private key in {}",
            pki.path("client.pem"),
            pki.path("client.key")
        )),
        "{err}"
    );
    let err = rpc
        .refresh_token(RefreshTokenRequest {
            client: "tls".into(),
            rejected_access_token: tls.access_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("client.pem: the certificate does not belong"),
        "{err:?}"
    );
    let s = eventually(
        Duration::from_secs(10),
        "the mismatch is reported",
        || async {
            let s = d.status("tls").await;
            (s.state == proto::ClientState::NeedsOperator as i32).then_some(s)
        },
    )
    .await;
    assert!(
        s.last_error.contains("does not belong to the private key"),
        "{}",
        s.last_error
    );

    // A key readable by others: refused, naming the file and the fix.
    pki.replace("other", "client");
    std::fs::set_permissions(
        pki.path("client.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, err) = check(&d.config_path());
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("clients.tls.client_key_file"), "{err}");
    assert!(
        err.contains(&format!(
            "{}: is readable by other users",
            pki.path("client.key")
        )),
        "{err}"
    );
    let s = eventually(
        Duration::from_secs(15),
        "the exposed key is reported",
        || async {
            let s = d.status("tls").await;
            s.last_error
                .contains("readable by other users")
                .then_some(s)
        },
    )
    .await;
    assert!(
        s.last_error.contains(&pki.path("client.key")),
        "{}",
        s.last_error
    );
    assert_eq!(s.state, proto::ClientState::NeedsOperator as i32);
    // Nothing was sent with the bad files; the other client is still served.
    assert_eq!(requests_from(&idp, &pki, "tls-client").await, 1);
    rpc.get_token(get("self")).await.unwrap();
    let log = d.log_text();
    assert!(!log.contains("PRIVATE KEY"), "{log}");

    // Repaired: used again without a restart.
    std::fs::set_permissions(
        pki.path("client.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    eventually(
        Duration::from_secs(15),
        "the repaired key is used",
        || async {
            let s = d.status("tls").await;
            (s.has_valid_token && s.last_error.is_empty()).then_some(())
        },
    )
    .await;
}

#[test]
fn check_names_what_an_mtls_client_lacks() {
    let (dir, pki) = tls_setup();
    let base = |method: &str, extra: &str| {
        let path = dir.path().join("tokend.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nsocket = \"{d}/s.sock\"\n[clients.m]\ntoken_endpoint = \"https://127.0.0.1:1/token\"\n\
                 client_id = \"m\"\nauth_method = \"{method}\"\n{extra}\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        check(&path)
    };
    let cert = format!("client_cert_file = \"{}\"", pki.path("client.pem"));
    let key = format!("client_key_file = \"{}\"", pki.path("client.key"));
    let (code, err) = base("tls_client_auth", &key);
    assert_eq!(code, 78);
    assert!(
        err.contains(
            "clients.m.client_cert_file: auth_method = \"tls_client_auth\" needs client_cert_file"
        ),
        "{err}"
    );
    let (code, err) = base("self_signed_tls_client_auth", &cert);
    assert_eq!(code, 78);
    assert!(err.contains("clients.m.client_key_file: auth_method = \"self_signed_tls_client_auth\" needs client_key_file"), "{err}");
    let (code, err) = base("post", &format!("client_secret_env = \"HOME\"\n{cert}"));
    assert_eq!(code, 78);
    assert!(
        err.contains(
            "clients.m.client_cert_file: only used with auth_method = \"tls_client_auth\""
        ),
        "{err}"
    );
    let (code, err) = base(
        "tls_client_auth",
        &format!("{cert}\n{key}\nca_file = \"{}\"", pki.path("client.key")),
    );
    assert_eq!(code, 78);
    assert!(
        err.contains(&format!(
            "clients.m.ca_file: {}: holds no CA certificate",
            pki.path("client.key")
        )),
        "{err}"
    );
    let (code, err) = base(
        "tls_client_auth",
        &format!("{cert}\n{key}\nca_file = \"{}\"", pki.path("ca.pem")),
    );
    assert_eq!(code, 0, "{err}");
    let plain = std::fs::read_to_string(dir.path().join("tokend.toml"))
        .unwrap()
        .replace("https://127.0.0.1:1/token", "http://127.0.0.1:1/token");
    std::fs::write(dir.path().join("tokend.toml"), plain).unwrap();
    let (code, err) = check(&dir.path().join("tokend.toml"));
    assert_eq!(code, 78);
    assert!(
        err.contains("clients.m.token_endpoint: auth_method = \"tls_client_auth\" presents the client certificate in the TLS handshake"),
        "{err}"
    );
    let (code, err) = base(
        "post",
        &format!(
            "client_secret_env = \"HOME\"\nca_file = \"{}\"",
            pki.path("ca.pem")
        ),
    );
    assert_eq!(code, 0, "{err}");
}
