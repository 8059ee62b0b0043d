//! The fuzz targets' bounded pass on stable: every file under `fuzz/regressions/TARGET/` (inputs
//! that once crashed a target, and seeds) is replayed, and property tests feed the same
//! functions arbitrary and structure-aware inputs. Long runs: `cargo +nightly fuzz run TARGET`
//! in `fuzz/`.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proptest::prelude::*;

/// What a fuzz target does with one input.
type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("reply", targets::reply),
    ("retry_after", targets::retry_after),
    ("config", targets::config),
];

#[test]
fn regressions_replay_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            target(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
        assert!(replayed > 0, "{}: no inputs to replay", dir.display());
    }
}

/// A JSON value as text, leaning to what parsers get wrong: numbers beyond every integer and
/// float type, negative and fractional times, odd strings, nested containers.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        "-?[0-9]{1,40}(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,4})?",
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "\"[ -~]{0,40}\"",
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| object(&kv)),
        ]
    })
}

fn object(fields: &[(String, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// An object made of some of `keys`, each with any JSON value.
fn object_of(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(
        (prop::sample::select(keys), json_value()),
        0..keys.len() + 2,
    )
    .prop_map(|fields| {
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        object(&fields)
    })
}

const REPLY_KEYS: &[&str] = &[
    "access_token",
    "token_type",
    "expires_in",
    "scope",
    "refresh_token",
    "id_token",
    "error",
    "error_description",
    "error_uri",
];
const CLAIM_KEYS: &[&str] = &["exp", "iat", "nbf", "scope", "scp", "sub", "aud"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn reply_parser_takes_any_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        targets::reply(&data);
    }

    #[test]
    fn reply_parser_takes_any_reply_object(body in object_of(REPLY_KEYS)) {
        targets::reply(body.as_bytes());
    }

    #[test]
    fn reply_parser_takes_any_jwt_claims(claims in object_of(CLAIM_KEYS), junk in any::<bool>()) {
        let mut input = b"J".to_vec();
        input.extend_from_slice(claims.as_bytes());
        if junk {
            input.extend_from_slice(b"\xff}");
        }
        targets::reply(&input);
    }

    #[test]
    fn retry_after_takes_any_text(text in any::<String>()) {
        targets::retry_after(text.as_bytes());
    }

    #[test]
    fn retry_after_takes_any_number_or_date(value in retry_after_value(), clock in any::<u64>()) {
        targets::retry_after(value.as_bytes());
        let mut input = clock.to_le_bytes().to_vec();
        input.extend_from_slice(value.as_bytes());
        targets::retry_after(&input);
    }
}

const DAYS: &[&str] = &["Sun", "Mon", "Sunday", "Thu", "Xyz", ""];
const MONTHS: &[&str] = &["Jan", "Feb", "Nov", "Dec", "Foo", "nov"];

/// Delta-seconds of any length and the three HTTP date forms (RFC 9110 5.6.7) with fields in
/// and out of range.
fn retry_after_value() -> impl Strategy<Value = String> {
    let day = prop::sample::select(DAYS);
    let month = prop::sample::select(MONTHS);
    let fields = (
        day,
        0u32..100,
        month,
        0u32..100_000,
        0u32..100,
        0u32..100,
        0u32..100,
    );
    prop_oneof![
        "[ \t]{0,2}-?[0-9]{1,40}[ \t]{0,2}",
        fields.clone().prop_map(|(w, d, mo, y, h, mi, s)| {
            format!("{w}, {d:02} {mo} {y:04} {h:02}:{mi:02}:{s:02} GMT")
        }),
        fields.clone().prop_map(|(w, d, mo, y, h, mi, s)| {
            format!(
                "{w}day, {d:02}-{mo}-{:02} {h:02}:{mi:02}:{s:02} GMT",
                y % 100
            )
        }),
        fields.prop_map(|(w, d, mo, y, h, mi, s)| {
            format!("{w} {mo} {d:>2} {h:02}:{mi:02}:{s:02} {y}")
        }),
    ]
}

/// A secret file the generated configs can name, so validation gets past the secret check.
static SECRET: LazyLock<(tempfile::TempDir, PathBuf)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "s3cret\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (dir, path)
});

/// A TOML value as text: strings (durations, URLs, paths, anything), numbers, booleans, arrays.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{1,30}(ns|ms|s|m|h|d|y|years)".prop_map(|s| format!("\"{s}\"")),
        "(https?|ftp)://[a-z0-9.:\\[\\]@%]{0,20}/[a-z]{0,8}".prop_map(|s| format!("\"{s}\"")),
        Just(format!("\"{}\"", SECRET.1.display())),
        "/[a-z./]{0,20}".prop_map(|s| format!("\"{s}\"")),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    prop_oneof![
        3 => leaf.clone(),
        1 => prop::collection::vec(leaf, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
}

const SECTIONS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "socket",
            "socket_mode",
            "tcp",
            "default_wait",
            "startup_timeout",
        ],
    ),
    (
        "refresh",
        &[
            "lifetime_fraction",
            "margin",
            "backoff_min",
            "backoff_max",
            "operator_retry",
            "default_lifetime",
            "request_timeout",
            "endpoint_concurrency",
            "endpoint_spacing",
        ],
    ),
    ("metrics", &["listen"]),
    (
        "clients.x",
        &[
            "token_endpoint",
            "client_id",
            "client_secret_file",
            "client_secret_env",
            "client_secret_credential",
            "auth_method",
            "grant",
            "refresh_token_file",
            "scope",
            "allow_insecure_http",
            "authorize_endpoint",
            "redirect_uri",
            "pkce",
            "allowed_users",
            "allowed_groups",
            "allow_tcp",
            "required",
        ],
    ),
];

/// A config with the real sections and keys (each at most once, as TOML requires), any values.
fn config_text() -> impl Strategy<Value = String> {
    prop::sample::subsequence(SECTIONS, 0..=SECTIONS.len())
        .prop_flat_map(|sections| {
            sections
                .into_iter()
                .map(|(name, keys)| {
                    prop::sample::subsequence(keys, 0..=keys.len())
                        .prop_flat_map(|keys| {
                            let values = prop::collection::vec(toml_value(), keys.len());
                            (Just(keys), values)
                        })
                        .prop_map(move |(keys, values)| {
                            let mut text = format!("[{name}]\n");
                            for (k, v) in keys.iter().zip(values) {
                                text.push_str(&format!("{k} = {v}\n"));
                            }
                            text
                        })
                })
                .collect::<Vec<_>>()
        })
        .prop_map(|sections| sections.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn config_loader_takes_any_text(text in any::<String>()) {
        targets::config(text.as_bytes());
    }

    #[test]
    fn config_loader_takes_any_values_for_its_keys(text in config_text()) {
        targets::config(text.as_bytes());
    }
}
