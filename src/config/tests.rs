//! The config as an operator meets it: the example file, defaults, environment overrides, and
//! errors that name the file, the key and the reason.

use std::path::{Path, PathBuf};

use super::*;
use std::io::Write;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

fn secret(dir: &tempfile::TempDir) -> PathBuf {
    let path = write(dir, "secret", "s3cret\n");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

fn client_toml(secret: &Path, extra: &str) -> String {
    format!(
        "[clients.billing]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"billing\"\nclient_secret_file = \"{}\"\n{extra}\n",
        secret.display()
    )
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "tokend.toml", text);
    Config::load_with_env(
        &path,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn example_config_parses() {
    // The shipped example documents every key; it must stay loadable in shape (its secret
    // paths do not exist here, which is the only error allowed).
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokend.toml"))
            .unwrap();
    let err = load(&text, &[]).unwrap_err();
    assert!(err.key.ends_with("client_secret_file"), "{err}");
}

#[test]
fn defaults_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let c = load(
        &client_toml(&s, "scope = \"a b\"\nauth_method = \"post\""),
        &[],
    )
    .unwrap();
    let b = &c.clients["billing"];
    assert_eq!(b.oauth.auth_method, AuthMethod::Post);
    assert_eq!(b.oauth.grant, Grant::ClientCredentials);
    assert_eq!(b.oauth.scope.as_deref(), Some("a b"));
    assert_eq!(c.server.socket, PathBuf::from("/run/tokend/tokend.sock"));
    assert_eq!(c.socket_mode(), 0o660);
    assert_eq!(c.refresh.margin, Duration::from_secs(30));
    assert_eq!(c.refresh.retry_after_max, Duration::from_secs(600));
}

#[test]
fn metrics_socket_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let with = |metrics: &str| {
        load(
            &format!("[metrics]\n{metrics}\n{}", client_toml(&s, "")),
            &[],
        )
    };
    let c = with("socket = \"/run/tokend/metrics.sock\"").unwrap();
    assert_eq!(c.metrics.socket_mode(), 0o600, "private by default");
    let key = |metrics: &str| with(metrics).unwrap_err().key;
    assert_eq!(key("socket_mode = \"rw\""), "metrics.socket_mode");
    assert_eq!(key("socket = \"metrics.sock\""), "metrics.socket");
    assert_eq!(
        key("socket = \"/run/tokend/tokend.sock\""),
        "metrics.socket"
    );
}

#[test]
fn refresh_token_directories_others_can_write_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let extra = format!(
        "grant = \"refresh_token\"\nrefresh_token_file = \"{}/rt\"",
        state.display()
    );
    let err = load(&client_toml(&s, &extra), &[]).unwrap_err();
    assert_eq!(err.key, "clients.billing.refresh_token_file");
    assert!(err.reason.contains("writable by everyone"), "{err}");
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    assert!(load(&client_toml(&s, &extra), &[]).is_ok());
}

#[test]
fn environment_overrides_nested_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let c = load(
        &client_toml(&s, ""),
        &[
            ("TOKEND_CLIENTS__BILLING__SCOPE", "from.env"),
            ("TOKEND_SERVER__SOCKET", "/tmp/x.sock"),
            ("TOKEND_REFRESH__MARGIN", "10s"),
            // Not a key: must be ignored rather than rejected as unknown.
            ("TOKEND_SOCKET", "/tmp/ignored.sock"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.clients["billing"].oauth.scope.as_deref(),
        Some("from.env")
    );
    assert_eq!(c.server.socket, PathBuf::from("/tmp/x.sock"));
    assert_eq!(c.refresh.margin, Duration::from_secs(10));
}

#[test]
fn errors_name_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let cases: &[(String, &str, &str)] = &[
        (
            client_toml(&s, "grant = \"password\""),
            "clients.billing.grant",
            "\"password\" is not a supported grant",
        ),
        (
            client_toml(&s, "auth_method = \"bearer\""),
            "clients.billing.auth_method",
            "\"bearer\" is not an auth method; use one of \"basic\", \"post\"",
        ),
        (
            format!("{}\n[[oops", client_toml(&s, "")),
            "(syntax)",
            "line 7",
        ),
        (
            client_toml(&s, "scopes = \"x\""),
            "clients.billing",
            "scopes",
        ),
        (
            client_toml(&s, "client_secret_env = \"X\""),
            "clients.billing.client_secret_file",
            "not both",
        ),
        (
            client_toml(&s, "").replace("https://idp", "http://idp"),
            "clients.billing.token_endpoint",
            "plain http",
        ),
        (
            client_toml(&s, "grant = \"refresh_token\""),
            "clients.billing.refresh_token_file",
            "needs refresh_token_file",
        ),
        (
            client_toml(&s, "[clients.billing.extra_params]\ngrant_type = \"x\""),
            "clients.billing.extra_params.grant_type",
            "cannot be overridden",
        ),
        (
            format!("[server]\ntcp = \"0.0.0.0:7707\"\n{}", client_toml(&s, "")),
            "server.tcp",
            "loopback",
        ),
        (
            format!(
                "[refresh]\nbackoff_min = \"2m\"\nbackoff_max = \"1m\"\n{}",
                client_toml(&s, "")
            ),
            "refresh.backoff_min",
            "larger",
        ),
        (
            format!(
                "[refresh]\nretry_after_max = \"2d\"\n{}",
                client_toml(&s, "")
            ),
            "refresh.retry_after_max",
            "longer than 1day",
        ),
        (
            format!(
                "[refresh]\nretry_after_max = \"0s\"\n{}",
                client_toml(&s, "")
            ),
            "refresh.retry_after_max",
            "must be positive",
        ),
        (
            format!("[refresh]\nmargin = \"soon\"\n{}", client_toml(&s, "")),
            "refresh.margin",
            "not a duration",
        ),
        (
            format!(
                "[server]\nmax_watch_streams = 10\nmax_watch_streams_per_uid = 20\n{}",
                client_toml(&s, "")
            ),
            "server.max_watch_streams_per_uid",
            "larger than server.max_watch_streams",
        ),
        (
            format!("[server]\nmax_waiting_calls = 0\n{}", client_toml(&s, "")),
            "server.max_waiting_calls",
            "at least 1",
        ),
        (
            format!("[server]\ndefault_wait = \"2m\"\n{}", client_toml(&s, "")),
            "server.default_wait",
            "longer than server.max_wait",
        ),
        (
            format!("[server]\nmax_wait = \"2h\"\n{}", client_toml(&s, "")),
            "server.max_wait",
            "between 1s and 1h",
        ),
        (
            format!("[refresh]\nmin_interval = \"0s\"\n{}", client_toml(&s, "")),
            "refresh.min_interval",
            "positive",
        ),
        (
            client_toml(&s, "").replace("billing", &"b".repeat(129)),
            "clients.",
            "1 to 128 letters",
        ),
        (
            client_toml(Path::new("/nonexistent/secret"), ""),
            "clients.billing.client_secret_file",
            "/nonexistent/secret",
        ),
    ];
    for (text, key, reason) in cases {
        let err = load(text, &[]).expect_err(text);
        assert!(err.file.ends_with("tokend.toml"), "{err}");
        assert!(err.key.starts_with(key), "want key {key}, got {err}");
        assert!(err.to_string().contains(reason), "want {reason:?} in {err}");
    }
}

#[test]
fn http_to_loopback_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let text = client_toml(&s, "").replace("https://idp.example.com", "http://127.0.0.1:9");
    load(&text, &[]).unwrap();
}

#[test]
fn connection_limits_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let c = load(&client_toml(&s, ""), &[]).unwrap();
    assert_eq!(c.server.max_connections, 1024);
    assert_eq!(c.server.max_concurrent_streams, 128);
    let cases = [
        (
            "max_connections = 0",
            "server.max_connections",
            "at least 1",
        ),
        (
            "max_connections = 10\nmax_connections_per_uid = 11",
            "server.max_connections_per_uid",
            "larger than server.max_connections (10)",
        ),
        (
            "max_concurrent_streams = 0",
            "server.max_concurrent_streams",
            "at least 1",
        ),
        ("idle_timeout = \"0s\"", "server.idle_timeout", "positive"),
        (
            "handshake_timeout = \"0s\"",
            "server.handshake_timeout",
            "positive",
        ),
    ];
    for (server, key, reason) in cases {
        let text = format!("[server]\n{server}\n{}", client_toml(&s, ""));
        let err = load(&text, &[]).expect_err(&text);
        assert_eq!(err.key, key, "{err}");
        assert!(err.reason.contains(reason), "want {reason:?} in {err}");
    }
}

#[test]
fn unreadable_file_is_named() {
    let err = Config::load_with_env(Path::new("/nonexistent/tokend.toml"), []).unwrap_err();
    assert_eq!(err.file, "/nonexistent/tokend.toml");
    assert!(err.reason.contains("cannot read"), "{err}");
}

#[test]
fn public_clients_send_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let rt = dir.path().join("rt");
    let public = format!(
        "[clients.cli]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"cli\"\nauth_method = \"none\"\ngrant = \"refresh_token\"\nrefresh_token_file = \"{}\"\n",
        rt.display()
    );
    let c = load(&public, &[]).unwrap();
    assert_eq!(c.clients["cli"].oauth.auth_method, AuthMethod::None);
    assert_eq!(c.clients["cli"].oauth.secret, None);

    let err = load(&client_toml(&s, "auth_method = \"none\""), &[]).unwrap_err();
    assert_eq!(err.key, "clients.billing.client_secret_file");
    assert!(err.reason.contains("sends no client secret"), "{err}");

    let no_secret = "[clients.billing]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"billing\"\nauth_method = \"none\"\n";
    let err = load(no_secret, &[]).unwrap_err();
    assert_eq!(err.key, "clients.billing.auth_method");
    assert!(err.reason.contains("client_credentials"), "{err}");

    let basic = "[clients.billing]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"billing\"\n";
    let err = load(basic, &[]).unwrap_err();
    assert!(
        err.reason
            .contains("auth_method = \"client_secret_basic\" needs a client secret"),
        "{err}"
    );
}

#[test]
fn an_issuer_names_the_token_endpoint_or_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let table = |keys: &str| {
        format!(
            "[clients.billing]\n{keys}\nclient_id = \"billing\"\nclient_secret_file = \"{}\"\n",
            s.display()
        )
    };
    let c = load(&table("issuer = \"https://idp.example.com/realm\""), &[]).unwrap();
    let o = &c.clients["billing"].oauth;
    assert_eq!(o.token_endpoint, None);
    assert_eq!(o.endpoint_key(), "https://idp.example.com/realm");

    let err = load(&table(""), &[]).unwrap_err();
    assert_eq!(err.key, "clients.billing.token_endpoint");
    assert!(err.reason.contains("or issuer"), "{err}");

    let err = load(
        &table("issuer = \"https://idp.example.com/realm?x=1\""),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "clients.billing.issuer");
    assert!(err.reason.contains("no query or fragment"), "{err}");

    let err = load(
        &table("issuer = \"https://idp.example.com\"\ndevice_authorization_endpoint = \"http://idp.example.com/device\""),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "clients.billing.device_authorization_endpoint");
}

#[test]
fn basic_encoding_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let c = load(&client_toml(&s, ""), &[]).unwrap();
    assert_eq!(
        c.clients["billing"].oauth.basic_encoding,
        BasicEncoding::Auto
    );
    assert!(c.notes().is_empty());
    let c = load(&client_toml(&s, "basic_encoding = \"raw\""), &[]).unwrap();
    assert_eq!(
        c.clients["billing"].oauth.basic_encoding,
        BasicEncoding::Raw
    );

    let err = load(&client_toml(&s, "basic_encoding = \"plain\""), &[]).unwrap_err();
    assert_eq!(err.key, "clients.billing.basic_encoding");
    assert!(
        err.reason.contains("\"auto\", \"form\" or \"raw\""),
        "{err}"
    );

    let err = load(
        &client_toml(&s, "auth_method = \"post\"\nbasic_encoding = \"form\""),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "clients.billing.basic_encoding");
    assert!(
        err.reason
            .contains("only used with auth_method = \"basic\""),
        "{err}"
    );

    let colon = |extra: &str| {
        format!(
            "[clients.billing]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"urn:billing\"\nclient_secret_file = \"{}\"\n{extra}\n",
            s.display()
        )
    };
    let err = load(&colon("basic_encoding = \"raw\""), &[]).unwrap_err();
    assert_eq!(err.key, "clients.billing.basic_encoding");
    assert!(err.reason.contains("cannot be sent raw"), "{err}");
    let c = load(&colon(""), &[]).unwrap();
    let notes = c.notes();
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].starts_with("clients.billing.client_id: "),
        "{notes:?}"
    );
    assert!(notes[0].contains("cannot be sent raw"), "{notes:?}");
    assert!(
        load(&colon("basic_encoding = \"form\""), &[])
            .unwrap()
            .notes()
            .is_empty()
    );
}

/// The example file's commented-out client tables (`# [clients.NAME]` and the `# key = value` lines
/// under it), uncommented: what an operator gets by removing the `# `.
fn uncommented_examples(text: &str) -> String {
    let mut out = String::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("# [clients.") || line.starts_with("# [proxy.") {
            in_table = true;
        } else if !(in_table && line.starts_with("# ") && !line.starts_with("# #")) {
            in_table &= line.starts_with("# #");
            continue;
        }
        let toml = &line[2..];
        // A table's prose ends it: only `key = value` lines are config.
        if !toml.starts_with('[') && !toml.contains(" = ") {
            in_table = false;
            continue;
        }
        out.push_str(toml);
        out.push('\n');
    }
    out
}

#[test]
fn example_config_commented_tables_parse() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokend.toml"))
            .unwrap();
    let (_, others) = text
        .split_once("# ---- Other ways")
        .expect("the example file has a section of other clients");
    let examples = uncommented_examples(others);
    // Parsed, not validated: the files they name do not exist here.
    let (config, _) = config::Config::builder()
        .add_source(config::File::from_str(&examples, config::FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize::<ConfigFile>()
        .unwrap_or_else(|e| panic!("{e}\n{examples}"))
        .into_config();
    let methods: Vec<_> = config
        .clients
        .values()
        .map(|c| c.oauth.auth_method.as_str())
        .collect();
    for method in [
        "client_secret_basic",
        "none",
        "private_key_jwt",
        "client_secret_jwt",
        "tls_client_auth",
        "federated_assertion",
    ] {
        assert!(
            methods.contains(&method),
            "{method} in {methods:?}\n{examples}"
        );
    }
    assert!(config.clients.values().any(|c| c.oauth.issuer.is_some()));
    let allow: Vec<_> = config
        .clients
        .values()
        .flat_map(|c| c.access_rules().allow)
        .collect();
    assert!(
        allow.iter().any(|e| e.unit.is_some())
            && allow.iter().any(|e| e.executable.is_some())
            && allow.iter().any(|e| e.pod_service_account.is_some()),
        "{allow:?}"
    );
    assert!(
        config
            .clients
            .values()
            .any(|c| c.oauth.rare().dpop_key.is_some())
    );
    let route = &config.proxy["ledger"];
    assert!(route.validate().is_ok(), "{route:?}");
    assert!(config.clients.contains_key(route.client.as_str()));
    let grants: Vec<_> = config.clients.values().map(|c| c.oauth.grant).collect();
    for grant in [Grant::TokenExchange, Grant::JwtBearer] {
        assert!(
            grants.contains(&grant),
            "{grant:?} in {grants:?}\n{examples}"
        );
    }
}

#[test]
fn a_client_key_on_a_method_without_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let key = format!("client_key_file = \"{}\"", s.display());
    let err = load(&client_toml(&s, &key), &[]).unwrap_err();
    assert_eq!(err.key, "clients.billing.client_key_file");
    assert!(
        err.reason
            .contains("only used with auth_method = \"private_key_jwt\""),
        "{err}"
    );
}

#[test]
fn a_dpop_key_lives_in_a_safe_directory_named_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let server = format!("[server]\nstate_directory = \"{}\"\n", state.display());
    let c = load(&format!("{server}{}", client_toml(&s, "dpop = true")), &[]).unwrap();
    assert_eq!(
        c.clients["billing"].oauth.rare().dpop_key.as_deref(),
        Some(state.join("billing.dpop.pem").as_path())
    );
    // systemd's StateDirectory= (the first of several).
    let c = load(
        &client_toml(&s, "dpop = true"),
        &[("TOKEND_SERVER__STATE_DIRECTORY", state.to_str().unwrap())],
    )
    .unwrap();
    assert!(c.clients["billing"].oauth.rare().dpop_key.is_some());
    let own = dir.path().join("own.pem");
    let text = client_toml(
        &s,
        &format!("dpop = true\ndpop_key_file = \"{}\"", own.display()),
    );
    assert_eq!(
        load(&text, &[]).unwrap().clients["billing"]
            .oauth
            .rare()
            .dpop_key,
        Some(own)
    );
    // Refused: a key file without dpop, a missing directory (named with what to do), one
    // that others can write, a relative path.
    let refused = |text: &str| load(text, &[]).unwrap_err();
    let err = refused(&client_toml(&s, "dpop_key_file = \"/k.pem\""));
    assert_eq!(err.key, "clients.billing.dpop_key_file");
    assert!(err.reason.contains("only used with dpop = true"), "{err}");
    let missing = format!(
        "[server]\nstate_directory = \"{}/nope\"\n",
        dir.path().display()
    );
    let err = refused(&format!("{missing}{}", client_toml(&s, "dpop = true")));
    assert_eq!(err.key, "clients.billing.dpop");
    assert!(err.reason.contains("server.state_directory"), "{err}");
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let text = client_toml(
        &s,
        &format!("dpop = true\ndpop_key_file = \"{}/k.pem\"", open.display()),
    );
    let err = refused(&text);
    assert_eq!(err.key, "clients.billing.dpop_key_file");
    let err = refused(&client_toml(&s, "dpop = true\ndpop_key_file = \"k.pem\""));
    assert!(err.reason.contains("absolute"), "{err}");
}

#[test]
fn proxy_routes_need_a_client_and_a_listener_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret(&dir);
    let route = |name: &str, listen: &str, client: &str| {
        format!(
            "[proxy.{name}]\nlisten = \"{listen}\"\nupstream = \"https://api.example.com\"\nclient = \"{client}\"\n"
        )
    };
    let with = |routes: &str| load(&format!("{}{routes}", client_toml(&s, "")), &[]);
    let c = with(&route("api", "unix:/run/tokend/api.sock", "billing")).unwrap();
    assert_eq!(c.proxy["api"].max_replay_body, 1024 * 1024);
    assert_eq!(c.proxy["api"].timeout, Duration::from_secs(30));
    let err = with(&route("api", "unix:/run/tokend/api.sock", "nobody")).unwrap_err();
    assert_eq!(err.key, "proxy.api.client");
    assert!(err.reason.contains("no client named \"nobody\""), "{err}");
    let err = with(&route("api", "unix:/run/tokend/tokend.sock", "billing")).unwrap_err();
    assert_eq!(err.key, "proxy.api.listen");
    assert!(err.reason.contains("server.socket"), "{err}");
    let twice = route("a", "127.0.0.1:8080", "billing") + &route("b", "127.0.0.1:8080", "billing");
    let err = with(&twice).unwrap_err();
    assert_eq!(err.key, "proxy.b.listen");
    let err = with(&route("api", "0.0.0.0:8080", "billing")).unwrap_err();
    assert_eq!(err.key, "proxy.api.listen");
    let err = with(&route("\"a b\"", "127.0.0.1:8080", "billing")).unwrap_err();
    assert!(err.reason.contains("route name"), "{err}");
    let unknown = format!("{}bogus = 1\n", route("api", "127.0.0.1:8080", "billing"));
    let err = with(&unknown).unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}
