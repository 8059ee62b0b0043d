//! Federated credentials against a real provider: `oidc-provider` verifying platform JWTs for
//! token exchange (RFC 8693) and JWT bearer (RFC 7523) against a JWK Set file, and its own
//! `private_key_jwt` for `federated_assertion`; tokens minted by [`common::minter`] and
//! rotated under the running daemon. What the provider recorded is what was sent: a token
//! file re-read at every exchange, an expired token never sent, a rotation picked up within a
//! poll, a refused token sent once (no storm), commands that hang or flood bounded.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::minter::{self, AUDIENCE, ISSUER, Minted, Minter};
use common::{Daemon, OidcServer, eventually, get, jwt_claims};
use serde_json::{Value, json};
use tokend::proto::{self, RefreshTokenRequest};
use tonic::Code;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Short enough that tests run fast; long enough for a loaded machine. Callers' refresh
/// reports may start a request every 100 ms.
const REFRESH: &str = "[refresh]\nrequest_timeout = \"10s\"\nmin_interval = \"100ms\"\n";

/// A platform: its signing key, the JWK Set file the provider trusts, and a directory (the
/// daemon's) for the token files.
struct Platform {
    dir: tempfile::TempDir,
    minter: Minter,
    jwks: PathBuf,
}

impl Platform {
    fn new() -> Platform {
        let dir = tempfile::tempdir().unwrap();
        let minter = Minter::new("platform-1");
        let jwks = dir.path().join("platform-jwks.json");
        minter::write_jwks(&jwks, &[&minter]);
        Platform { dir, minter, jwks }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Mints a token for `sub` valid `lifetime` seconds (negative: expired) into `name`.
    fn write(&self, name: &str, sub: &str, lifetime: i64) -> Minted {
        let minted = self.minter.mint(sub, lifetime);
        minter::write_token(&self.path(name), &minted);
        minted
    }

    /// The provider, trusting this platform, with clients for every test here; `extra` is
    /// merged into its `federation` settings.
    fn provider(&self, extra: Value) -> OidcServer {
        let mut federation = json!({
            "jwksFile": self.jwks, "issuer": ISSUER, "audience": AUDIENCE,
        });
        federation
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let public = |id: &str, grant: &str| {
            json!({
                "client_id": id, "token_endpoint_auth_method": "none",
                "grant_types": [grant], "scope": "api:read api:write",
            })
        };
        OidcServer::start(json!({
            "accessTokenTtl": 60,
            "federation": federation,
            "clients": [
                public("exchanger", TOKEN_EXCHANGE),
                public("exchanger-2", TOKEN_EXCHANGE),
                public("bearer", JWT_BEARER),
                public("bearer-2", JWT_BEARER),
                {
                    "client_id": "workload",
                    "token_endpoint_auth_method": "private_key_jwt",
                    "grant_types": ["client_credentials"],
                    "scope": "api:read",
                    "jwks": {"keys": [self.minter.jwk()]},
                },
            ],
        }))
    }

    async fn daemon(self, clients: &str) -> (Daemon, PlatformFiles) {
        let files = PlatformFiles {
            root: self.dir.path().to_path_buf(),
            minter: self.minter,
        };
        let d = Daemon::start_in(self.dir, &format!("{REFRESH}{clients}")).await;
        (d, files)
    }
}

/// The platform once its directory belongs to the daemon: it still mints and rotates.
struct PlatformFiles {
    root: PathBuf,
    minter: Minter,
}

impl PlatformFiles {
    fn write(&self, name: &str, sub: &str, lifetime: i64) -> Minted {
        let minted = self.minter.mint(sub, lifetime);
        minter::write_token(&self.root.join(name), &minted);
        minted
    }
}

/// A `[clients.NAME]` table for a token exchange of the subject token in `{dir}/FILE`.
fn exchange_client(name: &str, client_id: &str, endpoint: &str, file: &str, extra: &str) -> String {
    format!(
        "[clients.{name}]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"{client_id}\"\nauth_method = \"none\"\ngrant = \"token_exchange\"\nsubject_token_file = \"{{dir}}/{file}\"\nscope = \"api:read\"\n{extra}\n"
    )
}

/// Waits until `client` has a token and returns it.
async fn token(d: &Daemon, client: &str, within: Duration) -> proto::Token {
    let rpc = d.client().await;
    eventually(within, &format!("a token for {client}"), || {
        let mut rpc = rpc.clone();
        async move {
            rpc.get_token(get(client))
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    })
    .await
}

/// Waits until `client` needs an operator, with a `last_error` that contains `text`.
async fn needs_operator(d: &Daemon, client: &str, text: &str) -> proto::ClientStatus {
    eventually(
        Duration::from_secs(10),
        &format!("{client} to need an operator ({text})"),
        || async {
            let s = d.status(client).await;
            (s.state == proto::ClientState::NeedsOperator as i32 && s.last_error.contains(text))
                .then_some(s)
        },
    )
    .await
}

/// Reports `current` as rejected, so the daemon requests a new token now.
async fn refresh(
    d: &Daemon,
    client: &str,
    current: &proto::Token,
) -> Result<proto::Token, tonic::Status> {
    let mut req = tonic::Request::new(RefreshTokenRequest {
        client: client.into(),
        rejected_access_token: current.access_token.clone(),
    });
    req.set_timeout(Duration::from_secs(10));
    d.client()
        .await
        .refresh_token(req)
        .await
        .map(|r| r.into_inner())
}

/// The token requests of `client_id` the provider recorded.
async fn requests_of(idp: &OidcServer, client_id: &str) -> Vec<Value> {
    idp.requests()
        .await
        .into_iter()
        .filter(|r| r["client_id"] == client_id)
        .collect()
}

/// The `jti` of the federated token `param` each request carried.
fn jtis(requests: &[Value], param: &str) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r["federation"][param]["jti"]
                .as_str()
                .unwrap_or("-")
                .to_string()
        })
        .collect()
}

/// No request carried a token that had expired when it arrived.
fn none_expired(requests: &[Value], param: &str) {
    for r in requests {
        let exp = r["federation"][param]["exp"].as_f64().unwrap();
        let at = r["at_ms"].as_f64().unwrap() / 1000.0;
        assert!(exp > at, "an expired {param} was sent: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_reads_the_subject_token_file_anew_at_every_exchange() {
    let platform = Platform::new();
    let first = platform.write("subject.jwt", "system:serviceaccount:apps:web", 300);
    let idp = platform.provider(json!({}));
    let ep = idp.token_endpoint.clone();
    let (d, files) = platform
        .daemon(&exchange_client("web", "exchanger", &ep, "subject.jwt", ""))
        .await;

    let t1 = token(&d, "web", Duration::from_secs(10)).await;
    let claims = jwt_claims(&t1.access_token);
    assert_eq!(claims["subject"]["jti"], first.jti, "{claims}");
    assert_eq!(claims["subject"]["sub"], "system:serviceaccount:apps:web");
    assert_eq!(claims["client_id"], "exchanger");
    assert_eq!(t1.scopes, ["api:read"]);
    let seen = requests_of(&idp, "exchanger").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let f = &seen[0]["federation"];
    assert_eq!(seen[0]["grant_type"], TOKEN_EXCHANGE);
    assert_eq!(seen[0]["status"], 200);
    assert_eq!(f["subject_token"]["sha256"], first.sha256());
    assert_eq!(f["subject_token"]["verified"], true);
    assert_eq!(f["subject_token_type"], TYPE_JWT);
    assert_eq!(f["scope"], "api:read");
    assert_eq!(f["requested_token_type"], Value::Null);
    assert_eq!(f["issued_token_type"], TYPE_ACCESS_TOKEN);

    // The platform rotates the file: the next exchange presents the new token.
    let second = files.write("subject.jwt", "system:serviceaccount:apps:web", 300);
    let t2 = refresh(&d, "web", &t1).await.unwrap();
    assert_eq!(jwt_claims(&t2.access_token)["subject"]["jti"], second.jti);
    // Unrotated, the file is read again (and its token is good for another exchange).
    let t3 = refresh(&d, "web", &t2).await.unwrap();
    assert_ne!(t3.access_token, t2.access_token);
    let seen = requests_of(&idp, "exchanger").await;
    assert_eq!(
        jtis(&seen, "subject_token"),
        [first.jti.clone(), second.jti.clone(), second.jti.clone()]
    );
    assert!(seen.iter().all(|r| r["status"] == 200), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_subject_token_is_never_sent_and_its_rotation_is_picked_up_within_a_second() {
    let platform = Platform::new();
    let expired = platform.write("subject.jwt", "ci-job", -60);
    let idp = platform.provider(json!({}));
    let ep = idp.token_endpoint.clone();
    let (d, files) = platform
        .daemon(&exchange_client("ci", "exchanger", &ep, "subject.jwt", ""))
        .await;

    let s = needs_operator(&d, "ci", "expired").await;
    assert!(
        s.last_error.contains(&expired.fingerprint()),
        "{}",
        s.last_error
    );
    assert!(s.last_error.contains("not sent"), "{}", s.last_error);
    assert!(
        !s.last_error.contains(&expired.token),
        "the token in the status"
    );
    let err = d.client().await.get_token(get("ci")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("expired"), "{}", err.message());

    // One that would expire before a request could complete (request_timeout 10 s) is not
    // sent either.
    let soon = files.write("subject.jwt", "ci-job", 7);
    let s = needs_operator(&d, "ci", &soon.fingerprint()).await;
    assert!(
        s.last_error.contains("before a request could complete"),
        "{}",
        s.last_error
    );
    // Several polls of the file later, still nothing sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(requests_of(&idp, "exchanger").await, Vec::<Value>::new());

    let rotated = Instant::now();
    let fresh = files.write("subject.jwt", "ci-job", 300);
    let t = token(&d, "ci", Duration::from_secs(3)).await;
    let took = rotated.elapsed();
    println!("rotation to token: {took:?}");
    assert_eq!(jwt_claims(&t.access_token)["subject"]["jti"], fresh.jti);
    let seen = requests_of(&idp, "exchanger").await;
    assert_eq!(
        jtis(&seen, "subject_token"),
        std::slice::from_ref(&fresh.jti)
    );
    none_expired(&seen, "subject_token");
    assert_eq!(d.status("ci").await.last_error, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_subject_token_needs_an_operator_and_is_sent_once() {
    let platform = Platform::new();
    // Signed by a key the provider does not trust (the platform's was rotated, say).
    let rogue = Minter::new("platform-1");
    let refused = rogue.mint_for(ISSUER, "system:serviceaccount:apps:batch", AUDIENCE, 300);
    minter::write_token(&platform.path("subject.jwt"), &refused);
    let idp = platform.provider(json!({}));
    let ep = idp.token_endpoint.clone();
    let (d, files) = platform
        .daemon(&exchange_client(
            "batch",
            "exchanger",
            &ep,
            "subject.jwt",
            "",
        ))
        .await;

    let s = needs_operator(&d, "batch", "invalid_request").await;
    for part in [
        refused.fingerprint().as_str(),
        ISSUER,
        "system:serviceaccount:apps:batch",
        AUDIENCE,
    ] {
        assert!(
            s.last_error.contains(part),
            "{part} not in {}",
            s.last_error
        );
    }
    assert!(!s.last_error.contains(&refused.token));
    // Over several seconds (the file polled every 500 ms, the client retried on its own
    // schedule), the refused token reached the provider once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = requests_of(&idp, "exchanger").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["status"], 400);
    assert_eq!(seen[0]["federation"]["subject_token"]["verified"], false);
    assert_eq!(
        seen[0]["federation"]["subject_token"]["sha256"],
        refused.sha256()
    );
    assert!(
        seen[0]["federation"]["reason"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{}",
        seen[0]
    );
    assert_eq!(
        d.status("batch").await.state,
        proto::ClientState::NeedsOperator as i32
    );

    let good = files.write("subject.jwt", "system:serviceaccount:apps:batch", 300);
    let t = token(&d, "batch", Duration::from_secs(3)).await;
    assert_eq!(jwt_claims(&t.access_token)["subject"]["jti"], good.jti);
    assert_eq!(requests_of(&idp, "exchanger").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_bearer_presents_the_assertion_file_and_a_refused_one_once() {
    let platform = Platform::new();
    let good = platform.write("assertion.jwt", "deploy-bot", 300);
    // For another audience than the provider's: refused with invalid_grant.
    let elsewhere = platform
        .minter
        .mint_for(ISSUER, "deploy-bot", "another-provider", 300);
    minter::write_token(&platform.path("elsewhere.jwt"), &elsewhere);
    let idp = platform.provider(json!({}));
    let ep = idp.token_endpoint.clone();
    let table = |name: &str, id: &str, file: &str| {
        format!(
            "[clients.{name}]\ntoken_endpoint = \"{ep}\"\nclient_id = \"{id}\"\nauth_method = \"none\"\ngrant = \"jwt_bearer\"\nassertion_file = \"{{dir}}/{file}\"\nscope = \"api:write\"\n"
        )
    };
    let (d, _files) = platform
        .daemon(&format!(
            "{}\n{}",
            table("deploy", "bearer", "assertion.jwt"),
            table("misaimed", "bearer-2", "elsewhere.jwt")
        ))
        .await;

    let t = token(&d, "deploy", Duration::from_secs(10)).await;
    assert_eq!(jwt_claims(&t.access_token)["subject"]["jti"], good.jti);
    assert_eq!(t.scopes, ["api:write"]);
    let seen = requests_of(&idp, "bearer").await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["grant_type"], JWT_BEARER);
    assert_eq!(seen[0]["federation"]["assertion"]["sha256"], good.sha256());

    let s = needs_operator(&d, "misaimed", "invalid_grant").await;
    assert!(
        s.last_error.contains(&elsewhere.fingerprint())
            && s.last_error.contains("another-provider"),
        "{}",
        s.last_error
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = requests_of(&idp, "bearer-2").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]["federation"]["reason"]
            .as_str()
            .unwrap()
            .contains("aud"),
        "{}",
        seen[0]
    );
}

/// A client assertion from the platform, as oidc-provider's `private_key_jwt` wants it:
/// `iss` = `sub` = the client id, `aud` the token endpoint.
fn client_assertion(m: &Minter, endpoint: &str) -> Minted {
    m.mint_for("workload", "workload", endpoint, 300)
}

#[tokio::test(flavor = "multi_thread")]
async fn federated_assertion_from_a_file_is_read_at_every_request() {
    let platform = Platform::new();
    let idp = platform.provider(json!({}));
    let ep = idp.token_endpoint.clone();
    let first = client_assertion(&platform.minter, &ep);
    minter::write_token(&platform.path("client-assertion.jwt"), &first);
    let (d, files) = platform
        .daemon(&format!(
            "[clients.wl]\ntoken_endpoint = \"{ep}\"\nclient_id = \"workload\"\ngrant = \"client_credentials\"\nauth_method = \"federated_assertion\"\nclient_assertion_file = \"{{dir}}/client-assertion.jwt\"\nscope = \"api:read\"\n"
        ))
        .await;
    let path = files.root.join("client-assertion.jwt");

    let t1 = token(&d, "wl", Duration::from_secs(10)).await;
    let seen = requests_of(&idp, "workload").await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["auth_method"], "private_key_jwt");
    assert_eq!(seen[0]["grant_type"], "client_credentials");
    assert_eq!(
        seen[0]["federation"]["client_assertion"]["sha256"],
        first.sha256()
    );

    let second = client_assertion(&files.minter, &ep);
    minter::write_token(&path, &second);
    let t2 = refresh(&d, "wl", &t1).await.unwrap();

    // oidc-provider refuses an assertion's jti seen before: the unrotated file's token is
    // refused (invalid_client), once, and the client waits for a new one.
    refresh(&d, "wl", &t2).await.unwrap_err();
    let s = needs_operator(&d, "wl", "invalid_client").await;
    assert!(
        s.last_error.contains(&second.fingerprint()),
        "{}",
        s.last_error
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = requests_of(&idp, "workload").await;
    assert_eq!(
        seen.iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [200, 200, 401],
        "{seen:?}"
    );
    assert_eq!(
        jtis(&seen, "client_assertion"),
        [first.jti.clone(), second.jti.clone(), second.jti.clone()]
    );

    let third = client_assertion(&files.minter, &ep);
    minter::write_token(&path, &third);
    eventually(
        Duration::from_secs(3),
        "a request with the rotated assertion",
        || async {
            let seen = requests_of(&idp, "workload").await;
            (seen.len() == 4 && seen[3]["status"] == 200).then_some(())
        },
    )
    .await;
    assert_eq!(
        jtis(&requests_of(&idp, "workload").await, "client_assertion")[3],
        third.jti
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn federated_assertion_from_a_command_is_minted_at_every_request() {
    let platform = Platform::new();
    let idp = platform.provider(json!({}));
    let ep = idp.token_endpoint.clone();
    let key = platform.path("platform-key.pem");
    platform.minter.write_private_key(&key);
    let log = platform.path("minted.log");
    let argv = platform
        .minter
        .command(&key, ("workload", "workload", &ep), 300, &log);
    let (d, _files) = platform
        .daemon(&format!(
            "[clients.wl]\ntoken_endpoint = \"{ep}\"\nclient_id = \"workload\"\ngrant = \"client_credentials\"\nauth_method = \"federated_assertion\"\nclient_assertion_command = {}\nscope = \"api:read\"\n",
            toml_array(&argv)
        ))
        .await;

    let mut t = token(&d, "wl", Duration::from_secs(15)).await;
    for _ in 0..2 {
        t = refresh(&d, "wl", &t).await.unwrap();
    }
    let seen = requests_of(&idp, "workload").await;
    assert!(seen.iter().all(|r| r["status"] == 200), "{seen:?}");
    let sent = jtis(&seen, "client_assertion");
    assert_eq!(sent.len(), 3, "{seen:?}");
    let minted: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        sent, minted,
        "each request sent the assertion minted for it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subject_token_commands_that_hang_or_flood_are_bounded() {
    let platform = Platform::new();
    platform.write("subject.jwt", "steady", 300);
    let idp = platform.provider(json!({}));
    let ep = idp.token_endpoint.clone();
    // A duration no other process sleeps, to find this command's processes.
    let hang = format!("600.{}", std::process::id());
    let hang = hang.as_str();
    let command = |name: &str, argv: &[&str]| {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        format!(
            "[clients.{name}]\ntoken_endpoint = \"{ep}\"\nclient_id = \"exchanger-2\"\nauth_method = \"none\"\ngrant = \"token_exchange\"\nsubject_token_command = {}\n",
            toml_array(&argv)
        )
    };
    let clients = format!(
        "{}\n{}\n{}",
        exchange_client("steady", "exchanger", &ep, "subject.jwt", ""),
        command("hangs", &[&program("sleep"), hang]),
        command("floods", &[&program("yes"), "eyJhbGciOiJFUzI1NiJ9"]),
    );
    let dir = platform.dir;
    let d = Daemon::start_in(
        dir,
        &format!("[refresh]\nrequest_timeout = \"2s\"\n{clients}"),
    )
    .await;

    token(&d, "steady", Duration::from_secs(10)).await;
    // While the commands hang and flood, the other client is served at once, and each
    // command's processes live no longer than the request timeout.
    let mut first_seen = std::collections::HashMap::new();
    let started = Instant::now();
    let mut rpc = d.client().await;
    while started.elapsed() < Duration::from_secs(8) {
        let asked = Instant::now();
        rpc.get_token(get("steady")).await.unwrap();
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "GetToken took {:?}",
            asked.elapsed()
        );
        let running = processes_with_arg(hang);
        assert!(
            running.len() <= 1,
            "{} hanging commands at once",
            running.len()
        );
        for pid in running {
            let since = *first_seen.entry(pid).or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(4),
                "the hanging command {pid} outlived request_timeout (2 s)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!first_seen.is_empty(), "the hanging command never ran");
    for (client, program) in [("hangs", "sleep"), ("floods", "yes")] {
        let s = d.status(client).await;
        assert!(
            s.last_error
                .contains(&format!("command {}", self::program(program))),
            "{client}: {}",
            s.last_error
        );
        assert!(!s.has_valid_token);
        assert!(
            !s.last_error.contains("eyJhbGciOiJFUzI1NiJ9"),
            "{}",
            s.last_error
        );
    }
    assert_eq!(requests_of(&idp, "exchanger-2").await, Vec::<Value>::new());
    assert!(
        !d.log_text().contains("eyJhbGciOiJFUzI1NiJ9"),
        "command output in the log"
    );

    // A command running when tokend stops is ended before it exits, not left behind.
    eventually(
        Duration::from_secs(10),
        "the hanging command running",
        || async { (!processes_with_arg(hang).is_empty()).then_some(()) },
    )
    .await;
    let mut d = d;
    assert_eq!(d.stop(), Some(0));
    eventually(
        Duration::from_secs(2),
        "the hanging command gone",
        || async { processes_with_arg(hang).is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requested_token_type_is_checked_against_the_issued_one() {
    let platform = Platform::new();
    platform.write("subject.jwt", "svc", 300);
    // One provider honours requested_token_type; the other issues an access token whatever
    // was asked, as some do.
    let honest = platform.provider(json!({}));
    let careless = platform.provider(json!({"ignoreRequestedTokenType": true}));
    let jwt = "requested_token_type = \"jwt\"";
    let clients = [
        exchange_client(
            "as-jwt",
            "exchanger",
            &honest.token_endpoint,
            "subject.jwt",
            jwt,
        ),
        exchange_client(
            "unsupported",
            "exchanger-2",
            &honest.token_endpoint,
            "subject.jwt",
            "requested_token_type = \"id_token\"",
        ),
        exchange_client(
            "mismatch",
            "exchanger",
            &careless.token_endpoint,
            "subject.jwt",
            jwt,
        ),
    ]
    .join("\n");
    let (d, _files) = platform.daemon(&clients).await;

    // A JWT asked for and issued, with token_type N_A (RFC 8693 2.2.1): served.
    let t = token(&d, "as-jwt", Duration::from_secs(10)).await;
    assert_eq!(t.token_type, "N_A");
    let seen = requests_of(&honest, "exchanger").await;
    assert_eq!(seen[0]["federation"]["requested_token_type"], TYPE_JWT);
    assert_eq!(seen[0]["federation"]["issued_token_type"], TYPE_JWT);

    // An access token issued where a JWT was asked for: refused, saying both.
    let want = format!(
        "issued_token_type is \"{TYPE_ACCESS_TOKEN}\", not the requested_token_type {TYPE_JWT}"
    );
    let s = eventually(Duration::from_secs(10), "the mismatch reported", || async {
        let s = d.status("mismatch").await;
        (!s.last_error.is_empty()).then_some(s)
    })
    .await;
    assert!(s.last_error.contains(&want), "{}", s.last_error);
    assert!(!s.has_valid_token);
    assert!(d.client().await.get_token(get("mismatch")).await.is_err());
    assert_eq!(requests_of(&careless, "exchanger").await[0]["status"], 200);

    // A type the provider does not issue: its refusal says so.
    let s = eventually(Duration::from_secs(10), "the refusal reported", || async {
        let s = d.status("unsupported").await;
        (!s.last_error.is_empty()).then_some(s)
    })
    .await;
    assert!(s.last_error.contains("invalid_request"), "{}", s.last_error);
    println!("unsupported requested_token_type: {}", s.last_error);
}

/// `argv` as a TOML array.
fn toml_array(argv: &[String]) -> String {
    serde_json::to_string(argv).unwrap()
}

/// The absolute path of a standard program, as a command source must name it.
fn program(name: &str) -> String {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not in /usr/bin or /bin: install coreutils"))
        .display()
        .to_string()
}

/// The pids of processes with `arg` among their arguments.
fn processes_with_arg(arg: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}
