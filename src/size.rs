//! Human sizes (`512M`, `1G`, `1.5G`, `4096`) as byte counts, the way
//! `--memory` and `--disk` take them.

use std::fmt;

/// A size was not a number with an optional K/M/G/T suffix.
#[derive(Debug, thiserror::Error)]
#[error("invalid size {input:?}: expected a number with an optional K, M, G or T suffix (powers of 1024), e.g. 512M or 1G")]
pub struct SizeError {
    pub input: String,
}

/// Parses a size with an optional binary suffix (K, M, G, T; `B`, `iB` allowed).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = || SizeError {
        input: input.to_string(),
    };
    let s = input.trim();
    let upper = s.to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (number, shift) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 10),
        Some('M') => (&body[..body.len() - 1], 20),
        Some('G') => (&body[..body.len() - 1], 30),
        Some('T') => (&body[..body.len() - 1], 40),
        Some(c) if c.is_ascii_digit() => (body, 0),
        _ => return Err(err()),
    };
    if number.is_empty() || number.starts_with('-') || number.starts_with('+') {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    if !value.is_finite() || value <= 0.0 {
        return Err(err());
    }
    let bytes = value * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 || bytes < 1.0 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// Formats a byte count the way [`parse_size`] reads it, exact when possible.
pub struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            let scale = 1u64 << shift;
            if self.0 >= scale {
                if self.0 % scale == 0 {
                    return write!(f, "{}{}", self.0 / scale, unit);
                }
                return write!(f, "{:.1}{}", self.0 as f64 / scale as f64, unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "G", "-1G", "0", "1X", "abc", "1.2.3M", "NaNG", "infG"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn formats_round_trip() {
        for v in [512u64 << 20, 1 << 30, 4096, 3 << 29] {
            assert_eq!(parse_size(&HumanSize(v).to_string()).unwrap(), v);
        }
    }
}
