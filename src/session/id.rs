//! Session ids: 128 bits from the OS CSPRNG, written as 32 lower-case hex digits, and the cookie
//! value built around them with the one affinity codec ([`crate::affinity::encode`]).
//!
//! Hex keeps the id free of every punctuation character, so no configured separator can appear
//! inside it (the separator is one punctuation character, DESIGN.md §2).

use crate::affinity;
use crate::config::IdFormat;

/// Bytes of randomness in a session id (128 bits, DESIGN.md §5).
pub const ID_BYTES: usize = 16;

/// The WebSphere cache id written in front of every id this crate mints.
pub const CACHE_ID: &str = "0000";

/// A fresh session id: [`ID_BYTES`] from the OS CSPRNG as hex. Fails only if the OS has no
/// random source, which the caller turns into "store unavailable", never a weak id.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; ID_BYTES];
    getrandom::fill(&mut raw)?;
    let mut out = String::with_capacity(ID_BYTES * 2);
    for b in raw {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `true` for a value [`generate`] could have made: the layer looks nothing else up, so a
/// client cannot make the store search for arbitrary keys.
pub fn is_well_formed(id: &str) -> bool {
    id.len() == ID_BYTES * 2 && id.bytes().all(|b| HEX.contains(&b))
}

/// The cookie value for `id` with `clones` (owner first): `0000<id>:<c1>:<c2>` (WebSphere) or
/// `<id>.<c1>` (Tomcat).
pub fn cookie_value(format: IdFormat, separator: u8, id: &str, clones: &[String]) -> String {
    let clones: Vec<&str> = clones.iter().map(String::as_str).collect();
    affinity::encode(format, separator, CACHE_ID, id, &clones)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_bit_hex_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 32);
        assert!(is_well_formed(&a) && is_well_formed(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn well_formed_rejects_other_values() {
        assert!(!is_well_formed(""));
        assert!(!is_well_formed(&"a".repeat(31)));
        assert!(!is_well_formed(&"g".repeat(32)));
        assert!(!is_well_formed(&"A".repeat(32)));
    }

    #[test]
    fn cookie_value_round_trips_through_the_shared_codec() {
        let id = generate().unwrap();
        let clones = vec!["c2".to_owned(), "c3".to_owned()];
        let ws = cookie_value(IdFormat::WebSphere, b':', &id, &clones);
        assert_eq!(ws, format!("0000{id}:c2:c3"));
        let parsed = affinity::parse(&ws, IdFormat::WebSphere, b':').unwrap();
        assert_eq!(parsed.id, id);
        assert_eq!(parsed.clones().collect::<Vec<_>>(), ["c2", "c3"]);
        let tc = cookie_value(IdFormat::Tomcat, b'.', &id, &clones);
        assert_eq!(tc, format!("{id}.c2"));
    }
}
