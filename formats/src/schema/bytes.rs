//! Byte types that read well both in postcard and in `cr inspect --json`.
//!
//! * [`ByteString`]: a name the kernel hands out as bytes (a path, a `comm`).
//!   Usually UTF-8 but not always. postcard: length-prefixed bytes. JSON: a
//!   string when it is UTF-8, else an array of byte values.
//! * [`Blob`]: opaque kernel bytes (registers, an xsave area, a siginfo, pipe
//!   contents). postcard: length-prefixed bytes. JSON: a hex string.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A path or name as the kernel gives it: bytes, usually UTF-8.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteString(pub Vec<u8>);

/// Opaque bytes copied from the kernel.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Blob(pub Vec<u8>);

impl ByteString {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Blob {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for ByteString {
    fn from(s: &str) -> Self {
        ByteString(s.as_bytes().to_vec())
    }
}

impl From<Vec<u8>> for ByteString {
    fn from(v: Vec<u8>) -> Self {
        ByteString(v)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(v)
    }
}

impl fmt::Debug for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(&self.0), f)
    }
}

impl fmt::Display for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 32;
        write!(
            f,
            "Blob({} bytes: {}",
            self.0.len(),
            hex(&self.0[..self.0.len().min(SHOWN)])
        )?;
        if self.0.len() > SHOWN {
            f.write_str("..")?;
        }
        f.write_str(")")
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

impl Serialize for ByteString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match std::str::from_utf8(&self.0) {
                Ok(text) => s.serialize_str(text),
                Err(_) => self.0.serialize(s),
            }
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(BytesVisitor { hex: false })
                .map(ByteString)
        } else {
            d.deserialize_byte_buf(BytesVisitor { hex: false })
                .map(ByteString)
        }
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(BytesVisitor { hex: true }).map(Blob)
        } else {
            d.deserialize_byte_buf(BytesVisitor { hex: true }).map(Blob)
        }
    }
}

/// Accepts bytes, a sequence of byte values, or a string (hex for a blob,
/// the text itself for a byte string).
struct BytesVisitor {
    hex: bool,
}

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.hex {
            "bytes or a hex string"
        } else {
            "bytes, a string or an array of byte values"
        })
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        if self.hex {
            unhex(v).ok_or_else(|| E::custom("invalid hex string"))
        } else {
            Ok(v.as_bytes().to_vec())
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_string_json_is_text_when_utf8_and_bytes_otherwise() {
        let text = ByteString::from("/usr/bin/python3");
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            "\"/usr/bin/python3\""
        );
        let odd = ByteString(vec![b'/', 0xff, b'x']);
        let json = serde_json::to_string(&odd).unwrap();
        assert_eq!(json, "[47,255,120]");
        for v in [text, odd] {
            let back: ByteString =
                serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            assert_eq!(back, v);
        }
    }

    #[test]
    fn blob_json_is_hex_and_postcard_is_length_prefixed() {
        let b = Blob(vec![0, 1, 0xab, 0xff]);
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"0001abff\"");
        let back: Blob = serde_json::from_str("\"0001ABff\"").unwrap();
        assert_eq!(back, b);
        assert!(serde_json::from_str::<Blob>("\"0g\"").is_err());
        let wire = postcard::to_allocvec(&b).unwrap();
        assert_eq!(wire, [4, 0, 1, 0xab, 0xff]);
        assert_eq!(postcard::from_bytes::<Blob>(&wire).unwrap(), b);
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A length of 2^63 followed by nothing.
        let wire = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(postcard::from_bytes::<Blob>(&wire).is_err());
        assert!(postcard::from_bytes::<ByteString>(&wire).is_err());
    }
}
