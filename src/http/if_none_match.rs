//! `If-None-Match` as RFC 9110 (section 13.1.2) defines it, and the ETags
//! this layer writes.

use ::http::header::HeaderValue;

use crate::{Cursor, Epoch, Version};

/// The ETag of a version: `"<epoch>-<version>"`, epoch in 16 lowercase hex
/// digits, version in decimal.
///
/// ```
/// use longpoll::http::etag;
/// use longpoll::{Epoch, Version};
///
/// let tag = etag(Epoch::new(255).unwrap(), Version::new(7));
/// assert_eq!(tag, "\"00000000000000ff-7\"");
/// ```
pub fn etag(epoch: Epoch, version: Version) -> HeaderValue {
    HeaderValue::try_from(format!("\"{epoch}-{version}\""))
        .expect("hex digits, a dash and decimal digits are valid header characters")
}

/// A parsed `If-None-Match` header: `*`, or a list of entity tags.
///
/// RFC 9110 compares `If-None-Match` tags *weakly*: `W/"x"` and `"x"` are
/// the same tag, and an opaque tag matches only if it is the same string.
/// Only tags of the exact form [`etag`] writes can be this server's; any
/// other tag is kept only as "some tag that is not ours".
///
/// A long poll is held when the list holds the current ETag (or is `*`),
/// and answered at once otherwise; see [`PollRequest`](super::PollRequest).
///
/// ```
/// use longpoll::http::IfNoneMatch;
/// use longpoll::{Epoch, Version};
///
/// let e = Epoch::new(255).unwrap();
/// let inm = IfNoneMatch::parse(br#""abc", W/"00000000000000ff-7""#).unwrap();
/// assert!(inm.matches(e, Version::new(7)));
/// assert!(!inm.matches(e, Version::new(8)));
/// assert_eq!(inm.len(), 2);
/// assert_eq!(inm.cursors().count(), 1); // "abc" is not one of ours
///
/// assert!(IfNoneMatch::parse(b"*").unwrap().matches(e, Version::new(8)));
/// assert_eq!(IfNoneMatch::parse(b"no quotes"), None); // ignored, as if absent
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfNoneMatch {
    /// `*`.
    any: bool,
    /// How many tags were listed.
    len: usize,
    /// The listed tags that have this server's form, in order.
    ours: Vec<Cursor>,
}

impl IfNoneMatch {
    /// Parses an `If-None-Match` value: `*`, or a comma-separated list of
    /// entity tags (`"..."` or `W/"..."`), with optional spaces and empty
    /// list elements, as RFC 9110 allows.
    ///
    /// Returns `None` for anything else, or a list with no tag: such a
    /// header is to be ignored, as if absent. Never panics.
    pub fn parse(value: &[u8]) -> Option<IfNoneMatch> {
        let value = trim_ows(value);
        if value == b"*" {
            return Some(IfNoneMatch {
                any: true,
                len: 0,
                ours: Vec::new(),
            });
        }
        let mut len = 0;
        let mut ours = Vec::new();
        let mut rest = value;
        loop {
            // Empty list elements and the spaces around commas.
            rest = trim_start_ows(rest);
            while let Some(r) = rest.strip_prefix(b",") {
                rest = trim_start_ows(r);
            }
            if rest.is_empty() {
                break;
            }
            let tag = rest.strip_prefix(b"W/").unwrap_or(rest);
            let tag = tag.strip_prefix(b"\"")?;
            let end = tag.iter().position(|&b| b == b'"')?;
            let opaque = &tag[..end];
            if !opaque.iter().all(|&b| is_etagc(b)) {
                return None;
            }
            len += 1;
            if let Some(cursor) = our_tag(opaque) {
                ours.push(cursor);
            }
            rest = trim_start_ows(&tag[end + 1..]);
            if !(rest.is_empty() || rest.starts_with(b",")) {
                return None;
            }
        }
        (len > 0).then_some(IfNoneMatch {
            any: false,
            len,
            ours,
        })
    }

    /// Whether the header is `*`.
    pub fn is_any(&self) -> bool {
        self.any
    }

    /// How many entity tags are listed (0 for `*`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entity tag is listed: only for `*`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the header matches the ETag of `version` of `epoch` (see
    /// [`etag`]), by the weak comparison: `*` matches any.
    pub fn matches(&self, epoch: Epoch, version: Version) -> bool {
        let current = Cursor::at(version).with_epoch(epoch);
        self.any || self.ours.contains(&current)
    }

    /// The listed tags that this server may have written, as cursors, in
    /// the order listed.
    pub fn cursors(&self) -> impl Iterator<Item = Cursor> + '_ {
        self.ours.iter().copied()
    }

    pub(crate) fn into_cursors(self) -> Vec<Cursor> {
        self.ours
    }
}

/// `etagc = %x21 / %x23-7E / obs-text`.
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

fn trim_start_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let s = trim_start_ows(s);
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// The cursor of an opaque tag exactly as [`etag`] writes it: 16 lowercase
/// hex digits (not all zero), `-`, a canonical decimal `u64`.
pub(crate) fn our_tag(opaque: &[u8]) -> Option<Cursor> {
    if opaque.len() < 18 || opaque[16] != b'-' {
        return None;
    }
    let (epoch, version) = (&opaque[..16], &opaque[17..]);
    if !epoch
        .iter()
        .all(|&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    // Canonical: no sign, no leading zero (except "0" itself).
    if version.len() > 1 && version[0] == b'0' {
        return None;
    }
    let epoch = std::str::from_utf8(epoch).ok()?.parse::<Epoch>().ok()?;
    let version = std::str::from_utf8(version).ok()?.parse::<Version>().ok()?;
    Some(Cursor::at(version).with_epoch(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_form_we_write_is_ours() {
        assert!(our_tag(b"00000000000000ff-7").is_some());
        assert!(our_tag(b"00000000000000ff-0").is_some());
        assert!(our_tag(b"00000000000000FF-7").is_none());
        assert!(our_tag(b"00000000000000ff-07").is_none());
        assert!(our_tag(b"ff-7").is_none());
        assert!(our_tag(b"0000000000000000-7").is_none());
        assert!(our_tag(b"00000000000000ff-").is_none());
        assert!(our_tag(b"00000000000000ff-18446744073709551616").is_none());
    }

    #[test]
    fn lists_allow_empty_elements_and_spaces() {
        let inm = IfNoneMatch::parse(b" , \"a\" ,, W/\"b\",\t").unwrap();
        assert_eq!(inm.len(), 2);
        // A comma inside an opaque tag is part of it.
        assert_eq!(IfNoneMatch::parse(b"\"a,b\"").unwrap().len(), 1);
        for bad in [
            &b""[..],
            b" , ",
            b"a",
            b"\"a",
            b"\"a\" \"b\"",
            b"w/\"a\"",
            b"**",
        ] {
            assert_eq!(IfNoneMatch::parse(bad), None, "{bad:?}");
        }
    }
}
