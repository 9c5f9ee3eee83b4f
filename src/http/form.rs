//! `application/x-www-form-urlencoded` decoding, shared by query strings and
//! form bodies, and media-type comparison.

use std::fmt;

/// A query string or form body that cannot be decoded.
///
/// The client sent bytes that are not form data; an HTTP server answers
/// `400`. The offending field is not echoed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormError {
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-escape at byte {offset}: expected `%` and two hex digits")]
    InvalidEscape {
        /// Where the `%` stands in the input, counted in bytes from 0.
        offset: usize,
    },
    /// The decoded bytes are not UTF-8.
    #[error("form data is not valid UTF-8 once percent-decoded")]
    InvalidUtf8,
}

/// Decodes one `application/x-www-form-urlencoded` name or value: `+` is a
/// space and `%XX` is the byte `XX`.
///
/// Stricter than a browser's decoder, which passes a malformed `%` through
/// and replaces invalid UTF-8: a server should rather say what is wrong.
///
/// # Errors
///
/// [`FormError::InvalidEscape`] for a `%` without two hex digits after it,
/// [`FormError::InvalidUtf8`] if the decoded bytes are not UTF-8.
///
/// ```
/// use longpoll::http::{percent_decode, FormError};
///
/// assert_eq!(percent_decode(b"a+b%2Bc%C3%A9")?, "a b+cé");
/// assert_eq!(percent_decode(b"100%"), Err(FormError::InvalidEscape { offset: 3 }));
/// assert_eq!(percent_decode(b"%FF"), Err(FormError::InvalidUtf8));
/// # Ok::<(), FormError>(())
/// ```
pub fn percent_decode(input: &[u8]) -> Result<String, FormError> {
    // The common case, nothing to decode, allocates once and copies.
    if !input.iter().any(|&b| b == b'%' || b == b'+') {
        return std::str::from_utf8(input)
            .map(str::to_owned)
            .map_err(|_| FormError::InvalidUtf8);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = input.get(i + 1).and_then(|&b| hex_value(b));
                let lo = input.get(i + 2).and_then(|&b| hex_value(b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(FormError::InvalidEscape { offset: i });
                };
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::InvalidUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits `a=1&b=2` into raw (still encoded) name/value pairs. Empty pieces
/// (`a=1&&b=2`) are skipped; a piece without `=` has an empty value.
pub(crate) fn raw_pairs(input: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    input
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| match piece.iter().position(|&b| b == b'=') {
            Some(eq) => (&piece[..eq], &piece[eq + 1..]),
            None => (piece, &piece[piece.len()..]),
        })
}

/// A decoded `application/x-www-form-urlencoded` body: name/value pairs in
/// the order they were sent.
///
/// ```
/// use longpoll::http::Form;
///
/// // What jQuery's `$.ajax({type: 'POST', data: {...}})` sends.
/// let form = Form::parse(b"session=4f2a%20b&action=add")?;
/// assert_eq!(form.get("session"), Some("4f2a b"));
/// assert_eq!(form.get("action"), Some("add"));
/// assert_eq!(form.get("missing"), None);
/// # Ok::<(), longpoll::http::FormError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Decodes a whole body (or query string).
    ///
    /// # Errors
    ///
    /// A [`FormError`] if any name or value does not decode (see
    /// [`percent_decode`]): a body that is partly garbage is refused whole.
    pub fn parse(body: &[u8]) -> Result<Form, FormError> {
        let mut pairs = Vec::new();
        for (name, value) in raw_pairs(body) {
            let offset = |e: FormError, part: &[u8]| match e {
                FormError::InvalidEscape { offset } => FormError::InvalidEscape {
                    offset: offset + (part.as_ptr() as usize - body.as_ptr() as usize),
                },
                e => e,
            };
            let name = percent_decode(name).map_err(|e| offset(e, name))?;
            let value = percent_decode(value).map_err(|e| offset(e, value))?;
            pairs.push((name, value));
        }
        Ok(Form { pairs })
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every field, in the order sent.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many fields were sent.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether no field was sent.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl fmt::Debug for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.pairs()).finish()
    }
}

/// Whether a `Content-Type` value names the media type `expected`, ignoring
/// parameters, case and surrounding whitespace.
///
/// jQuery posts forms as `application/x-www-form-urlencoded; charset=UTF-8`;
/// that is the same media type as the bare name.
///
/// ```
/// use longpoll::http::media_type_is;
///
/// const FORM: &str = "application/x-www-form-urlencoded";
/// assert!(media_type_is(b"application/x-www-form-urlencoded; charset=UTF-8", FORM));
/// assert!(media_type_is(b"Application/X-WWW-Form-URLEncoded", FORM));
/// assert!(!media_type_is(b"application/json", FORM));
/// assert!(!media_type_is(b"", FORM));
/// ```
pub fn media_type_is(content_type: &[u8], expected: &str) -> bool {
    let essence = match content_type.iter().position(|&b| b == b';') {
        Some(semi) => &content_type[..semi],
        None => content_type,
    };
    essence
        .trim_ascii()
        .eq_ignore_ascii_case(expected.trim_ascii().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_escape_offsets_point_into_the_whole_body() {
        assert_eq!(
            Form::parse(b"a=1&b=%G0"),
            Err(FormError::InvalidEscape { offset: 6 })
        );
        assert_eq!(
            Form::parse(b"a=1&%=2"),
            Err(FormError::InvalidEscape { offset: 4 })
        );
    }

    #[test]
    fn pieces_without_equals_have_empty_values() {
        let form = Form::parse(b"flag&&x=").unwrap();
        assert_eq!(form.pairs().collect::<Vec<_>>(), [("flag", ""), ("x", "")]);
    }
}
