//! [`Codec`]: how a channel's value is stored in Redis.

use std::error::Error as StdError;
use std::fmt;

/// How a channel's value is turned into the bytes Redis stores and
/// publishes, and back.
///
/// Implemented for byte strings, `String` and the integer types. Integers are
/// stored as decimal text, so that a Lua snippet (see
/// [`ModifyScript`](super::ModifyScript)) can read and write them with
/// `tonumber` and `tostring`.
///
/// For your own type, implement it with whatever format you like; with
/// `serde_json`:
///
/// ```
/// use longpoll::redis::{Codec, DecodeError};
///
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Score { home: u32, away: u32 }
///
/// impl Codec for Score {
///     fn encode(&self) -> Vec<u8> {
///         serde_json::to_vec(self).expect("a Score always serialises")
///     }
///     fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
///         serde_json::from_slice(bytes).map_err(DecodeError::new)
///     }
/// }
///
/// let s = Score { home: 2, away: 1 };
/// assert_eq!(Score::decode(&s.encode()).unwrap(), s);
/// ```
pub trait Codec: Sized {
    /// The bytes stored in Redis for this value.
    fn encode(&self) -> Vec<u8>;

    /// The value stored as `bytes`.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] if `bytes` is not a value of this type: another
    /// program (or another version of yours) wrote the key.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

/// Bytes in Redis that [`Codec::decode`] does not accept.
///
/// When opening a channel this is an error (see
/// [`BackplaneError::is_decode`](super::BackplaneError::is_decode)); a
/// published update that does not decode is skipped, and the channel keeps
/// its previous value.
pub struct DecodeError {
    source: Box<dyn StdError + Send + Sync>,
}

impl DecodeError {
    /// Wraps what the decoder reported: an error, or a message.
    pub fn new(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        DecodeError {
            source: source.into(),
        }
    }
}

impl fmt::Debug for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DecodeError").field(&self.source).finish()
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stored value does not decode: {}", self.source)
    }
}

impl StdError for DecodeError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

impl Codec for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(bytes.to_vec())
    }
}

impl Codec for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        String::from_utf8(bytes.to_vec()).map_err(DecodeError::new)
    }
}

macro_rules! decimal_codec {
    ($($t:ty)*) => {$(
        /// Decimal text, as Lua's `tostring` writes it.
        impl Codec for $t {
            fn encode(&self) -> Vec<u8> {
                self.to_string().into_bytes()
            }

            fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                std::str::from_utf8(bytes)
                    .map_err(DecodeError::new)?
                    .parse()
                    .map_err(DecodeError::new)
            }
        }
    )*};
}

decimal_codec!(u8 u16 u32 u64 usize i8 i16 i32 i64 isize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_as_decimal_text() {
        assert_eq!(42u32.encode(), b"42");
        assert_eq!(u32::decode(b"42").unwrap(), 42);
        assert_eq!(i64::decode(b"-7").unwrap(), -7);
        assert!(u32::decode(b"-1").is_err());
        assert!(u32::decode(b"9.0").is_err());
        assert!(u8::decode(&[0xff]).is_err());
    }

    #[test]
    fn strings_must_be_utf8() {
        assert_eq!(String::decode(b"caf\xc3\xa9").unwrap(), "café");
        let err = String::decode(b"\xff").unwrap_err();
        assert!(err.to_string().starts_with("stored value does not decode"));
        assert_eq!(Vec::<u8>::decode(b"\xff").unwrap(), [0xff]);
    }
}
