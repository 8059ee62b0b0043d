//! The `tokend.v1.Token` answers of GetToken, WatchToken and RefreshToken, written straight
//! from the store. The generated `proto::Token` would be built for every call from copies of
//! the client's name, the access token, its type and each scope, encoded, and freed: about
//! 3,000 instructions and ten allocations per call where the message itself is a few
//! length-prefixed copies of bytes the store already holds. [`TokenMessage`] holds the two
//! `Arc`s instead and encodes the same bytes from them; the daemon's server code is generated
//! with it for `Token` (build.rs), and clients decode the generated `proto::Token` from it.

use std::sync::Arc;

use bytes::{Buf, BufMut};
use prost::Message;
use prost::encoding::{DecodeContext, WireType};

use crate::proto;
use crate::store::Token;

/// One client's token as a `tokend.v1.Token` message.
#[derive(Debug, Clone)]
pub struct TokenMessage {
    client: Arc<str>,
    token: Arc<Token>,
}

/// The fields of `tokend.v1.Token` (proto/tokend/v1/tokend.proto); every one is
/// length-delimited.
const CLIENT: u8 = 1;
const ACCESS_TOKEN: u8 = 2;
const TOKEN_TYPE: u8 = 3;
const SCOPES: u8 = 4;
const EXPIRES_AT: u8 = 5;
const ISSUED_AT: u8 = 6;

impl TokenMessage {
    pub fn new(client: Arc<str>, token: Arc<Token>) -> Self {
        TokenMessage { client, token }
    }

    /// The same message as the generated type, for answers that embed one (`DpopProof`) and
    /// for callers in this process.
    pub fn to_proto(&self) -> proto::Token {
        let token = &self.token;
        proto::Token {
            client: self.client.to_string(),
            access_token: token.access_token.expose().to_string(),
            token_type: token.token_type.as_str().to_string(),
            scopes: token.scopes().map(str::to_string).collect(),
            expires_at: Some(token.expires_wall().into()),
            issued_at: Some(token.received_wall.into()),
        }
    }

    fn times(&self) -> [(u8, prost_types::Timestamp); 2] {
        [
            (EXPIRES_AT, self.token.expires_wall().into()),
            (ISSUED_AT, self.token.received_wall.into()),
        ]
    }
}

/// Encode-only: the server never reads a `Token`, so a decoder skips every field (what a
/// message of an unknown type reads as).
impl Message for TokenMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let token = &self.token;
        string(CLIENT, &self.client, buf);
        string(ACCESS_TOKEN, token.access_token.expose(), buf);
        string(TOKEN_TYPE, token.token_type.as_str(), buf);
        for scope in token.scopes() {
            field(SCOPES, scope.as_bytes(), buf);
        }
        for (tag, time) in self.times() {
            head(tag, time.encoded_len(), buf);
            time.encode_raw(buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let token = &self.token;
        let scopes: usize = token.scopes().map(|s| field_len(s.len())).sum();
        let times: usize = self
            .times()
            .iter()
            .map(|(_, t)| field_len(t.encoded_len()))
            .sum();
        string_len(&self.client)
            + string_len(token.access_token.expose())
            + string_len(token.token_type.as_str())
            + scopes
            + times
    }

    fn clear(&mut self) {}
}

/// A proto3 string field: left out when empty, as the generated encoder does.
fn string(tag: u8, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        field(tag, value.as_bytes(), buf);
    }
}

fn string_len(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        field_len(value.len())
    }
}

fn field(tag: u8, value: &[u8], buf: &mut impl BufMut) {
    head(tag, value.len(), buf);
    buf.put_slice(value);
}

/// A length-delimited field's key (one byte for tags below 16) and length.
fn head(tag: u8, len: usize, buf: &mut impl BufMut) {
    buf.put_u8(tag << 3 | WireType::LengthDelimited as u8);
    prost::encoding::encode_varint(len as u64, buf);
}

fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;
    use tokio::time::Instant;

    use super::*;
    use crate::oauth::TokenType;
    use crate::secret::AccessToken;

    fn token(
        access: &str,
        scope: &str,
        kind: TokenType,
        lifetime: Duration,
        wall: SystemTime,
    ) -> Token {
        let now = Instant::now();
        Token {
            generation: 1,
            access_token: AccessToken::new(access.into()),
            token_type: kind,
            scope: scope.into(),
            received_at: now,
            received_wall: wall,
            expires_at: now + lifetime,
            refresh_due: now + lifetime / 2,
            dpop_key: None,
        }
    }

    /// The bytes the generated encoder writes for the same message, and what it decodes to.
    fn check(client: &str, token: Token) {
        let message = TokenMessage::new(client.into(), Arc::new(token));
        let ours = message.encode_to_vec();
        assert_eq!(ours.len(), message.encoded_len());
        let generated = message.to_proto();
        assert_eq!(ours, generated.encode_to_vec());
        assert_eq!(proto::Token::decode(&ours[..]).unwrap(), generated);
    }

    #[test]
    fn a_token_is_the_bytes_the_generated_encoder_writes() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let long = "a".repeat(300);
        check(
            "app",
            token(
                "at-1",
                "read write",
                TokenType::Bearer,
                Duration::from_secs(300),
                wall,
            ),
        );
        check(
            "d",
            token(
                &long,
                "",
                TokenType::Dpop,
                Duration::from_millis(1500),
                wall,
            ),
        );
        // Empty strings are left out; a wall clock before 1970 gives negative seconds.
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(2500);
        check(
            "",
            token(
                "",
                " a  b ",
                TokenType::NotApplicable,
                Duration::ZERO,
                before,
            ),
        );
    }

    proptest! {
        #[test]
        fn any_token_is_the_bytes_the_generated_encoder_writes(
            client in "[a-z0-9_-]{0,64}",
            access in "[!-~]{0,2000}",
            scopes in proptest::collection::vec("[!-~]{0,200}", 0..20),
            lifetime_ms in 0u64..400_000_000_000,
            wall_s in -100_000_000_000i64..100_000_000_000,
            wall_ns in 0u32..1_000_000_000,
        ) {
            let epoch = SystemTime::UNIX_EPOCH;
            let offset = Duration::new(wall_s.unsigned_abs(), wall_ns);
            let wall = if wall_s < 0 { epoch - offset } else { epoch + offset };
            let lifetime = Duration::from_millis(lifetime_ms);
            check(&client, token(&access, &scopes.join(" "), TokenType::Bearer, lifetime, wall));
        }
    }
}
